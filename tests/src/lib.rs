//! Test harness: starts real processes (Envoy, Prometheus, the controller, backends) on free
//! loopback ports, waits for readiness by polling with deadlines, and kills them on drop.

pub mod backend;
pub mod client;
pub mod controller;
pub mod demo;
pub mod envoy;
pub mod gateway_api;
pub mod http_server;
pub mod kube;
pub mod kube_release;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod stack;
pub mod table_stub;
pub mod users;
pub mod webhook_receiver;

/// The workspace root (`/work/main` in this checkout).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
