//! veer-filter: the proxy-wasm edge. Root context (configure, tick, poll, shared data) and
//! HTTP context (decision in, headers, cookies and metrics out). All decisions live in
//! veer-core; this crate only moves bytes between Envoy and it.
//!
//! Build: `scripts/build-filter.sh` (the release build for wasm32, then `wasm-opt -Os`)
//! → `target/wasm32-unknown-unknown/release/veer_filter.wasm`.

mod headers;
mod host;
mod http;
mod lease;
mod metrics;
mod notify;
mod poll;
mod root;
mod shared;

pub use metrics::{DURATION, ERRORS, REQUESTS, RESPONSES, TABLE_AGE, TABLE_GENERATION};

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Envoy's own `wasm` log level filters again; this only bounds what the SDK forwards.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::VeerRoot::new(context_id)));
}}
