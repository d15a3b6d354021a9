//! The root context: one per Envoy thread running the plugin. It reads the plugin
//! configuration, keeps the worker's compiled table, and picks up newer tables from shared
//! data when the poller's notice arrives on its queue (`notify`), or on its tick if a notice
//! was lost; the one root context holding the lease also long-polls the controller, publishes
//! what it gets and notifies the others. HTTP contexts borrow the current table through an
//! `Rc`, so a table change never disturbs requests in flight.

use crate::host::{self, BufferType, CasWrite, MapType};
use crate::http::Exchange;
use crate::lease::{self, LeaseStep};
use crate::metrics::{MetricIds, RouteStats};
use crate::notify::Registry;
use crate::poll::{self, PollAnswer, PollSchedule, CALL_GRACE_MS};
use crate::shared::{self, SharedKeys};
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use veer_core::{
    parse_plugin_config, parse_table, signing_keys, CompiledTable, ControllerEndpoint,
    RoutingTable, SigningKeys, GATEWAY_GENERATION_HEADER, GATEWAY_ID_HEADER,
};

/// Tick period. A new table reaches the other workers by a notice on their queues
/// (`notify`); the tick is the safety net that bounds a lost notice to this delay, and it
/// flushes the counters and gauges, which therefore reach Envoy up to a second late, well
/// inside any scrape interval. It also renews the poll lease and starts polls that are due.
pub const TICK_MS: u32 = 1_000;
/// The first tick after `on_configure` with a controller comes this soon, then `TICK_MS`:
/// a root context can only list its queue from a tick, and until it has, notices miss it (a
/// plugin reconfiguration would otherwise leave every worker a second without them).
const FIRST_TICK_MS: u32 = 10;
/// A poller that stops renewing loses the lease after this long (three ticks).
const LEASE_TTL_MS: u64 = 3_000;
/// Most notices taken from the queue per `on_queue_ready`: they all say "look at shared
/// data", so one is enough; the rest are drained so the host's queue does not grow.
const MAX_DRAIN: usize = 64;

/// The configuration parts the request path needs, shared by every HTTP context.
#[derive(Debug)]
pub struct EdgeConfig {
    pub route_header: String,
    pub mirror_header: String,
    pub decision_header: bool,
    pub response_metrics: bool,
    pub keys: Option<SigningKeys>,
    /// `veer_errors_total`, when it could be defined.
    pub errors_metric: Option<u32>,
}

impl EdgeConfig {
    /// What a context without configuration does: strip the default headers, decide nothing.
    fn fallback() -> EdgeConfig {
        EdgeConfig {
            route_header: veer_core::DEFAULT_ROUTE_HEADER.to_string(),
            mirror_header: veer_core::DEFAULT_MIRROR_HEADER.to_string(),
            decision_header: false,
            response_metrics: true,
            keys: None,
            errors_metric: None,
        }
    }

    pub fn count_error(&self) {
        if let Some(id) = self.errors_metric {
            // Nothing more to do if even counting fails.
            let _ = host::increment_metric(id, 1);
        }
    }
}

/// A compiled table and the metric ids of its routes, by route index.
#[derive(Debug)]
pub struct ActiveTable {
    pub table: CompiledTable,
    pub stats: Vec<Option<Rc<RouteStats>>>,
}

/// The poller's side: shared-data keys, lease identity and poll pacing.
#[derive(Debug)]
struct LiveTable {
    endpoint: ControllerEndpoint,
    keys: SharedKeys,
    me: u64,
    node_id: String,
    schedule: PollSchedule,
    token: Option<u32>,
    leading: bool,
    /// Consecutive failed polls, to log a failure streak once rather than every retry.
    failures: u32,
    /// A generation that failed to compile here; not retried every tick.
    rejected_generation: Option<u64>,
    /// This root context's notice queue, once registered (on the first tick).
    queue: Option<u32>,
}

pub struct VeerRoot {
    config: Rc<EdgeConfig>,
    configured: bool,
    controller: Option<ControllerEndpoint>,
    active: Option<Rc<ActiveTable>>,
    metrics: MetricIds,
    seed: u64,
    requests: Cell<u64>,
    live: Option<LiveTable>,
    /// When the applied table was last fetched or confirmed (ms since the epoch).
    confirmed_ms: u64,
    /// The tick period currently armed.
    tick_ms: u32,
}

