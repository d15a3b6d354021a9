#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The corpus in tests/data/flagger-corpus: Canaries written in the styles of Flagger's docs
//! and e2e scripts (Istio, Linkerd, Gateway API, NGINX and Kubernetes providers; canary, A/B,
//! Blue/Green, mirroring, session affinity; every webhook type; MetricTemplates with
//! variables, in files of their own; the deprecated `threshold`). The whole directory loads
//! at once, with no error and no field taken for a typo, and `veer explain` gives each one
//! the timeline Flagger's docs describe.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use veer_controller::checks::webhooks::HookType;
use veer_controller::cli::explain::{explain_canary, ExplainOptions};
use veer_controller::spec::{
    load_paths, LoadOptions, MetricSource, Severity, SpecProblem, SpecSet, Strategy,
};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flagger-corpus")
}

fn corpus() -> SpecSet {
    load_paths(&[corpus_dir()], &LoadOptions::default())
}

/// The lines `veer explain` must give each canary: what Flagger's docs say it does.
const EXPECTED: &[(&str, &[&str])] = &[
    ("test/istio-canary", &[
        "Canary: the canary's share rises by stepWeight 10% per passing analysis until it reaches maxWeight 50%.",
        "1m  pass  2: pre-rollout hook acceptance-test; no metrics at weight 0 → weight 0 → 10",
        "2m  pass  3: rollout hook load-test; metrics request-success-rate, request-duration → weight 10 → 20",
        "6m  pass  7: rollout hook load-test; metrics request-success-rate, request-duration → weight 50 ≥ maxWeight 50: one more analysis passed; Promoting",
        "Every check failing from the start: checks fail in passes 2, 3, 4, 5, 6; pass 7 rolls back at 6m",
        "Progress deadline 1m (progressDeadlineSeconds): it bounds readiness",
    ]),
    ("test/podinfo-chart", &[
        "request-success-rate: passes when value >= 99 (%)",
        "request-duration: passes when value <= 500 (ms)",
        "spec.analysis.metrics[0].threshold: deprecated; read as Flagger reads it, a minimum for request-success-rate",
        "15s  pass  2: no pre-rollout hooks; no metrics at weight 0 → weight 0 → 5",
        "2m45s  pass 12: rollout hook load-test; metrics request-success-rate, request-duration → weight 50 ≥ maxWeight 50",
    ]),
    ("test/abtest", &[
        "A/B testing: requests matching analysis.match all go to the canary for 10 passing iterations; the rest stay on the primary.",
        "1m  pass  2: no pre-rollout hooks; no metrics at weight 0 → weight 0 → 100 for matching requests; iteration 1/10",
        "10m  pass 11: rollout hook load-test; metrics request-success-rate, request-duration → iteration 10/10",
        "11m  pass 12: rollout hook load-test; metrics request-success-rate, request-duration → 10 iterations done; Promoting",
        "Only requests matching one of 2 analysis.match rules take part",
    ]),
    ("test/bg-mirror", &[
        "Blue/Green: 10 passing iterations with the canary tested by its hooks and mirrored traffic, then all traffic switches to it.",
        "pass  2: no pre-rollout hooks; no metrics at weight 0 → mirroring 100% of primary traffic to the canary, weight 0; iteration 1/10",
        "11m  pass 12: rollout hook load-test; metrics request-success-rate, request-duration → mirroring stops, weight 0 → 100",
        "12m  pass 13: rollout hook load-test; metrics request-success-rate, request-duration → one more analysis passed after 10 iterations; Promoting",
    ]),
    ("test/canary-mirror", &[
        "30s  pass  2: no pre-rollout hooks; no metrics at weight 0 → mirroring 50% of primary traffic to the canary, weight 0",
        "1m  pass  3: metric request-success-rate → mirroring stops, weight 0 → 20",
        "2m  pass  5: metric request-success-rate → weight 40 → 60",
        "mirror: the first step only mirrors 50% of requests to the canary (responses discarded)",
    ]),
    ("test/sticky", &[
        "Session affinity: cookie flagger-cookie (Max-Age 21600s) keeps each user's bucket for the run",
        "1m30s  pass  7: rollout hook load-test; metric request-success-rate → weight 50 ≥ maxWeight 50",
    ]),
    ("test/steps", &[
        "Canary: the canary's share follows stepWeights 1% → 2% → 10% → 80%.",
        "45s  pass  4: metric request-success-rate → weight 2 → 10",
        "1m  pass  5: metric request-success-rate → weight 10 → 80",
        "1m15s  pass  6: metric request-success-rate → weight 80 ≥ maxWeight 80: one more analysis passed; Promoting",
    ]),
    ("test/promotion-steps", &[
        "4m  pass  5: promotion → weight 50 → 25 (stepWeightPromotion)",
        "5m  pass  6: promotion → weight 25 → 0: all traffic on the primary; Finalising",
    ]),
    ("test/templated", &[
        "404s percentage: passes when value <= 5; window 1m (MetricTemplate istio-system/not-found-percentage at http://prometheus.istio-system:9090)",
        "p95 latency: passes when value <= 300; window 1m (MetricTemplate istio-system/latency-quantile at http://prometheus.istio-system:9090)",
        "        0.95,",
        "destination_workload=\"templated\"",
        "2m  pass  3: metrics request-success-rate, 404s percentage, p95 latency → weight 10 → 20",
    ]),
    ("test/gated", &[
        "0s  pass  1: confirm-rollout hook start gate → the run starts: Progressing at weight 0",
        "1m  pass  2: rollback hook rollback gate (a 2xx answer rolls back); pre-rollout hook helm test; confirm-traffic-increase hook traffic increase gate; no metrics at weight 0 → confirm-traffic-increase approves; weight 0 → 10",
        "confirm-promotion hook promotion gate → weight 30 ≥ maxWeight 30: one more analysis passed; confirm-promotion approves; Promoting",
        "6m  pass  7: in-flight requests drain → Succeeded; post-rollout hooks notify",
        "confirm-rollout start gate → http://flagger-loadtester.test/gate/approve (timeout 10s, 5 retries with backoff, up to 1m31s in all): before a run starts",
        "event send to Slack → https://event-receiver.notifications/slack (timeout 10s, 3 retries with backoff, up to 47s in all, certificate not verified (disableTLS)): receives every event.",
        "A confirm-traffic-increase refusal pauses the run at its weight, asked again every 1m",
        "Any pass may also roll back at once: the rollback hooks (rollback gate) are called first in every pass",
        "In WaitingPromotion there is no deadline",
    ]),
    ("test/skipped", &[
        "skipAnalysis: as in Flagger, a new revision starts a run, and the next pass promotes it with no metrics and no rollout hooks (in Kubernetes mode, once the canary is ready). Hooks that still run: post-rollout (notify). Hooks not called: rollout (load-test). Metrics not checked: request-success-rate.",
        "0s  pass  1: no confirm-rollout hooks → the run starts: Progressing at weight 0; skipAnalysis: promoted at the next pass",
        "15s  pass  2: skipAnalysis (Kubernetes mode: once the canary is ready): no metrics, no rollout hooks → the primary takes the new revision; Succeeded; post-rollout hooks notify",
        "skipAnalysis: no check runs and no rollback hook is called, so nothing fails this canary",
    ]),
    ("test/linkerd-canary", &[
        "One pass every 10s (analysis.interval 5s raised to the 10s floor, Flagger's)",
        "spec.analysis.interval: 5s is below the 10s floor: passes run every 10s (as Flagger does",
        "spec.provider: \"linkerd\": veer does not drive this provider",
        "10s  pass  2: pre-rollout hook acceptance-test; no metrics at weight 0 → weight 0 → 10",
        "1m  pass  7: rollout hook load-test; metrics request-success-rate, request-duration → weight 50 ≥ maxWeight 50",
    ]),
    ("test/linkerd-steps", &[
        "Canary: the canary's share follows stepWeights 5% → 10% → 15% → 20% → 25% → 35% → 45% → 60% → 75%.",
        "error-rate: passes when value <= 1; window 30s (MetricTemplate flagger-system/error-rate)",
        "envoy_cluster_name=~\"test_linkerd-steps-canary_[0-9a-zA-Z-]+\"",
        "2m30s  pass 11: metrics error-rate, latency → weight 75 ≥ maxWeight 75",
    ]),
    ("test/gw-canary", &[
        "15s  pass  2: pre-rollout hook smoke-test; no metrics at weight 0 → weight 0 → 10",
        "1m30s  pass  7: rollout hook load-test; metrics error-rate, latency → weight 50 ≥ maxWeight 50",
        "Gateway API: an HTTPRoute attached to the Gateways istio-ingress/gateway.",
    ]),
    ("test/gw-ab", &[
        "A/B testing: requests matching analysis.match all go to the canary for 5 passing iterations",
        "15s  pass  2: no pre-rollout hooks; no metrics at weight 0 → weight 0 → 100 for matching requests; iteration 1/5",
        "1m30s  pass  7: rollout hook load-test; metric error-rate → 5 iterations done; Promoting",
    ]),
    ("test/gw-bg", &[
        "Blue/Green: 5 passing iterations with the canary tested by its hooks, then all traffic switches to it.",
        "1m15s  pass  6: metric error-rate → iteration 5/5",
        "1m30s  pass  7: metric error-rate → weight 0 → 100",
        "1m45s  pass  8: metric error-rate → one more analysis passed after 5 iterations; Promoting",
    ]),
    ("test/gw-sticky", &[
        "Session affinity: cookie canary-flagger-cookie (Max-Age 7200s)",
        "spec.analysis.sessionAffinity.primaryCookieName: accepted but not used by veer (not needed",
    ]),
    ("test/nginx-canary", &[
        "ingress=\"nginx-canary-ingress\"",
        "spec.ingressRef: \"nginx-canary-ingress\" is used only as {{ ingress }} in metric queries",
        "10s  pass  2: pre-rollout hook acceptance-test; no metrics at weight 0 → weight 0 → 5",
        "1m50s  pass 12: rollout hook load-test; metric nginx request success rate → weight 50 ≥ maxWeight 50",
    ]),
    ("test/nginx-ab", &[
        "A/B testing: requests matching analysis.match all go to the canary for 10 passing iterations",
        "11m  pass 12: rollout hook load-test; metric request-success-rate → 10 iterations done; Promoting",
    ]),
    ("test/k8s-bg", &[
        "Blue/Green without traffic routing (provider kubernetes, as in Flagger): 10 passing iterations test the canary through its own Service, k8s-bg-canary",
        "provider kubernetes: the route keeps weight 0 for the whole run",
        "30s  pass  2: pre-rollout hook smoke-test; no metrics at weight 0 → iteration 1/10",
        "5m30s  pass 12: rollout hook load-test; metrics request-success-rate, request-duration → 10 iterations done; still no traffic on the canary (provider kubernetes): one more analysis, then promotion",
        "6m  pass 13: rollout hook load-test; metrics request-success-rate, request-duration → one more analysis passed after 10 iterations; Promoting",
        "6m30s  pass 14: promotion → no canary traffic to move back: the primary serves the new revision; Finalising",
    ]),
    ("test/k8s-steps", &[
        "spec.analysis.iterations: not set: provider kubernetes has no progressive traffic, so this is a Blue/Green run of 10 iterations, as Flagger sets (stepWeight, stepWeights and maxWeight are ignored)",
        "2m30s  pass 11: rollout hook load-test; metric request-success-rate → iteration 10/10",
    ]),
    ("test/contour-canary", &[
        "error-rate: passes when value <= 1; window 1m (MetricTemplate flagger-system/error-rate)",
        "latency: passes when value <= 0.5; window 30s (MetricTemplate flagger-system/latency)",
        "1m  pass  5: rollout hook load-test; metrics error-rate, latency → weight 30 ≥ maxWeight 30",
    ]),
    ("test/traefik-canary", &[
        "error-rate: passes when value <= 1; window 1m (inline query)",
        "service=~\"test-traefik-canary-canary-.*\"",
        "1m  pass  7: metric error-rate → weight 50 ≥ maxWeight 50",
    ]),
];

