//! Loopback ports for test processes and in-process servers. Prefer binding port 0 in-process and keeping the
//! listener (no race); `free_port` is for child processes that need a port on the command line.

use std::net::{SocketAddr, TcpListener};

/// A port that was free a moment ago: bound on 127.0.0.1:0 and released. Another process can
/// take it before the child binds it; children that accept port 0 (Envoy) should get 0 instead.
pub fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// A listener on a fresh loopback port, kept open (for in-process servers).
pub fn bind_loopback() -> Result<(TcpListener, SocketAddr), String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?;
    Ok((listener, addr))
}
