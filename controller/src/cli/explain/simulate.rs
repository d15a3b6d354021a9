//! Running the analysis state machine with scripted check results: the passes `explain`
//! describes are the ones the controller would make.

use super::*;

/// One simulated pass.
#[derive(Debug, Clone)]
pub struct SimulatedPass {
    /// 1-based.
    pub number: usize,
    /// Time since the new revision arrived.
    pub at: Duration,
    pub kind: PassKind,
    pub steps: Vec<PassStep>,
    pub before: CanaryState,
    pub after: CanaryState,
}

/// What the simulated checks answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Every hook and metric passes.
    AllPass,
    /// Checks (pre-rollout/rollout hooks and metrics) fail from this pass number on;
    /// gates and rollback hooks keep answering "go on".
    FailFrom(usize),
}

const MAX_SIMULATED_PASSES: usize = 1000;

/// Runs the state machine from "a primary is running, a new revision arrives" until the
/// run ends (or stops moving), answering checks per `script`.
pub fn simulate(spec: &CanarySpec, script: Script) -> Vec<SimulatedPass> {
    let t0 = Timestamp::from_millis(0);
    let mut state = on_revision(spec, &CanaryState::default(), "current", t0).state;
    state = on_revision(spec, &state, "new", t0).state;
    let mut spec = spec.clone();
    spec.suspend = false;
    let mut now = t0;
    let mut passes = Vec::new();
    while passes.len() < MAX_SIMULATED_PASSES {
        let p = plan(&spec, &state, now);
        let (kind, steps) = match &p {
            PassPlan::Idle(IdleReason::NotDue { next_at }) => {
                now = *next_at;
                continue;
            }
            PassPlan::Idle(_) => break,
            PassPlan::Run { kind, steps } => (*kind, steps.clone()),
        };
        let number = passes.len() + 1;
        let mut obs = PassObservations::default();
        for step in &steps {
            let is_check = matches!(
                step,
                PassStep::Metric { .. } | PassStep::Hooks(HookType::PreRollout | HookType::Rollout)
            );
            let ok = match script {
                Script::FailFrom(n) => !(is_check && number >= n),
                Script::AllPass => true,
            };
            obs.results.push(StepResult {
                step: *step,
                ok,
                checks: vec![CheckResult {
                    name: format!("{step:?}"),
                    kind: CheckKind::Metric,
                    passed: ok,
                    value: None,
                    message: String::new(),
                }],
            });
            if !ok {
                break;
            }
        }
        let t = advance(&spec, &state, &p, &obs, now);
        let done = matches!(t.state.phase, Phase::Succeeded | Phase::Failed);
        passes.push(SimulatedPass {
            number,
            at: now.since(t0),
            kind,
            steps,
            before: state,
            after: t.state.clone(),
        });
        state = t.state;
        if done {
            break;
        }
    }
    passes
}
