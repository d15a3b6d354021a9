//! Test HTTP servers on free ports: an axum app served until drop, a server that accepts
//! and never answers, a recorder of what a server received, and a webhook gate the test
//! opens and closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

/// Records what a test server received.
#[derive(Clone)]
pub struct Recorder<T: Clone> {
    inner: Arc<Mutex<Vec<T>>>,
}

impl<T: Clone> Default for Recorder<T> {
    fn default() -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<T: Clone> Recorder<T> {
    pub fn push(&self, v: T) {
        self.inner.lock().unwrap().push(v);
    }
    pub fn all(&self) -> Vec<T> {
        self.inner.lock().unwrap().clone()
    }
}

/// A TCP server that accepts connections and never answers; they stay open until drop.
pub struct HangingServer {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl HangingServer {
    pub async fn start() -> HangingServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        HangingServer { addr, _task: task }
    }
}

impl Drop for HangingServer {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// Serves `app` on a free port for the lifetime of the returned handle.
pub struct TestServer {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(app: axum::Router) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer { addr, _task: task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// A confirm-* webhook the test opens and closes: it answers 200 while open and 503 while
/// closed (the default), and counts its calls.
#[derive(Default)]
pub struct Gate {
    pub open: AtomicBool,
    pub calls: AtomicUsize,
}

impl Gate {
    /// A POST route on which the gate answers.
    pub fn route(self: &Arc<Self>) -> axum::routing::MethodRouter {
        let gate = self.clone();
        axum::routing::post(move || {
            let gate = gate.clone();
            async move { gate.answer() }
        })
    }

    /// Counts the call and answers as the gate stands.
    pub fn answer(&self) -> StatusCode {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.open.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
