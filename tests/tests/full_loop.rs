#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Full-loop tests: the real gateway Envoy with the release filter, Prometheus scraping it,
//! the real `veer controller` (local mode) analysing a Flagger Canary, two backends and a
//! webhook receiver, all on 127.0.0.1, with simulated users that keep their cookies.
//!
//! Needs: `cargo build -p veer-filter --target wasm32-unknown-unknown --release`,
//! `cargo build -p veer-controller --bins`, Envoy and Prometheus (`scripts/setup.sh`).
//! A missing part fails the test with the command that provides it.
//!
//! The tests run one at a time (each runs ~5 processes and a steady load; on a 2-core
//! machine two at once would starve each other's analysis windows).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use veer_e2e::backend::Fault;
use veer_e2e::controller::{route_at, summary};
use veer_e2e::process::poll_until;
use veer_e2e::stack::{Stack, StackSpec};
use veer_e2e::users::{flip_backs, share_by_weight, TaggedUsers, UserLoad, UserLoadSpec, Variant};
use veer_testkit::passes::{check_raises, passes};

const KEY: &str = "test/podinfo";

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A Flagger Canary with short intervals. `extra_analysis` is appended to `analysis:`
/// (indented 4 spaces), `webhooks` lists `(name, type, with_metadata)`.
fn canary_yaml(analysis: &str, webhooks: &[(&str, &str, bool)]) -> String {
    let mut hooks = String::new();
    if !webhooks.is_empty() {
        hooks.push_str("    webhooks:\n");
        for (name, kind, meta) in webhooks {
            hooks.push_str(&format!(
                "      - name: {name}\n        type: {kind}\n        url: ${{WEBHOOK_URL}}/{name}\n        timeout: 5s\n"
            ));
            if *meta {
                hooks.push_str(
                    "        metadata:\n          type: cmd\n          cmd: \"hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/\"\n",
                );
            }
        }
    }
    format!(
        r#"apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
  namespace: test
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: podinfo
  service:
    port: 9898
    hosts:
      - app.example.com
  analysis:
{analysis}{hooks}"#
    )
}

/// A canary run: every 3s, 10% steps up to 50%, 3 failed checks roll back; a success rate
/// of at least 99% and a P99 of at most 250 ms over 10s windows (10 scrapes). 3s, not less: the first
/// analysis after a step needs the step's traffic in Prometheus, which takes Envoy's stats
/// flush (1s, for the histogram) plus a scrape (1s); 2s would leave no margin on a busy CI box.
const CANARY_ANALYSIS: &str = "    interval: 3s
    threshold: 3
    maxWeight: 50
    stepWeight: 10
    sessionAffinity:
      cookieName: flagger-cookie
      maxAge: 3600
    metrics:
      - name: request-success-rate
        interval: 10s
        thresholdRange:
          min: 99
      - name: request-duration
        interval: 10s
        thresholdRange:
          max: 250
";

fn users(stack: &Stack, users: usize, rps: f64) -> UserLoad {
    let load = UserLoad::start(stack.gateway_addr, UserLoadSpec::new(users, rps)).unwrap();
    stack
        .wait_for_primary_traffic(Duration::from_secs(20))
        .unwrap();
    load
}

/// The weights (basis points) of the tables served for `revision`, consecutive repeats removed.
fn weights_of(stack: &Stack, revision: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for t in stack.table_log.tables() {
        if let Some(r) = t.route.filter(|r| r.revision == revision) {
            if out.last() != Some(&r.weight) {
                out.push(r.weight);
            }
        }
    }
    out
}

