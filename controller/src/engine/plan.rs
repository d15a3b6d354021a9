//! Planning a pass: which hooks and metrics this state needs, in Flagger's order.

use std::time::Duration;

use super::{
    CanaryState, IdleReason, PassKind, PassPlan, PassStep, Phase, RollbackReason, Timestamp,
};
use crate::checks::webhooks::HookType;
use crate::spec::{CanarySpec, Strategy};

/// What this pass must execute. Pure: the same spec, state and time give the same plan.
pub fn plan(spec: &CanarySpec, state: &CanaryState, now: Timestamp) -> PassPlan {
    if spec.suspend {
        return PassPlan::Idle(IdleReason::Suspended);
    }
    if state.paused {
        return PassPlan::Idle(IdleReason::Paused);
    }
    let has_work = state.run_pending()
        || matches!(
            state.phase,
            Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Finalising
        );
    if !has_work {
        return PassPlan::Idle(IdleReason::NoRun);
    }
    if let (Some(last), false) = (state.last_pass_at, state.pass_requested) {
        let next_at = last.plus(spec.interval());
        if now < next_at {
            return PassPlan::Idle(IdleReason::NotDue { next_at });
        }
    }
    let run = |kind, steps| PassPlan::Run { kind, steps };
    match state.phase {
        Phase::Promoting => run(PassKind::Promote, Vec::new()),
        Phase::Finalising => run(PassKind::Finalise, Vec::new()),
        Phase::Progressing | Phase::WaitingPromotion => plan_analysis(spec, state),
        _ => {
            let mut steps = Vec::new();
            push_hooks(spec, &mut steps, HookType::ConfirmRollout);
            run(PassKind::ConfirmRollout, steps)
        }
    }
}

fn push_hooks(spec: &CanarySpec, steps: &mut Vec<PassStep>, hook_type: HookType) {
    if spec
        .analysis
        .webhooks
        .iter()
        .any(|w| w.hook_type == hook_type)
    {
        steps.push(if hook_type == HookType::Rollback {
            PassStep::RollbackHooks
        } else {
            PassStep::Hooks(hook_type)
        });
    }
}

fn is_pre_rollout(state: &CanaryState) -> bool {
    state.weight == 0 && state.iterations == 0 && !state.mirror
}

/// The gates that guard what a passing analysis leads to in `state`.
fn gates(spec: &CanarySpec, state: &CanaryState) -> Vec<HookType> {
    let pre = is_pre_rollout(state);
    match spec.strategy() {
        Strategy::Canary(steps) => {
            if !pre && state.weight >= steps.max() {
                vec![HookType::ConfirmPromotion]
            } else {
                vec![HookType::ConfirmTrafficIncrease]
            }
        }
        Strategy::ABTesting { iterations } => {
            if pre {
                vec![HookType::ConfirmTrafficIncrease]
            } else if state.iterations >= iterations {
                vec![HookType::ConfirmPromotion]
            } else {
                Vec::new()
            }
        }
        Strategy::BlueGreen {
            iterations,
            switches_traffic,
        } => {
            if pre {
                if spec.analysis.mirror {
                    vec![HookType::ConfirmTrafficIncrease]
                } else {
                    Vec::new()
                }
            } else if state.iterations == iterations && switches_traffic {
                vec![HookType::ConfirmTrafficIncrease, HookType::ConfirmPromotion]
            } else if state.iterations == iterations {
                // No traffic moves before promotion, so there is no increase to confirm.
                vec![HookType::ConfirmPromotion]
            } else {
                Vec::new()
            }
        }
    }
}

/// Time passes beyond one interval since the last pass were not running (suspended,
/// paused, controller down). The deadline clock stops during such a gap, so a restart
/// resumes a run instead of rolling it back for the controller's own downtime.
pub(super) fn pass_gap(spec: &CanarySpec, state: &CanaryState, now: Timestamp) -> Duration {
    state.last_pass_at.map_or(Duration::ZERO, |t| {
        now.since(t).saturating_sub(spec.interval())
    })
}

fn plan_analysis(spec: &CanarySpec, state: &CanaryState) -> PassPlan {
    let run = |kind, steps| PassPlan::Run { kind, steps };
    if spec.skip_analysis {
        return run(PassKind::SkipAnalysis, Vec::new());
    }
    let threshold = spec.threshold();
    if state.failed_checks >= threshold {
        return run(
            PassKind::RollBack(RollbackReason::Threshold {
                failed_checks: state.failed_checks,
                threshold,
            }),
            Vec::new(),
        );
    }
    let mut steps = Vec::new();
    push_hooks(spec, &mut steps, HookType::Rollback);
    let kind = if is_pre_rollout(state) {
        push_hooks(spec, &mut steps, HookType::PreRollout);
        PassKind::PreRollout
    } else {
        push_hooks(spec, &mut steps, HookType::Rollout);
        steps.extend((0..spec.analysis.metrics.len()).map(|index| PassStep::Metric { index }));
        PassKind::Analysis
    };
    for gate in gates(spec, state) {
        push_hooks(spec, &mut steps, gate);
    }
    run(kind, steps)
}

// ---------------------------------------------------------------------------------------
