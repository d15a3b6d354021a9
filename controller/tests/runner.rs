#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The runner through its library API, with real HTTP for hooks and a fake Prometheus
//! served by the test: a failed state write takes no transition, a command during a pass
//! wins over the pass, a failing metric rolls back at the threshold with Flagger's payloads
//! to the hooks, and spec re-scans keep or withdraw canaries as documented.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{any, post};
use axum::Json;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use support::canary::quick_canary_yaml;
use support::http::{Recorder, TestServer};
use support::prometheus::one_sample_answer;
use support::POLL;
use tokio::sync::Semaphore;
use veer_controller::checks::prometheus::{MetricsSet, PrometheusClient};
use veer_controller::platform::local::{load_state_file, LocalPlatform};
use veer_controller::runner::{Runner, RunnerConfig};
use veer_controller::serve::api::{CanaryControl, Command, CommandError};
use veer_controller::spec::{load_texts, LoadOptions, SpecSet};
use veer_testkit::poll_until_async;

const DEADLINE: Duration = Duration::from_secs(30);

/// Hooks and Prometheus for one test: hooks record `(path, payload)`; `/hold` waits for a
/// permit of `release` before answering; the query answers `value`.
#[derive(Clone)]
struct Fakes {
    calls: Recorder<(String, Value)>,
    release: Arc<Semaphore>,
    value: Arc<AtomicU64>,
}