/// After the run ended: every user's next response comes from the primary, cookie or not.
fn assert_everyone_on_primary(stack: &Stack, load: &UserLoad) {
    let generation = stack.table_log.generation();
    load.wait_all_past(generation, Duration::from_secs(30))
        .unwrap();
    let observations = load.observations();
    for (u, log) in observations.iter().enumerate() {
        let last = log
            .iter()
            .rev()
            .find(|o| o.generation.is_some_and(|g| g >= generation))
            .unwrap_or_else(|| panic!("user {u} has no response at generation {generation}"));
        assert_eq!(
            last.variant,
            Variant::Primary,
            "user {u} (cookie: {}) is not on primary: {last:?}",
            last.had_cookie
        );
        assert_eq!(last.backend, "v1", "user {u} is served by {}", last.backend);
    }
    let with_cookie = observations
        .iter()
        .filter(|log| log.iter().any(|o| o.had_cookie))
        .count();
    assert!(
        with_cookie > observations.len() / 2,
        "only {with_cookie} users kept a cookie"
    );
}

fn assert_no_flip_backs(stack: &Stack, load: &UserLoad) {
    let flips = flip_backs(&load.observations(), &stack.table_log.tables());
    assert!(
        flips.is_empty(),
        "{} flip-backs, first: {:?}",
        flips.len(),
        flips.first()
    );
}

fn assert_all_answered(load: &UserLoad) {
    let bad: Vec<_> = load
        .observations()
        .into_iter()
        .flatten()
        .filter(|o| o.status != 200)
        .collect();
    assert!(
        bad.is_empty(),
        "{} requests not answered 200, first: {:?}",
        bad.len(),
        bad.first()
    );
}

/// The maximum failedChecks seen while the run was in Progressing.
fn max_failed_checks(stack: &Stack, since: Instant) -> u64 {
    stack
        .status_log
        .changes()
        .iter()
        .filter(|c| c.at >= since && c.phase == "Progressing")
        .map(|c| c.failed_checks)
        .max()
        .unwrap_or(0)
}

