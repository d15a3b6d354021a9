//! A real Prometheus in a temp dir, and a scrape target whose text the test computes.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::free_port;
use serde_json::{json, Value};

use super::process::ChildGuard;

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
        let binary = veer_testkit::tools::prometheus_binary().unwrap_or_else(|e| panic!("{e}"));
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
        let port = free_port().unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let mut process = ChildGuard::spawn("prometheus", cmd, dir.path().join("prometheus.log"));
        let url = format!("http://127.0.0.1:{port}");
        process
            .wait_http_ready(
                "Prometheus /-/ready",
                &reqwest::Client::new(),
                &format!("{url}/-/ready"),
            )
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

/// A sample without labels in a Prometheus instant vector, at a fixed time; Prometheus sends
/// the value as a string.
pub fn sample(value: &str) -> Value {
    json!({"metric": {}, "value": [1_700_000_000.0, value]})
}

/// A successful Prometheus `/api/v1/query` answer whose result is the instant vector `result`.
pub fn vector_answer(result: Value) -> Value {
    json!({"status": "success", "data": {"resultType": "vector", "result": result}})
}

/// A `/api/v1/query` answer of one `sample(value)`.
pub fn one_sample_answer(value: &str) -> Value {
    vector_answer(json!([sample(value)]))
}

/// A fake Prometheus `/api/v1/query` route answering every query with `one_sample_answer(value)`
/// and counting the queries in `queries`.
pub fn counted_query_route(
    queries: Arc<AtomicUsize>,
    value: &'static str,
) -> axum::routing::MethodRouter {
    axum::routing::any(move || {
        let queries = queries.clone();
        async move {
            queries.fetch_add(1, Ordering::SeqCst);
            axum::Json(one_sample_answer(value))
        }
    })
}
