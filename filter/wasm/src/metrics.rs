//! The filter's Envoy stats: their names, the metric ids defined once per route and cached,
//! and the counts each worker keeps until its tick hands them to Envoy, so the request path
//! makes no host call and formats no string to count.
//!
//! Stat names carry their labels as `.<label>.<value>` segments, e.g.
//! `veer_requests_total.veer_route.test/podinfo.veer_variant.canary.veer_reason.weight`.
//! Envoy prefixes `wasmcustom.`; the bootstrap's `stats_config.stats_tags` regexes (see
//! METRICS.md and manifests/local/gateway.yaml) lift each segment into a tag, so
//! `/stats/prometheus` shows `veer_requests_total{veer_route="test/podinfo",...}`.

use crate::host::{self, HostResult, MetricType};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use veer_core::{Reason, Variant};

pub const REQUESTS: &str = "veer_requests_total";
pub const RESPONSES: &str = "veer_responses_total";
pub const DURATION: &str = "veer_request_duration_ms";
pub const TABLE_GENERATION: &str = "veer_table_generation";
pub const TABLE_AGE: &str = "veer_table_age_seconds";
pub const ERRORS: &str = "veer_errors_total";

const VARIANTS: [Variant; 2] = [Variant::Primary, Variant::Canary];
const REASONS: [Reason; 5] = [
    Reason::Override,
    Reason::Unmatched,
    Reason::Key,
    Reason::Cookie,
    Reason::Weight,
];
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

fn variant_index(v: Variant) -> usize {
    match v {
        Variant::Primary => 0,
        Variant::Canary => 1,
    }
}

fn reason_index(r: Reason) -> usize {
    match r {
        Reason::Override => 0,
        Reason::Unmatched => 1,
        Reason::Key => 2,
        Reason::Cookie => 3,
        Reason::Weight => 4,
    }
}

/// `2xx`..`5xx` index of an HTTP status; other codes (1xx, garbage) are not counted.
fn class_index(status: &[u8]) -> Option<usize> {
    match status {
        [b'2', _, _] => Some(0),
        [b'3', _, _] => Some(1),
        [b'4', _, _] => Some(2),
        [b'5', _, _] => Some(3),
        _ => None,
    }
}

pub fn requests_name(token: &str, variant: Variant, reason: Reason) -> String {
    format!(
        "{REQUESTS}.veer_route.{token}.veer_variant.{}.veer_reason.{}",
        variant.as_str(),
        reason.as_str()
    )
}

pub fn responses_name(token: &str, variant: Variant, class: &str) -> String {
    format!(
        "{RESPONSES}.veer_route.{token}.veer_variant.{}.veer_class.{class}",
        variant.as_str()
    )
}

pub fn duration_name(token: &str, variant: Variant) -> String {
    format!(
        "{DURATION}.veer_route.{token}.veer_variant.{}",
        variant.as_str()
    )
}

/// One route's metrics: the ids Envoy gave them, and the counts not yet handed to Envoy.
///
/// Counters are counted here and handed over in `flush`, on the root context's tick, instead
/// of one `increment_metric` host call per request: a host call is the dearest thing a V8
/// filter does, and Envoy's stats are only read at its 5 s flush anyway. The histogram cannot
/// be batched (the ABI records one value per call), so it is still recorded per response.
#[derive(Debug, Default)]
pub struct RouteStats {
    requests: [[u32; 5]; 2],
    /// `None` with `responseMetrics: false`: those stats are not even defined.
    responses: Option<ResponseIds>,
    pending_requests: [[Cell<u64>; 5]; 2],
    pending_responses: [[Cell<u64>; 4]; 2],
    /// Whether anything is pending, so a tick skips idle routes without reading every cell.
    dirty: Cell<bool>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ResponseIds {
    classes: [[u32; 4]; 2],
    duration: [u32; 2],
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get().saturating_add(1));
}

/// Hands one pending count to Envoy; it stays pending if the host refuses it.
fn hand_over(id: u32, pending: &Cell<u64>) -> HostResult<()> {
    let n = pending.get();
    if n == 0 {
        return Ok(());
    }
    host::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX))?;
    pending.set(0);
    Ok(())
}

impl RouteStats {
    fn define(token: &str, responses: bool) -> HostResult<RouteStats> {
        let mut stats = RouteStats::default();
        let mut ids = ResponseIds::default();
        for v in VARIANTS {
            let vi = variant_index(v);
            for r in REASONS {
                stats.requests[vi][reason_index(r)] =
                    host::define_metric(MetricType::Counter, &requests_name(token, v, r))?;
            }
            if responses {
                for (ci, class) in CLASSES.iter().enumerate() {
                    ids.classes[vi][ci] =
                        host::define_metric(MetricType::Counter, &responses_name(token, v, class))?;
                }
                ids.duration[vi] =
                    host::define_metric(MetricType::Histogram, &duration_name(token, v))?;
            }
        }
        stats.responses = responses.then_some(ids);
        Ok(stats)
    }

    pub fn count_request(&self, variant: Variant, reason: Reason) {
        bump(&self.pending_requests[variant_index(variant)][reason_index(reason)]);
        self.dirty.set(true);
    }

    /// Whether this route counts and times responses (`responseMetrics`).
    pub fn measures_responses(&self) -> bool {
        self.responses.is_some()
    }

    /// Counts a response by the class of its `:status`; 1xx and malformed statuses are not
    /// counted.
    pub fn count_response(&self, variant: Variant, status: &[u8]) {
        let Some(class) = class_index(status).filter(|_| self.measures_responses()) else {
            return;
        };
        if let Some(cell) = self.pending_responses[variant_index(variant)].get(class) {
            bump(cell);
            self.dirty.set(true);
        }
    }

