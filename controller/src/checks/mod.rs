//! The checks a pass executes, as effects the pure engine asks for: Prometheus queries for
//! metrics and HTTP calls for webhooks. Both platforms use them unchanged.

pub mod prometheus;
pub mod webhooks;
