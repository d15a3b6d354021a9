//! Advancing after a pass: the observations decide the next weight, phase and events.

use super::plan::pass_gap;
use super::transition::Builder;
use super::{
    CanaryState, PassKind, PassObservations, PassPlan, PassStep, Phase, RollbackReason, StepResult,
    Timestamp, Transition,
};
use crate::checks::webhooks::HookType;
use crate::spec::{CanarySpec, Strategy};

enum Outcome<'a> {
    AllOk,
    Failed(&'a StepResult),
    /// The runner stopped before the end without a failure (or reported steps that were
    /// not planned): nothing is concluded from this pass.
    Incomplete,
}

fn outcome<'a>(steps: &[PassStep], observations: &'a PassObservations) -> Outcome<'a> {
    for (i, step) in steps.iter().enumerate() {
        match observations.results.get(i) {
            Some(r) if r.step != *step => return Outcome::Incomplete,
            Some(r) if !r.ok => return Outcome::Failed(r),
            Some(_) => {}
            None => return Outcome::Incomplete,
        }
    }
    Outcome::AllOk
}

/// The first failing check's message, else a description of the step.
fn failure_message(spec: &CanarySpec, r: &StepResult) -> String {
    if let Some(c) = r.checks.iter().find(|c| !c.passed) {
        if !c.message.is_empty() {
            return c.message.clone();
        }
        return format!("{} failed", c.name);
    }
    match r.step {
        PassStep::RollbackHooks => "a rollback hook asked for rollback".to_string(),
        PassStep::Hooks(t) => format!("{t} hooks failed"),
        PassStep::Metric { index } => {
            let name = spec
                .analysis
                .metrics
                .get(index)
                .map_or("?", |m| m.name.as_str());
            format!("metric {name} failed")
        }
    }
}

/// Applies what the runner observed executing `plan` and returns the state to persist and
/// the effects to apply.
pub fn advance(
    spec: &CanarySpec,
    state: &CanaryState,
    plan: &PassPlan,
    observations: &PassObservations,
    now: Timestamp,
) -> Transition {
    let PassPlan::Run { kind, steps } = plan else {
        return Transition::unchanged(state);
    };
    let mut b = Builder::new(spec, state, now);
    if let Some(progress) = state.last_progress_at {
        let gap = pass_gap(spec, state, now);
        b.state.last_progress_at = Some(progress.plus(gap).min(now));
    }
    b.state.last_pass_at = Some(now);
    b.state.pass_requested = false;
    if !observations.results.is_empty() {
        b.state.last_checks = observations
            .results
            .iter()
            .flat_map(|r| r.checks.iter().cloned())
            .collect();
    }
    let key = spec.key();
    let outcome = outcome(steps, observations);
    if let Outcome::Incomplete = outcome {
        b.warn(format!(
            "Pass of {key} did not complete; nothing concluded, it runs again next interval"
        ));
        return b.finish();
    }
    match kind {
        PassKind::ConfirmRollout => {
            let revision = state.canary_revision.clone().unwrap_or_default();
            match outcome {
                Outcome::Failed(r) => {
                    let why = failure_message(spec, r);
                    b.phase(Phase::Waiting);
                    b.info(format!(
                        "Halt {key} advancement waiting for approval of revision {revision}: {why}"
                    ));
                }
                _ => {
                    b.start_run();
                    if spec.skip_analysis {
                        b.info(format!(
                            "New revision {revision} of {key}: skipAnalysis is set, it is promoted at the next pass"
                        ));
                    } else {
                        b.info(format!(
                            "New revision {revision} of {key}: starting canary analysis"
                        ));
                    }
                }
            }
        }
        PassKind::RollBack(RollbackReason::Threshold {
            failed_checks,
            threshold,
        }) => b.roll_back(&format!(
            "failed checks threshold reached ({failed_checks} of {threshold})"
        )),
        PassKind::SkipAnalysis => {
            b.info(format!(
                "skipAnalysis is set: promoting {key} without analysis"
            ));
            b.enter_promoting();
            b.succeed();
        }
        PassKind::Promote => {
            let step = spec.analysis.step_weight_promotion;
            b.state.mirror = false;
            b.state.weight = if step > 0 {
                b.state.weight.saturating_sub(step)
            } else {
                0
            };
            if b.state.weight == 0 {
                b.phase(Phase::Finalising);
                b.info(format!("Routing all traffic of {key} to the primary"));
            } else {
                let w = b.state.weight;
                b.info(format!("Promotion of {key}: canary weight down to {w}"));
            }
        }
        PassKind::Finalise => b.succeed(),
        PassKind::PreRollout | PassKind::Analysis => match outcome {
            Outcome::Failed(r) => match r.step {
                PassStep::RollbackHooks => {
                    let why = failure_message(spec, r);
                    b.roll_back(&format!("rollback hook: {why}"));
                }
                PassStep::Hooks(HookType::ConfirmTrafficIncrease) => {
                    let why = failure_message(spec, r);
                    b.info(format!(
                        "Halt {key} advancement waiting for traffic increase approval: {why}"
                    ));
                }
                PassStep::Hooks(HookType::ConfirmPromotion) => {
                    let why = failure_message(spec, r);
                    b.phase(Phase::WaitingPromotion);
                    b.info(format!(
                        "Halt {key} advancement waiting for promotion approval: {why}"
                    ));
                }
                _ => {
                    b.state.failed_checks += 1;
                    let why = failure_message(spec, r);
                    let (fc, t) = (b.state.failed_checks, spec.threshold());
                    b.warn(format!(
                        "Halt {key} advancement ({fc}/{t} failed checks): {why}"
                    ));
                }
            },
            _ => advance_traffic(&mut b, *kind == PassKind::PreRollout),
        },
    }
    b.finish()
}

