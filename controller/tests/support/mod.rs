//! Shared support for the controller's integration tests: free ports and the polling
//! interval here; child processes, test HTTP servers, a real Prometheus, a real Envoy and
//! the real `veer` binary in the submodules. Polling with a deadline, finding the tools and
//! the child-process setup are `veer_testkit`'s, shared with the end-to-end tests.
#![allow(dead_code)]

pub mod canary;
pub mod envoy;
pub mod http;
pub mod immutable_dir;
pub mod process;
pub mod prometheus;
pub mod tls;
pub mod veer;

use std::net::TcpListener as StdTcpListener;
use std::time::Duration;

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// How often the tests poll (`veer_testkit::poll_until_async`) for an effect.
pub const POLL: Duration = Duration::from_millis(50);
