//! Prometheus as a child process: locating the binary (failing with the install command),
//! rendering `manifests/local/demo/prometheus.yaml`, starting it on a free port with its own
//! data directory, waiting for `/-/ready` and for the gateway target to be scraped, and
//! instant queries for the tests' and the demo's own reading of the filter's metrics.

use crate::client::HttpClient;
use crate::envoy::render;
use crate::ports::free_port;
use crate::process::{poll_until, ChildProcess};
use crate::workspace_root;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How long Prometheus may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The Prometheus binary, found the same way by every test.
pub use veer_testkit::tools::prometheus_binary;

/// The scrape configuration template.
pub fn config_template() -> Result<String, String> {
    let path = workspace_root().join("manifests/local/demo/prometheus.yaml");
    std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))
}

/// A running Prometheus.
pub struct Prometheus {
    process: ChildProcess,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping the gateway admin at `gateway_admin` and the
    /// controller at `controller` every `scrape_interval`, and waits until it is ready.
    pub fn start(
        dir: &Path,
        gateway_admin: SocketAddr,
        controller: SocketAddr,
        scrape_interval: Duration,
    ) -> Result<Prometheus, String> {
        let binary = prometheus_binary()?;
        let config = render(
            &config_template()?,
            &[
                ("GATEWAY_ADMIN", gateway_admin.to_string()),
                ("CONTROLLER", controller.to_string()),
                (
                    "SCRAPE_INTERVAL",
                    format!("{}ms", scrape_interval.as_millis()),
                ),
            ],
        )?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        // The port is picked free and then bound by Prometheus: another process may take it in
        // between, so a start that dies early is retried on a fresh port.
        let mut last = String::new();
        for attempt in 0..3 {
            let port = free_port()?;
            let mut cmd = Command::new(&binary);
            cmd.arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("prometheus-data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn");
            let mut process = ChildProcess::spawn("prometheus", cmd, &dir.join("prometheus.log"))?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let ready = poll_until(
                "Prometheus /-/ready",
                START_TIMEOUT,
                Duration::from_millis(50),
                || {
                    if let Some(status) = process.try_exit() {
                        return Err(format!("exited: {status}"));
                    }
                    let r = HttpClient::new(addr).get("localhost", "/-/ready", &[])?;
                    if r.status == 200 {
                        Ok(())
                    } else {
                        Err(format!("HTTP {}", r.status))
                    }
                },
            );
            match ready {
                Ok(()) => return Ok(Prometheus { process, addr }),
                Err(e) => {
                    last = format!("{e}\n--- prometheus.log ---\n{}", process.log_tail(20));
                    if process.try_exit().is_none() {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for the controller's `--prometheus`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs an instant query; `Ok(None)` when the result is empty or NaN, an error when it
    /// has several series (the caller's selector is wrong).
    pub fn query(&self, promql: &str) -> Result<Option<f64>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let r = HttpClient::new(self.addr).get("localhost", &path, &[])?;
        let body = r.body_text();
        if r.status != 200 {
            return Err(format!("query {promql:?}: HTTP {}: {body}", r.status));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("query {promql:?}: {e}: {body}"))?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("query {promql:?}: no result in {body}"))?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => {
                let value = one["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| format!("query {promql:?}: bad sample in {body}"))?;
                Ok((!value.is_nan()).then_some(value))
            }
            _ => Err(format!("query {promql:?} returned {} series", result.len())),
        }
    }

    /// Waits until the gateway target has been scraped successfully.
    pub fn wait_for_gateway_scrape(&self, timeout: Duration) -> Result<(), String> {
        poll_until(
            "Prometheus to scrape the gateway",
            timeout,
            Duration::from_millis(200),
            || match self.query(r#"up{job="veer-gateway"}"#)? {
                Some(1.0) => Ok(()),
                other => Err(format!("up = {other:?}")),
            },
        )
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
