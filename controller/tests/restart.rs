#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Crash safety of the real `veer controller`: killed with SIGKILL mid-run, it restarts
//! from its state file at the same weight, serves a table generation above any served
//! before the crash, never raises the weight without a passing analysis, and finishes the
//! run. A corrupt state file stops it with a message naming the file.
//!
//! The metric is answered by a tiny fake Prometheus served by the test (a real Prometheus
//! is covered by prometheus_real.rs); a confirm-traffic-increase webhook the test opens and
//! closes holds the weight still around the crash, so "the weight right after restart"
//! is a fixed value and not a race with the next pass.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::canary::{canary_yaml, canary_yaml_with_service, PODINFO_SERVICE};
use support::http::{Gate, TestServer};
use support::process::text;
use support::prometheus::counted_query_route;
use support::veer::{canaries_dir, run_veer, write_spec, Controller};
use support::POLL;
use veer_testkit::passes::{check_raises, passes};
use veer_testkit::poll_until_async;

const KEY: &str = "test/podinfo";

/// Counts the fake Prometheus' queries and the gate's calls; the gate answers 200 when
/// open, 503 when closed.
#[derive(Default)]
struct Fakes {
    queries: Arc<AtomicUsize>,
    gate: Arc<Gate>,
}

impl Fakes {
    /// Waits (20 s deadline) until the gate has been called twice more than it had been.
    async fn two_more_gate_calls(&self, what: &str) {
        let since = self.gate.calls.load(Ordering::SeqCst);
        poll_until_async(what, Duration::from_secs(20), POLL, || async {
            let calls = self.gate.calls.load(Ordering::SeqCst) - since;
            (calls >= 2).then_some(()).ok_or(format!("{calls} calls"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

async fn start_fakes() -> (TestServer, Arc<Fakes>) {
    let fakes = Arc::new(Fakes::default());
    fakes.gate.open.store(true, Ordering::SeqCst);
    let app = axum::Router::new()
        .route(
            "/api/v1/query",
            counted_query_route(fakes.queries.clone(), "99.9"),
        )
        .route("/gate", fakes.gate.route());
    (TestServer::start(app).await, fakes)
}

fn gated_canary_yaml(gate_url: &str) -> String {
    canary_yaml_with_service(
        "podinfo",
        PODINFO_SERVICE,
        &format!(
            r#"    interval: 1s
    threshold: 3
    maxWeight: 50
    stepWeight: 10
    metrics:
      - name: request-success-rate
        interval: 1m
        thresholdRange:
          min: 99
    webhooks:
      - name: traffic-gate
        type: confirm-traffic-increase
        url: {gate_url}
"#
        ),
    )
}

fn weight(status: &Value) -> u64 {
    status["weight"].as_u64().unwrap()
}

fn phase(status: &Value) -> String {
    status["phase"].as_str().unwrap().to_string()
}

fn read_state(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Weights seen by polling, checked for "never more than one step up at a time".
#[derive(Default)]
struct WeightLog {
    seen: Vec<u64>,
}

impl WeightLog {
    fn push(&mut self, w: u64) {
        if let Some(&last) = self.seen.last() {
            assert!(
                w <= last + 10,
                "weight jumped from {last} to {w}: more than one step of 10 (seen: {:?})",
                self.seen
            );
        }
        if self.seen.last() != Some(&w) {
            self.seen.push(w);
        }
    }

    fn increases(&self) -> usize {
        self.seen.windows(2).filter(|p| p[1] > p[0]).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_resumes_at_the_persisted_weight_with_a_higher_generation() {
    let (fakes_server, fakes) = start_fakes().await;
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    write_spec(
        &canaries,
        "podinfo.yaml",
        &gated_canary_yaml(&fakes_server.url("/gate")),
    );
    let state_file = dir.path().join("state.json");
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", state_file.display()),
        format!("--prometheus={}", fakes_server.url("")),
        "--metrics-set=veer".to_string(),
    ];

    let first = Controller::start(&args, dir.path().join("first.log")).await;
    let answer = first.revision(KEY, "v1").await;
    assert_eq!(phase(&answer), "Initialized", "{answer}");
    first.revision(KEY, "v2").await;

    // Let the run climb to at least 20 with the gate open.
    let mut weights = WeightLog::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = first.canary(KEY).await;
        weights.push(weight(&s));
        if weight(&s) >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "weight 20 not reached: {s}");
        tokio::time::sleep(POLL).await;
    }

    // Close the gate and wait until two passes have been refused: the weight is still.
    fakes.gate.open.store(false, Ordering::SeqCst);
    fakes.two_more_gate_calls("two refused gate calls").await;
    let before = first.canary(KEY).await;
    weights.push(weight(&before));
    assert_eq!(phase(&before), "Progressing", "{before}");
    assert!(
        before["message"]
            .as_str()
            .unwrap()
            .contains("waiting for traffic increase approval"),
        "{before}"
    );
    let table_before = first.table().await.expect("a table is served");
    let generation_before = table_before["generation"].as_u64().unwrap();
    let persisted = read_state(&state_file);
    let persisted_weight = persisted["canaries"][KEY]["weight"].as_u64().unwrap();
    assert_eq!(persisted_weight, weight(&before), "state file: {persisted}");
    assert_eq!(
        persisted["tableGeneration"].as_u64().unwrap(),
        generation_before,
        "the served generation is the persisted one"
    );
    assert_eq!(
        table_before["routes"][0]["weight"].as_u64().unwrap(),
        persisted_weight * 100
    );

    // Crash.
    drop(first);

    let mut second = Controller::start(&args, dir.path().join("second.log")).await;
    let table_after = second.table().await.expect("a table right after restart");
    let generation_after = table_after["generation"].as_u64().unwrap();
    assert!(
        generation_after > generation_before,
        "generation after restart {generation_after} must be above {generation_before}"
    );
    assert_eq!(
        table_after["routes"][0]["weight"].as_u64().unwrap(),
        persisted_weight * 100,
        "the first table after restart carries the persisted weight: {table_after}"
    );
    let after = second.canary(KEY).await;
    assert_eq!(weight(&after), persisted_weight, "{after}");
    assert_eq!(phase(&after), "Progressing", "{after}");
    assert_eq!(after["canaryRevision"], "v2");
    assert_eq!(after["primaryRevision"], "v1");

    // With the gate still closed, passes run but the weight does not move.
    fakes
        .two_more_gate_calls("two refused gate calls after restart")
        .await;
    let held = second.canary(KEY).await;
    assert_eq!(weight(&held), persisted_weight, "{held}");
    weights.push(weight(&held));

    // Open the gate: the run continues one step per passing analysis, to Succeeded.
    fakes.gate.open.store(true, Ordering::SeqCst);
    let increases_before = weights.increases();
    let mut max_weight = 0;
    let mut generation_seen = generation_after;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        second.assert_running();
        let s = second.canary(KEY).await;
        weights.push(weight(&s));
        max_weight = max_weight.max(weight(&s));
        if let Some(t) = second.table().await {
            let g = t["generation"].as_u64().unwrap();
            assert!(
                g >= generation_seen,
                "generation went back from {generation_seen} to {g}"
            );
            generation_seen = g;
        }
        if phase(&s) == "Succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "not Succeeded in time: {s}");
        tokio::time::sleep(POLL).await;
    }
    let done = second.canary(KEY).await;
    assert_eq!(weight(&done), 0);
    assert_eq!(done["primaryRevision"], "v2");
    assert_eq!(
        max_weight, 50,
        "the run reached maxWeight: {:?}",
        weights.seen
    );
    // Every rise seen, before and after the kill, followed a passing analysis at the previous
    // weight in the controller's own record (both runs' logs; the line is written before
    // the transition is saved). The run rose at least 0 -> 10 -> 20 before the kill and on
    // to 50 after it, so the check covers raises on both sides of the restart.
    let log = [
        std::fs::read_to_string(dir.path().join("first.log")).unwrap(),
        std::fs::read_to_string(dir.path().join("second.log")).unwrap(),
    ]
    .concat();
    let passes = passes(&log, KEY).unwrap();
    check_raises(&weights.seen, &passes).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        weights.increases() > increases_before && increases_before >= 2,
        "raises on both sides of the restart: {:?}",
        weights.seen
    );
    assert!(generation_seen > generation_after);
    let persisted = read_state(&state_file);
    assert_eq!(persisted["canaries"][KEY]["phase"], "Succeeded");
    assert!(persisted["tableGeneration"].as_u64().unwrap() >= generation_seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_the_controller_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    write_spec(
        &canaries,
        "podinfo.yaml",
        &gated_canary_yaml("http://127.0.0.1:9/gate"),
    );
    let cases = [
        (
            "truncated",
            "{\"version\": 1, \"tableGeneration\": 4, \"canaries\": {",
        ),
        ("empty", ""),
        ("not JSON", "phase: Progressing\n"),
        ("newer format", "{\"version\": 2, \"tableGeneration\": 4}"),
    ];
    for (what, content) in cases {
        let state_file = dir
            .path()
            .join(format!("state-{}.json", what.replace(' ', "-")));
        std::fs::write(&state_file, content).unwrap();
        let port = support::free_port().unwrap();
        let output = run_veer(
            &[
                "controller",
                &format!("--canaries={}", canaries.display()),
                &format!("--state={}", state_file.display()),
                &format!("--listen=127.0.0.1:{port}"),
            ],
            Duration::from_secs(30),
        );
        let stderr = text(&output.stderr);
        assert!(
            !output.status.success(),
            "{what}: exited successfully; {stderr}"
        );
        assert!(
            stderr.contains(&state_file.display().to_string()),
            "{what}: the message must name the state file; stderr:\n{stderr}"
        );
        let error_line = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{what}: no `error:` line in:\n{stderr}"));
        assert!(error_line.contains("state file"), "{what}: {error_line}");
        // Never a silent reset: the file is left as it was.
        assert_eq!(
            std::fs::read_to_string(&state_file).unwrap(),
            content,
            "{what}"
        );
    }
}

fn plain_canary(name: &str) -> String {
    canary_yaml(
        name,
        "    interval: 1s\n    maxWeight: 100\n    stepWeight: 5\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rescans_and_sigterm_stops_with_a_consistent_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    write_spec(&canaries, "app.yaml", &plain_canary("app"));
    let state_file = dir.path().join("state.json");
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", state_file.display()),
        // Only SIGHUP re-reads the directory in this test.
        "--rescan-interval=1h".to_string(),
    ];
    let mut controller = Controller::start(&args, dir.path().join("first.log")).await;
    controller.revision("test/app", "v1").await;
    controller.revision("test/app", "v2").await;
    poll_until_async("weight 10", Duration::from_secs(30), POLL, || async {
        let s = controller.canary("test/app").await;
        (weight(&s) >= 10)
            .then_some(())
            .ok_or(format!("{} at {}", phase(&s), weight(&s)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    write_spec(&canaries, "web.yaml", &plain_canary("web"));
    controller.signal("HUP");
    poll_until_async(
        "test/web loaded after SIGHUP",
        Duration::from_secs(30),
        POLL,
        || async {
            let table = controller.table().await.unwrap();
            let names: Vec<String> = table["routes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect();
            (names == ["test/app", "test/web"])
                .then_some(())
                .ok_or(format!("{names:?}"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(phase(&controller.canary("test/web").await), "Initializing");

    // Paused, so the weight after the restart is a fixed value, not a race with a pass.
    let (code, paused) = controller
        .post("/v1/canaries/test/app/pause", json!({}), None)
        .await;
    assert_eq!(code, 200, "{paused}");
    let generation_seen = controller.table().await.unwrap()["generation"]
        .as_u64()
        .unwrap();
    controller.signal("TERM");
    let status = tokio::task::block_in_place(|| controller.wait_exit(Duration::from_secs(20)));
    assert!(
        status.success(),
        "exit {status}; log:\n{}",
        controller.log_text()
    );
    assert!(
        controller.log_text().contains("SIGTERM"),
        "{}",
        controller.log_text()
    );
    let saved = read_state(&state_file);
    assert!(saved["tableGeneration"].as_u64().unwrap() >= generation_seen);
    let saved_weight = saved["canaries"]["test/app"]["weight"].as_u64().unwrap();
    assert!(saved_weight >= 10, "{saved}");
    assert!(saved["canaries"].get("test/web").is_some(), "{saved}");
    // No temp file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(controller);

    let again = Controller::start(&args, dir.path().join("second.log")).await;
    let table = again.table().await.unwrap();
    assert!(table["generation"].as_u64().unwrap() > saved["tableGeneration"].as_u64().unwrap());
    assert_eq!(
        table["routes"][0]["weight"].as_u64().unwrap(),
        saved_weight * 100,
        "{table}"
    );
    let app = again.canary("test/app").await;
    assert_eq!(app["paused"], true);
    assert_eq!(weight(&app), saved_weight);
}
