#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Faults around the real `veer controller` binary:
//!
//! - `kill -9` at every phase of one run (Progressing at 10, 20 and 30, WaitingPromotion,
//!   Promoting, Finalising, Succeeded): each restart resumes from the state file, the weight
//!   only ever rises with an approved, passing analysis, and the promotion happens once;
//! - the state directory turns read-only, then the disk is full (a file-size limit on the
//!   running process): transitions are not taken, the failure is logged and counted and
//!   retried, commands answer 503, and what the API shows never runs ahead of the file;
//! - a real Prometheus stops mid-run: the checks fail with the transport error, and the run
//!   rolls back after `threshold` failed checks, without a crash.
//!
//! restart.rs covers one SIGKILL in Progressing and corrupt state files; analysis.rs proves
//! the same invariants over every saved state of the pure state machine.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Json as JsonBody;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{json, Value};
use support::canary::{canary_yaml_with_service, PODINFO_SERVICE};
use support::http::{Gate, TestServer};
use support::immutable_dir::ImmutableDir;
use support::prometheus::counted_query_route;
use support::veer::{canaries_dir, write_spec, Controller};
use support::POLL;
use veer_testkit::passes::{check_raises, passes};
use veer_testkit::poll_until_async;

const KEY: &str = "test/podinfo";

/// The fake Prometheus and the webhooks. `traffic_budget` is how many weight increases the
/// confirm-traffic-increase gate still approves (-1: all); each approval uses one.
#[derive(Default)]
struct Fakes {
    queries: Arc<AtomicUsize>,
    traffic_budget: AtomicI64,
    traffic_calls: AtomicUsize,
    promotion: Arc<Gate>,
    post_rollout: Mutex<Vec<String>>,
}

