//! The veer controller as a child process (`veer controller`, the real binary): locating it
//! (failing with the build command), starting it in local mode on a fixed loopback port (so a
//! restart after `kill -9` comes back where the gateway expects it), reading its canary API,
//! triggering runs with the real CLI (`veer rollout`), and two recorders that tests and the
//! demo judge a run by: [`TableLog`] (every routing table the controller served, pulled with the
//! gateways' long-poll) and [`StatusLog`] (every change of phase, weight and counters).

use crate::client::HttpClient;
use crate::process::{poll_until, ChildProcess};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The controller's `--min-interval` in the e2e tests and the demo: their Canaries run
/// passes of 1-5s, below Flagger's 10s floor, to finish in seconds.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long the controller may take to answer `/healthz` and load its canaries.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `veer` binary: `$VEER_CONTROLLER`, else the workspace's debug build (the e2e crate
/// cannot depend on another package's binary, so it is built before the tests run).
pub fn controller_binary() -> Result<PathBuf, String> {
    let build = "cargo build -p veer-controller --bins";
    if let Some(path) = std::env::var_os("VEER_CONTROLLER").map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "$VEER_CONTROLLER is {}, which does not exist",
                path.display()
            ))
        };
    }
    // As for the filter: an old build would test old code.
    veer_testkit::tools::fresh_build(
        "the controller",
        veer_testkit::tools::target_dir().join("debug/veer"),
        &["controller/src", "controller/Cargo.toml", "filter/core/src"],
        build,
    )
}

/// How to run the controller.
#[derive(Debug, Clone)]
pub struct ControllerSpec {
    pub canaries_dir: PathBuf,
    pub state_file: PathBuf,
    /// Kubernetes mode with this kubeconfig (`--kubernetes`, KUBECONFIG); the canaries
    /// directory and the state file are then not used.
    pub kubeconfig: Option<PathBuf>,
    pub prometheus_url: String,
    pub listen: SocketAddr,
    /// `--metrics-set`: istio, veer or envoy.
    pub metrics_set: String,
    /// More arguments (e.g. `--leader-election` and its timings).
    pub extra_args: Vec<String>,
    /// `POD_NAME`: names the replica in its events and its leader Lease identity.
    pub instance: Option<String>,
}

/// A running controller; it can be killed (`kill -9`) and started again on the same port.
pub struct Controller {
    spec: ControllerSpec,
    log_path: PathBuf,
    process: Option<ChildProcess>,
    starts: u32,
}

impl Controller {
    /// Starts the controller and waits until `/healthz` answers.
    pub fn start(dir: &Path, spec: ControllerSpec) -> Result<Controller, String> {
        let mut controller = Controller {
            spec,
            log_path: dir.join("controller.log"),
            process: None,
            starts: 0,
        };
        controller.restart()?;
        Ok(controller)
    }