fn explained(set: &SpecSet, key: &str) -> String {
    let spec = set
        .canaries
        .iter()
        .find(|c| c.key() == key)
        .unwrap_or_else(|| panic!("{key} is not in the corpus"));
    let warnings: Vec<&SpecProblem> = set.problems_of(&spec.source).collect();
    explain_canary(spec, &warnings, &ExplainOptions::default())
}

#[test]
fn every_canary_of_the_corpus_loads_with_no_error_and_no_field_taken_for_a_typo() {
    let set = corpus();
    let errors: Vec<String> = set.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let canary_files = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l == "kind: Canary"))
        })
        .count();
    assert!(canary_files >= 20, "only {canary_files} Canary files");
    assert_eq!(set.canaries.len(), canary_files);
    // Every field in the corpus is one Flagger has: none may be called unknown.
    let unknown: Vec<String> = set
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Warning && p.message.contains("unknown field"))
        .map(ToString::to_string)
        .collect();
    assert!(unknown.is_empty(), "{unknown:#?}");
}

#[test]
fn explain_gives_each_canary_the_timeline_flaggers_docs_describe() {
    let set = corpus();
    let keys: BTreeSet<String> = set.canaries.iter().map(|c| c.key()).collect();
    let pinned: BTreeSet<String> = EXPECTED.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(keys, pinned, "every canary of the corpus has pinned lines");
    let mut missing = Vec::new();
    for (key, lines) in EXPECTED {
        let out = explained(&set, key);
        for line in *lines {
            if !out.contains(line) {
                missing.push(format!("{key}: {line:?}\n--- explain ---\n{out}"));
            }
        }
        // A timeline that ends: every canary of the corpus is promoted when checks pass.
        assert!(out.contains("Earliest promotion: "), "{key}:\n{out}");
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The corpus covers what the issue lists, so it cannot shrink unnoticed.
#[test]
fn the_corpus_covers_the_providers_strategies_and_features() {
    let set = corpus();
    let providers: BTreeSet<String> = set
        .canaries
        .iter()
        .map(|c| c.provider.clone().unwrap_or_else(|| "istio".into()))
        .collect();
    for p in ["istio", "linkerd", "gatewayapi:v1", "nginx", "kubernetes"] {
        assert!(providers.contains(p), "no {p} canary: {providers:?}");
    }
    let strategies: BTreeSet<&str> = set
        .canaries
        .iter()
        .map(|c| match c.strategy() {
            Strategy::Canary(_) => "canary",
            Strategy::ABTesting { .. } => "ab",
            Strategy::BlueGreen {
                switches_traffic: true,
                ..
            } => "blue-green",
            Strategy::BlueGreen {
                switches_traffic: false,
                ..
            } => "blue-green without traffic",
        })
        .collect();
    assert_eq!(strategies.len(), 4, "{strategies:?}");
    let any = |f: &dyn Fn(&veer_controller::spec::CanarySpec) -> bool| set.canaries.iter().any(f);
    assert!(any(&|c| c.analysis.mirror && c.analysis.iterations > 0));
    assert!(any(&|c| c.analysis.mirror && c.analysis.iterations == 0));
    assert!(any(&|c| c.analysis.session_affinity.is_some()));
    assert!(any(&|c| c.skip_analysis));
    assert!(any(&|c| c.analysis.step_weight_promotion > 0));
    assert!(any(&|c| !c.analysis.step_weights.is_empty()));
    for t in HookType::ALL {
        assert!(any(&|c| !c.hooks(t).is_empty()), "no {t} webhook");
    }
    assert!(any(&|c| c.analysis.metrics.iter().any(|m| matches!(
        m.source,
        MetricSource::Template { .. }
    ) && !m
        .template_variables
        .is_empty())));
    assert!(any(&|c| c
        .analysis
        .metrics
        .iter()
        .any(|m| matches!(m.source, MetricSource::Query(_)))));
    // Templates live in files of their own, so they resolve across files.
    assert!(set.templates.iter().all(|t| t
        .source
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("templates-")));
    // The deprecated threshold appears, in each of its three meanings.
    let deprecated = set
        .problems
        .iter()
        .filter(|p| {
            p.message
                .starts_with("deprecated; read as Flagger reads it")
        })
        .map(|p| p.message.clone())
        .collect::<Vec<_>>();
    for meaning in [
        "a minimum for request-success-rate",
        "a maximum for request-duration",
        "a maximum for a custom metric",
    ] {
        assert!(
            deprecated.iter().any(|m| m.contains(meaning)),
            "{meaning}: {deprecated:#?}"
        );
    }
}