async fn start_fakes() -> (TestServer, Arc<Fakes>) {
    let fakes = Arc::new(Fakes::default());
    let (t, r) = (fakes.clone(), fakes.clone());
    let app = axum::Router::new()
        .route(
            "/api/v1/query",
            counted_query_route(fakes.queries.clone(), "99.9"),
        )
        .route(
            "/gate/traffic",
            post(move || {
                let t = t.clone();
                async move {
                    t.traffic_calls.fetch_add(1, Ordering::SeqCst);
                    let approved = t
                        .traffic_budget
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| match b {
                            -1 => Some(-1),
                            0 => None,
                            b => Some(b - 1),
                        })
                        .is_ok();
                    if approved {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        )
        .route("/gate/promotion", fakes.promotion.route())
        .route(
            "/hook/post",
            post(move |JsonBody(body): JsonBody<Value>| {
                let r = r.clone();
                async move {
                    r.post_rollout
                        .lock()
                        .unwrap()
                        .push(body["phase"].as_str().unwrap_or("").to_string());
                    StatusCode::OK
                }
            }),
        );
    (TestServer::start(app).await, fakes)
}

fn canary_yaml(fakes: &TestServer, promotion_step: bool) -> String {
    let promotion = if promotion_step {
        "    stepWeightPromotion: 10\n"
    } else {
        ""
    };
    canary_yaml_with_service(
        "podinfo",
        PODINFO_SERVICE,
        &format!(
            r#"    interval: 1s
    threshold: 3
    maxWeight: 30
    stepWeight: 10
{promotion}    metrics:
      - name: request-success-rate
        interval: 1m
        thresholdRange:
          min: 99
    webhooks:
      - name: traffic-gate
        type: confirm-traffic-increase
        url: {traffic}
      - name: promotion-gate
        type: confirm-promotion
        url: {promotion_url}
      - name: notify
        type: post-rollout
        url: {post}
"#,
            traffic = fakes.url("/gate/traffic"),
            promotion_url = fakes.url("/gate/promotion"),
            post = fakes.url("/hook/post"),
        ),
    )
}

struct Setup {
    dir: tempfile::TempDir,
    args: Vec<String>,
    state_file: PathBuf,
}

fn setup(fakes: &TestServer, promotion_step: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    write_spec(
        &canaries,
        "podinfo.yaml",
        &canary_yaml(fakes, promotion_step),
    );
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    let state_file = state_dir.join("state.json");
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", state_file.display()),
        format!("--prometheus={}", fakes.url("")),
        "--metrics-set=veer".to_string(),
    ];
    Setup {
        dir,
        args,
        state_file,
    }
}

fn persisted(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn persisted_canary(path: &Path) -> (String, u64) {
    let file = persisted(path);
    let c = &file["canaries"][KEY];
    (
        c["phase"].as_str().unwrap().to_string(),
        c["weight"].as_u64().unwrap(),
    )
}

fn phase_weight(s: &Value) -> (String, u64) {
    (
        s["phase"].as_str().unwrap().to_string(),
        s["weight"].as_u64().unwrap(),
    )
}

async fn wait_for(
    c: &Controller,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = c.canary(KEY).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}; status: {s}\nlog:\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Weights seen across every restart, each checked when it is seen against the
/// controller's own record of its passes (`veer_testkit::passes`).
#[derive(Default)]
struct Seen {
    weights: Vec<u64>,
}

impl Seen {
    /// Records a weight the API just showed. A rise must already have its passing analysis
    /// at the previous weight in the controller's logs (every run so far, in order): the
    /// controller writes that line before it saves the transition, so before anyone can
    /// see the new weight, also when it is killed right after the save.
    fn push(&mut self, w: u64, s: &Setup) {
        if self.weights.last() == Some(&w) {
            return;
        }
        self.weights.push(w);
        let log = run_logs(s);
        let passes = passes(&log, KEY).unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = check_raises(&self.weights, &passes) {
            panic!("{e}");
        }
    }

    fn rises(&self) -> usize {
        self.weights.windows(2).filter(|p| p[1] > p[0]).count()
    }
}

/// The logs of every controller run of `s` so far (`run-0.log`, `run-1.log`, ...), in order.
fn run_logs(s: &Setup) -> String {
    (0..)
        .map(|n| s.dir.path().join(format!("run-{n}.log")))
        .take_while(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// SIGKILLs the controller and starts it again from the same state file, counting the
/// restart; returns the new process and what the file said at the moment of the kill. The
/// first table served after the restart must have a higher generation than before it.
async fn kill_and_restart(
    c: Controller,
    s: &Setup,
    restarts: &mut usize,
) -> (Controller, (String, u64)) {
    let generation_before = generation(&c).await;
    *restarts += 1;
    let n = *restarts;
    drop(c); // ChildGuard: SIGKILL + reap
    let at_kill = persisted_canary(&s.state_file);
    let c = Controller::start(&s.args, s.dir.path().join(format!("run-{n}.log"))).await;
    let table = c.table().await.expect("a table is served after restart");
    assert!(
        table["generation"].as_u64().unwrap() > generation_before,
        "restart {n}: generation {} not above {generation_before}",
        table["generation"]
    );
    (c, at_kill)
}

async fn generation(c: &Controller) -> u64 {
    c.table().await.unwrap()["generation"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_phase_resumes_and_promotes_once() {
    let (server, fakes) = start_fakes().await;
    let s = setup(&server, true);
    let mut c = Controller::start(&s.args, s.dir.path().join("run-0.log")).await;
    c.revision(KEY, "v1").await;
    c.revision(KEY, "v2").await;
    let mut seen = Seen::default();
    seen.push(0, &s);
    let mut restarts = 0;

    // Progressing at 10, 20 and 30: one approval each, then a refused gate call proves a pass
    // ran (and was saved) at that weight.
    for target in [10u64, 20, 30] {
        let calls = fakes.traffic_calls.load(Ordering::SeqCst);
        fakes.traffic_budget.store(1, Ordering::SeqCst);
        let st = wait_for(
            &c,
            &format!("weight {target}"),
            Duration::from_secs(20),
            |st| st["weight"] == target,
        )
        .await;
        seen.push(target, &s);
        assert_eq!(st["phase"], "Progressing", "{st}");
        if target < 30 {
            poll_until_async(
                "a refused gate call",
                Duration::from_secs(10),
                POLL,
                || async {
                    (fakes.traffic_calls.load(Ordering::SeqCst) > calls + 1)
                        .then_some(())
                        .ok_or_else(|| "not yet".to_string())
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let (c2, at_kill) = kill_and_restart(c, &s, &mut restarts).await;
        c = c2;
        let after = c.canary(KEY).await;
        assert_eq!(
            phase_weight(&after),
            at_kill,
            "restart {restarts} (Progressing at {target}) resumes from the file"
        );
        if target < 30 {
            assert_eq!(at_kill, ("Progressing".to_string(), target));
        }
        seen.push(after["weight"].as_u64().unwrap(), &s);
    }

    // At maxWeight one more analysis, then the closed promotion gate: WaitingPromotion.
    let st = wait_for(&c, "WaitingPromotion", Duration::from_secs(20), |st| {
        st["phase"] == "WaitingPromotion"
    })
    .await;
    assert_eq!(st["weight"], 30);
    let (c2, at_kill) = kill_and_restart(c, &s, &mut restarts).await;
    c = c2;
    assert_eq!(at_kill, ("WaitingPromotion".to_string(), 30));
    let after = c.canary(KEY).await;
    assert_eq!(phase_weight(&after), at_kill);
    assert_eq!(after["primaryRevision"], "v1", "not promoted yet");
    assert!(fakes.post_rollout.lock().unwrap().is_empty());

    // Promoting (30 -> 20 -> 10 -> 0 with stepWeightPromotion 10): killed on sight.
    fakes.promotion.open.store(true, Ordering::SeqCst);
    let st = wait_for(&c, "Promoting", Duration::from_secs(20), |st| {
        st["phase"] == "Promoting"
    })
    .await;
    seen.push(st["weight"].as_u64().unwrap(), &s);
    let (c2, at_kill) = kill_and_restart(c, &s, &mut restarts).await;
    c = c2;
    assert_eq!(at_kill.0, "Promoting");
    let after = c.canary(KEY).await;
    let (phase, weight) = phase_weight(&after);
    assert!(
        ["Promoting", "Finalising"].contains(&phase.as_str()) && weight <= at_kill.1,
        "after a kill in Promoting at {}: {phase} at {weight}",
        at_kill.1
    );
    assert_eq!(after["primaryRevision"], "v2");

    // Finalising: one interval; killed on sight.
    let st = wait_for(&c, "Finalising", Duration::from_secs(20), |st| {
        st["phase"] == "Finalising"
    })
    .await;
    assert_eq!(st["weight"], 0);
    let (c2, at_kill) = kill_and_restart(c, &s, &mut restarts).await;
    c = c2;
    assert_eq!(at_kill, ("Finalising".to_string(), 0));
    let after = c.canary(KEY).await;
    assert!(
        ["Finalising", "Succeeded"].contains(&after["phase"].as_str().unwrap()),
        "{after}"
    );
    assert_eq!(after["weight"], 0);

    // Succeeded, then one more kill: nothing repeats.
    wait_for(&c, "Succeeded", Duration::from_secs(20), |st| {
        st["phase"] == "Succeeded"
    })
    .await;
    poll_until_async(
        "the post-rollout hook",
        Duration::from_secs(10),
        POLL,
        || async {
            (!fakes.post_rollout.lock().unwrap().is_empty())
                .then_some(())
                .ok_or_else(|| "not called".to_string())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let promotion_calls = fakes.promotion.calls.load(Ordering::SeqCst);
    let queries = fakes.queries.load(Ordering::SeqCst);
    let (c2, at_kill) = kill_and_restart(c, &s, &mut restarts).await;
    c = c2;
    assert_eq!(at_kill, ("Succeeded".to_string(), 0));
    // An observation window of three intervals: a repeated promotion would show in it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = c.canary(KEY).await;
    assert_eq!(phase_weight(&done), ("Succeeded".to_string(), 0));
    assert_eq!(done["primaryRevision"], "v2");
    assert_eq!(
        *fakes.post_rollout.lock().unwrap(),
        vec!["Succeeded".to_string()],
        "post-rollout ran exactly once for the run, across {restarts} kills"
    );
    assert_eq!(
        fakes.promotion.calls.load(Ordering::SeqCst),
        promotion_calls,
        "no confirm-promotion after Succeeded"
    );
    assert_eq!(
        fakes.queries.load(Ordering::SeqCst),
        queries,
        "no analysis after Succeeded"
    );
    // Every rise of the weight followed a passing analysis at the previous weight, in the
    // controller's own record across all 7 kills (checked at each sighting above, and here
    // once more over the whole run). The check is not vacuous: the run rose 0 -> 10 -> 20
    // -> 30, each rise seen, and veer_testkit's own tests show it catches a rise without
    // such a pass.
    let passes = passes(&run_logs(&s), KEY).unwrap();
    check_raises(&seen.weights, &passes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen.rises(), 3, "weights seen: {:?}", seen.weights);
    assert!(
        passes.iter().all(|p| p.next_weight <= p.weight || p.passed),
        "a pass that did not pass raised the weight: {passes:#?}"
    );
    c.assert_running();
}

// ---------------------------------------------------------------------------------------
// State directory read-only, disk full

/// The passes counted as run but not saved, from the controller's `/metrics`.
async fn not_saved_passes(c: &Controller) -> f64 {
    c.metrics_text()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("veer_analysis_passes_total{") && l.contains("outcome=\"not_saved\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The fault is on while the guard lives.
trait StateFault {
    fn name(&self) -> &'static str;
    fn expected_error(&self) -> &'static str;
}

impl StateFault for ImmutableDir {
    fn name(&self) -> &'static str {
        "read-only state directory"
    }
    fn expected_error(&self) -> &'static str {
        "Operation not permitted"
    }
}

/// RLIMIT_FSIZE on the running controller: writing the state file past 256 bytes fails
/// with EFBIG, as a full disk fails with ENOSPC. Only the soft limit is lowered, so it can be
/// raised again without CAP_SYS_RESOURCE.
struct FileSizeLimit(u32);

impl FileSizeLimit {
    fn set(pid: u32) -> FileSizeLimit {
        let out = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), "--fsize=256:unlimited"])
            .output()
            .unwrap_or_else(|e| panic!("prlimit is missing ({e}): apt-get install -y util-linux"));
        assert!(
            out.status.success(),
            "prlimit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FileSizeLimit(pid)
    }
}

impl StateFault for FileSizeLimit {
    fn name(&self) -> &'static str {
        "full disk (file-size limit)"
    }
    fn expected_error(&self) -> &'static str {
        "File too large"
    }
}

impl Drop for FileSizeLimit {
    fn drop(&mut self) {
        let _ = Command::new("prlimit")
            .args(["--pid", &self.0.to_string(), "--fsize=unlimited:unlimited"])
            .status();
    }
}

async fn state_write_failure_holds_the_transition(full_disk: bool) {
    let (server, fakes) = start_fakes().await;
    fakes.traffic_budget.store(-1, Ordering::SeqCst);
    let s = setup(&server, false);
    let c = Controller::start_ignoring_sigxfsz(&s.args).await;
    c.revision(KEY, "v1").await;
    c.revision(KEY, "v2").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.canary(KEY).await["weight"] != 10 {
        assert!(Instant::now() < deadline, "weight 10 not reached");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let file_before = std::fs::read(&s.state_file).unwrap();
    let not_saved_before = not_saved_passes(&c).await;
    let log_len = c.log_text().len();

    let state_dir = s.state_file.parent().unwrap().to_path_buf();
    let fault: Box<dyn StateFault> = if full_disk {
        Box::new(FileSizeLimit::set(c.pid()))
    } else {
        Box::new(ImmutableDir::set(&state_dir))
    };
    let name = fault.name();
    // Passes keep running and keep failing to save: each is counted and retried.
    poll_until_async(
        &format!("{name}: two passes not saved"),
        Duration::from_secs(15),
        POLL,
        || async {
            let n = not_saved_passes(&c).await - not_saved_before;
            // What the API shows never runs ahead of the file.
            let st = c.canary(KEY).await;
            assert_eq!(
                (
                    st["phase"].as_str().unwrap(),
                    st["weight"].as_u64().unwrap()
                ),
                ("Progressing", 10),
                "{name}: the in-memory state ran ahead of the file: {st}"
            );
            (n >= 2.0).then_some(()).ok_or(format!("{n} not saved"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read(&s.state_file).unwrap(),
        file_before,
        "{name}: the state file is untouched"
    );
    let log = c.log_text()[log_len..].to_string();
    let line = log
        .lines()
        .find(|l| l.contains("cannot save the state"))
        .unwrap_or_else(|| panic!("{name}: no error logged:\n{log}"));
    assert!(
        line.contains(&s.state_file.display().to_string()) && line.contains(fault.expected_error()),
        "{name}: the error names the file and the cause: {line}"
    );
    assert!(
        log.contains("retrying in one interval"),
        "{name}: the retry is logged:\n{log}"
    );
    // A command cannot be applied either, and says so.
    let (status, answer) = c
        .post(&format!("/v1/canaries/{KEY}/rollback"), json!({}), None)
        .await;
    assert_eq!(status, 503, "{name}: {answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("could not be saved"),
        "{answer}"
    );
    assert_eq!(c.canary(KEY).await["phase"], "Progressing");
    assert_eq!(std::fs::read(&s.state_file).unwrap(), file_before);

    // The fault clears: the retried transition is taken and saved.
    drop(fault);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = c.canary(KEY).await;
        if st["weight"].as_u64().unwrap() >= 20 {
            let (phase, weight) = persisted_canary(&s.state_file);
            assert!(
                weight >= 20 && phase == "Progressing" || phase == "WaitingPromotion",
                "{name}: file says {phase} at {weight}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no progress after the fault cleared: {st}\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_state_directory_holds_transitions_until_writable() {
    state_write_failure_holds_the_transition(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_holds_transitions_until_space_returns() {
    state_write_failure_holds_the_transition(true).await;
}

// ---------------------------------------------------------------------------------------
// Prometheus stops mid-run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stopping_mid_run_fails_checks_then_rolls_back() {
    let prometheus = support::prometheus::Prometheus::start(&[]).await;
    let prometheus_addr = prometheus.url.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    write_spec(
        &canaries,
        "podinfo.yaml",
        &canary_yaml_with_service(
            "podinfo",
            "    port: 9898\n",
            r#"    interval: 1s
    threshold: 2
    maxWeight: 50
    stepWeight: 10
    metrics:
      - name: availability
        query: vector(99.5)
        thresholdRange:
          min: 99
"#,
        ),
    );
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", dir.path().join("state.json").display()),
        format!("--prometheus={}", prometheus.url),
    ];
    let mut c = Controller::start(&args, dir.path().join("controller.log")).await;
    c.revision(KEY, "v1").await;
    c.revision(KEY, "v2").await;
    let st = wait_for(
        &c,
        "weight 20 on real Prometheus answers",
        Duration::from_secs(20),
        |st| st["weight"].as_u64().unwrap() >= 20,
    )
    .await;
    assert_eq!(st["failedChecks"], 0, "{st}");
    let weight_at_stop = st["weight"].as_u64().unwrap();

    drop(prometheus); // SIGKILL
    let st = wait_for(&c, "a failed check", Duration::from_secs(20), |st| {
        st["failedChecks"].as_u64().unwrap() >= 1
    })
    .await;
    let message = st["lastChecks"].to_string();
    assert!(
        message.contains("metric availability") && message.contains(&prometheus_addr),
        "the failed check names the metric and the Prometheus: {st}"
    );
    assert!(
        st["weight"].as_u64().unwrap() <= weight_at_stop + 10,
        "at most the pass in flight raised the weight: {st}"
    );
    let failed = wait_for(
        &c,
        "rollback after 2 failed checks",
        Duration::from_secs(20),
        |st| st["phase"] == "Failed",
    )
    .await;
    assert_eq!(failed["weight"], 0, "{failed}");
    assert_eq!(failed["failedChecks"], 0, "reset by the rollback: {failed}");
    assert_eq!(failed["primaryRevision"], "v1");
    assert_eq!(failed["failedRevision"], "v2");
    let log = c.log_text();
    // The rollback's event (engine: roll_back), logged as a warning.
    let rollback =
        "Rolling back test/podinfo revision v2: failed checks threshold reached (2 of 2)";
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains(rollback)),
        "the rollback is logged as {rollback:?}:\n{log}"
    );
    // No crash, and the API still answers.
    c.assert_running();
    let table = c.table().await.unwrap();
    assert_eq!(table["routes"][0]["weight"], 0);
}
