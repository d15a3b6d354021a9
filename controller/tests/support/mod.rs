//! Shared support for the controller's integration tests: the polling interval here; child
//! processes, test HTTP servers, a real Prometheus, a real Envoy and the real `veer` binary in
//! the submodules. Polling with a deadline, free ports, finding the tools and the
//! child-process setup are `veer_testkit`'s, shared with the end-to-end tests.
#![allow(dead_code)]

pub mod canary;
pub mod envoy;
pub mod http;
pub mod immutable_dir;
pub mod process;
pub mod prometheus;
pub mod tls;
pub mod veer;

use std::time::Duration;

pub use veer_testkit::ports::free_port;

/// How often the tests poll (`veer_testkit::poll_until_async`) for an effect.
pub const POLL: Duration = Duration::from_millis(50);
