//! veer-controller: reads Flagger Canary specs, runs the analysis, moves the weight and
//! serves the routing table that every gateway filter pulls.
//!
//! - [`spec`]: the Canary and MetricTemplate as users write them, parsed and checked.
//! - [`engine`]: the analysis state machine, pure (state and observations in, transition out).
//! - [`checks`]: the effects the engine asks for: Prometheus queries and webhook calls.
//! - [`runner`]: one task per canary around the engine: plan, execute checks, advance,
//!   commit through the platform, publish the routing table.
//! - [`platform`]: the seam to where canaries live: [`platform::local`] (spec files and a
//!   state file) and [`platform::kubernetes`] (Canary resources, Deployments, status).
//! - [`serve`]: the routing-table hub, the HTTP API and the controller's own metrics.
//! - [`render`]: the Istio resources for a canary (`veer render`, and Kubernetes mode).
//! - [`cli`]: the `veer` commands, `explain` among them.

pub mod checks;
pub mod cli;
pub mod engine;
pub mod platform;
pub mod render;
pub mod runner;
pub mod serve;
pub mod spec;
