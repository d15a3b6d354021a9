//! veer-filter: the proxy-wasm edge. Root context (configure, tick, poll, shared data) and
//! HTTP context (decision in, headers, cookies and metrics out). All decisions live in
//! veer-core; this crate only moves bytes between Envoy and it.
