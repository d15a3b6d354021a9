//! What every veer test harness shares, in one place so the copies cannot drift apart: the
//! controller's integration tests (`controller/tests`) and the end-to-end crate (`tests/`)
//! both depend on it.
//!
//! - [`tools`]: where Envoy, Prometheus and the filter's release build are, failing with the
//!   command that installs or builds the missing one, and refusing a `.wasm` older than its
//!   sources (testing an old build would test old code).
//! - [`poll`]: waiting for an effect by polling with a deadline, never by a fixed sleep.
//! - [`process`]: the `PR_SET_PDEATHSIG` setup every child process gets.
//! - [`ports`]: loopback ports for children and in-process servers.
//! - [`passes`]: the controller's per-pass log line, and the check that each raise of the
//!   weight followed a passing analysis at the previous weight.

pub mod passes;
pub mod poll;
pub mod ports;
pub mod process;
pub mod tools;

pub use poll::{poll_until, poll_until_async};

/// The repository root (the workspace's directory).
pub fn repo_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
