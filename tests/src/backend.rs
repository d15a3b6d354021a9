//! A stand-in for podinfo: an in-process HTTP backend that says which variant it is, echoes
//! the veer headers it received, counts requests (mirrored ones apart), and injects 5xx or
//! latency on command, in-process (`set_fault`) or over HTTP:
//!
//! - `GET /__backend/fault?status=503&percent=100&delayMs=250` sets the fault (all optional;
//!   `status=0` or `percent=0` turns errors off),
//! - `GET /__backend/stats` returns `{"name":..,"requests":..,"mirrored":..}`.
//!
//! Every other request is answered 200 with body `<name>` and headers `x-backend: <name>`,
//! `x-seen-route`/`x-seen-mirror` (every value of the request's `x-veer-route`/`x-veer-mirror`
//! joined by `,`, or `-`: a duplicate a filter failed to remove shows up).
//! `?setcookie=1` makes it add its own `set-cookie: backend=<name>`, to check that the filter's
//! cookie is added next to the upstream's and not over it.

use crate::http_server::{HttpServer, Reply, Request};
use crate::ports::bind_loopback;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Errors and latency to inject. `percent` of requests get `status`; every request waits
/// `delay_ms` first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    pub percent: u8,
    pub delay_ms: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    mirrored: AtomicU64,
    seq: AtomicU64,
}

pub struct Backend {
    name: String,
    server: HttpServer,
    counters: Arc<Counters>,
    fault: Arc<Mutex<Fault>>,
    /// What it answers as (`x-backend` and the body): `name` until `set_identity`, which
    /// plays a Deployment rolling to another version (the primary taking the canary's).
    identity: Arc<Mutex<String>>,
}

impl Backend {
    pub fn start(name: &str) -> Result<Backend, String> {
        let (listener, _) = bind_loopback()?;
        let counters = Arc::new(Counters::default());
        let fault = Arc::new(Mutex::new(Fault::default()));
        let identity = Arc::new(Mutex::new(name.to_string()));
        let (h_identity, h_counters, h_fault) = (
            Arc::clone(&identity),
            Arc::clone(&counters),
            Arc::clone(&fault),
        );
        let server = HttpServer::start(
            listener,
            Arc::new(move |req: &Request| {
                let name = h_identity.lock().map(|n| n.clone()).unwrap_or_default();
                handle(&name, &h_counters, &h_fault, req)
            }),
        )?;
        Ok(Backend {
            name: name.to_string(),
            server,
            counters,
            fault,
            identity,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Answers as `identity` from now on (the name it was started with stays `name()`).
    pub fn set_identity(&self, identity: &str) {
        if let Ok(mut slot) = self.identity.lock() {
            *slot = identity.to_string();
        }
    }

    /// What it currently answers as.
    pub fn identity(&self) -> String {
        self.identity.lock().map(|n| n.clone()).unwrap_or_default()
    }

    pub fn fault(&self) -> Fault {
        self.fault.lock().map(|f| *f).unwrap_or_default()
    }

    pub fn set_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }

    /// Requests served, mirrored ones excluded.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Mirrored (shadow) requests received.
    pub fn mirrored(&self) -> u64 {
        self.counters.mirrored.load(Ordering::SeqCst)
    }
}

fn handle(name: &str, counters: &Counters, fault: &Mutex<Fault>, req: &Request) -> Reply {
    match req.path() {
        "/__backend/fault" => {
            let mut f = fault.lock().map(|f| *f).unwrap_or_default();
            if let Some(v) = req.query("status").and_then(|v| v.parse().ok()) {
                f.status = v;
            }
            if let Some(v) = req.query("percent").and_then(|v| v.parse::<u8>().ok()) {
                f.percent = v.min(100);
            }
            if let Some(v) = req.query("delayMs").and_then(|v| v.parse().ok()) {
                f.delay_ms = v;
            }
            if let Ok(mut slot) = fault.lock() {
                *slot = f;
            }
            return Reply::text(200, format!("{f:?}"));
        }
        "/__backend/stats" => {
            let body = serde_json::json!({
                "name": name,
                "requests": counters.requests.load(Ordering::SeqCst),
                "mirrored": counters.mirrored.load(Ordering::SeqCst),
            });
            return Reply::text(200, body.to_string());
        }
        _ => {}
    }
    // Envoy's request mirroring appends "-shadow" to the host.
    if req.header("host").is_some_and(|h| h.ends_with("-shadow")) {
        counters.mirrored.fetch_add(1, Ordering::SeqCst);
    } else {
        counters.requests.fetch_add(1, Ordering::SeqCst);
    }
    let f = fault.lock().map(|f| *f).unwrap_or_default();
    if f.delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(f.delay_ms));
    }
    // Deterministic and evenly spread: request n fails when floor((n + 1) p / 100) steps
    // past floor(n p / 100), so any run of N consecutive requests holds p N / 100 failures,
    // give or take one (a block of failures, e.g. 30 in a row per 100, would make a short
    // metric window read anywhere from 0% to 60% errors).
    let n = counters.seq.fetch_add(1, Ordering::SeqCst);
    let p = u64::from(f.percent);
    let failing = f.status != 0 && (n + 1) * p / 100 != n * p / 100;
    let status = if failing { f.status } else { 200 };
    let mut reply = Reply::text(status, name.to_string())
        .with_header("x-backend", name)
        .with_header("x-seen-route", seen(req, "x-veer-route"))
        .with_header("x-seen-mirror", seen(req, "x-veer-mirror"));
    if req.query("setcookie").is_some() {
        reply = reply.with_header("set-cookie", format!("backend={name}; Path=/"));
    }
    reply
}

/// All values of a request header as received, or `-`.
fn seen(req: &Request, name: &str) -> String {
    req.header_values(name).unwrap_or_else(|| "-".to_string())
}
