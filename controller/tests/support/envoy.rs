//! A real Envoy from a static bootstrap (found by `veer_testkit::tools::envoy_binary`).

use std::net::SocketAddr;
use std::process::Command;

use super::process::ChildGuard;

/// A real Envoy from a static bootstrap, killed on drop.
pub struct Envoy {
    pub admin: SocketAddr,
    process: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `config` (YAML) and waits for its admin `/ready`.
    pub async fn start(config: &str, admin: SocketAddr) -> Envoy {
        let bin = veer_testkit::tools::envoy_binary().unwrap_or_else(|e| panic!("{e}"));
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
        process
            .wait_http_ready(
                "Envoy /ready",
                &reqwest::Client::new(),
                &format!("http://{admin}/ready"),
            )
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
