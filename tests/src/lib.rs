//! Test harness: starts real processes (Envoy, Prometheus, the controller, backends) on free
//! loopback ports, waits for readiness by polling with deadlines, and kills them on drop.

pub mod backend;
pub mod client;
pub mod controller;
pub mod demo;
pub mod envoy;
pub mod filter;
pub mod gateway_api;
pub mod http_server;
pub mod istio;
pub mod kube;
pub mod kube_release;
/// Loopback ports: `veer_testkit`'s, shared with the controller's tests.
pub use veer_testkit::ports;
pub mod process;
pub mod prometheus;
pub mod stack;
pub mod table_stub;
pub mod users;
pub mod webhook_receiver;

/// The workspace root.
pub use veer_testkit::repo_root as workspace_root;
