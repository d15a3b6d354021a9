//! veer-controller: reads Flagger Canary specs, runs the analysis, moves the weight and
//! serves the routing table that every gateway filter pulls.

pub mod analysis;
pub mod cli;
pub mod explain;
pub mod observe;
pub mod prometheus;
pub mod render;
pub mod runner;
pub mod server;
pub mod spec;
pub mod store;
pub mod table_hub;
pub mod webhooks;