/// splitmix64: spreads a counter into uniform 64-bit values.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The Envoy node id. Envoy 1.40 serves it as `xds.node.id`; older hosts as `node.id`.
fn node_id() -> String {
    [&["xds", "node", "id"][..], &["node", "id"][..]]
        .iter()
        .find_map(|path| {
            let id = host::property(path).ok().flatten()?;
            let id = String::from_utf8(id).ok()?;
            (!id.is_empty()).then_some(id)
        })
        .unwrap_or_default()
}

fn now_ms() -> Option<u64> {
    host::now_nanos().ok().map(|ns| ns / 1_000_000)
}

impl VeerRoot {
    pub fn new(context_id: u32) -> VeerRoot {
        // The seed makes fresh buckets unpredictable to clients and names this root context
        // in the lease. random_get comes from the host; time and the context id are a fallback.
        let seed = host::random_u64()
            .unwrap_or_else(|_| host::now_nanos().unwrap_or(0) ^ (u64::from(context_id) << 32));
        VeerRoot {
            config: Rc::new(EdgeConfig::fallback()),
            configured: false,
            controller: None,
            active: None,
            metrics: MetricIds::default(),
            seed,
            requests: Cell::new(0),
            live: None,
            confirmed_ms: 0,
            tick_ms: 0,
        }
    }

    fn count_error(&mut self) {
        if let Ok(id) = self.metrics.errors() {
            let _ = host::increment_metric(id, 1);
        }
    }

