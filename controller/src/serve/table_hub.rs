//! The routing table the controller serves, its generation, its JSON (encoded once per
//! generation, however many gateways fetch it), and the long-poll that hands it to
//! gateways. Also remembers which generation each gateway last confirmed, so an operator
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

use bytes::Bytes;
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

/// One generation of the table as published: the table and its JSON, encoded once when it
/// is published. Every gateway fetching this generation is answered with the same bytes,
/// so serving a table costs a copy of a reference, not an encoding of 1,000 routes.
#[derive(Debug)]
pub struct PublishedTable {
    table: RoutingTable,
    json: Bytes,
}

impl PublishedTable {
    fn encode(table: RoutingTable) -> Result<PublishedTable, TableEncodeError> {
        let json = serde_json::to_vec(&table).map_err(|source| TableEncodeError {
            generation: table.generation,
            source,
        })?;
        Ok(PublishedTable {
            table,
            json: Bytes::from(json),
        })
    }

    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The table as the JSON document `GET /v1/table` answers with.
    pub fn json(&self) -> &Bytes {
        &self.json
    }
}

/// A table that could not be encoded as JSON. It is neither persisted nor served.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode routing table generation {generation} as JSON: {source}")]
pub struct TableEncodeError {
    generation: u64,
    source: serde_json::Error,
}

/// Why [`TableHub::publish_checked`] did not serve a new table.
#[derive(Debug, thiserror::Error)]
pub enum PublishError<E> {
    #[error(transparent)]
    Encode(TableEncodeError),
    /// The caller's `persist` failed.
    #[error(transparent)]
    Persist(E),
}

/// The served table. `None` until the first publish after start: until the controller has
/// restored its canaries, it has nothing true to serve.
#[derive(Debug, Clone)]
struct Served {
    published: Option<Arc<PublishedTable>>,
    /// The generation persisted by the previous run; the first table is above it.
    initial_generation: u64,
    closed: bool,
}

