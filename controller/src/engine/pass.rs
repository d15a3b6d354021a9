//! What one analysis pass executes ([`PassPlan`], [`PassStep`]) and what the runner saw
//! while executing it ([`PassObservations`]).

use super::{CheckResult, Timestamp};
use crate::checks::webhooks::HookType;

/// One thing the runner executes in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassStep {
    /// Call every rollback hook. Inverted: ok means no hook answered 2xx; a 2xx answer
    /// (not ok) means roll back now.
    RollbackHooks,
    /// Call the hooks of this type in spec order; ok when all answered 200/201/202. The
    /// first failure stops the rest.
    Hooks(HookType),
    /// Query `spec.analysis.metrics[index]`; ok when the value is within its range.
    Metric { index: usize },
}

/// Why a pass rolls back without executing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackReason {
    /// `failedChecks >= threshold`, checked before this pass's analysis.
    Threshold { failed_checks: u32, threshold: u32 },
}

/// What a pass is for; [`advance`] interprets the observations by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// A revision waits: confirm-rollout, then the run starts (the pass ends there).
    ConfirmRollout,
    /// Weight 0, iteration 0: pre-rollout hooks, no metrics, then the first step.
    PreRollout,
    /// Rollout hooks and metrics, then the next step (or the promotion gate).
    Analysis,
    RollBack(RollbackReason),
    /// `skipAnalysis`: the pass after the run started (once the platform saw the canary
    /// ready) promotes, with no metrics and no rollout hooks.
    SkipAnalysis,
    /// Move weight back to the primary (all at once or by stepWeightPromotion).
    Promote,
    /// Drained: Succeeded.
    Finalise,
}

/// Why no pass runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleReason {
    NotDue {
        next_at: Timestamp,
    },
    Suspended,
    Paused,
    /// Nothing to analyse: no revision, or none pending.
    NoRun,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassPlan {
    Idle(IdleReason),
    Run {
        kind: PassKind,
        steps: Vec<PassStep>,
    },
}

/// How one planned step went.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub step: PassStep,
    pub ok: bool,
    /// The individual hook calls / metric reading behind it, for status and messages.
    pub checks: Vec<CheckResult>,
}

/// What the runner observed executing a plan: the steps in plan order, up to and
/// including the first that was not ok.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PassObservations {
    pub results: Vec<StepResult>,
}

// ---------------------------------------------------------------------------------------