    /// Compiles a table for this worker; `responses` is the configuration's `responseMetrics`.
    fn compile(&mut self, table: &RoutingTable, responses: bool) -> Result<ActiveTable, String> {
        let compiled = CompiledTable::compile(table).map_err(|e| e.to_string())?;
        let stats = compiled
            .routes()
            .iter()
            .map(|r| self.metrics.route(r.stat_token(), responses).ok())
            .collect();
        Ok(ActiveTable {
            table: compiled,
            stats,
        })
    }

    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("plugin configuration is empty: expected a JSON object such as {}".into());
        }
        let cfg = parse_plugin_config(bytes).map_err(|e| e.to_string())?;
        let keys = signing_keys(&cfg, |var| host::env_var(var).ok().flatten())
            .map_err(|e| e.to_string())?;
        let table: RoutingTable = cfg.table.clone().unwrap_or_default();
        let active = self
            .compile(&table, cfg.response_metrics)
            .map_err(|e| format!("table: {e}"))?;
        self.config = Rc::new(EdgeConfig {
            route_header: cfg.route_header.to_ascii_lowercase(),
            mirror_header: cfg.mirror_header.to_ascii_lowercase(),
            decision_header: cfg.decision_header,
            response_metrics: cfg.response_metrics,
            keys,
            errors_metric: self.metrics.errors().ok(),
        });
        self.controller = cfg.controller.clone();
        self.active = Some(Rc::new(active));
        self.configured = true;
        self.confirmed_ms = now_ms().unwrap_or(0);
        self.live = None;
        Ok(())
    }

    fn applied_generation(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.table.generation())
    }

    fn install(&mut self, active: ActiveTable, confirmed_ms: u64) {
        info!(
            "applied table generation {} ({} routes)",
            active.table.generation(),
            active.table.routes().len()
        );
        self.active = Some(Rc::new(active));
        self.confirmed_ms = confirmed_ms;
    }

    /// Sets up the poller side: reads properties only, so it is safe in `on_configure`, which
    /// Envoy also runs on a throwaway VM to validate configuration. The lease and the poll,
    /// which write shared data and dispatch calls, wait for `on_tick`.
    fn ensure_live(&mut self) {
        if self.live.is_some() {
            return;
        }
        let Some(endpoint) = self.controller.clone() else {
            return;
        };
        let plugin = host::property(&["plugin_name"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "veer".to_string());
        let node_id = node_id();
        let schedule = PollSchedule::new(endpoint.poll_ms);
        self.live = Some(LiveTable {
            endpoint,
            keys: SharedKeys::for_plugin(&plugin),
            me: self.seed,
            node_id,
            schedule,
            token: None,
            leading: false,
            failures: 0,
            rejected_generation: None,
            queue: None,
        });
    }

    /// Registers this root context's notice queue and keeps it listed in the registry. Run
    /// from the tick, never from `on_configure` (a throwaway VM must not list itself). A lost
    /// CAS race is retried on the next tick; until then the tick is this worker's only news.
    fn keep_listed(&mut self, now: u64) {
        let Some(live) = &mut self.live else { return };
        let token = match live.queue {
            Some(token) => token,
            None => match host::register_queue(&live.keys.queue(live.me)) {
                Ok(token) => *live.queue.insert(token),
                Err(_) => return self.count_error(),
            },
        };
        let (value, cas) = match host::shared_data(&live.keys.workers) {
            Ok(v) => v,
            Err(_) => return self.count_error(),
        };
        let listed = Registry::decode(value.as_deref().unwrap_or_default());
        if let Some(next) = listed.refreshed(token, now) {
            if host::set_shared_data(&live.keys.workers, next.encode().as_bytes(), cas).is_err() {
                self.count_error();
            }
        }
    }

    /// After storing `generation`: a notice to every listed worker but this one. A queue
    /// that is gone is skipped; a worker that misses its notice adopts on its tick.
    fn notify_workers(&mut self, generation: u64, now: u64) {
        let Some(live) = &self.live else { return };
        let listed = match host::shared_data(&live.keys.workers) {
            Ok((value, _)) => Registry::decode(value.as_deref().unwrap_or_default()),
            Err(_) => return self.count_error(),
        };
        let notice = generation.to_string();
        let failed = listed
            .targets(now, live.queue)
            .filter(|&token| host::enqueue(token, notice.as_bytes()).is_err())
            .count();
        if failed > 0 {
            self.count_error();
        }
    }

    /// Applies a newer table another root context stored, and tracks its confirmation time.
    fn adopt_shared(&mut self) {
        let Some(live) = &self.live else { return };
        let keys = live.keys.clone();
        let rejected = live.rejected_generation;
        let state = match shared::read_state(&keys) {
            Ok((Some(state), _)) => state,
            Ok((None, _)) => return,
            Err(_) => return self.count_error(),
        };
        let applied = self.applied_generation();
        if state.generation == applied {
            self.confirmed_ms = state.confirmed_ms;
            return;
        }
        if state.generation < applied || rejected == Some(state.generation) {
            return;
        }
        let json = match shared::read_table(&keys) {
            Ok(Some(json)) => json,
            Ok(None) => return,
            Err(_) => return self.count_error(),
        };
        let compiled = parse_table(&json)
            .map_err(|e| e.to_string())
            .and_then(|t| self.compile(&t, self.config.response_metrics));
        match compiled {
            Ok(active) if active.table.generation() > applied => {
                self.install(active, state.confirmed_ms)
            }
            Ok(_) => {}
            Err(e) => {
                error!("shared table generation {} rejected: {e}", state.generation);
                if let Some(live) = &mut self.live {
                    live.rejected_generation = Some(state.generation);
                }
                self.count_error();
            }
        }
    }

    /// Takes or renews the lease, then starts a poll if this root context leads and one is due.
    fn poll_if_leading(&mut self, now: u64) {
        let applied = self.applied_generation();
        let Some(live) = &mut self.live else { return };
        if live.schedule.abandon_stuck(now, live.endpoint.timeout_ms) {
            live.token = None;
        }
        let (value, cas) = match host::shared_data(&live.keys.lease) {
            Ok(v) => v,
            Err(_) => {
                live.leading = false;
                return self.count_error();
            }
        };
        let was_leading = live.leading;
        live.leading = match lease::step(live.me, now, LEASE_TTL_MS, value.as_deref(), cas) {
            LeaseStep::Follow => false,
            LeaseStep::Claim { record, cas } => {
                let _ = host::set_shared_data(&live.keys.lease, record.as_bytes(), cas);
                false
            }
            LeaseStep::Renew { record, cas } => matches!(
                host::set_shared_data(&live.keys.lease, record.as_bytes(), cas),
                Ok(CasWrite::Written)
            ),
        };
        if live.leading && !was_leading {
            info!(
                "this thread now polls the controller ({}) as gateway {:?}",
                live.endpoint.cluster, live.node_id
            );
        }
        if !live.leading || !live.schedule.due(now) {
            return;
        }
        let path = poll::poll_path(&live.endpoint, applied);
        let generation = applied.to_string();
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", poll::poll_authority(&live.endpoint)),
            (GATEWAY_ID_HEADER, live.node_id.as_str()),
            (GATEWAY_GENERATION_HEADER, generation.as_str()),
        ];
        let timeout = Duration::from_millis(live.endpoint.timeout_ms.saturating_add(CALL_GRACE_MS));
        match proxy_wasm::hostcalls::dispatch_http_call(
            &live.endpoint.cluster,
            headers,
            None,
            vec![],
            timeout,
        ) {
            Ok(token) => {
                live.token = Some(token);
                live.schedule.started(now);
            }
            Err(status) => {
                let delay = live.schedule.failed(now);
                if live.failures == 0 {
                    warn!(
                        "cannot call controller cluster {:?} ({status:?}); retrying in {delay} ms",
                        live.endpoint.cluster
                    );
                }
                live.failures = live.failures.saturating_add(1);
                self.count_error();
            }
        }
    }

    /// Hands the counts the HTTP contexts kept to Envoy (see `RouteStats`).
    fn flush_counts(&mut self) {
        if self.metrics.flush() > 0 {
            self.count_error();
        }
    }

    fn record_gauges(&mut self, now: u64) {
        let generation = self.applied_generation();
        let age_s = now.saturating_sub(self.confirmed_ms) / 1000;
        match (self.metrics.generation(), self.metrics.age()) {
            (Ok(g), Ok(a)) => {
                let _ = host::record_metric(g, generation);
                let _ = host::record_metric(a, age_s);
            }
            _ => self.count_error(),
        }
    }

    /// Handles the controller's answer to a poll.
    fn poll_answered(&mut self, body_size: usize) -> Result<PollAnswer, String> {
        let now = now_ms().ok_or("no clock")?;
        let status = host::header_value(MapType::HttpCallResponseHeaders, ":status")
            .map_err(|e| e.to_string())?;
        let applied = self.applied_generation();
        let Some(live) = &self.live else {
            return Ok(PollAnswer::Unchanged);
        };
        let keys = live.keys.clone();
        match status.as_deref() {
            Some(b"304") => {
                shared::confirm(&keys, applied, now).map_err(|e| e.to_string())?;
                self.confirmed_ms = now;
                Ok(PollAnswer::Unchanged)
            }
            Some(b"200") => {
                let body = host::buffer(BufferType::HttpCallResponseBody, body_size)
                    .map_err(|e| e.to_string())?;
                let table = parse_table(&body).map_err(|e| format!("table rejected: {e}"))?;
                if table.generation <= applied {
                    shared::confirm(&keys, applied, now).map_err(|e| e.to_string())?;
                    self.confirmed_ms = now;
                    return Ok(PollAnswer::Unchanged);
                }
                let active = self
                    .compile(&table, self.config.response_metrics)
                    .map_err(|e| format!("table rejected: {e}"))?;
                let stored = shared::publish_table(&keys, table.generation, &body, now)
                    .map_err(|e| e.to_string())?;
                self.install(active, now);
                if stored {
                    self.notify_workers(table.generation, now);
                }
                Ok(PollAnswer::NewTable)
            }
            Some(other) => Err(format!(
                "controller answered HTTP {}",
                String::from_utf8_lossy(other)
            )),
            // Envoy calls back with no headers when the call failed (reset, timeout, no host).
            None => Err("controller unreachable or timed out".into()),
        }
    }
}