async fn hook(
    State(f): State<Fakes>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Json(payload): Json<Value>,
) -> StatusCode {
    f.calls.push((name.clone(), payload));
    if name == "hold" {
        let _permit = f.release.acquire().await.unwrap();
        f.calls.push(("hold-released".into(), Value::Null));
    }
    if name.starts_with("fail") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

async fn query(State(f): State<Fakes>) -> Json<Value> {
    let value = f64::from_bits(f.value.load(Ordering::SeqCst));
    Json(one_sample_answer(&value.to_string()))
}

async fn start_fakes(value: f64) -> (TestServer, Fakes) {
    let fakes = Fakes {
        calls: Recorder::default(),
        release: Arc::new(Semaphore::new(0)),
        value: Arc::new(AtomicU64::new(value.to_bits())),
    };
    let app = axum::Router::new()
        .route("/hooks/{name}", post(hook))
        .route("/api/v1/query", any(query))
        .with_state(fakes.clone());
    (TestServer::start(app).await, fakes)
}

/// The specs here run 1s passes, as the controller does with `--min-interval 1s`.
const QUICK_LOAD: LoadOptions = LoadOptions {
    min_interval: Duration::from_secs(1),
};

fn specs(files: &[(&str, String)]) -> SpecSet {
    let inputs: Vec<_> = files
        .iter()
        .map(|(f, text)| (Path::new(f).to_path_buf(), text.clone()))
        .collect();
    load_texts(&inputs, &QUICK_LOAD)
}

async fn start(
    state_file: &Path,
    set: &SpecSet,
    prometheus: Option<&str>,
) -> (Arc<Runner>, Registry) {
    let mut registry = Registry::default();
    let config = RunnerConfig {
        metrics_set: MetricsSet::Veer,
        prometheus: prometheus.map(|p| PrometheusClient::new(p).unwrap()),
        gateway_ttl: Duration::from_secs(60),
    };
    let saved = load_state_file(state_file).unwrap();
    let platform = Arc::new(LocalPlatform::new(state_file.to_path_buf()));
    let restored = saved.map(|s| s.restored()).unwrap_or_default();
    let runner = Runner::start(
        config,
        platform,
        restored,
        set.canaries.clone(),
        &mut registry,
    )
    .await
    .unwrap();
    (runner, registry)
}

fn status(runner: &Runner, key: &str) -> Value {
    let (ns, name) = key.split_once('/').unwrap();
    runner.get(ns, name).unwrap().unwrap_or(Value::Null)
}

fn command(runner: &Runner, key: &str, cmd: Command) -> Result<Value, CommandError> {
    let (ns, name) = key.split_once('/').unwrap();
    tokio::task::block_in_place(|| runner.command(ns, name, cmd))
}

fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// The value of one sample line `name{labels} value`, 0 when absent.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn wait_for(runner: &Runner, key: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    poll_until_async(what, DEADLINE, POLL, || {
        let s = status(runner, key);
        let ok = pred(&s);
        async move {
            if ok {
                Ok(s)
            } else {
                Err(format!(
                    "{} at {}: {}",
                    s["phase"], s["weight"], s["message"]
                ))
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn read_state(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_state_write_takes_no_transition_and_the_run_resumes_after() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let set = specs(&[("app.yaml", quick_canary_yaml("app", ""))]);
    let (runner, registry) = start(&state_file, &set, None).await;
    let key = "test/app";
    command(&runner, key, Command::Revision("v1".into())).unwrap();
    command(&runner, key, Command::Revision("v2".into())).unwrap();
    wait_for(&runner, key, "weight 10", |s| {
        s["weight"].as_u64() >= Some(10)
    })
    .await;

    // A directory where the state file was: every write now fails at the rename.
    std::fs::remove_file(&state_file).unwrap();
    std::fs::create_dir(&state_file).unwrap();
    std::fs::write(state_file.join("blocker"), "x").unwrap();
    let prefix = "veer_analysis_passes_total{canary=\"test/app\",outcome=\"not_saved\"}";
    let frozen = status(&runner, key);
    let generation = runner.hub().generation();
    poll_until_async("two passes not saved", DEADLINE, POLL, || {
        let n = sample(&metrics_text(&registry), prefix);
        async move { (n >= 2.0).then_some(()).ok_or(format!("{n}")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let still = status(&runner, key);
    assert_eq!(
        still["weight"], frozen["weight"],
        "the weight moved without a saved state"
    );
    assert_eq!(still["lastPassTime"], frozen["lastPassTime"]);
    assert_eq!(
        runner.hub().generation(),
        generation,
        "a table was served without being saved"
    );
    let refused = command(&runner, key, Command::Pause).unwrap_err();
    assert!(
        matches!(refused, CommandError::Unavailable(_)),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("state.json"), "{refused}");
    assert_eq!(status(&runner, key)["paused"], false);

    // Writable again: the run goes on from where it was, and the file matches.
    std::fs::remove_dir_all(&state_file).unwrap();
    let w = frozen["weight"].as_u64().unwrap();
    let moved = wait_for(&runner, key, "the run resumes", |s| {
        s["weight"].as_u64() > Some(w)
    })
    .await;
    assert_eq!(
        moved["weight"].as_u64(),
        Some(w + 10),
        "one step, not a catch-up jump"
    );
    let saved = read_state(&state_file);
    assert!(
        saved["canaries"][key]["weight"].as_u64() >= Some(w + 10),
        "{saved}"
    );
    assert!(saved["tableGeneration"].as_u64().unwrap() > generation);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_during_a_pass_wins_and_the_pass_is_dropped() {
    let (server, fakes) = start_fakes(100.0).await;
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let hooks = format!(
        "    webhooks:\n      - name: slow-acceptance\n        type: pre-rollout\n        url: {}\n",
        server.url("/hooks/hold")
    );
    let set = specs(&[("app.yaml", quick_canary_yaml("app", &hooks))]);
    let (runner, registry) = start(&state_file, &set, None).await;
    let key = "test/app";
    command(&runner, key, Command::Revision("v1".into())).unwrap();
    command(&runner, key, Command::Revision("v2".into())).unwrap();
    // The pre-rollout pass is now waiting in the hook.
    poll_until_async("the pre-rollout hook is called", DEADLINE, POLL, || {
        let n = fakes
            .calls
            .all()
            .iter()
            .filter(|(p, _)| p == "hold")
            .count();
        async move { (n >= 1).then_some(()).ok_or("not yet".to_string()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rolled_back = command(&runner, key, Command::Rollback).unwrap();
    assert_eq!(rolled_back["phase"], "Failed");
    fakes.release.add_permits(1);
    let prefix = "veer_analysis_passes_total{canary=\"test/app\",outcome=\"stale\"}";
    poll_until_async("the pass is dropped as stale", DEADLINE, POLL, || {
        let n = sample(&metrics_text(&registry), prefix);
        async move { (n >= 1.0).then_some(()).ok_or(format!("{n}")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let after = status(&runner, key);
    assert_eq!(after["phase"], "Failed", "{after}");
    assert_eq!(
        after["weight"], 0,
        "the dropped pass must not raise the weight"
    );
    assert_eq!(read_state(&state_file)["canaries"][key]["phase"], "Failed");
    assert_eq!(runner.hub().current().routes[0].weight, 0);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_metric_rolls_back_at_the_threshold_with_flagger_payloads() {
    let (server, fakes) = start_fakes(42.5).await;
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let extra = format!(
        r#"    metrics:
      - name: request-success-rate
        thresholdRange:
          min: 99
    webhooks:
      - name: load-test
        type: rollout
        url: {rollout}
        metadata:
          cmd: "hey -z 1m http://app-canary.test/"
      - name: notify
        type: post-rollout
        url: {post}
      - name: events
        type: event
        url: {event}
"#,
        rollout = server.url("/hooks/rollout"),
        post = server.url("/hooks/post-rollout"),
        event = server.url("/hooks/event"),
    );
    let set = specs(&[("app.yaml", quick_canary_yaml("app", &extra))]);
    let (runner, registry) = start(&state_file, &set, Some(&server.url(""))).await;
    let key = "test/app";
    command(&runner, key, Command::Revision("v1".into())).unwrap();
    command(&runner, key, Command::Revision("v2".into())).unwrap();
    // Pre-rollout at weight 0 runs no metrics, so the run reaches 10, then the metric
    // fails twice (threshold 2) and the next pass rolls back.
    let failed = wait_for(&runner, key, "Failed", |s| s["phase"] == "Failed").await;
    assert_eq!(failed["weight"], 0);
    assert_eq!(failed["failedRevision"], "v2");
    assert_eq!(failed["primaryRevision"], "v1");
    let text = metrics_text(&registry);
    assert_eq!(
        sample(
            &text,
            "veer_analysis_checks_total{canary=\"test/app\",kind=\"metric\",check=\"request-success-rate\",result=\"fail\"}"
        ),
        2.0,
        "{text}"
    );
    poll_until_async("post-rollout hook", DEADLINE, POLL, || {
        let n = fakes
            .calls
            .all()
            .iter()
            .filter(|(p, _)| p == "post-rollout")
            .count();
        async move { (n >= 1).then_some(()).ok_or("not yet".to_string()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let calls = fakes.calls.all();
    let rollout = &calls.iter().find(|(p, _)| p == "rollout").unwrap().1;
    assert_eq!(
        rollout,
        &json!({"name": "app", "namespace": "test", "phase": "Progressing", "checksum": "v2",
                "metadata": {"cmd": "hey -z 1m http://app-canary.test/"}})
    );
    let post_rollout = &calls.iter().find(|(p, _)| p == "post-rollout").unwrap().1;
    assert_eq!(post_rollout["phase"], "Failed", "{post_rollout}");
    assert!(
        post_rollout.get("metadata").is_none(),
        "empty metadata is omitted"
    );
    let events: Vec<&Value> = calls
        .iter()
        .filter(|(p, _)| p == "event")
        .map(|(_, v)| v)
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["metadata"]["eventType"] == "Warning"
                && e["metadata"]["eventMessage"]
                    .as_str()
                    .unwrap()
                    .contains("42.5")),
        "a warning event names the failing value: {events:?}"
    );
    assert!(events
        .iter()
        .all(|e| e["metadata"]["timestamp"].as_str().is_some()));
    let last = status(&runner, key);
    // The rollback pass runs no checks, so the status still shows the failing one.
    let check = last["lastChecks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "request-success-rate")
        .unwrap_or_else(|| panic!("{last}"))
        .clone();
    assert_eq!(check["passed"], false);
    assert_eq!(check["value"], 42.5);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescans_withdraw_removed_canaries_keep_broken_ones_and_restore_returning_ones() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let app = quick_canary_yaml("app", "");
    let web = quick_canary_yaml("web", "");
    let set = specs(&[("app.yaml", app.clone()), ("web.yaml", web.clone())]);
    let (runner, _registry) = start(&state_file, &set, None).await;
    command(&runner, "test/web", Command::Revision("w1".into())).unwrap();
    command(&runner, "test/web", Command::Revision("w2".into())).unwrap();
    command(&runner, "test/web", Command::Pause).unwrap();
    let routes = |r: &Runner| -> Vec<String> {
        r.hub()
            .current()
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect()
    };
    assert_eq!(routes(&runner), ["test/app", "test/web"]);

    // web.yaml broken: web keeps running on its last good spec.
    let broken = specs(&[
        ("app.yaml", app.clone()),
        (
            "web.yaml",
            web.replace("stepWeight: 10", "stepWeight: [10]"),
        ),
    ]);
    assert!(broken.errors().next().is_some());
    runner.reload(&broken).await.unwrap();
    assert_eq!(routes(&runner), ["test/app", "test/web"]);
    assert_eq!(status(&runner, "test/web")["paused"], true);

    // web.yaml gone: its route is withdrawn, its state stays in the file.
    let generation = runner.hub().generation();
    runner
        .reload(&specs(&[("app.yaml", app.clone())]))
        .await
        .unwrap();
    assert_eq!(routes(&runner), ["test/app"]);
    assert!(runner.hub().generation() > generation);
    assert_eq!(status(&runner, "test/web"), Value::Null);
    let saved = read_state(&state_file);
    assert_eq!(
        saved["canaries"]["test/web"]["canaryRevision"], "w2",
        "{saved}"
    );
    assert_eq!(saved["canaries"]["test/web"]["paused"], true);

    // Back again: it resumes from its saved state.
    runner
        .reload(&specs(&[("app.yaml", app), ("web.yaml", web)]))
        .await
        .unwrap();
    assert_eq!(routes(&runner), ["test/app", "test/web"]);
    let back = status(&runner, "test/web");
    assert_eq!(back["canaryRevision"], "w2");
    assert_eq!(back["primaryRevision"], "w1");
    assert_eq!(back["paused"], true);
    runner.shutdown().await;

    // And a restart restores the same, serving a generation above the saved one.
    let saved_generation = read_state(&state_file)["tableGeneration"].as_u64().unwrap();
    let set = specs(&[
        ("app.yaml", quick_canary_yaml("app", "")),
        ("web.yaml", quick_canary_yaml("web", "")),
    ]);
    let (again, _registry) = start(&state_file, &set, None).await;
    assert_eq!(status(&again, "test/web")["canaryRevision"], "w2");
    assert!(again.hub().generation() > saved_generation);
    again.shutdown().await;
}
