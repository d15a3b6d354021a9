#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `veer explain`: the seed's full output against a golden file, plus assertions on the
//! lines that matter so a wrong golden cannot be blessed silently. To regenerate the golden
//! file run `VEER_BLESS=1 cargo test -p veer-controller --test explain`: that run writes the
//! file and fails on purpose (a blessing run proves nothing), so review the diff and run again
//! without the variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use veer_controller::cli::explain::{explain, format_duration, simulate, ExplainOptions, Script};
use veer_controller::spec::{load_texts, LoadOptions, SpecSet};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The seed, named relative so the output does not depend on the checkout's path.
fn seed_set() -> SpecSet {
    let text = std::fs::read_to_string(data("seed-canary.yaml")).unwrap();
    load_texts(
        &[(PathBuf::from("seed-canary.yaml"), text)],
        &LoadOptions::default(),
    )
}

fn seed_explained() -> String {
    explain(&seed_set(), &ExplainOptions::default())
}

#[test]
fn seed_matches_the_golden_output() {
    let actual = seed_explained();
    let golden = data("seed.explain.txt");
    if std::env::var_os("VEER_BLESS").is_some() {
        std::fs::write(&golden, &actual).unwrap();
        // Comparing the file with what was just written into it would always pass.
        panic!(
            "VEER_BLESS: wrote {}; review the diff (git diff) and run again without VEER_BLESS",
            golden.display()
        );
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; create it with VEER_BLESS=1 cargo test -p veer-controller --test explain",
            golden.display()
        )
    });
    assert!(
        actual == expected,
        "veer explain output changed; if intended, re-bless with VEER_BLESS=1.\n--- actual ---\n{actual}"
    );
}

#[test]
fn seed_timeline_says_the_weights_and_phases_in_order() {
    let out = seed_explained();
    let timeline: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Timeline"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    // What Flagger's docs say of these values (stepWeight 10, maxWeight 50, interval 1m,
    // a pre-rollout and a rollout hook): the first pass only starts the run; the pre-rollout
    // hook runs once at weight 0, before any traffic; every later pass runs the rollout hook
    // then the metrics and, if they pass, raises the weight one step; at maxWeight one more
    // analysis must pass before promotion; promotion routes all traffic back to the (now
    // new) primary, then the run finalises and succeeds. Each line is pinned whole.
    let analysis = "rollout hook load-test; metrics request-success-rate, request-duration";
    let expect = [
        "0s  pass  1: no confirm-rollout hooks → the run starts: Progressing at weight 0".to_string(),
        "1m  pass  2: pre-rollout hook acceptance-test; no metrics at weight 0 → weight 0 → 10".to_string(),
        format!("2m  pass  3: {analysis} → weight 10 → 20"),
        format!("3m  pass  4: {analysis} → weight 20 → 30"),
        format!("4m  pass  5: {analysis} → weight 30 → 40"),
        format!("5m  pass  6: {analysis} → weight 40 → 50"),
        format!("6m  pass  7: {analysis} → weight 50 ≥ maxWeight 50: one more analysis passed; Promoting: the primary takes the new revision"),
        "7m  pass  8: promotion → weight 50 → 0: all traffic on the primary; Finalising".to_string(),
        "8m  pass  9: in-flight requests drain → Succeeded; post-rollout hooks: none".to_string(),
    ];
    let got: Vec<&str> = timeline.iter().map(|l| l.trim_start()).collect();
    assert_eq!(got, expect, "{out}");
    assert!(out.contains(
        "Earliest promotion: 6m after the new revision (pass 7); all traffic on the new primary at 7m; Succeeded at 8m."
    ));
}

#[test]
fn seed_worst_case_rollback_is_stated() {
    let out = seed_explained();
    // Failing from the pre-rollout pass: passes 2, 3, 4 fail, pass 5 rolls back at 4m.
    assert!(out.contains(
        "Every check failing from the start: checks fail in passes 2, 3, 4; pass 5 rolls back at 4m, with the canary at weight 0 until then"
    ), "{out}");
    // Failing at the last analysis (weight 50): passes 7, 8, 9 fail, pass 10 at 9m.
    assert!(out.contains("checks fail in passes 7, 8, 9; pass 10 rolls back at 9m, with the canary at weight 50 until then"), "{out}");
    // No "no progress" rollback: the deadline bounds readiness, in Kubernetes mode only.
    assert!(!out.contains("without a weight step"), "{out}");
    assert!(out.contains("Progress deadline 10m (progressDeadlineSeconds): it bounds readiness, as in Flagger. In Kubernetes mode the canary must become ready within it during a run, or the run is rolled back"), "{out}");
    assert!(
        out.contains("Local mode has no readiness to wait for, so there it does not apply."),
        "{out}"
    );
}

#[test]
fn seed_metrics_are_rendered_with_thresholds() {
    let out = seed_explained();
    assert!(out.contains("  request-success-rate: passes when value >= 99 (%); window 1m (builtin, query set istio)"), "{out}");
    assert!(out.contains("  request-duration: passes when value <= 500 (ms); window 30s (builtin, query set istio)"), "{out}");
    assert!(out.contains("destination_workload=~\"podinfo\""));
    assert!(out.contains("destination_workload_namespace=~\"test\""));
    assert!(out.contains("}[1m]"));
    assert!(out.contains("}[30s]"));
    assert!(out.contains("is its query's look-back window, not how often it is checked: every metric is checked once per pass, every 1m."));
    assert!(out.contains("irate uses only the last two samples inside the 30s window"));
    // 30s is two 15s scrapes: no short-window warning for the seed.
    assert!(!out.contains("fewer than two samples"), "{out}");
    assert!(!out.contains("{{"), "every template variable is rendered");
}