impl Context for VeerRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let result = self.poll_answered(body_size);
        let now = now_ms().unwrap_or(0);
        let Some(live) = &mut self.live else { return };
        if live.token == Some(token_id) {
            live.token = None;
        }
        match result {
            Ok(answer) => {
                if live.failures > 0 {
                    info!(
                        "controller reachable again after {} failed polls",
                        live.failures
                    );
                }
                live.failures = 0;
                live.schedule.succeeded(now, answer);
                // Not on the next tick: that would add up to a tick to every change published
                // while this one was in flight, or after a held poll ended in a 304. A poll
                // that is not due yet (pollMs after the last start) waits for a tick.
                self.poll_if_leading(now);
            }
            Err(e) => {
                let delay = live.schedule.failed(now);
                if live.failures == 0 {
                    warn!("poll of the controller failed: {e}; keeping generation {}, retrying in {delay} ms", self.active.as_ref().map_or(0, |a| a.table.generation()));
                }
                live.failures = live.failures.saturating_add(1);
                self.count_error();
            }
        }
    }

    fn on_done(&mut self) -> bool {
        self.flush_counts();
        if let Some(live) = &self.live {
            // Unlist this root context's queue: its notices would go nowhere. (An entry left
            // behind expires; the host keeps the queue itself until the VM goes.)
            if let (Some(token), Ok((Some(value), cas))) =
                (live.queue, host::shared_data(&live.keys.workers))
            {
                if let Some(next) = Registry::decode(&value).without(token) {
                    let _ =
                        host::set_shared_data(&live.keys.workers, next.encode().as_bytes(), cas);
                }
            }
            // Hand the lease back at once instead of making the next poller wait for expiry.
            if let Ok((Some(value), cas)) = host::shared_data(&live.keys.lease) {
                if lease::LeaseRecord::decode(&value).is_some_and(|r| r.owner == live.me) {
                    let _ = host::set_shared_data(&live.keys.lease, b"", cas);
                }
            }
        }
        true
    }
}