    /// Starts the process again (after [`kill`](Controller::kill)); the log is appended to.
    pub fn restart(&mut self) -> Result<(), String> {
        if self
            .process
            .as_mut()
            .is_some_and(|p| p.try_exit().is_none())
        {
            return Err("the controller is still running".into());
        }
        let mut cmd = Command::new(controller_binary()?);
        cmd.arg("controller");
        match &self.spec.kubeconfig {
            Some(kubeconfig) => {
                cmd.arg("--kubernetes").env("KUBECONFIG", kubeconfig);
            }
            None => {
                cmd.arg("--canaries")
                    .arg(&self.spec.canaries_dir)
                    .arg("--state")
                    .arg(&self.spec.state_file);
            }
        }
        cmd.args(["--prometheus", &self.spec.prometheus_url])
            .args(["--listen", &self.spec.listen.to_string()])
            .args(["--metrics-set", &self.spec.metrics_set])
            .arg(format!("--min-interval={}ms", MIN_INTERVAL.as_millis()))
            .args(&self.spec.extra_args)
            .env("RUST_LOG", "info")
            // The log is read by people after a failure; no colour codes in it.
            .env("NO_COLOR", "1");
        if let Some(instance) = &self.spec.instance {
            cmd.env("POD_NAME", instance);
        }
        let mut process = ChildProcess::spawn("veer-controller", cmd, &self.log_path)?;
        self.starts += 1;
        let api = self.spec.listen;
        poll_until(
            "the controller's /healthz",
            START_TIMEOUT,
            Duration::from_millis(25),
            || {
                if let Some(status) = process.try_exit() {
                    return Err(format!("exited: {status}"));
                }
                let r = HttpClient::new(api).get("localhost", "/healthz", &[])?;
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", r.status))
                }
            },
        )
        .map_err(|e| format!("{e}\n--- controller log ---\n{}", process.log_tail(30)))?;
        self.process = Some(process);
        Ok(())
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`, `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self.pid().ok_or("the controller was never started")?;
        let out = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .output()
            .map_err(|e| format!("kill -{signal} {pid}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "kill -{signal} {pid}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Waits until the process has exited, returning how it ended.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<String, String> {
        let process = self
            .process
            .as_mut()
            .ok_or("the controller was never started")?;
        poll_until(
            "the controller to exit",
            timeout,
            Duration::from_millis(20),
            || match process.try_exit() {
                Some(status) => Ok(status.to_string()),
                None => Err("still running".into()),
            },
        )
    }

    /// The instance name (`POD_NAME`) it runs as.
    pub fn instance(&self) -> Option<&str> {
        self.spec.instance.as_deref()
    }

    /// SIGKILL, as `kill -9`: nothing is flushed, nothing is handed over.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.try_exit().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    pub fn addr(&self) -> SocketAddr {
        self.spec.listen
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.spec.listen)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `GET /v1/canaries/{key}` (key = `namespace/name`).
    pub fn canary(&self, key: &str) -> Result<serde_json::Value, String> {
        canary_status(self.spec.listen, key)
    }

    /// Waits until the controller has loaded the canary `key`.
    pub fn wait_for_canary(&self, key: &str) -> Result<serde_json::Value, String> {
        poll_until(
            &format!("the controller to load {key}"),
            START_TIMEOUT,
            Duration::from_millis(50),
            || self.canary(key),
        )
    }

    /// Starts a run the way an operator does: `veer rollout NS/NAME --revision R`.
    pub fn rollout(&self, key: &str, revision: &str) -> Result<(), String> {
        let out = Command::new(controller_binary()?)
            .args(["rollout", key, "--revision", revision])
            .args(["--server", &self.url()])
            .output()
            .map_err(|e| format!("run veer rollout: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "veer rollout {key} --revision {revision}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Waits until the canary's status satisfies `pred`, returning that status.
    pub fn wait_status(
        &self,
        key: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, String> {
        poll_until(what, timeout, Duration::from_millis(50), || {
            let s = self.canary(key)?;
            if pred(&s) {
                Ok(s)
            } else {
                Err(summary(&s))
            }
        })
    }
}

/// `GET /v1/canaries/{key}` on the controller at `api`.
pub fn canary_status(api: SocketAddr, key: &str) -> Result<serde_json::Value, String> {
    let r = HttpClient::new(api).get("localhost", &format!("/v1/canaries/{key}"), &[])?;
    if r.status != 200 {
        return Err(format!(
            "GET /v1/canaries/{key}: HTTP {}: {}",
            r.status,
            r.body_text()
        ));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("GET /v1/canaries/{key}: {e}"))
}

/// One line of a canary status, for error messages.
pub fn summary(s: &serde_json::Value) -> String {
    format!(
        "phase {} weight {} failedChecks {} iterations {} canary {} primary {} message {:?}",
        s["phase"],
        s["weight"],
        s["failedChecks"],
        s["iterations"],
        s["canaryRevision"],
        s["primaryRevision"],
        s["message"].as_str().unwrap_or("")
    )
}

// ---------------------------------------------------------------------------------------
// The routing tables served

/// One route of a served table, as far as the tests judge it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedRoute {
    /// Basis points.
    pub weight: u32,
    pub revision: String,
    /// A/B rules present.
    pub has_match: bool,
}

/// A table the controller served.
#[derive(Debug, Clone)]
pub struct ServedTable {
    pub generation: u64,
    pub at: Instant,
    /// The watched route, if the table has it.
    pub route: Option<ServedRoute>,
}

/// Every table generation the controller served, in order, pulled as a gateway does
/// (`GET /v1/table?after=N&waitMs=M`) but without a gateway id, so it is not counted as
/// one. Survives controller restarts (it simply reconnects).
pub struct TableLog {
    tables: Arc<Mutex<Vec<ServedTable>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TableLog {
    pub fn start(api: SocketAddr, route: &str) -> Result<TableLog, String> {
        let tables = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s, route) = (Arc::clone(&tables), Arc::clone(&stop), route.to_string());
        let thread = std::thread::Builder::new()
            .name("table-log".into())
            .spawn(move || table_loop(api, &route, &t, &s))
            .map_err(|e| e.to_string())?;
        Ok(TableLog {
            tables,
            stop,
            thread: Some(thread),
        })
    }

    pub fn tables(&self) -> Vec<ServedTable> {
        self.tables.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The latest generation seen.
    pub fn generation(&self) -> u64 {
        self.tables
            .lock()
            .ok()
            .and_then(|t| t.last().map(|t| t.generation))
            .unwrap_or(0)
    }

    /// The route in force at `generation`: that of the latest served table at or below it.
    pub fn route_at(&self, generation: u64) -> Option<ServedRoute> {
        route_at(&self.tables(), generation)
    }
}

/// The route in force at `generation` in `tables` (ordered by generation).
pub fn route_at(tables: &[ServedTable], generation: u64) -> Option<ServedRoute> {
    tables
        .iter()
        .rev()
        .find(|t| t.generation <= generation)
        .and_then(|t| t.route.clone())
}

impl Drop for TableLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn table_loop(api: SocketAddr, route: &str, tables: &Mutex<Vec<ServedTable>>, stop: &AtomicBool) {
    let mut client = HttpClient::new(api);
    let mut after = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // Short holds, so a stop is noticed within a second.
        let path = format!("/v1/table?after={after}&waitMs=1000");
        let r = match client.get("localhost", &path, &[]) {
            Ok(r) => r,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if r.status != 200 {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            continue;
        };
        let Some(generation) = v["generation"].as_u64() else {
            continue;
        };
        let served = v["routes"]
            .as_array()
            .and_then(|routes| routes.iter().find(|r| r["name"] == route))
            .map(|r| ServedRoute {
                weight: r["weight"].as_u64().unwrap_or(0) as u32,
                revision: r["revision"].as_str().unwrap_or("").to_string(),
                has_match: r["match"].as_array().is_some_and(|m| !m.is_empty()),
            });
        after = generation;
        if let Ok(mut t) = tables.lock() {
            if t.last().is_none_or(|last| last.generation < generation) {
                t.push(ServedTable {
                    generation,
                    at: Instant::now(),
                    route: served,
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Status changes

/// A canary status at a change of phase, weight, failed checks, iterations or revisions.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub at: Instant,
    pub phase: String,
    pub weight: u64,
    pub failed_checks: u64,
    pub iterations: u64,
    pub canary_revision: Option<String>,
    pub primary_revision: Option<String>,
    pub status: serde_json::Value,
}

impl StatusChange {
    fn from_status(status: serde_json::Value) -> StatusChange {
        let s = |k: &str| status[k].as_str().map(str::to_string);
        StatusChange {
            at: Instant::now(),
            phase: s("phase").unwrap_or_default(),
            weight: status["weight"].as_u64().unwrap_or(0),
            failed_checks: status["failedChecks"].as_u64().unwrap_or(0),
            iterations: status["iterations"].as_u64().unwrap_or(0),
            canary_revision: s("canaryRevision"),
            primary_revision: s("primaryRevision"),
            status,
        }
    }

    fn same_as(&self, other: &StatusChange) -> bool {
        (
            &self.phase,
            self.weight,
            self.failed_checks,
            self.iterations,
            &self.canary_revision,
            &self.primary_revision,
        ) == (
            &other.phase,
            other.weight,
            other.failed_checks,
            other.iterations,
            &other.canary_revision,
            &other.primary_revision,
        )
    }
}

/// Polls the canary status every 50 ms and keeps each change. Passes are at least a second
/// apart, so no pass is missed; while the controller is down nothing is recorded.
pub struct StatusLog {
    changes: Arc<Mutex<Vec<StatusChange>>>,
    latest: Arc<Mutex<Option<serde_json::Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusLog {
    pub fn start(api: SocketAddr, key: &str) -> Result<StatusLog, String> {
        let changes = Arc::new(Mutex::new(Vec::<StatusChange>::new()));
        let latest = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, l, s, key) = (
            Arc::clone(&changes),
            Arc::clone(&latest),
            Arc::clone(&stop),
            key.to_string(),
        );
        let thread = std::thread::Builder::new()
            .name("status-log".into())
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    if let Ok(status) = canary_status(api, &key) {
                        let change = StatusChange::from_status(status.clone());
                        if let Ok(mut changes) = c.lock() {
                            if changes.last().is_none_or(|last| !last.same_as(&change)) {
                                changes.push(change);
                            }
                        }
                        if let Ok(mut l) = l.lock() {
                            *l = Some(status);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(StatusLog {
            changes,
            latest,
            stop,
            thread: Some(thread),
        })
    }

    pub fn changes(&self) -> Vec<StatusChange> {
        self.changes.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The last status read (the controller may be down since).
    pub fn latest(&self) -> Option<serde_json::Value> {
        self.latest.lock().ok().and_then(|l| l.clone())
    }

    /// Waits until a change to `phase` has been recorded.
    pub fn wait_for_phase(&self, phase: &str, timeout: Duration) -> Result<(), String> {
        poll_until(
            &format!("the status log to record phase {phase}"),
            timeout,
            Duration::from_millis(20),
            || {
                let changes = self.changes();
                match changes.last() {
                    Some(c) if c.phase == phase => Ok(()),
                    other => Err(format!("last: {:?}", other.map(|c| &c.phase))),
                }
            },
        )
    }

    /// Phases in order, consecutive repeats removed, from the first change at or after `since`.
    pub fn phases_since(&self, since: Instant) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.changes().into_iter().filter(|c| c.at >= since) {
            if out.last() != Some(&c.phase) {
                out.push(c.phase);
            }
        }
        out
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