    /// The duration histogram's id, if this route measures responses.
    pub fn duration(&self, variant: Variant) -> Option<u32> {
        self.responses
            .map(|ids| ids.duration[variant_index(variant)])
    }

    /// Hands every pending count to Envoy. On a host error the rest stays pending for the
    /// next tick, so a count is late rather than lost.
    pub fn flush(&self) -> HostResult<()> {
        if !self.dirty.get() {
            return Ok(());
        }
        for vi in 0..VARIANTS.len() {
            for (id, pending) in self.requests[vi].iter().zip(&self.pending_requests[vi]) {
                hand_over(*id, pending)?;
            }
            if let Some(ids) = &self.responses {
                for (id, pending) in ids.classes[vi].iter().zip(&self.pending_responses[vi]) {
                    hand_over(*id, pending)?;
                }
            }
        }
        self.dirty.set(false);
        Ok(())
    }

    #[cfg(test)]
    fn pending_request(&self, variant: Variant, reason: Reason) -> u64 {
        self.pending_requests[variant_index(variant)][reason_index(reason)].get()
    }
}

/// The VM-wide metrics, defined on first use and kept for the VM's life. Envoy hands out a new
/// id on every `define_metric` call, so route metrics are cached by route token across table
/// generations rather than defined again on every change.
#[derive(Debug, Default)]
pub struct MetricIds {
    /// By route token and whether responses are measured: a configuration that turns
    /// `responseMetrics` on or off gets its own set, and the old one is still flushed.
    routes: BTreeMap<(String, bool), Rc<RouteStats>>,
    generation: Option<u32>,
    age: Option<u32>,
    errors: Option<u32>,
}

impl MetricIds {
    pub fn route(&mut self, token: &str, responses: bool) -> HostResult<Rc<RouteStats>> {
        let key = (token.to_string(), responses);
        if let Some(stats) = self.routes.get(&key) {
            return Ok(Rc::clone(stats));
        }
        let stats = Rc::new(RouteStats::define(token, responses)?);
        self.routes.insert(key, Rc::clone(&stats));
        Ok(stats)
    }

    /// Hands every route's pending counts to Envoy, including routes of tables no longer
    /// applied (requests in flight may still count on them). Returns how many routes failed.
    pub fn flush(&self) -> usize {
        self.routes.values().filter(|r| r.flush().is_err()).count()
    }

    fn global(slot: &mut Option<u32>, kind: MetricType, name: &str) -> HostResult<u32> {
        if let Some(id) = *slot {
            return Ok(id);
        }
        let id = host::define_metric(kind, name)?;
        *slot = Some(id);
        Ok(id)
    }

    pub fn generation(&mut self) -> HostResult<u32> {
        MetricIds::global(&mut self.generation, MetricType::Gauge, TABLE_GENERATION)
    }

    pub fn age(&mut self) -> HostResult<u32> {
        MetricIds::global(&mut self.age, MetricType::Gauge, TABLE_AGE)
    }

    pub fn errors(&mut self) -> HostResult<u32> {
        MetricIds::global(&mut self.errors, MetricType::Counter, ERRORS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_every_label_as_a_segment() {
        assert_eq!(
            requests_name("test/podinfo", Variant::Canary, Reason::Weight),
            "veer_requests_total.veer_route.test/podinfo.veer_variant.canary.veer_reason.weight"
        );
        assert_eq!(
            responses_name("a", Variant::Primary, "5xx"),
            "veer_responses_total.veer_route.a.veer_variant.primary.veer_class.5xx"
        );
        assert_eq!(
            duration_name("a", Variant::Canary),
            "veer_request_duration_ms.veer_route.a.veer_variant.canary"
        );
    }

    #[test]
    fn counts_wait_in_the_worker_until_flushed() {
        let stats = RouteStats {
            responses: Some(ResponseIds::default()),
            ..RouteStats::default()
        };
        assert!(!stats.dirty.get());
        stats.count_request(Variant::Canary, Reason::Cookie);
        stats.count_request(Variant::Canary, Reason::Cookie);
        stats.count_response(Variant::Primary, b"503");
        stats.count_response(Variant::Primary, b"101");
        assert_eq!(stats.pending_request(Variant::Canary, Reason::Cookie), 2);
        assert_eq!(stats.pending_request(Variant::Primary, Reason::Cookie), 0);
        assert_eq!(stats.pending_responses[0][3].get(), 1);
        assert_eq!(
            stats.pending_responses[0]
                .iter()
                .map(Cell::get)
                .sum::<u64>(),
            1
        );
        assert!(stats.dirty.get());
        // Outside wasm every host call fails: the counts must stay pending, not vanish.
        assert!(stats.flush().is_err());
        assert_eq!(stats.pending_request(Variant::Canary, Reason::Cookie), 2);
        assert!(stats.dirty.get());
    }

    #[test]
    fn an_idle_route_flushes_without_host_calls() {
        // Nothing pending: no host call is made, so even outside wasm the flush succeeds.
        assert!(RouteStats::default().flush().is_ok());
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(b"200"), Some(0));
        assert_eq!(class_index(b"304"), Some(1));
        assert_eq!(class_index(b"404"), Some(2));
        assert_eq!(class_index(b"503"), Some(3));
        assert_eq!(class_index(b"101"), None);
        assert_eq!(class_index(b"20"), None);
        assert_eq!(class_index(b""), None);
    }
}
