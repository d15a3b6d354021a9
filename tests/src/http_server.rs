//! A minimal threaded HTTP/1.1 server for in-process test servers (backends, the table stub):
//! keep-alive, one thread per connection, handlers may block (long polls). Stopping closes the
//! listener and every open connection, so clients see the server die as a real one would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A parsed request (bodies are read and kept as bytes).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path with query string.
    pub target: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, joined with `,` (as a proxy would fold them); `None` if absent.
    pub fn header_values(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter's raw value.
    pub fn query(&self, name: &str) -> Option<&str> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Close the connection without answering (a crashed server).
    Drop,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Respond {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
        }
    }

    pub fn with_header(self, name: &str, value: impl Into<String>) -> Reply {
        match self {
            Reply::Respond {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.to_string(), value.into()));
                Reply::Respond {
                    status,
                    headers,
                    body,
                }
            }
            Reply::Drop => Reply::Drop,
        }
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

struct Shared {
    stopped: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

/// A running server; stops on drop.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `handler` on `listener` (bind it first, e.g. `ports::bind_loopback`).
    pub fn start(listener: TcpListener, handler: Handler) -> Result<HttpServer, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("http-server-{addr}"))
            .spawn(move || accept_loop(listener, accept_shared, handler))
            .map_err(|e| e.to_string())?;
        Ok(HttpServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// Closes the listener and all connections; later connects are refused.
    pub fn stop(&mut self) {
        if self.shared.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept() so the thread sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        if let Ok(mut open) = self.shared.open.lock() {
            for s in open.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, handler: Handler) {
    for stream in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        if let (Ok(clone), Ok(mut open)) = (stream.try_clone(), shared.open.lock()) {
            open.retain(|s| s.peer_addr().is_ok());
            open.push(clone);
        }
        let conn_shared = Arc::clone(&shared);
        let conn_handler = Arc::clone(&handler);
        let _ = std::thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || serve_connection(stream, conn_shared, conn_handler));
    }
}

fn serve_connection(stream: TcpStream, shared: Arc<Shared>, handler: Handler) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    while !shared.stopped.load(Ordering::SeqCst) {
        let Some(request) = read_request(&mut reader) else {
            // The server keeps a clone of every stream (to cut them on stop), so dropping ours
            // would not close the socket: shut it down explicitly.
            let _ = writer.shutdown(Shutdown::Both);
            return;
        };
        let reply = handler(&request);
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        match reply {
            Reply::Drop => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Reply::Respond {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
                for (n, v) in &headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&body);
                if writer.write_all(&bytes).is_err() {
                    return;
                }
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// One line, with bytes that are not UTF-8 (legal obs-text in header values) replaced.
fn read_line(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut raw = Vec::new();
    if reader.read_until(b'\n', &mut raw).ok()? == 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&raw).into_owned())
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let line = read_line(reader)?;
    let mut parts = line.trim_end().split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let h = read_line(reader)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}
