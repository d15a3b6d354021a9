//! A Canary's saved state (phase, weight, counters, last checks) and the route it implies.

use std::fmt;

use serde::{Deserialize, Serialize};
use veer_core::Route;

use super::Timestamp;
use crate::checks::webhooks::HookType;
use crate::spec::{route_for, CanarySpec};

/// Flagger's canary phases, spelled as Flagger spells them (status, API, webhook payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Phase {
    /// No revision seen yet.
    #[default]
    Initializing,
    /// The first revision became the primary without analysis; no run pending.
    Initialized,
    /// A new revision waits for confirm-rollout.
    Waiting,
    Progressing,
    /// The analysis is done; confirm-promotion refused. Analysis and gate retry each pass.
    WaitingPromotion,
    /// The primary took the canary revision; traffic moves back to it.
    Promoting,
    /// One more interval so in-flight requests drain.
    Finalising,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Initialized => "Initialized",
            Phase::Waiting => "Waiting",
            Phase::Progressing => "Progressing",
            Phase::WaitingPromotion => "WaitingPromotion",
            Phase::Promoting => "Promoting",
            Phase::Finalising => "Finalising",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Whether a run holds traffic or gates right now (it can be rolled back or promoted).
    pub fn is_running(self) -> bool {
        matches!(self, Phase::Progressing | Phase::WaitingPromotion)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a check was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CheckKind {
    Metric,
    Hook(HookType),
}

/// The result of one hook call or metric query in a pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckResult {
    pub name: String,
    pub kind: CheckKind,
    pub passed: bool,
    /// The metric's value, when one was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default)]
    pub message: String,
}

/// Everything a restart needs, persisted by the runner after every transition.
///
/// `deny_unknown_fields`: a state file written by a newer veer with fields this one does
/// not know is an error, not a silent drop of meaning (a downgrade must be deliberate).
/// New fields are added with `#[serde(default)]`, so a newer veer reads older files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryState {
    pub phase: Phase,
    /// Canary weight in percent (the route carries basis points).
    #[serde(default)]
    pub weight: u32,
    /// Primary-bound traffic is mirrored to the canary (at the spec's mirrorWeight).
    #[serde(default)]
    pub mirror: bool,
    /// Failed checks in this run (cumulative, not consecutive).
    #[serde(default)]
    pub failed_checks: u32,
    #[serde(default)]
    pub iterations: u32,
    /// The latest revision posted: the one under analysis, or waiting to be.
    #[serde(default)]
    pub canary_revision: Option<String>,
    /// The last promoted revision: what the primary runs.
    #[serde(default)]
    pub primary_revision: Option<String>,
    /// A rolled-back revision: it does not start again until the revision changes.
    #[serde(default)]
    pub failed_revision: Option<String>,
    /// The run's revision, which salts the sticky bucket in the route.
    #[serde(default)]
    pub cookie_revision: Option<String>,
    /// Stopped by the operator: no passes until resumed.
    #[serde(default)]
    pub paused: bool,
    /// The next pass should not wait for the interval (a revision or command arrived).
    #[serde(default)]
    pub pass_requested: bool,
    #[serde(default)]
    pub last_transition_at: Option<Timestamp>,
    #[serde(default)]
    pub last_pass_at: Option<Timestamp>,
    /// Last weight step or iteration (or run start): the progress deadline's clock.
    #[serde(default)]
    pub last_progress_at: Option<Timestamp>,
    #[serde(default)]
    pub last_checks: Vec<CheckResult>,
    /// The last event's message, for status output.
    #[serde(default)]
    pub message: String,
}

impl CanaryState {
    /// A revision is waiting for a run to start (confirm-rollout comes next).
    pub fn run_pending(&self) -> bool {
        matches!(
            self.phase,
            Phase::Initialized | Phase::Succeeded | Phase::Failed | Phase::Waiting
        ) && self.canary_revision.is_some()
            && self.canary_revision != self.primary_revision
            && self.canary_revision != self.failed_revision
    }

    /// The revision the route carries: the run's, else the primary's.
    pub fn route_revision(&self) -> &str {
        self.cookie_revision
            .as_deref()
            .or(self.primary_revision.as_deref())
            .unwrap_or("")
    }

    pub(super) fn set_phase(&mut self, phase: Phase, now: Timestamp) {
        if self.phase != phase {
            self.phase = phase;
            self.last_transition_at = Some(now);
        }
    }
}

/// The route for `spec` in `state`: the only way a weight reaches the table.
pub fn route_for_state(spec: &CanarySpec, state: &CanaryState) -> Route {
    let mirror_bp = if state.mirror {
        spec.mirror_weight() * 100
    } else {
        0
    };
    route_for(spec, state.weight * 100, mirror_bp, state.route_revision())
}
