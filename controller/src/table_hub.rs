//! The routing table the controller serves, its generation, and the long-poll that hands it
//! to gateways. Also remembers which generation each gateway last confirmed, so an operator
//! can see that every gateway applied a weight change.
//!
//! The generation only rises: within a process by one per change, and across restarts
//! because the caller persists it ([`TableHub::publish_checked`]) and passes it back to
//! [`TableHub::new`]. Gateways only take a generation newer than the one they hold, so
//! serving a generation that was never persisted could pin a gateway to a stale table after
//! a crash; `publish_checked` persists before anything is served.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use veer_core::{Route, RoutingTable};

/// The longest a long-poll is held, whatever `waitMs` asks for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How many gateways are remembered; past this the least recently seen is forgotten, so
/// a client inventing gateway ids cannot grow memory without bound.
pub const MAX_TRACKED_GATEWAYS: usize = 1024;

/// The longest gateway id that is recorded.
pub const MAX_GATEWAY_ID_LEN: usize = 256;

/// What the controller last heard from one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySeen {
    /// The generation the gateway said it had applied.
    pub generation: u64,
    #[serde(serialize_with = "serialize_system_time")]
    pub last_seen: SystemTime,
}

fn serialize_system_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

/// The served table. `ready` is false until the first publish after start: until the
/// controller has restored its canaries, it has nothing true to serve.
#[derive(Debug, Clone)]
struct Served {
    table: Arc<RoutingTable>,
    ready: bool,
    closed: bool,
}

/// The current routing table and the gateways that fetch it. Share it as `Arc<TableHub>`.
#[derive(Debug)]
pub struct TableHub {
    served: watch::Sender<Served>,
    /// Serializes publishers, so computing the next generation, persisting it and
    /// swapping the table in is one step.
    publish_lock: Mutex<()>,
    gateways: Mutex<BTreeMap<String, GatewaySeen>>,
}

impl TableHub {
    /// A hub whose next table will have a generation above `initial_generation` (the
    /// generation persisted by the previous run, or 0). Nothing is served before the first
    /// [`publish`](TableHub::publish).
    pub fn new(initial_generation: u64) -> TableHub {
        let table = RoutingTable {
            generation: initial_generation,
            routes: Vec::new(),
        };
        let (served, _) = watch::channel(Served {
            table: Arc::new(table),
            ready: false,
            closed: false,
        });
        TableHub {
            served,
            publish_lock: Mutex::new(()),
            gateways: Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes `routes` the served table and returns its generation. The generation rises
    /// only when the routes differ from the served ones, except that the first publish
    /// after start always takes a new generation (above anything a previous run served).
    pub fn publish(&self, routes: Vec<Route>) -> u64 {
        match self.publish_checked(routes, |_| Ok::<(), std::convert::Infallible>(())) {
            Ok(generation) => generation,
            Err(never) => match never {},
        }
    }

    /// As [`publish`](TableHub::publish), but calls `persist(new_generation)` first when the
    /// generation changes and only serves the new table if it succeeds. On error the served
    /// table stays as it was.
    pub fn publish_checked<E>(
        &self,
        routes: Vec<Route>,
        persist: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<u64, E> {
        let _serialized = lock(&self.publish_lock);
        let current = self.served.borrow().clone();
        if current.ready && current.table.routes == routes {
            return Ok(current.table.generation);
        }
        let generation = current.table.generation + 1;
        persist(generation)?;
        let table = Arc::new(RoutingTable { generation, routes });
        self.served.send_modify(|served| {
            served.table = table;
            served.ready = true;
        });
        Ok(generation)
    }

    /// The served table (generation and routes). Before the first publish this is the
    /// empty table at the initial generation.
    pub fn current(&self) -> RoutingTable {
        self.served.borrow().table.as_ref().clone()
    }

    /// The served generation.
    pub fn generation(&self) -> u64 {
        self.served.borrow().table.generation
    }

    /// Whether a table has been published since start.
    pub fn is_ready(&self) -> bool {
        self.served.borrow().ready
    }

    /// Waits until a table with a generation above `after` is served, for at most
    /// `max_wait` (capped at [`MAX_WAIT`]). `None` means nothing newer came in time, or the
    /// hub was closed.
    pub async fn wait_newer(&self, after: u64, max_wait: Duration) -> Option<RoutingTable> {
        let mut changes = self.served.subscribe();
        let newer = |s: &Served| s.ready && !s.closed && s.table.generation > after;
        let wait = changes.wait_for(|s| newer(s) || s.closed);
        let served = tokio::time::timeout(max_wait.min(MAX_WAIT), wait)
            .await
            .ok()?
            .ok()?
            .clone();
        newer(&served).then(|| served.table.as_ref().clone())
    }

    /// How many long-polls are waiting right now.
    pub fn waiting(&self) -> usize {
        self.served.receiver_count()
    }

    /// Ends every pending and future [`wait_newer`](TableHub::wait_newer) at once, so a
    /// graceful shutdown does not wait for long-polls to run out.
    pub fn close(&self) {
        self.served.send_modify(|served| served.closed = true);
    }

    /// Records that gateway `id` reported having applied `generation`. Returns false (and
    /// records nothing) for an id that is empty, longer than [`MAX_GATEWAY_ID_LEN`] or not
    /// printable ASCII.
    pub fn record_gateway(&self, id: &str, generation: u64) -> bool {
        if id.is_empty()
            || id.len() > MAX_GATEWAY_ID_LEN
            || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return false;
        }
        let mut gateways = lock(&self.gateways);
        if !gateways.contains_key(id) && gateways.len() >= MAX_TRACKED_GATEWAYS {
            let stalest = gateways
                .iter()
                .min_by_key(|(_, seen)| seen.last_seen)
                .map(|(id, _)| id.clone());
            if let Some(stalest) = stalest {
                gateways.remove(&stalest);
            }
        }
        gateways.insert(
            id.to_string(),
            GatewaySeen {
                generation,
                last_seen: SystemTime::now(),
            },
        );
        true
    }

    /// Every remembered gateway and what it last reported.
    pub fn gateways(&self) -> BTreeMap<String, GatewaySeen> {
        lock(&self.gateways).clone()
    }
}

/// Locks a mutex; a panic in another holder cannot leave these maps half-updated (every
/// update is a single insert/remove), so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn route(name: &str, weight: u32) -> Route {
        serde_json::from_value(serde_json::json!({
            "name": name, "hosts": ["app.example.com"], "weight": weight
        }))
        .unwrap()
    }

