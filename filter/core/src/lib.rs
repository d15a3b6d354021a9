//! veer-core: the routing table, its validation and the per-request decision, as pure Rust.
//! Both the proxy-wasm filter and the controller build on this crate, so the two sides of
//! the table contract cannot drift apart. Nothing here knows about proxy-wasm or Envoy.

pub mod bucket;
pub mod compiled;
pub mod cookie;
pub mod decision;
mod json;
pub mod keys;
pub mod matcher;
pub mod request;
pub mod stats;
pub mod table;
pub mod validate;

pub use bucket::{bucket, fresh_seed, key_seed, mirror_bucket, Bucket, Seed, BUCKETS, SEED_LEN};
pub use compiled::{CompiledRoute, CompiledTable};
pub use cookie::{
    encode_cookie_value, find_cookie, request_cookies, set_cookie_attributes, set_cookie_header,
    verify_cookie_value,
};
pub use decision::{decide, decision_header_value, Decision, Reason, MAX_COOKIE_CANDIDATES};
pub use keys::{signing_keys, SigningKeys, MIN_KEY_BYTES};
pub use matcher::{CompiledMatch, CompiledRule};
pub use request::{OwnedRequest, RequestView};
pub use stats::stat_route_token;
pub use table::*;
pub use validate::{
    parse_plugin_config, parse_table, validate_config, validate_table, ConfigError,
};
