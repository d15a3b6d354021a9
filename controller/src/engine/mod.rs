//! The analysis state machine: Flagger's semantics made precise, as pure functions. No I/O,
//! no clocks, no async: time comes in as `now`, hook and metric results come in as
//! observations, and effects go out as [`Action`]s.
//!
//! A pass is two steps with the runner's effects between them:
//! 1. [`plan`] says what this pass must execute, in order ([`PassStep`]s: hooks, metrics).
//!    The runner executes them in order and stops at the first step that is not ok.
//! 2. [`advance`] takes what happened ([`PassObservations`]) and returns the next
//!    [`CanaryState`] and the [`Action`]s to apply.
//!
//! External inputs are pure too: [`on_revision`] (a new revision posted or detected) and
//! [`on_command`] (promote, rollback, pause, resume).
//!
//! Crash safety follows from the contract with the runner: it persists the returned state
//! *before* applying actions, and the route it publishes is always derived from the saved
//! state ([`route_for_state`]). A weight increase only ever exists in a state returned by
//! `advance` after a passing analysis, so a restart (which re-plans from the saved state)
//! can neither raise the weight without one nor repeat a completed promotion; at worst it
//! re-runs the checks of an interrupted pass, or re-publishes the same route.
//!
//! Choices this module makes where Flagger is silent or fuzzy (each has a test):
//! - Blue/Green follows Flagger: `iterations` passes at weight 0 (mirroring if
//!   `mirror: true`), then confirm-traffic-increase and confirm-promotion gate the switch to
//!   weight 100, one more analysis runs at 100, then Promoting.
//!   With `provider: kubernetes` (no traffic routing) the weight stays 0: after the
//!   iterations one more analysis runs (gated by confirm-promotion), then Promoting, as
//!   Flagger does.
//! - `skipAnalysis` follows Flagger's two passes: the pass that starts the run (after
//!   confirm-rollout) only starts it; the next one, which the platform runs only once the
//!   canary is ready, promotes with no metrics and no rollout hooks.
//! - confirm-traffic-increase also gates the mirroring step and the step from mirroring to
//!   real traffic (Flagger skips it for the latter; veer gates every increase).
//! - `progressDeadlineSeconds` bounds readiness, as in Flagger: how long the canary (and the
//!   primary, on promotion) may take to become ready. Readiness is the platform's to
//!   observe, so the deadline reaches the engine as an input ([`on_not_ready`]). A run that
//!   makes no weight step (a refusing confirm-traffic-increase gate, say) is paused, not
//!   failed: the engine has no "no progress" rollback.
//! - A revision equal to the primary's during a run abandons the run (weight 0, phase
//!   Initialized: the primary serves everything and nothing is pending), not a failure.
//! - A revision arriving during Promoting/Finalising waits: that run completes, then the
//!   new revision starts a run from Succeeded.

mod advance;
mod inputs;
mod pass;
mod plan;
mod state;
mod time;
mod transition;

pub use advance::advance;
pub use inputs::{on_command, on_not_ready, on_revision, Command, CommandError};
pub use pass::*;
pub use plan::plan;
pub use state::*;
pub use time::Timestamp;
pub use transition::{Action, EventSeverity, Transition};