impl RootContext for VeerRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::buffer(BufferType::PluginConfiguration, usize::MAX) {
            Ok(bytes) => bytes,
            Err(e) => {
                error!("cannot read plugin configuration: {e}");
                return false;
            }
        };
        if let Err(e) = self.configure(&bytes) {
            error!("invalid plugin configuration: {e}");
            return false;
        }
        if self.controller.is_some() {
            // A reloaded plugin config starts from its own (usually empty) table. Adopt the
            // live table from shared data now, not on the first tick: requests that arrive
            // in between must not flap back to the config's table. Reading has no effects.
            self.ensure_live();
            self.adopt_shared();
        }
        let period = if self.controller.is_some() {
            FIRST_TICK_MS
        } else {
            TICK_MS
        };
        if let Err(e) = host::set_tick_period_ms(period) {
            error!("cannot start the table tick: {e}");
            return false;
        }
        self.tick_ms = period;
        true
    }

    fn on_tick(&mut self) {
        if !self.configured {
            return;
        }
        if self.tick_ms != TICK_MS && host::set_tick_period_ms(TICK_MS).is_ok() {
            self.tick_ms = TICK_MS;
        }
        self.flush_counts();
        let Some(now) = now_ms() else {
            return self.count_error();
        };
        if self.controller.is_some() {
            self.ensure_live();
            self.keep_listed(now);
            self.adopt_shared();
            self.poll_if_leading(now);
        }
        self.record_gauges(now);
    }

    /// A notice from the poller: a newer table is in shared data.
    fn on_queue_ready(&mut self, queue_id: u32) {
        for _ in 0..MAX_DRAIN {
            match host::dequeue(queue_id) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    self.count_error();
                    break;
                }
            }
        }
        if self.configured && self.controller.is_some() {
            self.adopt_shared();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let n = self.requests.get().wrapping_add(1);
        self.requests.set(n);
        Some(Box::new(Exchange::new(
            Rc::clone(&self.config),
            self.active.clone(),
            splitmix64(self.seed ^ n),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[cfg(test)]
mod tests {
    use super::splitmix64;

    /// The reference SplitMix64 (Vigna's `splitmix64.c`): its first output for state 0, and
    /// the first two for seed 1234567 (the second is the function at seed + the gamma).
    #[test]
    fn splitmix64_matches_the_reference_vectors() {
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(1_234_567), 6_457_827_717_110_365_317);
        assert_eq!(
            splitmix64(1_234_567u64.wrapping_add(0x9e37_79b9_7f4a_7c15)),
            3_203_168_211_198_807_973
        );
    }

    /// Consecutive counters (one request after another) must give unrelated entropy: on
    /// average half of the 64 bits differ, and every output bit is set about half the time.
    #[test]
    fn entropy_from_a_counter_is_spread() {
        let n = 10_000u64;
        let flipped: u64 = (0..n)
            .map(|i| u64::from((splitmix64(i) ^ splitmix64(i + 1)).count_ones()))
            .sum();
        // Binomial(64 n, 1/2): sigma = 4 sqrt(n) = 400 bits; 4 sigma is 1600.
        let mean_expected = 32 * n;
        assert!(
            flipped.abs_diff(mean_expected) <= 1_600,
            "{flipped} bits flipped over {n} steps, expected {mean_expected}"
        );
        for bit in 0..64 {
            let set = (0..n).filter(|&i| splitmix64(i) >> bit & 1 == 1).count() as u64;
            // Binomial(n, 1/2): sigma = 50; 5 sigma over 64 bits.
            assert!(
                set.abs_diff(n / 2) <= 250,
                "bit {bit} set {set} times in {n}"
            );
        }
    }
}