#[test]
fn healthy_canary_is_promoted_with_flagger_webhooks_and_sticky_users() {
    let _serial = one_at_a_time();
    let yaml = canary_yaml(
        CANARY_ANALYSIS,
        &[
            ("confirm-rollout", "confirm-rollout", false),
            ("acceptance-test", "pre-rollout", true),
            ("load-test", "rollout", true),
            ("traffic-gate", "confirm-traffic-increase", false),
            ("promotion-gate", "confirm-promotion", false),
            ("notify", "post-rollout", false),
        ],
    );
    let stack = Stack::start(&StackSpec::new("full-loop-healthy", &yaml)).unwrap();
    stack.initialize("v1").unwrap();
    let load = users(&stack, 200, 100.0);
    // No hook runs for the first revision: it becomes the primary without analysis.
    assert!(
        stack.webhooks.calls().is_empty(),
        "{:?}",
        stack.webhooks.calls()
    );

    let started = Instant::now();
    stack.controller.rollout(KEY, "v2").unwrap();
    let end = stack.wait_run_end(Duration::from_secs(120)).unwrap();
    let took = started.elapsed();
    assert_eq!(end["phase"], "Succeeded", "{}", summary(&end));
    assert_eq!(end["primaryRevision"], "v2");
    assert_eq!(end["weight"], 0);

    // Phases, in order, from the revision on.
    let phases = stack.status_log.phases_since(started);
    let phases: Vec<&str> = phases.iter().map(String::as_str).collect();
    let from = phases
        .iter()
        .position(|p| *p == "Progressing")
        .expect("Progressing");
    assert_eq!(
        &phases[from..],
        ["Progressing", "Promoting", "Finalising", "Succeeded"],
        "all phases: {phases:?}"
    );
    // Weight steps of the run, as served to the gateways: 0, +10% per pass up to maxWeight,
    // then back to 0 once the primary runs v2.
    assert_eq!(
        weights_of(&stack, "v2"),
        [0, 1000, 2000, 3000, 4000, 5000, 0],
        "tables: {:?}",
        stack.table_log.tables()
    );
    assert_eq!(max_failed_checks(&stack, started), 0);

    // Webhooks, in Flagger's order, with Flagger's payload.
    let calls = stack.webhooks.calls();
    let order: Vec<&str> = calls.iter().map(|c| c.hook.as_str()).collect();
    eprintln!("webhook order: {order:?}");
    assert_eq!(order.first(), Some(&"confirm-rollout"), "{order:?}");
    assert_eq!(order.last(), Some(&"notify"), "{order:?}");
    let first = |h: &str| {
        order
            .iter()
            .position(|o| *o == h)
            .unwrap_or_else(|| panic!("no {h} call: {order:?}"))
    };
    let last = |h: &str| order.iter().rposition(|o| *o == h).unwrap();
    assert!(first("confirm-rollout") < first("acceptance-test"));
    assert_eq!(
        calls.iter().filter(|c| c.hook == "acceptance-test").count(),
        1,
        "{order:?}"
    );
    assert!(last("acceptance-test") < first("load-test"));
    assert!(last("load-test") < first("promotion-gate"), "{order:?}");
    assert!(last("traffic-gate") < first("promotion-gate"), "{order:?}");
    assert!(last("promotion-gate") < first("notify"));
    // One rollout hook per analysis: at 10, 20, 30, 40 and 50%.
    assert_eq!(
        calls.iter().filter(|c| c.hook == "load-test").count(),
        5,
        "{order:?}"
    );
    assert_eq!(calls.iter().filter(|c| c.hook == "notify").count(), 1);
    for c in &calls {
        assert_eq!(c.method, "POST");
        assert!(
            c.content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("application/json")),
            "{c:?}"
        );
        let body = c
            .body
            .as_object()
            .unwrap_or_else(|| panic!("not a JSON object: {}", c.raw));
        assert_eq!(body["name"], "podinfo", "{}", c.raw);
        assert_eq!(body["namespace"], "test", "{}", c.raw);
        assert_eq!(body["checksum"], "v2", "{}", c.raw);
        let with_metadata = c.hook == "acceptance-test" || c.hook == "load-test";
        if with_metadata {
            assert_eq!(
                body["metadata"]["cmd"],
                "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"
            );
            assert_eq!(body["metadata"]["type"], "cmd");
        } else {
            assert!(
                !body.contains_key("metadata"),
                "empty metadata is omitted: {}",
                c.raw
            );
        }
        let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
        keys.sort();
        let expected: &[&str] = if with_metadata {
            &["checksum", "metadata", "name", "namespace", "phase"]
        } else {
            &["checksum", "name", "namespace", "phase"]
        };
        assert_eq!(keys, expected, "{}", c.raw);
    }
    for c in calls.iter().filter(|c| {
        [
            "acceptance-test",
            "load-test",
            "traffic-gate",
            "promotion-gate",
        ]
        .contains(&c.hook.as_str())
    }) {
        assert_eq!(c.phase(), "Progressing", "{}", c.raw);
    }
    assert_eq!(calls.last().unwrap().phase(), "Succeeded");

    // Sticky users: nobody went back from canary to primary during the run, and the share
    // of users on the canary followed the weight.
    assert_no_flip_backs(&stack, &load);
    let shares = share_by_weight(&load.observations(), &stack.table_log.tables(), "v2");
    for s in &shares {
        eprintln!(
            "weight {:>5.1}%: {:>3}/{:<3} users on canary ({:>5.1}%), {:>5.1}% of {} requests",
            s.weight_bp as f64 / 100.0,
            s.users_on_canary,
            s.users,
            s.user_share() * 100.0,
            s.request_share() * 100.0,
            s.requests
        );
        if s.users >= 100 {
            // Each user's seat is fixed by its own random bucket, so the number on the canary
            // at weight p is binomial(users, p): sigma = sqrt(p (1 - p) / users) of the share.
            // 4 sigma (a false alarm in about 1 of 16,000 weights): with 200 users that is
            // ±8.5 points at 10% (a share of 0% fails) and ±14.1 points at 50%.
            let want = s.weight_bp as f64 / 10_000.0;
            let sigma = (want * (1.0 - want) / s.users as f64).sqrt();
            assert!(
                (s.user_share() - want).abs() <= 4.0 * sigma,
                "at weight {}bp {} of {} users were on the canary: {:.3} is more than 4 sigma \
                 ({:.3}) from {want}",
                s.weight_bp,
                s.users_on_canary,
                s.users,
                s.user_share(),
                4.0 * sigma
            );
        }
    }
    assert!(
        shares
            .iter()
            .filter(|s| s.weight_bp > 0 && s.users >= 100)
            .count()
            >= 4,
        "{shares:?}"
    );
    assert_all_answered(&load);
    eprintln!(
        "healthy run: revision to Succeeded in {took:.1?}, {} requests",
        load.sent()
    );
}

