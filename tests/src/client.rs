//! A small blocking HTTP/1.1 client with keep-alive, enough to send thousands of requests
//! through Envoy quickly and to see every response header (repeated `set-cookie` included).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in arrival order; repeated headers stay separate.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (lowercase).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection; reconnects when the server closed it.
pub struct HttpClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient {
            addr,
            conn: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Opens the connection now (to pin a connection to an Envoy worker before requests).
    pub fn connect(&mut self) -> Result<(), String> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout)
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            stream
                .set_read_timeout(Some(self.timeout))
                .map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::new(stream));
        }
        Ok(())
    }

    /// `GET path` with `Host: host` and extra headers.
    pub fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
        for (n, v) in headers {
            request.push_str(n);
            request.push_str(": ");
            request.push_str(v);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        // A pooled connection the server already closed fails on first use; retry once fresh.
        match self.exchange(request.as_bytes()) {
            Ok(r) => Ok(r),
            Err(first) => {
                self.conn = None;
                self.exchange(request.as_bytes())
                    .map_err(|e| format!("{e} (after retry; first error: {first})"))
            }
        }
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Response, String> {
        self.connect()?;
        let conn = self.conn.as_mut().ok_or("no connection")?;
        conn.get_mut()
            .write_all(request)
            .map_err(|e| format!("write: {e}"))?;
        let response = read_response(conn);
        match &response {
            Ok(r) if r.header("connection") == Some("close") => self.conn = None,
            Err(_) => self.conn = None,
            Ok(_) => {}
        }
        response
    }
}

fn read_line(conn: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    let n = conn
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed".into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_response(conn: &mut BufReader<TcpStream>) -> Result<Response, String> {
    let status_line = read_line(conn)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(conn)?;
        if line.is_empty() {
            break;
        }
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        let mut body = vec![0; len];
        conn.read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        response.body = body;
    } else if response.header("transfer-encoding") == Some("chunked") {
        loop {
            let size_line = read_line(conn)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)
                .map_err(|e| format!("read chunk: {e}"))?;
            chunk.truncate(size);
            response.body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    }
    Ok(response)
}