impl Served {
    fn generation(&self) -> u64 {
        self.published
            .as_ref()
            .map_or(self.initial_generation, |p| p.table.generation)
    }
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
        let (served, _) = watch::channel(Served {
            published: None,
            initial_generation,
            closed: false,
        });
        TableHub {
            served,
            publish_lock: Mutex::new(()),
            gateways: Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes `routes` the served table and returns its generation, for callers that persist
    /// nothing (tests, tools). The generation rises only when the routes differ from the
    /// served ones, except that the first publish after start always takes a new generation
    /// (above anything a previous run served). A table that cannot be encoded (which the
    /// types of [`RoutingTable`] rule out: every map key is a string) is logged and not
    /// served; the served generation is returned.
    pub fn publish(&self, routes: Vec<Route>) -> u64 {
        match self.publish_checked(routes, |_| Ok::<(), std::convert::Infallible>(())) {
            Ok(generation) => generation,
            Err(PublishError::Persist(never)) => match never {},
            Err(PublishError::Encode(e)) => {
                tracing::error!(error = %e, "routing table not served");
                self.generation()
            }
        }
    }

    /// As [`publish`](TableHub::publish), but encodes the table and calls `persist` with it
    /// before serving it, when the generation changes; only if both succeed is the new table
    /// served. On error the served table stays as it was.
    pub fn publish_checked<E>(
        &self,
        routes: Vec<Route>,
        persist: impl FnOnce(&PublishedTable) -> Result<(), E>,
    ) -> Result<u64, PublishError<E>> {
        let _serialized = lock(&self.publish_lock);
        let current = self.served.borrow().clone();
        if let Some(published) = &current.published {
            if published.table.routes == routes {
                return Ok(published.table.generation);
            }
        }
        let generation = current.generation() + 1;
        let published = PublishedTable::encode(RoutingTable { generation, routes })
            .map_err(PublishError::Encode)?;
        persist(&published).map_err(PublishError::Persist)?;
        let published = Arc::new(published);
        self.served
            .send_modify(|served| served.published = Some(published));
        Ok(generation)
    }

    /// Serves `table` exactly as another replica published it (generation included), if
    /// its generation is above the served one; returns whether it was taken. A replica
    /// that follows the leader serves what the leader persisted, so the same generation
    /// is the same table whichever replica answers.
    pub fn adopt(&self, table: RoutingTable) -> Result<bool, TableEncodeError> {
        let _serialized = lock(&self.publish_lock);
        let served = self.generation();
        if table.generation < served || (table.generation == served && self.is_ready()) {
            return Ok(false);
        }
        let published = Arc::new(PublishedTable::encode(table)?);
        self.served
            .send_modify(|served| served.published = Some(published));
        Ok(true)
    }

    /// The served table (generation and routes). Before the first publish this is the
    /// empty table at the initial generation.
    pub fn current(&self) -> RoutingTable {
        let served = self.served.borrow();
        match &served.published {
            Some(published) => published.table.clone(),
            None => RoutingTable {
                generation: served.initial_generation,
                routes: Vec::new(),
            },
        }
    }

    /// The served generation.
    pub fn generation(&self) -> u64 {
        self.served.borrow().generation()
    }

    /// Whether a table has been published since start.
    pub fn is_ready(&self) -> bool {
        self.served.borrow().published.is_some()
    }

    /// Waits until a table with a generation above `after` is served, for at most
    /// `max_wait` (capped at [`MAX_WAIT`]). `None` means nothing newer came in time, or the
    /// hub was closed.
    pub async fn wait_newer(&self, after: u64, max_wait: Duration) -> Option<Arc<PublishedTable>> {
        let mut changes = self.served.subscribe();
        let newer = |s: &Served| {
            s.published
                .as_ref()
                .filter(|p| !s.closed && p.table.generation > after)
                .cloned()
        };
        let wait = changes.wait_for(|s| s.closed || newer(s).is_some());
        let served = tokio::time::timeout(max_wait.min(MAX_WAIT), wait)
            .await
            .ok()?
            .ok()?;
        newer(&served)
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
    fn adopt_serves_another_replicas_table_only_when_newer() {
        let hub = TableHub::new(0);
        let table = |generation, weight| RoutingTable {
            generation,
            routes: vec![route("a/b", weight)],
        };
        assert!(hub.adopt(table(7, 100)).unwrap());
        assert_eq!(hub.current().generation, 7);
        // Older or the same generation: kept as it is, whatever the routes say.
        assert!(!hub.adopt(table(6, 900)).unwrap());
        assert!(!hub.adopt(table(7, 900)).unwrap());
        assert_eq!(hub.current().routes[0].weight, 100);
        assert!(hub.adopt(table(9, 300)).unwrap());
        // A leader publishing on the same hub continues above the adopted generation.
        assert_eq!(hub.publish(vec![route("a/b", 400)]), 10);
    }

    #[test]
    fn failed_persist_serves_nothing_new() {
        let hub = TableHub::new(0);
        hub.publish(vec![route("a/b", 0)]);
        let err = hub.publish_checked(vec![route("a/b", 500)], |p| {
            let g = p.table().generation;
            Err(format!("disk full at {g}"))
        });
        assert!(
            matches!(&err, Err(PublishError::Persist(e)) if e == "disk full at 2"),
            "{err:?}"
        );
        assert_eq!(hub.generation(), 1);
        assert_eq!(hub.current().routes[0].weight, 0);
        let mut persisted = None;
        let ok = hub.publish_checked(vec![route("a/b", 500)], |p| {
            let g = p.table().generation;
            persisted = Some(g);
            Ok::<(), String>(())
        });
        assert!(matches!(ok, Ok(2)), "{ok:?}");
        assert_eq!(persisted, Some(2));
    }

    #[tokio::test]
    async fn each_generation_is_served_as_its_own_json() {
        let hub = TableHub::new(0);
        for weight in [0, 250, 1000] {
            let generation = hub.publish(vec![route("a/b", weight), route("c/d", 10)]);
            let served = hub
                .wait_newer(generation - 1, Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(served.table(), &hub.current());
            let parsed: RoutingTable = serde_json::from_slice(served.json()).unwrap();
            assert_eq!(parsed, hub.current(), "JSON of generation {generation}");
            assert_eq!(parsed.generation, generation);
            assert_eq!(parsed.routes[0].weight, weight);
        }
    }

    #[tokio::test]
    async fn nothing_is_served_before_the_first_publish() {
        let hub = TableHub::new(7);
        assert!(hub.wait_newer(0, Duration::from_millis(20)).await.is_none());
        hub.publish(vec![]);
        assert_eq!(
            hub.wait_newer(0, Duration::ZERO)
                .await
                .unwrap()
                .table()
                .generation,
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
        assert_eq!(got.unwrap().table().generation, 2);

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
        assert!(got.is_none());
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
