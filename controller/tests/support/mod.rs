//! Shared support for the controller's integration tests: free ports and polling with a
//! deadline (never fixed sleeps) here; child processes, test HTTP servers, a real
//! Prometheus, a real Envoy and the real `veer` binary in the submodules.
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
