//! Envoy as a child process: locating the binary and the filter's .wasm (failing with the
//! command that provides them), rendering `manifests/local/gateway.yaml`, starting Envoy on
//! ports it picks itself, waiting for `/ready`, and reading its admin endpoints.

use crate::client::HttpClient;
use crate::process::{poll_until, ChildProcess};
use crate::workspace_root;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// How long Envoy may take to start (V8 compiles the filter on every worker).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The Envoy binary and the filter's release build, found the same way by every test.
pub use veer_testkit::tools::{envoy_binary, filter_wasm};

/// What every gateway test needs before it starts: the Envoy binary and a release filter
/// build no older than its sources. The error names the command that provides the missing one.
pub fn gateway_tools() -> Result<(), String> {
    envoy_binary()?;
    filter_wasm()?;
    Ok(())
}

/// The gateway bootstrap template.
pub fn gateway_template() -> Result<String, String> {
    let path = workspace_root().join("manifests/local/gateway.yaml");
    std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))
}

/// Replaces every `${NAME}` in `template`; fails on a placeholder without a value.
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    // Comments may mention placeholders; only uncommented lines must be complete.
    let missing: Vec<&str> = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("${"))
        .collect();
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "template placeholders without a value: {missing:?}"
        ))
    }
}

/// What varies between gateway instances.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// The plugin configuration JSON (docs/routing-table.md).
    pub plugin_config: String,
    pub primary: SocketAddr,
    pub canary: SocketAddr,
    /// The controller (or stub); a closed port when absent.
    pub controller: Option<SocketAddr>,
    /// More controller replicas behind the same cluster (round robin, as a Service).
    pub more_controllers: Vec<SocketAddr>,
    pub node_id: String,
    /// Extra environment for the Envoy process (e.g. `VEER_COOKIE_KEYS`).
    pub env: Vec<(String, String)>,
    pub concurrency: u32,
}

impl GatewaySpec {
    pub fn new(plugin_config: &serde_json::Value, primary: SocketAddr, canary: SocketAddr) -> Self {
        GatewaySpec {
            plugin_config: plugin_config.to_string(),
            primary,
            canary,
            controller: None,
            more_controllers: Vec::new(),
            node_id: "veer-e2e-gateway".into(),
            env: Vec::new(),
            concurrency: 2,
        }
    }

    /// The rendered bootstrap.
    pub fn bootstrap(&self) -> Result<String, String> {
        let wasm = filter_wasm()?;
        // Port 1 on loopback is closed: a gateway without a controller gets connection refused.
        let controller_port = self.controller.map_or(1, |a| a.port());
        let bootstrap = render(
            &gateway_template()?,
            &[
                ("ADMIN_PORT", "0".into()),
                ("GATEWAY_PORT", "0".into()),
                ("PRIMARY_PORT", self.primary.port().to_string()),
                ("CANARY_PORT", self.canary.port().to_string()),
                ("CONTROLLER_PORT", controller_port.to_string()),
                ("NODE_ID", self.node_id.clone()),
                ("WASM_PATH", wasm.display().to_string()),
                // A JSON string literal is a valid YAML double-quoted scalar.
                (
                    "PLUGIN_CONFIG",
                    serde_json::Value::String(self.plugin_config.clone()).to_string(),
                ),
            ],
        )?;
        // The template has one controller endpoint; replicas are more endpoints of it.
        let endpoint = |port: u16| {
            format!("        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}")
        };
        let first = endpoint(controller_port);
        if self.more_controllers.is_empty() {
            return Ok(bootstrap);
        }
        if bootstrap.matches(&first).count() != 1 {
            return Err(format!(
                "the gateway template's controller endpoint is not the one line {first:?}"
            ));
        }
        let all: Vec<String> = std::iter::once(controller_port)
            .chain(self.more_controllers.iter().map(SocketAddr::port))
            .map(endpoint)
            .collect();
        Ok(bootstrap.replace(&first, &all.join("\n")))
    }
}

/// A running Envoy.
pub struct Envoy {
    process: ChildProcess,
    admin: SocketAddr,
    dir: PathBuf,
}

