#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Behaviour of veer-core's public API. The same test bodies run natively (`cargo test`)
//! and compiled to wasm32-unknown-unknown under Node (`run-wasm-tests.sh`): on wasm32 the
//! `test` attribute each module imports is wasm-bindgen-test's, so 32-bit agreement is checked by running
//! the very same assertions, fixed test vectors included.

#[path = "behaviour/fixtures.rs"]
mod fixtures;

#[path = "behaviour/bucket.rs"]
mod bucket;
#[path = "behaviour/cookie.rs"]
mod cookie;
#[path = "behaviour/decision.rs"]
mod decision;
#[path = "behaviour/lookup.rs"]
mod lookup;
#[path = "behaviour/matcher.rs"]
mod matcher;
#[path = "behaviour/oracle.rs"]
mod oracle;
#[path = "behaviour/validate.rs"]
mod validate;
#[path = "behaviour/vectors.rs"]
mod vectors;