#[test]
fn seed_warnings_name_the_traps() {
    let out = seed_explained();
    let warnings: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "Warnings:")
        .skip(1)
        .collect();
    let all = warnings.join("\n");
    assert!(all.contains("service.gateways lists istio-system/public-gateway without `mesh`: only requests entering through that gateway are split; in-mesh calls to podinfo.test bypass"), "{all}");
    assert!(
        all.contains("spec.autoscalerRef: accepted but not used by veer"),
        "{all}"
    );
    // The seed does not overshoot: 10 divides 50.
    assert!(!all.contains("overshoots"), "{all}");
}

#[test]
fn overshoot_step_20_max_50_is_warned_with_60() {
    let text = std::fs::read_to_string(data("seed-canary.yaml"))
        .unwrap()
        .replace("stepWeight: 10", "stepWeight: 20");
    let set = load_texts(&[(PathBuf::from("c.yaml"), text)], &LoadOptions::default());
    let out = explain(&set, &ExplainOptions::default());
    assert!(out.contains(
        "stepWeight 20 with maxWeight 50 goes 20 → 40 → 60: the last step overshoots maxWeight to 60%"
    ), "{out}");
    // And the simulated timeline really goes there.
    assert!(out.contains("→ weight 40 → 60"), "{out}");
    assert!(
        out.contains("weight 60 ≥ maxWeight 50: one more analysis passed"),
        "{out}"
    );
}

#[test]
fn short_metric_window_and_other_traps_are_warned() {
    let text = std::fs::read_to_string(data("seed-canary.yaml"))
        .unwrap()
        .replace("interval: 30s", "interval: 10s")
        .replace("maxWeight: 50", "maxWeight: 100")
        .replace("    hosts:\n      - app.example.com\n", "")
        .replace(
            "    stepWeight: 10\n",
            "    stepWeight: 10\n    match:\n      - headers:\n          x-beta:\n            exact: \"1\"\n",
        );
    let set = load_texts(&[(PathBuf::from("c.yaml"), text)], &LoadOptions::default());
    let out = explain(&set, &ExplainOptions::default());
    for expected in [
        "metric request-duration has interval 10s but Prometheus scrapes every 15s: the window holds fewer than two samples",
        "maxWeight 100: every request goes to the canary before promotion",
        "service.hosts is empty: the route matches only Host `podinfo`",
        "analysis.match without iterations: this is not an A/B test",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
    // With a 5s scrape interval the 10s window is fine.
    let opts = ExplainOptions {
        scrape_interval: Duration::from_secs(5),
        ..ExplainOptions::default()
    };
    assert!(!explain(&set, &opts).contains("fewer than two samples"));
}

#[test]
fn ab_with_session_affinity_is_warned_and_iterations_are_explained() {
    let text = std::fs::read_to_string(data("seed-canary.yaml"))
        .unwrap()
        .replace(
            "    maxWeight: 50\n",
            "    iterations: 3\n    match:\n      - headers:\n          x-beta:\n            exact: \"1\"\n    sessionAffinity:\n      cookieName: flagger-cookie\n",
        )
        .replace("    stepWeight: 10\n", "");
    let set = load_texts(&[(PathBuf::from("c.yaml"), text)], &LoadOptions::default());
    let out = explain(&set, &ExplainOptions::default());
    assert!(out.contains("A/B testing: requests matching analysis.match all go to the canary for 3 passing iterations"), "{out}");
    assert!(out.contains("sessionAffinity with A/B testing"), "{out}");
    assert!(
        out.contains("weight 0 → 100 for matching requests; iteration 1/3"),
        "{out}"
    );
    assert!(out.contains("3 iterations done; Promoting"), "{out}");
}

#[test]
fn load_errors_are_printed_first() {
    let text = std::fs::read_to_string(data("seed-canary.yaml"))
        .unwrap()
        .replace("stepWeight: 10", "stepWeight: ten");
    let set = load_texts(
        &[(PathBuf::from("bad.yaml"), text)],
        &LoadOptions::default(),
    );
    let out = explain(&set, &ExplainOptions::default());
    assert!(out.starts_with(
        "error: bad.yaml (doc 1): spec.analysis.stepWeight: invalid type: string \"ten\", expected u32\n"
    ), "{out}");
    assert!(
        out.contains("No valid Canary to explain: the errors above say why."),
        "{out}"
    );
}

#[test]
fn the_timeline_is_the_state_machine() {
    // The explanation's passes are the state machine's: the same weights a run publishes.
    let set = seed_set();
    let passes = simulate(&set.canaries[0], Script::AllPass);
    let weights: Vec<u32> = passes.iter().map(|p| p.after.weight).collect();
    assert_eq!(weights, vec![0, 10, 20, 30, 40, 50, 50, 0, 0]);
}

#[test]
fn durations_read_like_go() {
    assert_eq!(format_duration(Duration::ZERO), "0s");
    assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
}
