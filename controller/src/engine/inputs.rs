//! Inputs from outside a pass: readiness deadlines, new revisions and operator commands.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::transition::Builder;
use super::{CanaryState, Phase, Timestamp, Transition};
use crate::spec::CanarySpec;

/// The platform saw the canary workload stay unready past `progressDeadlineSeconds`
/// (Kubernetes mode). As in Flagger, this rolls the run back; `why` says what its rollout
/// reported. Outside a run there is nothing to roll back. A primary that is slow to take a
/// promoted revision is waited for, not failed: the promotion pass is held while the
/// canary keeps serving its share (Flagger instead fails the promotion and sends all
/// traffic to the canary).
pub fn on_not_ready(
    spec: &CanarySpec,
    state: &CanaryState,
    why: &str,
    now: Timestamp,
) -> Transition {
    if !state.phase.is_running() {
        return Transition::unchanged(state);
    }
    let mut b = Builder::new(spec, state, now);
    b.state.last_pass_at = Some(now);
    b.state.pass_requested = false;
    let deadline = humantime::format_duration(spec.progress_deadline());
    b.roll_back(&format!("progress deadline exceeded ({deadline}): {why}"));
    b.finish()
}

/// A revision was posted (local mode) or detected (Kubernetes mode).
pub fn on_revision(
    spec: &CanarySpec,
    state: &CanaryState,
    revision: &str,
    now: Timestamp,
) -> Transition {
    let key = spec.key();
    let rev = Some(revision.to_string());
    if state.primary_revision.is_none() {
        // The first revision ever becomes the primary without analysis.
        let mut b = Builder::new(spec, state, now);
        b.state.primary_revision = rev.clone();
        b.state.canary_revision = rev.clone();
        b.state.cookie_revision = rev;
        b.state.weight = 0;
        b.phase(Phase::Initialized);
        b.info(format!(
            "Initialization done! {key} primary runs revision {revision}"
        ));
        return b.finish();
    }
    if state.canary_revision == rev {
        return Transition::unchanged(state);
    }
    let mut b = Builder::new(spec, state, now);
    b.state.canary_revision = rev.clone();
    match state.phase {
        Phase::Progressing | Phase::WaitingPromotion => {
            if rev == state.primary_revision {
                b.state.weight = 0;
                b.state.mirror = false;
                b.state.failed_checks = 0;
                b.state.iterations = 0;
                b.state.cookie_revision = rev;
                b.phase(Phase::Initialized);
                b.warn(format!(
                    "Revision {revision} of {key} is the primary's: run abandoned, all traffic on the primary"
                ));
            } else {
                b.start_run();
                b.state.pass_requested = true;
                b.warn(format!(
                    "New revision {revision} of {key} during the run: restarting the analysis at weight 0"
                ));
            }
        }
        Phase::Promoting | Phase::Finalising => {
            b.info(format!(
                "New revision {revision} of {key}: it starts a run when the current promotion completes"
            ));
        }
        Phase::Initializing
        | Phase::Initialized
        | Phase::Succeeded
        | Phase::Failed
        | Phase::Waiting => {
            if state.failed_revision.as_deref() != Some(revision) {
                b.state.failed_revision = None;
            }
            if b.state.run_pending() {
                b.state.pass_requested = true;
                b.info(format!("New revision {revision} of {key} detected"));
            } else if state.phase == Phase::Waiting {
                // Back to the primary's revision (or to the failed one): nothing waits.
                let phase = if b.state.canary_revision == b.state.failed_revision {
                    Phase::Failed
                } else {
                    Phase::Initialized
                };
                b.phase(phase);
                b.info(format!(
                    "Revision {revision} of {key} needs no run; the pending one is dropped"
                ));
            }
        }
    }
    b.finish()
}

/// Manual gates from the API or CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Promote,
    Rollback,
    Pause,
    Resume,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::Rollback => "rollback",
            Command::Pause => "pause",
            Command::Resume => "resume",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command that does not apply in the canary's phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command} {canary}: phase is {phase}; {reason}")]
pub struct CommandError {
    pub command: Command,
    pub canary: String,
    pub phase: Phase,
    pub reason: String,
}

/// Applies an operator's command.
/// - `promote`: in Progressing or WaitingPromotion, skips the remaining analysis and gates
///   (the operator is the gate) and enters Promoting.
/// - `rollback`: in Progressing, WaitingPromotion or Waiting, rolls back now.
/// - `pause`/`resume`: stop and restart passes; resuming restarts the deadline clock.
pub fn on_command(
    spec: &CanarySpec,
    state: &CanaryState,
    command: Command,
    now: Timestamp,
) -> Result<Transition, CommandError> {
    let key = spec.key();
    let refuse = |reason: &str| CommandError {
        command,
        canary: key.clone(),
        phase: state.phase,
        reason: reason.to_string(),
    };
    let mut b = Builder::new(spec, state, now);
    match command {
        Command::Pause => {
            if !state.paused {
                b.state.paused = true;
                b.info(format!(
                    "{key} paused by the operator: no passes until resumed"
                ));
            }
        }
        Command::Resume => {
            if state.paused {
                b.state.paused = false;
                if state.phase == Phase::Progressing {
                    b.progress();
                }
                b.info(format!("{key} resumed by the operator"));
            }
        }
        Command::Promote => {
            if !state.phase.is_running() {
                return Err(refuse(
                    "only a Progressing or WaitingPromotion run can be promoted",
                ));
            }
            b.info(format!("Manual promotion of {key} by the operator"));
            b.enter_promoting();
            b.state.pass_requested = true;
        }
        Command::Rollback => {
            if !(state.phase.is_running() || state.phase == Phase::Waiting) {
                return Err(refuse(
                    "only a Progressing, WaitingPromotion or Waiting run can be rolled back",
                ));
            }
            b.roll_back("manual rollback by the operator");
        }
    }
    Ok(b.finish())
}