/// The failedChecks value right before the run turned Failed, and the highest seen.
fn failed_checks_before_failure(stack: &Stack, since: Instant) -> (u64, u64) {
    let changes: Vec<_> = stack
        .status_log
        .changes()
        .into_iter()
        .filter(|c| c.at >= since)
        .collect();
    let failed_at = changes
        .iter()
        .position(|c| c.phase == "Failed")
        .expect("a Failed change");
    let before = changes[..failed_at]
        .iter()
        .rev()
        .find(|c| c.phase == "Progressing")
        .expect("Progressing before Failed");
    (before.failed_checks, max_failed_checks(stack, since))
}

/// The last check results of the status right before the run failed.
fn checks_before_failure(stack: &Stack, since: Instant) -> Vec<serde_json::Value> {
    let changes: Vec<_> = stack
        .status_log
        .changes()
        .into_iter()
        .filter(|c| c.at >= since)
        .collect();
    let failed_at = changes
        .iter()
        .position(|c| c.phase == "Failed")
        .expect("a Failed change");
    changes[..failed_at]
        .iter()
        .rev()
        .find(|c| c.phase == "Progressing")
        .map(|c| {
            c.status["lastChecks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

fn check<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:?}"))
}

fn assert_rolled_back(stack: &Stack, load: &UserLoad, started: Instant) -> serde_json::Value {
    let end = stack.wait_run_end(Duration::from_secs(120)).unwrap();
    assert_eq!(end["phase"], "Failed", "{}", summary(&end));
    assert_eq!(end["weight"], 0);
    assert_eq!(end["failedChecks"], 0, "a rollback resets failedChecks");
    assert_eq!(end["primaryRevision"], "v1");
    assert_eq!(end["failedRevision"], "v2");
    let phases = stack.status_log.phases_since(started);
    let from = phases
        .iter()
        .position(|p| p == "Progressing")
        .expect("Progressing");
    assert_eq!(
        &phases[from..],
        ["Progressing", "Failed"],
        "all phases: {phases:?}"
    );
    // Exactly `threshold` failed checks: the pass after the third failure rolls back.
    let (at_failure, max) = failed_checks_before_failure(stack, started);
    assert_eq!(
        (at_failure, max),
        (3, 3),
        "failed checks before the rollback"
    );
    // A failing analysis never raises the weight: it stayed at the first step.
    assert_eq!(weights_of(stack, "v2"), [0, 1000, 0]);
    // post-rollout hooks run with phase Failed.
    let notify = stack.webhooks.calls_to("notify");
    assert_eq!(notify.len(), 1, "{notify:?}");
    assert_eq!(notify[0].phase(), "Failed", "{}", notify[0].raw);
    // Every user, sticky ones included, is back on the primary; nobody flipped back before.
    assert_no_flip_backs(stack, load);
    assert_everyone_on_primary(stack, load);
    end
}

#[test]
fn canary_returning_5xx_is_rolled_back_after_threshold_failed_checks() {
    let _serial = one_at_a_time();
    let yaml = canary_yaml(CANARY_ANALYSIS, &[("notify", "post-rollout", false)]);
    let stack = Stack::start(&StackSpec::new("full-loop-5xx", &yaml)).unwrap();
    stack.initialize("v1").unwrap();
    let load = users(&stack, 200, 100.0);
    stack.canary.set_fault(Fault {
        status: 500,
        percent: 30,
        delay_ms: 0,
    });

    let started = Instant::now();
    stack.controller.rollout(KEY, "v2").unwrap();
    assert_rolled_back(&stack, &load, started);
    let checks = checks_before_failure(&stack, started);
    let rate = check(&checks, "request-success-rate");
    assert_eq!(rate["passed"], false, "{checks:?}");
    let value = rate["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("no value: {rate}"));
    // 30% of the canary's answers are 500, spread evenly (backend.rs): any N consecutive
    // canary requests hold 0.3 N failures give or take 1, plus at most one request at each
    // edge of the query's window that was answered on one side of a scrape and counted on the
    // other. So the success rate is 70% within 100 * 3 / N points, N being the canary
    // requests in the window. The failing pass is the third at weight 10% (interval 3s), so
    // its 10s window holds about 9 s of weight-10% traffic: at least 6 s, with timing slack.
    // N >= 6 s * the canary's request rate at weight 10%, as the users saw it.
    let tables = stack.table_log.tables();
    let canary_at_10: Vec<Instant> = load
        .observations()
        .into_iter()
        .flatten()
        .filter(|o| {
            o.variant == Variant::Canary
                && o.generation
                    .and_then(|g| route_at(&tables, g))
                    .is_some_and(|r| r.revision == "v2" && r.weight == 1000)
        })
        .map(|o| o.at)
        .collect();
    let first = canary_at_10.iter().min().expect("canary requests at 10%");
    let last = canary_at_10.iter().max().unwrap();
    let per_s = canary_at_10.len() as f64 / last.duration_since(*first).as_secs_f64();
    let n_min = 6.0 * per_s;
    let spread = 100.0 * 3.0 / n_min;
    eprintln!(
        "success rate {value:.2}: {} canary requests at 10% ({per_s:.1}/s), N >= {n_min:.0}, \
         expected 70 ± {spread:.1}",
        canary_at_10.len()
    );
    assert!(
        n_min >= 30.0,
        "too little canary traffic to judge: {per_s:.1}/s"
    );
    assert!(
        (value - 70.0).abs() <= spread,
        "success rate {value}, expected 70 ± {spread:.1} (N >= {n_min:.0})"
    );
    // The 5xx came from the canary only; the primary answered every request.
    let primary_errors = load
        .observations()
        .into_iter()
        .flatten()
        .filter(|o| o.variant == Variant::Primary && o.status != 200)
        .count();
    assert_eq!(primary_errors, 0);
}

#[test]
fn canary_with_latency_regression_is_rolled_back_on_request_duration() {
    let _serial = one_at_a_time();
    let yaml = canary_yaml(CANARY_ANALYSIS, &[("notify", "post-rollout", false)]);
    let stack = Stack::start(&StackSpec::new("full-loop-latency", &yaml)).unwrap();
    stack.initialize("v1").unwrap();
    let load = users(&stack, 200, 100.0);
    // P99 threshold is 250 ms; every canary answer takes 400 ms.
    stack.canary.set_fault(Fault {
        status: 0,
        percent: 0,
        delay_ms: 400,
    });

    let started = Instant::now();
    stack.controller.rollout(KEY, "v2").unwrap();
    assert_rolled_back(&stack, &load, started);
    let checks = checks_before_failure(&stack, started);
    let rate = check(&checks, "request-success-rate");
    assert_eq!(rate["passed"], true, "the success rate is fine: {checks:?}");
    let duration = check(&checks, "request-duration");
    assert_eq!(duration["passed"], false, "{checks:?}");
    let p99 = duration["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("no value: {duration}"));
    assert!(p99 > 250.0, "P99 {p99} ms");
    assert_all_answered(&load);
}

#[test]
fn ab_run_sends_only_matching_requests_to_canary_then_promotes_after_iterations() {
    let _serial = one_at_a_time();
    let analysis = "    interval: 3s
    threshold: 3
    iterations: 4
    match:
      - headers:
          x-user-group:
            exact: beta
    metrics:
      - name: request-success-rate
        interval: 10s
        thresholdRange:
          min: 99
      - name: request-duration
        interval: 10s
        thresholdRange:
          max: 250
";
    let yaml = canary_yaml(analysis, &[("notify", "post-rollout", false)]);
    let stack = Stack::start(&StackSpec::new("full-loop-ab", &yaml)).unwrap();
    stack.initialize("v1").unwrap();
    let mut spec = UserLoadSpec::new(200, 100.0);
    // Every 4th user is a beta tester.
    spec.tagged = Some(TaggedUsers {
        every: 4,
        header: ("x-user-group".into(), "beta".into()),
    });
    let load = UserLoad::start(stack.gateway_addr, spec.clone()).unwrap();
    stack
        .wait_for_primary_traffic(Duration::from_secs(20))
        .unwrap();

    let started = Instant::now();
    stack.controller.rollout(KEY, "v2").unwrap();
    let end = stack.wait_run_end(Duration::from_secs(120)).unwrap();
    assert_eq!(end["phase"], "Succeeded", "{}", summary(&end));
    assert_eq!(end["primaryRevision"], "v2");

    // The A/B table: weight 100% for matching requests, then back to 0 on promotion.
    assert_eq!(weights_of(&stack, "v2"), [0, 10_000, 0]);
    let tables = stack.table_log.tables();
    assert!(tables
        .iter()
        .filter_map(|t| t.route.as_ref())
        .filter(|r| r.revision == "v2")
        .all(|r| r.has_match));
    // Promotion after `iterations` passing analyses.
    let iterations: Vec<u64> = {
        let mut seen = Vec::new();
        for c in stack
            .status_log
            .changes()
            .iter()
            .filter(|c| c.at >= started && c.phase == "Progressing")
        {
            if seen.last() != Some(&c.iterations) {
                seen.push(c.iterations);
            }
        }
        seen
    };
    assert_eq!(iterations, [0, 1, 2, 3, 4], "iterations while Progressing");
    let phases = stack.status_log.phases_since(started);
    let from = phases
        .iter()
        .position(|p| p == "Progressing")
        .expect("Progressing");
    assert_eq!(
        &phases[from..],
        ["Progressing", "Promoting", "Finalising", "Succeeded"]
    );

    // While the A/B table was in force: every beta request on the canary, nobody else.
    let mut seen = (0usize, 0usize);
    for (u, log) in load.observations().iter().enumerate() {
        for o in log {
            let Some(route) = o.generation.and_then(|g| route_at(&tables, g)) else {
                continue;
            };
            if route.revision != "v2" || route.weight != 10_000 {
                continue;
            }
            if spec.is_tagged(u) {
                assert_eq!(o.variant, Variant::Canary, "beta user {u}: {o:?}");
                assert_eq!(o.backend, "v2");
                seen.0 += 1;
            } else {
                assert_eq!(o.variant, Variant::Primary, "user {u}: {o:?}");
                assert_eq!(o.reason, "unmatched", "user {u}: {o:?}");
                seen.1 += 1;
            }
        }
    }
    assert!(
        seen.0 > 100 && seen.1 > 300,
        "requests during the A/B run (beta, others): {seen:?}"
    );
    assert_eq!(
        stack
            .webhooks
            .calls_to("notify")
            .last()
            .map(|c| c.phase().to_string())
            .as_deref(),
        Some("Succeeded")
    );
    assert_all_answered(&load);
}

/// A healthy run that the test interrupts at `weight` percent.
fn healthy_stack(name: &str) -> Stack {
    let yaml = canary_yaml(
        CANARY_ANALYSIS,
        &[
            ("confirm-rollout", "confirm-rollout", false),
            ("notify", "post-rollout", false),
        ],
    );
    let stack = Stack::start(&StackSpec::new(name, &yaml)).unwrap();
    stack.initialize("v1").unwrap();
    stack
}

fn state_file_canary(stack: &Stack) -> serde_json::Value {
    let text = std::fs::read_to_string(stack.dir.join("state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["canaries"][KEY].clone()
}

#[test]
fn controller_killed_with_sigkill_mid_run_resumes_at_the_same_weight() {
    let _serial = one_at_a_time();
    let mut stack = healthy_stack("full-loop-kill9");
    let load = users(&stack, 200, 100.0);
    stack.controller.rollout(KEY, "v2").unwrap();
    // Right after the step to 30%: the next pass is a whole interval away.
    stack
        .controller
        .wait_status(KEY, "weight 30", Duration::from_secs(60), |s| {
            s["weight"] == 30
        })
        .unwrap();
    stack.controller.kill();
    let generation_before = stack.table_log.generation();
    let saved = state_file_canary(&stack);
    assert_eq!(
        saved["weight"], 30,
        "the state file holds the weight: {saved}"
    );
    assert_eq!(saved["phase"], "Progressing");

    stack.controller.restart().unwrap();
    let resumed = stack.status().unwrap();
    assert_eq!(resumed["phase"], "Progressing", "{}", summary(&resumed));
    assert_eq!(resumed["weight"], 30, "{}", summary(&resumed));
    assert_eq!(resumed["failedChecks"], saved["failedChecks"]);
    assert_eq!(resumed["canaryRevision"], "v2");

    let end = stack.wait_run_end(Duration::from_secs(120)).unwrap();
    assert_eq!(end["phase"], "Succeeded", "{}", summary(&end));
    assert_eq!(stack.controller.starts(), 2);
    // No step skipped, none repeated; the generation kept rising across the restart, so the
    // gateway took the new tables.
    let served = weights_of(&stack, "v2");
    assert_eq!(served, [0, 1000, 2000, 3000, 4000, 5000, 0]);
    // None without its analysis: each raise in the served tables followed a passing analysis
    // at the previous weight in the controller's own record (its log, both runs; the line is
    // written before the transition is saved, so before the table is served).
    let percent: Vec<u64> = served.iter().map(|bp| u64::from(*bp) / 100).collect();
    let passes = passes(&stack.controller.log(), KEY).unwrap_or_else(|e| panic!("{e}"));
    check_raises(&percent, &passes).unwrap_or_else(|e| panic!("{e}"));
    assert!(stack.table_log.generation() > generation_before);
    assert_eq!(max_failed_checks(&stack, load.started()), 0);
    // confirm-rollout ran once: the restart did not start the run again.
    assert_eq!(stack.webhooks.calls_to("confirm-rollout").len(), 1);
    assert_no_flip_backs(&stack, &load);
    assert_all_answered(&load);
}

#[test]
fn controller_down_gateway_keeps_routing_with_the_last_table() {
    let _serial = one_at_a_time();
    let mut stack = healthy_stack("full-loop-down");
    let load = users(&stack, 200, 100.0);
    stack.controller.rollout(KEY, "v2").unwrap();
    stack
        .controller
        .wait_status(KEY, "weight 20", Duration::from_secs(60), |s| {
            s["weight"] == 20
        })
        .unwrap();
    stack.wait_gateway_applied(Duration::from_secs(5)).unwrap();
    // The gateway confirms a generation as soon as its polling thread applied it; the other
    // workers take it from shared data within a tick. Every user must be on it before the kill.
    load.wait_all_past(stack.table_log.generation(), Duration::from_secs(30))
        .unwrap();
    stack.controller.kill();
    let last_generation = stack.table_log.generation();
    let down_since = Instant::now();
    let sent_at_kill = load.sent();
    // The gateway is left alone for 800 requests (8 s at 100/s, over 2 intervals).
    poll_until(
        "800 requests with the controller down",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let n = load.sent() - sent_at_kill;
            if n >= 800 {
                Ok(())
            } else {
                Err(format!("{n} sent"))
            }
        },
    )
    .unwrap();
    let down_for = down_since.elapsed();
    let during = load.observations_since(down_since);
    let all: Vec<_> = during.iter().flatten().collect();
    assert!(all.len() >= 800);
    let bad: Vec<_> = all
        .iter()
        .filter(|o| o.status != 200 || o.generation != Some(last_generation))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests not answered 200 with the last table, first: {:?}",
        bad.len(),
        all.len(),
        bad.first()
    );
    let on_canary =
        all.iter().filter(|o| o.variant == Variant::Canary).count() as f64 / all.len() as f64;
    assert!(
        (0.10..=0.30).contains(&on_canary),
        "{on_canary} of requests on the canary at weight 20%"
    );
    let text = stack.gateway.prometheus().unwrap();
    let age = veer_e2e::envoy::prometheus_value(&text, "veer_table_age_seconds", &[]).unwrap();
    assert!(
        age >= 3.0,
        "the table's age shows the controller is gone: {age}"
    );
    assert!(
        stack.gateway.crash_lines().is_empty(),
        "{:?}",
        stack.gateway.crash_lines()
    );
    eprintln!(
        "controller down for {down_for:.1?}: {} requests, {:.1}% on canary, table age {age}s",
        all.len(),
        on_canary * 100.0
    );

    // Back up: the run continues from 20% and ends well.
    stack.controller.restart().unwrap();
    let end = stack.wait_run_end(Duration::from_secs(120)).unwrap();
    assert_eq!(end["phase"], "Succeeded", "{}", summary(&end));
    assert_eq!(
        weights_of(&stack, "v2"),
        [0, 1000, 2000, 3000, 4000, 5000, 0]
    );
    assert_no_flip_backs(&stack, &load);
    assert_all_answered(&load);
}

#[test]
fn new_revision_during_a_run_restarts_it() {
    let _serial = one_at_a_time();
    let stack = healthy_stack("full-loop-restart");
    let load = users(&stack, 200, 100.0);
    stack.controller.rollout(KEY, "v2").unwrap();
    stack
        .controller
        .wait_status(KEY, "weight 30", Duration::from_secs(60), |s| {
            s["weight"] == 30
        })
        .unwrap();
    stack.canary.set_identity("v3");
    stack.controller.rollout(KEY, "v3").unwrap();
    let restarted = stack.status().unwrap();
    assert_eq!(restarted["phase"], "Progressing", "{}", summary(&restarted));
    assert_eq!(restarted["weight"], 0, "{}", summary(&restarted));
    assert_eq!(restarted["failedChecks"], 0);
    assert_eq!(restarted["iterations"], 0);
    assert_eq!(restarted["canaryRevision"], "v3");

    let end = stack.wait_run_end(Duration::from_secs(120)).unwrap();
    assert_eq!(end["phase"], "Succeeded", "{}", summary(&end));
    assert_eq!(end["primaryRevision"], "v3");
    assert_eq!(weights_of(&stack, "v2"), [0, 1000, 2000, 3000]);
    assert_eq!(
        weights_of(&stack, "v3"),
        [0, 1000, 2000, 3000, 4000, 5000, 0]
    );
    // A restart skips confirm-rollout; post-rollout reports the promoted revision.
    assert_eq!(stack.webhooks.calls_to("confirm-rollout").len(), 1);
    let notify = stack.webhooks.calls_to("notify");
    assert_eq!(notify.len(), 1);
    assert_eq!(notify[0].body["checksum"], "v3");
    assert_no_flip_backs(&stack, &load);
    assert_all_answered(&load);
}
