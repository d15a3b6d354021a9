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

/// A canary run: every 2s, 10% steps up to 50%, 3 failed checks roll back; success rate
/// >= 99% and P99 <= 250 ms over 10s windows (10 scrapes).
const CANARY_ANALYSIS: &str = "    interval: 2s
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
    let since = Instant::now();
    load.wait_all_past(generation, Duration::from_secs(30))
        .unwrap();
    let observations = load.observations_since(since);
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
            // 200 users: the binomial spread at 50% is 3.5 points (1 sigma); 15 points is > 4 sigma.
            let want = s.weight_bp as f64 / 10_000.0;
            assert!(
                (s.user_share() - want).abs() <= 0.15,
                "at weight {}bp {} of {} users were on the canary",
                s.weight_bp,
                s.users_on_canary,
                s.users
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