impl Envoy {
    fn spawn(
        dir: &Path,
        bootstrap: &str,
        concurrency: u32,
        env: &[(String, String)],
    ) -> Result<ChildProcess, String> {
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, bootstrap)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let mut cmd = Command::new(envoy_binary()?);
        cmd.arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string()])
            // Parallel tests each run an Envoy; a fixed base id would collide.
            .arg("--use-dynamic-base-id")
            .args(["-l", "info"])
            // Envoy buffers its log file for 10 s by default; tests read it while it runs.
            .args(["--file-flush-interval-msec", "100"])
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .arg("--admin-address-path")
            .arg(dir.join("admin.address"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        ChildProcess::spawn("envoy", cmd, &dir.join("envoy.stdout.log"))
    }

    /// Starts Envoy with `bootstrap` in `dir` and waits until `/ready` says LIVE.
    pub fn start(
        dir: &Path,
        bootstrap: &str,
        concurrency: u32,
        env: &[(String, String)],
    ) -> Result<Envoy, String> {
        let mut process = Envoy::spawn(dir, bootstrap, concurrency, env)?;
        let address_file = dir.join("admin.address");
        let admin = poll_until(
            "Envoy's admin address",
            START_TIMEOUT,
            Duration::from_millis(20),
            || {
                if let Some(status) = process.try_exit() {
                    return Err(format!("Envoy exited early ({status})"));
                }
                std::fs::read_to_string(&address_file)
                    .map_err(|e| e.to_string())?
                    .trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| e.to_string())
            },
        );
        let admin = match admin {
            Ok(a) => a,
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
                return Err(format!("{e}\n--- envoy.log ---\n{log}"));
            }
        };
        let envoy = Envoy {
            process,
            admin,
            dir: dir.to_path_buf(),
        };
        poll_until(
            "Envoy /ready",
            START_TIMEOUT,
            Duration::from_millis(20),
            || {
                let body = envoy.admin_get("/ready")?;
                if body.trim() == "LIVE" {
                    Ok(())
                } else {
                    Err(format!("/ready says {body:?}"))
                }
            },
        )?;
        Ok(envoy)
    }

    /// Starts the gateway from the template.
    pub fn start_gateway(dir: &Path, spec: &GatewaySpec) -> Result<Envoy, String> {
        Envoy::start(dir, &spec.bootstrap()?, spec.concurrency, &spec.env)
    }

    /// Starts a bootstrap that Envoy must refuse: returns its exit status and log once it has
    /// exited, or fails if it becomes ready instead.
    pub fn start_expecting_failure(
        dir: &Path,
        spec: &GatewaySpec,
    ) -> Result<(ExitStatus, String), String> {
        let mut process = Envoy::spawn(dir, &spec.bootstrap()?, spec.concurrency, &spec.env)?;
        let status = process
            .wait_exit(START_TIMEOUT)
            .map_err(|e| format!("Envoy accepted a configuration it should have refused: {e}"))?;
        let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
        Ok((status, log + &process.log()))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A GET on the admin interface (fresh connection; admin calls are rare).
    pub fn admin_get(&self, path: &str) -> Result<String, String> {
        let r = HttpClient::new(self.admin).get("localhost", path, &[])?;
        if r.status == 200 {
            Ok(r.body_text())
        } else {
            Err(format!(
                "admin {path}: HTTP {}: {}",
                r.status,
                r.body_text()
            ))
        }
    }

    /// The bound address of a listener (the template binds port 0).
    pub fn listener_addr(&self, name: &str) -> Result<SocketAddr, String> {
        let body = self.admin_get("/listeners?format=json")?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let statuses = v["listener_statuses"]
            .as_array()
            .ok_or("no listener_statuses")?;
        let l = statuses
            .iter()
            .find(|l| l["name"] == name)
            .ok_or_else(|| format!("no listener {name:?} in {body}"))?;
        let sa = &l["local_address"]["socket_address"];
        let ip = sa["address"].as_str().ok_or("no address")?;
        let port = sa["port_value"].as_u64().ok_or("no port")?;
        format!("{ip}:{port}")
            .parse()
            .map_err(|e| format!("listener address: {e}"))
    }

    /// The gateway listener of a gateway started from the template.
    pub fn gateway_addr(&self) -> Result<SocketAddr, String> {
        self.listener_addr("gateway")
    }

    /// One stat's value from `/stats` (counters and gauges), by exact name.
    pub fn stat(&self, name: &str) -> Result<Option<u64>, String> {
        let filter = percent_encode(&format!("^{}$", escape_regex(name)));
        let body = self.admin_get(&format!("/stats?filter={filter}"))?;
        Ok(body.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// Connections each worker accepted on the gateway listener, by worker index. (The stat is
    /// named after the configured address, `127.0.0.1_0` when Envoy picked the port.)
    pub fn worker_connections(&self) -> Result<Vec<u64>, String> {
        let body = self.admin_get("/stats?filter=downstream_cx_total")?;
        let mut per_worker = Vec::new();
        for line in body.lines() {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            if !name.starts_with("listener.127.0.0.1_") {
                continue;
            }
            let Some(worker) = name
                .split('.')
                .find_map(|seg| seg.strip_prefix("worker_"))
                .and_then(|w| w.parse::<usize>().ok())
            else {
                continue;
            };
            if per_worker.len() <= worker {
                per_worker.resize(worker + 1, 0);
            }
            per_worker[worker] += value.trim().parse::<u64>().map_err(|e| e.to_string())?;
        }
        Ok(per_worker)
    }

    /// `/stats/prometheus`.
    pub fn prometheus(&self) -> Result<String, String> {
        self.admin_get("/stats/prometheus")
    }

    /// The main log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("envoy.log")
    }

    /// Lines showing the filter crashed: a Rust panic, a V8 trap, or a failed VM.
    pub fn crash_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("panicked at")
                    || l.contains("wasm trap")
                    || l.contains("Wasm VM failed")
                    || l.contains("Function: proxy_on_")
                    || l.contains("[critical][wasm]")
            })
            .map(str::to_string)
            .collect()
    }

    /// Stops Envoy now.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- envoy.log tail ({}) ----\n{}\n---- end of envoy.log ----",
                self.log_path().display(),
                crate::process::tail(&self.log_path(), 40)
            );
        }
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

fn escape_regex(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if ".|()[]{}*+?^$\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Parses one sample from Prometheus text: `name{labels} value` where every `label="value"`
/// in `labels` is present. Returns the sum over matching series.
pub fn prometheus_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some((l, v)) = rest.split_once("} ") else {
                continue;
            };
            (l, v)
        } else if let Some(v) = rest.strip_prefix(' ') {
            ("", v)
        } else {
            continue;
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_part.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if all {
            let v: f64 = value.trim().parse().ok()?;
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}