    #[test]
    fn generation_rises_only_on_change_and_first_publish_always_rises() {
        let hub = TableHub::new(41);
        assert!(!hub.is_ready());
        assert_eq!(
            hub.publish(vec![]),
            42,
            "first publish after start takes a new generation"
        );
        assert_eq!(hub.publish(vec![]), 42);
        assert_eq!(hub.publish(vec![route("test/podinfo", 0)]), 43);
        assert_eq!(hub.publish(vec![route("test/podinfo", 0)]), 43);
        assert_eq!(hub.publish(vec![route("test/podinfo", 1000)]), 44);
        assert_eq!(hub.current().generation, 44);
        assert_eq!(hub.current().routes[0].weight, 1000);
    }

    #[test]
    fn failed_persist_serves_nothing_new() {
        let hub = TableHub::new(0);
        hub.publish(vec![route("a/b", 0)]);
        let err = hub.publish_checked(vec![route("a/b", 500)], |g| {
            Err(format!("disk full at {g}"))
        });
        assert_eq!(err, Err("disk full at 2".to_string()));
        assert_eq!(hub.generation(), 1);
        assert_eq!(hub.current().routes[0].weight, 0);
        let mut persisted = None;
        let ok = hub.publish_checked(vec![route("a/b", 500)], |g| {
            persisted = Some(g);
            Ok::<(), String>(())
        });
        assert_eq!(ok, Ok(2));
        assert_eq!(persisted, Some(2));
    }

    #[tokio::test]
    async fn nothing_is_served_before_the_first_publish() {
        let hub = TableHub::new(7);
        assert_eq!(hub.wait_newer(0, Duration::from_millis(20)).await, None);
        hub.publish(vec![]);
        assert_eq!(
            hub.wait_newer(0, Duration::ZERO).await.unwrap().generation,
            8
        );
    }

    #[tokio::test]
    async fn wait_newer_wakes_on_publish_and_on_close() {
        let hub = Arc::new(TableHub::new(0));
        hub.publish(vec![]);
        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.wait_newer(1, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        hub.publish(vec![route("a/b", 1)]);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.unwrap().generation, 2);

        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.wait_newer(2, Duration::from_secs(30)).await })
        };
        let start = Instant::now();
        hub.close();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, None);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn gateways_are_recorded_validated_and_capped() {
        let hub = TableHub::new(0);
        assert!(hub.record_gateway("gw-1", 3));
        assert!(hub.record_gateway("gw-1", 4));
        assert!(!hub.record_gateway("", 1));
        assert!(!hub.record_gateway("has space", 1));
        assert!(!hub.record_gateway(&"x".repeat(MAX_GATEWAY_ID_LEN + 1), 1));
        assert_eq!(hub.gateways()["gw-1"].generation, 4);
        for i in 0..MAX_TRACKED_GATEWAYS + 10 {
            hub.record_gateway(&format!("gw-{i}"), 1);
        }
        let gateways = hub.gateways();
        assert_eq!(gateways.len(), MAX_TRACKED_GATEWAYS);
        assert!(gateways.contains_key(&format!("gw-{}", MAX_TRACKED_GATEWAYS + 9)));
    }
}
