//! The runner's own Prometheus metrics: per-canary gauges (weight, phase, failed checks,
//! iterations) read from the committed state at scrape time, and the pass duration
//! histogram and check result counter recorded as passes run. The table generation and
//! gateway gauges belong to the server (`veer_table_generation`, ...).
//!
//! The phase is a one-hot gauge, `veer_canary_phase{canary, phase}`: 1 for the current
//! phase and 0 for every other, so `veer_canary_phase{phase="Failed"} == 1` selects failed
//! canaries and a numeric code never needs decoding.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::{CheckKind, PassObservations, Phase};

/// Every phase, in the order the one-hot gauge lists them.
pub const PHASES: [Phase; 9] = [
    Phase::Initializing,
    Phase::Initialized,
    Phase::Waiting,
    Phase::Progressing,
    Phase::WaitingPromotion,
    Phase::Promoting,
    Phase::Finalising,
    Phase::Succeeded,
    Phase::Failed,
];

/// Bucket bounds of the pass duration, in seconds: a pass is a few queries and hook calls,
/// each bounded by its timeout (5s for queries, 10s by default for hooks).
const PASS_DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Labels = Vec<(&'static str, String)>;

/// One canary's gauges at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryGauges {
    /// `namespace/name`.
    pub canary: String,
    pub phase: Phase,
    pub weight: u32,
    pub failed_checks: u32,
    pub iterations: u32,
}

/// Where the gauges come from: a snapshot of every running canary.
pub trait GaugeSource: Send + Sync + 'static {
    fn gauges(&self) -> Vec<CanaryGauges>;
}

/// The metrics the runner records while passes run.
#[derive(Debug, Clone)]
pub struct RunnerMetrics {
    pass_duration: Family<Labels, Histogram>,
    checks: Family<Labels, Counter>,
    passes: Family<Labels, Counter>,
}

/// What became of a pass's transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// Saved and applied.
    Committed,
    /// Dropped: a command or a new spec changed the state while the pass ran; the pass
    /// runs again from the new state.
    Stale,
    /// Not taken: the state file could not be written.
    NotSaved,
}

impl PassOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PassOutcome::Committed => "committed",
            PassOutcome::Stale => "stale",
            PassOutcome::NotSaved => "not_saved",
        }
    }
}

impl RunnerMetrics {
    /// Registers the runner's metrics in `registry` (the process's one registry, which the
    /// server then extends and serves).
    pub fn register(registry: &mut Registry, source: Arc<dyn GaugeSource>) -> RunnerMetrics {
        let pass_duration: Family<Labels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(PASS_DURATION_BUCKETS));
        let checks = Family::<Labels, Counter>::default();
        let passes = Family::<Labels, Counter>::default();
        registry.register(
            "veer_analysis_pass_duration_seconds",
            "Time an analysis pass took to run its hooks and metric queries",
            pass_duration.clone(),
        );
        registry.register(
            "veer_analysis_checks",
            "Hook calls and metric queries run by analysis passes, by result (pass or fail)",
            checks.clone(),
        );
        registry.register(
            "veer_analysis_passes",
            "Analysis passes by outcome: committed, stale (dropped because a command or spec \
             change came first; re-run) or not_saved (the state file could not be written)",
            passes.clone(),
        );
        registry.register_collector(Box::new(GaugeCollector { source }));
        RunnerMetrics {
            pass_duration,
            checks,
            passes,
        }
    }

    /// Records one pass of `canary`: its duration and the result of every check it ran.
    pub fn observe_pass(&self, canary: &str, took: Duration, observations: &PassObservations) {
        self.pass_duration
            .get_or_create(&vec![("canary", canary.to_string())])
            .observe(took.as_secs_f64());
        for check in observations.results.iter().flat_map(|r| r.checks.iter()) {
            let kind = match check.kind {
                CheckKind::Metric => "metric".to_string(),
                CheckKind::Hook(t) => t.as_str().to_string(),
            };
            let result = if check.passed { "pass" } else { "fail" };
            self.checks
                .get_or_create(&vec![
                    ("canary", canary.to_string()),
                    ("kind", kind),
                    ("check", check.name.clone()),
                    ("result", result.to_string()),
                ])
                .inc();
        }
    }

    /// Counts a pass by what became of its transition.
    pub fn count_pass(&self, canary: &str, outcome: PassOutcome) {
        self.passes
            .get_or_create(&vec![
                ("canary", canary.to_string()),
                ("outcome", outcome.as_str().to_string()),
            ])
            .inc();
    }

    /// Drops the series of a canary that is no longer loaded.
    pub fn forget(&self, canary: &str) {
        self.pass_duration
            .remove(&vec![("canary", canary.to_string())]);
        // Check series carry more labels; they are few per canary and are counters, so a
        // removed canary's totals stay until restart rather than being searched for here.
    }
}

