//! A webhook receiver standing in for flagger-loadtester and for gates: an in-process HTTP
//! server that records every call (`POST /<hook>` with its JSON body, in arrival order) and
//! answers each hook with a status the test sets (200 unless told otherwise).

use crate::http_server::{HttpServer, Reply, Request};
use crate::ports::bind_loopback;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One call as received.
#[derive(Debug, Clone)]
pub struct WebhookCall {
    /// The path's first segment: the hook's name in the Canary.
    pub hook: String,
    pub method: String,
    pub content_type: Option<String>,
    /// The body as JSON (`Null` if it was not JSON).
    pub body: serde_json::Value,
    pub raw: String,
    pub at: Instant,
}

impl WebhookCall {
    /// The payload's `phase`.
    pub fn phase(&self) -> &str {
        self.body["phase"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<WebhookCall>>,
    statuses: Mutex<HashMap<String, u16>>,
}

pub struct WebhookReceiver {
    server: HttpServer,
    shared: Arc<Shared>,
}

impl WebhookReceiver {
    pub fn start() -> Result<WebhookReceiver, String> {
        let (listener, _) = bind_loopback()?;
        let shared = Arc::new(Shared::default());
        let handler_shared = Arc::clone(&shared);
        let server = HttpServer::start(
            listener,
            Arc::new(move |req: &Request| handle(&handler_shared, req)),
        )?;
        Ok(WebhookReceiver { server, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The base URL; a hook named `x` is `<base>/x`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Makes calls to `hook` answer `status` from now on.
    pub fn set_status(&self, hook: &str, status: u16) {
        if let Ok(mut s) = self.shared.statuses.lock() {
            s.insert(hook.to_string(), status);
        }
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<WebhookCall> {
        self.shared
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// The calls to `hook`.
    pub fn calls_to(&self, hook: &str) -> Vec<WebhookCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.hook == hook)
            .collect()
    }
}

fn handle(shared: &Shared, req: &Request) -> Reply {
    let hook = req
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let raw = String::from_utf8_lossy(&req.body).into_owned();
    let call = WebhookCall {
        hook: hook.clone(),
        method: req.method.clone(),
        content_type: req.header("content-type").map(str::to_string),
        body: serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null),
        raw,
        at: Instant::now(),
    };
    if let Ok(mut calls) = shared.calls.lock() {
        calls.push(call);
    }
    let status = shared
        .statuses
        .lock()
        .ok()
        .and_then(|s| s.get(&hook).copied())
        .unwrap_or(200);
    Reply::text(status, format!("{hook}: {status}"))
}
