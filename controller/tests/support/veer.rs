//! The real `veer` binary: `veer controller` started on a free port, ready when `/healthz`
//! answers, killed (SIGKILL) and reaped on drop, with a client for its API; and `veer ARGS`
//! run to its exit with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::free_port;
use super::process::{run_to_exit, ChildGuard};

pub const VEER: &str = env!("CARGO_BIN_EXE_veer");

/// A running `veer controller`, killed with SIGKILL on drop.
pub struct Controller {
    process: ChildGuard,
    pub url: String,
    http: reqwest::Client,
}

impl Controller {
    /// Starts `veer controller ARGS --listen 127.0.0.1:<free port>` and waits until
    /// `/healthz` answers.
    pub async fn start(args: &[String], log: PathBuf) -> Controller {
        let port = free_port().unwrap();
        let mut cmd = Command::new(VEER);
        controller_args(&mut cmd, args, port);
        Controller::wait_ready(ChildGuard::spawn("veer controller", cmd, log), port).await
    }

    /// As `start`, through `sh` with SIGXFSZ ignored (so a file-size limit makes writes fail
    /// with EFBIG instead of killing it), its output captured through a pipe (not subject
    /// to the file-size limit, so its log survives the "full disk").
    pub async fn start_ignoring_sigxfsz(args: &[String]) -> Controller {
        let port = free_port().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"trap '' XFSZ; exec "$0" "$@""#)
            .arg(VEER);
        controller_args(&mut cmd, args, port);
        Controller::wait_ready(ChildGuard::spawn_captured("veer controller", cmd), port).await
    }

    async fn wait_ready(mut process: ChildGuard, port: u16) -> Controller {
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        process
            .wait_http_ready("veer controller /healthz", &http, &format!("{url}/healthz"))
            .await;
        Controller { process, url, http }
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Sends `signal` (e.g. "TERM", "HUP") with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.process.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.process.id());
    }

    /// Waits for the process to exit by itself; panics at the deadline.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.process.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "veer controller did not exit within {deadline:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nlog:\n{}", self.log_text()));
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// The text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /v1/table` without `after`: the served table, or `None` (304) before the first.
    pub async fn table(&self) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/v1/table", self.url))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => Some(response.json().await.unwrap()),
            304 => None,
            other => panic!("GET /v1/table: HTTP {other}"),
        }
    }

    pub async fn canary(&self, key: &str) -> Value {
        self.get_json(&format!("/v1/canaries/{key}")).await
    }

    /// POSTs a command; returns the status code and the JSON answer.
    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn revision(&self, key: &str, revision: &str) -> Value {
        let (status, answer) = self
            .post(
                &format!("/v1/canaries/{key}/revision"),
                serde_json::json!({ "revision": revision }),
                None,
            )
            .await;
        assert_eq!(status, 200, "revision {revision}: {answer}");
        answer
    }
}

/// `controller ARGS --listen=127.0.0.1:<port>`, logging at debug.
/// `--min-interval` of every test controller: the tests' specs run 1s passes (Flagger's
/// 10s floor would make each of them ten times slower).
pub const TEST_MIN_INTERVAL: &str = "1s";

fn controller_args(cmd: &mut Command, args: &[String], port: u16) {
    cmd.arg("controller");
    if !args.iter().any(|a| a.starts_with("--min-interval")) {
        cmd.arg(format!("--min-interval={TEST_MIN_INTERVAL}"));
    }
    cmd.args(args)
        .arg(format!("--listen=127.0.0.1:{port}"))
        .env("RUST_LOG", "veer_controller=debug,info");
}

/// Runs `veer ARGS` to its exit (killing it at the deadline, which fails the test).
pub fn run_veer(args: &[&str], deadline: Duration) -> Output {
    run_to_exit(Command::new(VEER).args(args), deadline)
}

/// Creates `dir/canaries`, the directory of specs a test controller is started with
/// (`--canaries`), and returns its path.
pub fn canaries_dir(dir: &Path) -> PathBuf {
    let canaries = dir.join("canaries");
    std::fs::create_dir(&canaries).unwrap();
    canaries
}

/// Writes `yaml` as `dir/name`.
pub fn write_spec(dir: &Path, name: &str, yaml: &str) {
    std::fs::write(dir.join(name), yaml).unwrap();
}
