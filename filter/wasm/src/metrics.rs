//! The filter's Envoy stats: their names, and the metric ids defined once per route and
//! cached, so the request path only passes an id to the host (no string formatting).
//!
//! Stat names carry their labels as `.<label>.<value>` segments, e.g.
//! `veer_requests_total.veer_route.test/podinfo.veer_variant.canary.veer_reason.weight`.
//! Envoy prefixes `wasmcustom.`; the bootstrap's `stats_config.stats_tags` regexes (see
//! METRICS.md and manifests/local/gateway.yaml) lift each segment into a tag, so
//! `/stats/prometheus` shows `veer_requests_total{veer_route="test/podinfo",...}`.

use crate::host::{self, HostResult, MetricType};
use std::collections::BTreeMap;
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
pub fn class_index(status: &[u8]) -> Option<usize> {
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

/// One route's metric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteStats {
    requests: [[u32; 5]; 2],
    responses: [[u32; 4]; 2],
    duration: [u32; 2],
}

impl RouteStats {
    fn define(token: &str) -> HostResult<RouteStats> {
        let mut stats = RouteStats {
            requests: [[0; 5]; 2],
            responses: [[0; 4]; 2],
            duration: [0; 2],
        };
        for v in VARIANTS {
            let vi = variant_index(v);
            for r in REASONS {
                stats.requests[vi][reason_index(r)] =
                    host::define_metric(MetricType::Counter, &requests_name(token, v, r))?;
            }
            for (ci, class) in CLASSES.iter().enumerate() {
                stats.responses[vi][ci] =
                    host::define_metric(MetricType::Counter, &responses_name(token, v, class))?;
            }
            stats.duration[vi] =
                host::define_metric(MetricType::Histogram, &duration_name(token, v))?;
        }
        Ok(stats)
    }

    pub fn request(&self, variant: Variant, reason: Reason) -> u32 {
        self.requests[variant_index(variant)][reason_index(reason)]
    }

    pub fn response(&self, variant: Variant, class: usize) -> Option<u32> {
        self.responses[variant_index(variant)].get(class).copied()
    }

    pub fn duration(&self, variant: Variant) -> u32 {
        self.duration[variant_index(variant)]
    }
}

/// The VM-wide metrics, defined on first use and kept for the VM's life. Envoy hands out a new
/// id on every `define_metric` call, so route metrics are cached by route token across table
/// generations rather than defined again on every change.
#[derive(Debug, Default)]
pub struct MetricIds {
    routes: BTreeMap<String, RouteStats>,
    generation: Option<u32>,
    age: Option<u32>,
    errors: Option<u32>,
}

impl MetricIds {
    pub fn route(&mut self, token: &str) -> HostResult<RouteStats> {
        if let Some(stats) = self.routes.get(token) {
            return Ok(*stats);
        }
        let stats = RouteStats::define(token)?;
        self.routes.insert(token.to_string(), stats);
        Ok(stats)
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