/// A passing pre-rollout or analysis pass: take the next step of the strategy.
fn advance_traffic(b: &mut Builder<'_>, pre: bool) {
    let spec = b.spec;
    let key = spec.key();
    match spec.strategy() {
        Strategy::Canary(steps) => {
            if !pre && b.state.weight >= steps.max() {
                b.enter_promoting();
            } else if spec.analysis.mirror && b.state.weight == 0 && !b.state.mirror {
                b.state.mirror = true;
                b.progress();
                let mw = spec.mirror_weight();
                b.info(format!(
                    "Advance {key}: mirroring {mw}% of traffic to the canary"
                ));
            } else {
                b.state.mirror = false;
                b.state.weight = steps.next(b.state.weight);
                let w = b.state.weight;
                b.progress();
                b.info(format!("Advance {key} canary weight {w}"));
            }
        }
        Strategy::ABTesting { iterations } => {
            if pre {
                b.state.weight = 100;
                b.state.iterations = 1;
                b.progress();
                b.info(format!(
                    "Advance {key}: matching requests go to the canary, iteration 1/{iterations}"
                ));
            } else if b.state.iterations < iterations {
                b.state.iterations += 1;
                let i = b.state.iterations;
                b.progress();
                b.info(format!("Advance {key} canary iteration {i}/{iterations}"));
            } else {
                b.enter_promoting();
            }
        }
        Strategy::BlueGreen {
            iterations,
            switches_traffic,
        } => {
            if pre {
                b.state.iterations = 1;
                b.state.mirror = spec.analysis.mirror;
                b.progress();
                let mirroring = if spec.analysis.mirror {
                    format!(", mirroring {}% of traffic", spec.mirror_weight())
                } else {
                    String::new()
                };
                b.info(format!(
                    "Advance {key} canary iteration 1/{iterations}{mirroring}"
                ));
            } else if b.state.iterations < iterations {
                b.state.iterations += 1;
                let i = b.state.iterations;
                b.progress();
                b.info(format!("Advance {key} canary iteration {i}/{iterations}"));
            } else if b.state.iterations == iterations && switches_traffic {
                b.state.mirror = false;
                b.state.weight = 100;
                b.state.iterations += 1;
                b.progress();
                b.info(format!("Advance {key}: all traffic switched to the canary"));
            } else if b.state.iterations == iterations {
                // As Flagger with provider kubernetes: one more analysis, with no traffic
                // switch, before promotion.
                b.state.iterations += 1;
                b.progress();
                b.info(format!(
                    "Advance {key}: {iterations} iterations done; the canary gets no traffic before promotion (provider kubernetes)"
                ));
            } else {
                b.enter_promoting();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
