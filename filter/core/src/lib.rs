//! veer-core: the routing table, its validation and the per-request decision, as pure Rust.
//! Both the proxy-wasm filter and the controller build on this crate, so the two sides of
//! the table contract cannot drift apart. Nothing here knows about proxy-wasm or Envoy.

pub mod table;

pub use table::*;