/// Encodes the gauges from the committed state at scrape time, so `/metrics` can never
/// disagree with `/v1/canaries`.
struct GaugeCollector {
    source: Arc<dyn GaugeSource>,
}

impl std::fmt::Debug for GaugeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GaugeCollector")
    }
}

fn gauge(v: u32) -> ConstGauge<i64> {
    ConstGauge::new(i64::from(v))
}

impl Collector for GaugeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.source.gauges();
        type Pick = fn(&CanaryGauges) -> u32;
        let plain: [(&str, &str, Pick); 3] = [
            (
                "veer_canary_weight",
                "Canary traffic weight in percent",
                |r| r.weight,
            ),
            (
                "veer_canary_failed_checks",
                "Failed checks in the current run (cumulative; rollback at the threshold)",
                |r| r.failed_checks,
            ),
            (
                "veer_canary_iterations",
                "Passed iterations in the current A/B or Blue/Green run",
                |r| r.iterations,
            ),
        ];
        for (name, help, pick) in plain {
            let sample = gauge(0);
            let mut family = encoder.encode_descriptor(name, help, None, sample.metric_type())?;
            for row in &rows {
                let labels = [("canary", row.canary.as_str())];
                gauge(pick(row)).encode(family.encode_family(&labels)?)?;
            }
        }
        let sample = gauge(0);
        let mut family = encoder.encode_descriptor(
            "veer_canary_phase",
            "Canary phase, one-hot: 1 for the current phase, 0 for the others",
            None,
            sample.metric_type(),
        )?;
        for row in &rows {
            for phase in PHASES {
                let labels = [("canary", row.canary.as_str()), ("phase", phase.as_str())];
                gauge(u32::from(row.phase == phase)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::webhooks::HookType;
    use crate::engine::{CheckResult, PassStep, StepResult};

    struct Fixed(Vec<CanaryGauges>);

    impl GaugeSource for Fixed {
        fn gauges(&self) -> Vec<CanaryGauges> {
            self.0.clone()
        }
    }

    #[test]
    fn gauges_counters_and_histogram_are_encoded() {
        let mut registry = Registry::default();
        let metrics = RunnerMetrics::register(
            &mut registry,
            Arc::new(Fixed(vec![CanaryGauges {
                canary: "test/podinfo".into(),
                phase: Phase::Progressing,
                weight: 30,
                failed_checks: 1,
                iterations: 0,
            }])),
        );
        let observations = PassObservations {
            results: vec![StepResult {
                step: PassStep::Hooks(HookType::Rollout),
                ok: false,
                checks: vec![CheckResult {
                    name: "load-test".into(),
                    kind: CheckKind::Hook(HookType::Rollout),
                    passed: false,
                    value: None,
                    message: "boom".into(),
                }],
            }],
        };
        metrics.observe_pass("test/podinfo", Duration::from_millis(30), &observations);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("veer_canary_weight{canary=\"test/podinfo\"} 30"),
            "{text}"
        );
        assert!(text.contains("veer_canary_failed_checks{canary=\"test/podinfo\"} 1"));
        assert!(text.contains("veer_canary_phase{canary=\"test/podinfo\",phase=\"Progressing\"} 1"));
        assert!(text.contains("veer_canary_phase{canary=\"test/podinfo\",phase=\"Failed\"} 0"));
        assert!(text.contains(
            "veer_analysis_checks_total{canary=\"test/podinfo\",kind=\"rollout\",check=\"load-test\",result=\"fail\"} 1"
        ), "{text}");
        assert!(
            text.contains(
                "veer_analysis_pass_duration_seconds_bucket{le=\"0.05\",canary=\"test/podinfo\"} 1"
            ),
            "{text}"
        );
    }
}
