#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The analysis state machine, one or more tests per rule of docs/analysis.md, each named
//! after its rule. Every pass goes through a JSON round trip of the state, as the runner
//! persists it, so the tests also exercise what a restart reads back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use veer_controller::checks::webhooks::HookType;
use veer_controller::engine::{
    advance, on_command, on_not_ready, on_revision, plan, route_for_state, Action, CanaryState,
    CheckKind, CheckResult, Command, IdleReason, PassKind, PassObservations, PassPlan, PassStep,
    Phase, RollbackReason, StepResult, Timestamp, Transition,
};
use veer_controller::spec::{load_file, load_texts, CanarySpec, LoadOptions};

fn seed() -> CanarySpec {
    let set = load_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seed-canary.yaml"),
        &LoadOptions::default(),
    );
    set.canaries.into_iter().next().unwrap()
}

/// A canary with the given `analysis` body (indented by 4) and optional webhooks.
fn canary(analysis: &str) -> CanarySpec {
    let text = format!(
        "apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: app
  namespace: shop
spec:
  targetRef:
    name: app
  analysis:
{analysis}"
    );
    let set = load_texts(
        &[(PathBuf::from("app.yaml"), text)],
        &LoadOptions::default(),
    );
    let errors: Vec<_> = set.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    set.canaries.into_iter().next().unwrap()
}

fn hook(name: &str, kind: &str) -> String {
    format!("      - name: {name}\n        type: {kind}\n        url: http://hooks.test/{name}\n")
}

const METRICS: &str = "    metrics:
      - name: request-success-rate
        thresholdRange:
          min: 99
      - name: request-duration
        thresholdRange:
          max: 500
";

/// Drives the state machine like the runner does: plan, execute (simulated), advance,
/// persist (a JSON round trip), apply.
struct Sim {
    spec: CanarySpec,
    state: CanaryState,
    now: Timestamp,
    actions: Vec<Action>,
    plans: Vec<PassPlan>,
}

impl Sim {
    fn new(spec: CanarySpec) -> Sim {
        Sim {
            spec,
            state: CanaryState::default(),
            now: Timestamp::from_millis(1_700_000_000_000),
            actions: Vec::new(),
            plans: Vec::new(),
        }
    }

    /// The first revision (becomes primary), then `rev` to start a run.
    fn started(spec: CanarySpec, rev: &str) -> Sim {
        let mut sim = Sim::new(spec);
        sim.revision("v1");
        sim.revision(rev);
        sim
    }

    fn apply(&mut self, t: Transition) {
        let json = serde_json::to_string(&t.state).unwrap();
        self.state = serde_json::from_str(&json).unwrap();
        assert_eq!(self.state, t.state, "state must survive persistence");
        self.actions.extend(t.actions);
    }

    fn revision(&mut self, rev: &str) {
        let t = on_revision(&self.spec, &self.state, rev, self.now);
        self.apply(t);
    }

    fn command(&mut self, c: Command) {
        let t = on_command(&self.spec, &self.state, c, self.now).unwrap();
        self.apply(t);
    }

    /// Runs one pass where `fails` picks the first step that is not ok. Returns the plan.
    fn pass_with(&mut self, fails: impl Fn(&PassStep) -> bool) -> PassPlan {
        let p = plan(&self.spec, &self.state, self.now);
        let obs = observe(&p, fails);
        let t = advance(&self.spec, &self.state, &p, &obs, self.now);
        self.apply(t);
        self.plans.push(p.clone());
        p
    }

    fn pass(&mut self) -> PassPlan {
        self.pass_with(|_| false)
    }

    fn fail_metrics(&mut self) -> PassPlan {
        self.pass_with(|s| matches!(s, PassStep::Metric { .. }))
    }

    fn fail_hooks(&mut self, t: HookType) -> PassPlan {
        self.pass_with(move |s| *s == PassStep::Hooks(t))
    }

    fn tick(&mut self) {
        self.now = self.now.plus(self.spec.interval());
    }

    /// `tick` then `pass`.
    fn next(&mut self) -> PassPlan {
        self.tick();
        self.pass()
    }

    fn snap(&self) -> (Phase, u32, u32, u32) {
        (
            self.state.phase,
            self.state.weight,
            self.state.failed_checks,
            self.state.iterations,
        )
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }
}

/// Simulated runner: executes steps in order and stops at the first failure.
fn observe(p: &PassPlan, fails: impl Fn(&PassStep) -> bool) -> PassObservations {
    let mut obs = PassObservations::default();
    if let PassPlan::Run { steps, .. } = p {
        for step in steps {
            let ok = !fails(step);
            let kind = match step {
                PassStep::Metric { .. } => CheckKind::Metric,
                PassStep::Hooks(t) => CheckKind::Hook(*t),
                PassStep::RollbackHooks => CheckKind::Hook(HookType::Rollback),
            };
            obs.results.push(StepResult {
                step: *step,
                ok,
                checks: vec![CheckResult {
                    name: format!("{step:?}"),
                    kind,
                    passed: ok,
                    value: None,
                    message: if ok {
                        String::new()
                    } else {
                        format!("{step:?} failed")
                    },
                }],
            });
            if !ok {
                break;
            }
        }
    }
    obs
}

fn kind(p: &PassPlan) -> PassKind {
    match p {
        PassPlan::Run { kind, .. } => *kind,
        PassPlan::Idle(r) => panic!("expected a pass, got idle {r:?}"),
    }
}

fn steps(p: &PassPlan) -> Vec<PassStep> {
    match p {
        PassPlan::Run { steps, .. } => steps.clone(),
        PassPlan::Idle(r) => panic!("expected a pass, got idle {r:?}"),
    }
}

fn published_weights(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PublishRoute(r) => Some(r.weight),
            _ => None,
        })
        .collect()
}

fn post_rollout(actions: &[Action]) -> Vec<Phase> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PostRolloutHooks { phase } => Some(*phase),
            _ => None,
        })
        .collect()
}

use Phase::*;

// ---------------------------------------------------------------------------------------
// The seed, end to end

#[test]
fn seed_full_run_10_to_50_one_more_analysis_then_promotion() {
    let mut sim = Sim::started(seed(), "v2");
    let mut trace = Vec::new();
    let mut kinds = Vec::new();
    let mut first = true;
    while sim.state.phase != Succeeded {
        if !first {
            sim.tick();
        }
        first = false;
        let p = sim.pass();
        kinds.push(kind(&p));
        trace.push(sim.snap());
        assert!(trace.len() < 20, "{trace:?}");
    }
    assert_eq!(
        trace,
        vec![
            (Progressing, 0, 0, 0),  // confirm-rollout (none configured), run starts
            (Progressing, 10, 0, 0), // pre-rollout acceptance-test, first step
            (Progressing, 20, 0, 0),
            (Progressing, 30, 0, 0),
            (Progressing, 40, 0, 0),
            (Progressing, 50, 0, 0),
            (Promoting, 50, 0, 0), // one more analysis at 50, then promotion
            (Finalising, 0, 0, 0),
            (Succeeded, 0, 0, 0),
        ]
    );
    use PassKind as K;
    assert_eq!(
        kinds,
        vec![
            K::ConfirmRollout,
            K::PreRollout,
            K::Analysis,
            K::Analysis,
            K::Analysis,
            K::Analysis,
            K::Analysis,
            K::Promote,
            K::Finalise
        ]
    );
    // Pre-rollout runs the acceptance test and no metrics; analysis runs load-test then both
    // metrics.
    assert_eq!(
        steps(&sim.plans[1]),
        vec![PassStep::Hooks(HookType::PreRollout)]
    );
    assert_eq!(
        steps(&sim.plans[2]),
        vec![
            PassStep::Hooks(HookType::Rollout),
            PassStep::Metric { index: 0 },
            PassStep::Metric { index: 1 }
        ]
    );
    let actions = sim.take_actions();
    assert_eq!(
        published_weights(&actions),
        // v1 at 0, the run's revision v2 at 0 (re-salts the buckets), then the steps.
        vec![0, 0, 1000, 2000, 3000, 4000, 5000, 0]
    );
    assert!(actions.contains(&Action::PromotePrimary {
        revision: "v2".into()
    }));
    assert_eq!(post_rollout(&actions), vec![Succeeded]);
    assert_eq!(sim.state.primary_revision.as_deref(), Some("v2"));
    // Nothing more to do.
    sim.tick();
    assert_eq!(
        plan(&sim.spec, &sim.state, sim.now),
        PassPlan::Idle(IdleReason::NoRun)
    );
}

// ---------------------------------------------------------------------------------------
// Starting runs

#[test]
fn rule_first_revision_becomes_primary_without_analysis() {
    let mut sim = Sim::new(seed());
    assert_eq!(
        plan(&sim.spec, &sim.state, sim.now),
        PassPlan::Idle(IdleReason::NoRun)
    );
    sim.revision("v1");
    assert_eq!(sim.snap(), (Initialized, 0, 0, 0));
    assert_eq!(sim.state.primary_revision.as_deref(), Some("v1"));
    assert_eq!(
        plan(&sim.spec, &sim.state, sim.now),
        PassPlan::Idle(IdleReason::NoRun)
    );
    let actions = sim.take_actions();
    assert_eq!(published_weights(&actions), vec![0]);
}

#[test]
fn rule_new_revision_runs_confirm_rollout_first_and_the_pass_ends_at_progressing() {
    let spec = canary(&format!(
        "    stepWeight: 10\n    webhooks:\n{}",
        hook("gate", "confirm-rollout")
    ));
    let mut sim = Sim::started(spec, "v2");
    let p = sim.pass();
    assert_eq!(kind(&p), PassKind::ConfirmRollout);
    assert_eq!(steps(&p), vec![PassStep::Hooks(HookType::ConfirmRollout)]);
    assert_eq!(sim.snap(), (Progressing, 0, 0, 0));
    assert_eq!(sim.state.cookie_revision.as_deref(), Some("v2"));
    // The pass ended there: no step was taken in it.
    assert_eq!(sim.state.weight, 0);
}

#[test]
fn rule_confirm_rollout_failure_is_waiting_retried_each_interval_not_a_failed_check() {
    let spec = canary(&format!(
        "    stepWeight: 10\n    threshold: 1\n    webhooks:\n{}",
        hook("gate", "confirm-rollout")
    ));
    let mut sim = Sim::started(spec, "v2");
    for _ in 0..5 {
        let p = sim.fail_hooks(HookType::ConfirmRollout);
        assert_eq!(kind(&p), PassKind::ConfirmRollout);
        assert_eq!(sim.snap(), (Waiting, 0, 0, 0));
        // Not due again before the interval.
        sim.now = sim.now.plus(Duration::from_secs(59));
        assert!(matches!(
            plan(&sim.spec, &sim.state, sim.now),
            PassPlan::Idle(IdleReason::NotDue { .. })
        ));
        sim.now = sim.now.plus(Duration::from_secs(1));
    }
    sim.pass();
    assert_eq!(sim.snap(), (Progressing, 0, 0, 0));
}

#[test]
fn rule_revision_equal_to_last_promoted_is_not_a_run() {
    let mut sim = Sim::new(seed());
    sim.revision("v1");
    sim.revision("v1");
    assert_eq!(
        plan(&sim.spec, &sim.state, sim.now),
        PassPlan::Idle(IdleReason::NoRun)
    );
    // After a promotion, posting the promoted revision again starts nothing.
    sim.revision("v2");
    while sim.state.phase != Succeeded {
        sim.next();
    }
    sim.revision("v2");
    sim.tick();
    assert_eq!(
        plan(&sim.spec, &sim.state, sim.now),
        PassPlan::Idle(IdleReason::NoRun)
    );
}

#[test]
fn rule_new_revision_during_progressing_restarts_at_weight_zero_without_confirm_rollout() {
    let spec = canary(&format!(
        "    stepWeight: 10\n    threshold: 5\n{METRICS}    webhooks:\n{}",
        hook("gate", "confirm-rollout")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass(); // confirm-rollout
    sim.next(); // pre-rollout → 10
    sim.tick();
    sim.fail_metrics();
    sim.next(); // → 20
    assert_eq!(sim.snap(), (Progressing, 20, 1, 0));
    sim.revision("v3");
    assert_eq!(sim.snap(), (Progressing, 0, 0, 0));
    assert_eq!(sim.state.cookie_revision.as_deref(), Some("v3"));
    assert_eq!(published_weights(&sim.take_actions()).last(), Some(&0));
    // The restart's first pass is due at once and is the pre-rollout pass, not confirm-rollout.
    let p = sim.pass();
    assert_eq!(kind(&p), PassKind::PreRollout);
    assert_eq!(sim.snap(), (Progressing, 10, 0, 0));
}

#[test]
fn rule_new_revision_during_waiting_promotion_restarts() {
    let spec = canary(&format!(
        "    stepWeight: 50\n    maxWeight: 50\n    webhooks:\n{}",
        hook("approve", "confirm-promotion")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next(); // → 50
    sim.tick();
    sim.fail_hooks(HookType::ConfirmPromotion);
    assert_eq!(sim.snap(), (WaitingPromotion, 50, 0, 0));
    sim.revision("v3");
    assert_eq!(sim.snap(), (Progressing, 0, 0, 0));
}

#[test]
fn rule_revision_back_to_primary_during_a_run_abandons_it() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.next();
    assert_eq!(sim.state.weight, 10);
    sim.revision("v1");
    assert_eq!(sim.snap(), (Initialized, 0, 0, 0));
    sim.tick();
    assert_eq!(
        plan(&sim.spec, &sim.state, sim.now),
        PassPlan::Idle(IdleReason::NoRun)
    );
}

// ---------------------------------------------------------------------------------------
// Each Progressing pass

#[test]
fn rule_rollback_hook_2xx_rolls_back_now() {
    let spec = canary(&format!(
        "    stepWeight: 10\n    threshold: 5\n{METRICS}    webhooks:\n{}",
        hook("abort", "rollback")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next();
    sim.tick();
    let p = sim.pass_with(|s| *s == PassStep::RollbackHooks);
    // Rollback hooks come first in the pass.
    assert_eq!(steps(&p)[0], PassStep::RollbackHooks);
    assert_eq!(sim.snap(), (Failed, 0, 0, 0));
}

#[test]
fn rule_threshold_checked_before_analysis() {
    let spec = canary(&format!("    stepWeight: 10\n    threshold: 2\n{METRICS}"));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next(); // → 10
    sim.tick();
    sim.fail_metrics();
    assert_eq!(sim.snap(), (Progressing, 10, 1, 0));
    sim.tick();
    sim.fail_metrics();
    // Pass N reached the threshold: no rollback in pass N itself...
    assert_eq!(sim.snap(), (Progressing, 10, 2, 0));
    // ...but pass N+1 rolls back before any analysis, even if the canary would pass now.
    sim.tick();
    let p = sim.pass();
    assert_eq!(
        kind(&p),
        PassKind::RollBack(RollbackReason::Threshold {
            failed_checks: 2,
            threshold: 2
        })
    );
    assert!(steps(&p).is_empty());
    assert_eq!(sim.snap(), (Failed, 0, 0, 0));
}

#[test]
fn rule_failed_checks_are_cumulative_not_consecutive() {
    let spec = canary(&format!("    stepWeight: 10\n    threshold: 3\n{METRICS}"));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next();
    let mut trace = Vec::new();
    for fail in [true, false, true, false, true, false] {
        sim.tick();
        if fail {
            sim.fail_metrics();
        } else {
            sim.pass();
        }
        trace.push(sim.snap());
    }
    assert_eq!(
        trace,
        vec![
            (Progressing, 10, 1, 0),
            (Progressing, 20, 1, 0),
            (Progressing, 20, 2, 0),
            (Progressing, 30, 2, 0),
            (Progressing, 30, 3, 0),
            (Failed, 0, 0, 0), // the passing analysis never ran: threshold first
        ]
    );
}

#[test]
fn rule_pre_rollout_only_at_weight_zero_without_metrics_and_failure_counts() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.tick();
    let p = sim.fail_hooks(HookType::PreRollout);
    assert_eq!(kind(&p), PassKind::PreRollout);
    assert!(!steps(&p)
        .iter()
        .any(|s| matches!(s, PassStep::Metric { .. })));
    assert_eq!(sim.snap(), (Progressing, 0, 1, 0));
    // Still weight 0: pre-rollout again.
    let p = sim.next();
    assert_eq!(kind(&p), PassKind::PreRollout);
    assert_eq!(sim.snap(), (Progressing, 10, 1, 0));
    // From weight 10 on, no pre-rollout.
    let p = sim.next();
    assert!(!steps(&p).contains(&PassStep::Hooks(HookType::PreRollout)));
}

#[test]
fn rule_first_metric_failure_is_one_failed_check_and_ends_the_pass() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.next();
    sim.tick();
    let p = plan(&sim.spec, &sim.state, sim.now);
    let obs = observe(&p, |s| matches!(s, PassStep::Metric { .. }));
    // The runner stops at the first failing metric: the second never ran.
    assert_eq!(obs.results.len(), 2);
    assert_eq!(obs.results[1].step, PassStep::Metric { index: 0 });
    let t = advance(&sim.spec, &sim.state, &p, &obs, sim.now);
    assert_eq!((t.state.weight, t.state.failed_checks), (10, 1));
    assert_eq!(t.state.last_checks.len(), 2);
    assert!(t
        .actions
        .iter()
        .all(|a| !matches!(a, Action::PublishRoute(_))));
}

#[test]
fn rule_rollout_hook_failure_is_a_failed_check() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.next();
    sim.tick();
    sim.fail_hooks(HookType::Rollout);
    assert_eq!(sim.snap(), (Progressing, 10, 1, 0));
}

// ---------------------------------------------------------------------------------------
// Advancing

fn weights_until_promoting(spec: CanarySpec) -> Vec<u32> {
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    let mut weights = Vec::new();
    while sim.state.phase == Progressing {
        sim.next();
        weights.push(sim.state.weight);
        assert!(weights.len() < 30);
    }
    assert_eq!(sim.state.phase, Promoting);
    weights
}

#[test]
fn rule_overshoot_step_20_max_50_goes_20_40_60() {
    let w = weights_until_promoting(canary("    stepWeight: 20\n    maxWeight: 50\n"));
    assert_eq!(w, vec![20, 40, 60, 60]);
}

#[test]
fn rule_next_weight_is_capped_at_100() {
    let w = weights_until_promoting(canary("    stepWeight: 30\n    maxWeight: 100\n"));
    assert_eq!(w, vec![30, 60, 90, 100, 100]);
}

#[test]
fn rule_step_weights_list_is_used_and_its_last_entry_is_the_max() {
    let w = weights_until_promoting(canary(
        "    stepWeights: [1, 5, 25, 80]\n    maxWeight: 10\n",
    ));
    assert_eq!(w, vec![1, 5, 25, 80, 80]);
}

#[test]
fn rule_step_weight_wins_over_step_weights() {
    let w = weights_until_promoting(canary(
        "    stepWeight: 25\n    stepWeights: [1, 2]\n    maxWeight: 50\n",
    ));
    assert_eq!(w, vec![25, 50, 50]);
}

#[test]
fn rule_confirm_traffic_increase_gates_each_increase_and_failure_only_halts() {
    let spec = canary(&format!(
        "    stepWeight: 10\n    maxWeight: 30\n    threshold: 1\n{METRICS}    webhooks:\n{}",
        hook("more", "confirm-traffic-increase")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.tick();
    let p = sim.fail_hooks(HookType::ConfirmTrafficIncrease);
    assert_eq!(
        steps(&p).last(),
        Some(&PassStep::Hooks(HookType::ConfirmTrafficIncrease))
    );
    assert_eq!(sim.snap(), (Progressing, 0, 0, 0));
    sim.next();
    assert_eq!(sim.snap(), (Progressing, 10, 0, 0));
    for _ in 0..3 {
        sim.tick();
        let p = sim.fail_hooks(HookType::ConfirmTrafficIncrease);
        // The analysis ran before the gate.
        assert!(steps(&p).contains(&PassStep::Metric { index: 1 }));
        assert_eq!(sim.snap(), (Progressing, 10, 0, 0));
    }
    sim.next();
    sim.next();
    assert_eq!(sim.snap(), (Progressing, 30, 0, 0));
    // At the max weight the gate is confirm-promotion, not confirm-traffic-increase.
    sim.tick();
    let p = plan(&sim.spec, &sim.state, sim.now);
    assert!(!steps(&p).contains(&PassStep::Hooks(HookType::ConfirmTrafficIncrease)));
}

#[test]
fn rule_confirm_promotion_failure_waits_and_retries_analysis_and_gate() {
    let spec = canary(&format!(
        "    stepWeight: 25\n    maxWeight: 50\n    threshold: 2\n{METRICS}    webhooks:\n{}",
        hook("approve", "confirm-promotion")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next();
    sim.next();
    assert_eq!(sim.snap(), (Progressing, 50, 0, 0));
    sim.tick();
    let p = sim.fail_hooks(HookType::ConfirmPromotion);
    assert_eq!(
        steps(&p),
        vec![
            PassStep::Metric { index: 0 },
            PassStep::Metric { index: 1 },
            PassStep::Hooks(HookType::ConfirmPromotion)
        ]
    );
    assert_eq!(sim.snap(), (WaitingPromotion, 50, 0, 0));
    // The analysis keeps running while waiting; failures still count.
    sim.tick();
    sim.fail_metrics();
    assert_eq!(sim.snap(), (WaitingPromotion, 50, 1, 0));
    sim.tick();
    let p = sim.fail_hooks(HookType::ConfirmPromotion);
    assert_eq!(steps(&p).len(), 3);
    assert_eq!(sim.snap(), (WaitingPromotion, 50, 1, 0));
    sim.next();
    assert_eq!(sim.snap(), (Promoting, 50, 1, 0));
}

#[test]
fn rule_waiting_promotion_has_no_progress_deadline() {
    let spec = canary(&format!(
        "    stepWeight: 50\n    webhooks:\n{}",
        hook("approve", "confirm-promotion")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next();
    sim.next();
    sim.tick();
    sim.fail_hooks(HookType::ConfirmPromotion);
    for _ in 0..30 {
        sim.tick();
        sim.fail_hooks(HookType::ConfirmPromotion);
    }
    assert_eq!(sim.snap(), (WaitingPromotion, 100, 0, 0));
}

#[test]
fn rule_ab_testing_weight_100_for_matching_iterations_then_confirm_promotion() {
    let spec = canary(&format!(
        "    iterations: 3\n    match:\n      - headers:\n          x-user:\n            exact: beta\n{METRICS}    webhooks:\n{}",
        hook("approve", "confirm-promotion")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    let mut trace = Vec::new();
    while sim.state.phase != Promoting {
        sim.next();
        trace.push(sim.snap());
        assert!(trace.len() < 10);
    }
    assert_eq!(
        trace,
        vec![
            (Progressing, 100, 0, 1),
            (Progressing, 100, 0, 2),
            (Progressing, 100, 0, 3),
            (Promoting, 100, 0, 3),
        ]
    );
    // Only the last pass had the promotion gate.
    let gated: Vec<bool> = sim.plans[1..]
        .iter()
        .map(|p| steps(p).contains(&PassStep::Hooks(HookType::ConfirmPromotion)))
        .collect();
    assert_eq!(gated, vec![false, false, false, true]);
    let route = route_for_state(&sim.spec, &sim.state);
    assert_eq!((route.weight, route.r#match.len()), (10_000, 1));
}

#[test]
fn rule_blue_green_iterations_with_mirroring_then_switch_then_promotion() {
    let spec = canary(&format!(
        "    iterations: 2\n    mirror: true\n    mirrorWeight: 40\n{METRICS}"
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    let mut trace = Vec::new();
    while sim.state.phase != Promoting {
        sim.next();
        let r = route_for_state(&sim.spec, &sim.state);
        trace.push((sim.snap(), r.weight, r.mirror_weight));
        assert!(trace.len() < 10);
    }
    assert_eq!(
        trace,
        vec![
            ((Progressing, 0, 0, 1), 0, 4000), // pre-rollout, then mirroring 40%
            ((Progressing, 0, 0, 2), 0, 4000), // iteration 2, still mirroring
            ((Progressing, 100, 0, 3), 10_000, 0), // switch: mirroring stops, all traffic
            ((Promoting, 100, 0, 3), 10_000, 0), // one more analysis at 100
        ]
    );
}

#[test]
fn rule_blue_green_without_mirror_stays_at_weight_zero_during_iterations() {
    let spec = canary(&format!("    iterations: 2\n{METRICS}"));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next();
    let r = route_for_state(&sim.spec, &sim.state);
    assert_eq!(
        (sim.snap(), r.weight, r.mirror_weight),
        ((Progressing, 0, 0, 1), 0, 0)
    );
}

/// A canary with `spec.provider` set, and the given analysis body.
fn canary_with_provider(provider: &str, analysis: &str) -> CanarySpec {
    let text = format!(
        "apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: app
  namespace: shop
spec:
  provider: {provider}
  targetRef:
    name: app
  analysis:
{analysis}"
    );
    let set = load_texts(
        &[(PathBuf::from("app.yaml"), text)],
        &LoadOptions::default(),
    );
    let errors: Vec<_> = set.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    set.canaries.into_iter().next().unwrap()
}

/// Flagger's `provider: kubernetes`: Blue/Green without traffic routing. stepWeight without
/// iterations means 10 iterations; the weight never leaves 0 (no route is published during
/// the run), no mirroring, no A/B; after the iterations one more analysis, gated by
/// confirm-promotion, then promotion; confirm-traffic-increase is never asked.
#[test]
fn rule_kubernetes_provider_is_blue_green_without_traffic() {
    let spec = canary_with_provider(
        "kubernetes",
        &format!(
            "    stepWeight: 10\n    maxWeight: 50\n    mirror: true\n    match:\n      - headers:\n          x-canary:\n            exact: \"1\"\n{METRICS}    webhooks:\n{}{}",
            hook("more", "confirm-traffic-increase"),
            hook("promote", "confirm-promotion"),
        ),
    );
    assert!(spec.analysis.r#match.is_empty() && !spec.analysis.mirror);
    assert_eq!(spec.analysis.iterations, 10);
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.take_actions();
    let mut trace = Vec::new();
    while sim.state.phase == Progressing {
        let p = sim.next();
        let r = route_for_state(&sim.spec, &sim.state);
        assert_eq!((r.weight, r.mirror_weight), (0, 0), "{trace:?}");
        assert!(
            !steps(&p).contains(&PassStep::Hooks(HookType::ConfirmTrafficIncrease)),
            "no traffic increase to confirm"
        );
        trace.push((
            kind(&p),
            sim.snap(),
            steps(&p).contains(&PassStep::Hooks(HookType::ConfirmPromotion)),
        ));
        assert!(trace.len() < 20);
    }
    let iterations: Vec<u32> = trace.iter().map(|(_, s, _)| s.3).collect();
    assert_eq!(iterations, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11]);
    assert_eq!(trace[0].0, PassKind::PreRollout);
    assert_eq!(
        trace[10],
        (PassKind::Analysis, (Progressing, 0, 0, 11), true)
    );
    assert_eq!(
        trace[11],
        (PassKind::Analysis, (Promoting, 0, 0, 11), false)
    );
    assert_eq!(published_weights(&sim.take_actions()), Vec::<u32>::new());
    sim.next();
    assert_eq!(sim.state.phase, Finalising);
    sim.next();
    assert_eq!(sim.snap(), (Succeeded, 0, 0, 11));
}

/// Other providers do not change the run: veer routes in its gateway whatever the provider.
#[test]
fn rule_other_providers_run_as_written() {
    for provider in ["linkerd", "nginx", "gatewayapi:v1", "istio"] {
        let spec = canary_with_provider(provider, &format!("    stepWeight: 25\n{METRICS}"));
        let mut sim = Sim::started(spec, "v2");
        sim.pass();
        sim.next();
        sim.next();
        assert_eq!(sim.snap(), (Progressing, 50, 0, 0), "{provider}");
    }
}

#[test]
fn rule_canary_mirroring_first_step_mirrors_at_weight_zero_next_shifts_traffic() {
    let spec = canary(&format!(
        "    stepWeight: 10\n    maxWeight: 20\n    mirror: true\n{METRICS}"
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    let mut trace = Vec::new();
    while sim.state.phase == Progressing {
        let p = sim.next();
        let r = route_for_state(&sim.spec, &sim.state);
        trace.push((kind(&p), r.weight, r.mirror_weight));
    }
    assert_eq!(
        trace,
        vec![
            (PassKind::PreRollout, 0, 10_000), // mirror 100% (no mirrorWeight) at weight 0
            (PassKind::Analysis, 1000, 0),     // stop mirroring, shift real traffic
            (PassKind::Analysis, 2000, 0),
            (PassKind::Analysis, 2000, 0), // one more analysis at max → Promoting
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Promotion and rollback

#[test]
fn rule_promoting_without_step_weight_promotion_goes_to_zero_at_once() {
    let mut sim = Sim::started(canary("    stepWeight: 50\n"), "v2");
    sim.pass();
    while sim.state.phase != Promoting {
        sim.next();
    }
    sim.take_actions();
    sim.next();
    assert_eq!(sim.snap(), (Finalising, 0, 0, 0));
    assert_eq!(published_weights(&sim.take_actions()), vec![0]);
}

#[test]
fn rule_promoting_with_step_weight_promotion_moves_back_in_steps() {
    let mut sim = Sim::started(
        canary("    stepWeight: 30\n    maxWeight: 60\n    stepWeightPromotion: 25\n"),
        "v2",
    );
    sim.pass();
    while sim.state.phase != Promoting {
        sim.next();
    }
    assert_eq!(sim.state.weight, 60);
    let mut trace = Vec::new();
    while sim.state.phase != Succeeded {
        sim.next();
        trace.push((sim.state.phase, sim.state.weight));
    }
    assert_eq!(
        trace,
        vec![
            (Promoting, 35),
            (Promoting, 10),
            (Finalising, 0),
            (Succeeded, 0)
        ]
    );
}

#[test]
fn rule_finalising_is_one_interval_then_succeeded_with_post_rollout_hooks() {
    let mut sim = Sim::started(canary("    stepWeight: 100\n"), "v2");
    sim.pass();
    while sim.state.phase != Finalising {
        sim.next();
    }
    sim.take_actions();
    sim.now = sim.now.plus(Duration::from_secs(30));
    assert!(matches!(
        plan(&sim.spec, &sim.state, sim.now),
        PassPlan::Idle(IdleReason::NotDue { .. })
    ));
    sim.now = sim.now.plus(Duration::from_secs(30));
    assert_eq!(kind(&sim.pass()), PassKind::Finalise);
    assert_eq!(sim.state.phase, Succeeded);
    assert_eq!(post_rollout(&sim.take_actions()), vec![Succeeded]);
}

#[test]
fn rule_rollback_sets_weight_zero_failed_resets_checks_and_runs_post_rollout_failed() {
    let spec = canary(&format!("    stepWeight: 10\n    threshold: 1\n{METRICS}"));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next();
    sim.next();
    sim.tick();
    sim.fail_metrics();
    sim.take_actions();
    sim.next();
    assert_eq!(sim.snap(), (Failed, 0, 0, 0));
    assert_eq!(sim.state.failed_revision.as_deref(), Some("v2"));
    assert_eq!(sim.state.primary_revision.as_deref(), Some("v1"));
    let actions = sim.take_actions();
    assert_eq!(published_weights(&actions), vec![0]);
    assert_eq!(post_rollout(&actions), vec![Failed]);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::PromotePrimary { .. })));
}

#[test]
fn rule_failed_revision_does_not_start_again_until_the_revision_changes() {
    let spec = canary(&format!("    stepWeight: 10\n    threshold: 1\n{METRICS}"));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next();
    sim.tick();
    sim.fail_metrics();
    sim.next();
    assert_eq!(sim.state.phase, Failed);
    for _ in 0..3 {
        sim.revision("v2");
        sim.tick();
        assert_eq!(
            plan(&sim.spec, &sim.state, sim.now),
            PassPlan::Idle(IdleReason::NoRun)
        );
    }
    sim.revision("v3");
    assert_eq!(kind(&sim.pass()), PassKind::ConfirmRollout);
    assert_eq!(sim.snap(), (Progressing, 0, 0, 0));
}

// ---------------------------------------------------------------------------------------
// Other fields

/// As Flagger: the pass that starts the run only starts it (the platform then waits for a
/// ready canary); the next one promotes with no metrics and no rollout or rollback hooks,
/// however many the spec has. confirm-rollout still gates the start.
#[test]
fn rule_skip_analysis_promotes_at_the_pass_after_the_run_starts() {
    let text = format!(
        "    stepWeight: 10\n{METRICS}    webhooks:\n{}{}{}{}{}",
        hook("gate", "confirm-rollout"),
        hook("smoke", "pre-rollout"),
        hook("load", "rollout"),
        hook("stop", "rollback"),
        hook("notify", "post-rollout"),
    );
    let mut spec = canary(&text);
    spec.skip_analysis = true;
    let mut sim = Sim::started(spec, "v2");
    let p = sim.pass();
    assert_eq!(kind(&p), PassKind::ConfirmRollout);
    assert_eq!(steps(&p), vec![PassStep::Hooks(HookType::ConfirmRollout)]);
    assert_eq!(sim.snap(), (Progressing, 0, 0, 0));
    assert_eq!(sim.state.primary_revision.as_deref(), Some("v1"));
    let actions = sim.take_actions();
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::PromotePrimary { .. })));

    let p = sim.next();
    assert_eq!(kind(&p), PassKind::SkipAnalysis);
    assert_eq!(steps(&p), Vec::<PassStep>::new(), "no metric or hook runs");
    assert_eq!(sim.snap(), (Succeeded, 0, 0, 0));
    assert_eq!(sim.state.primary_revision.as_deref(), Some("v2"));
    let actions = sim.take_actions();
    assert!(actions.contains(&Action::PromotePrimary {
        revision: "v2".into()
    }));
    assert_eq!(post_rollout(&actions), vec![Succeeded]);
    assert_eq!(
        published_weights(&actions),
        Vec::<u32>::new(),
        "the canary never got traffic"
    );
}

/// A refusing confirm-rollout keeps a skipAnalysis revision waiting, as any other.
#[test]
fn rule_skip_analysis_still_waits_for_confirm_rollout() {
    let mut spec = canary(&format!(
        "    stepWeight: 10\n    webhooks:\n{}",
        hook("gate", "confirm-rollout")
    ));
    spec.skip_analysis = true;
    let mut sim = Sim::started(spec, "v2");
    sim.fail_hooks(HookType::ConfirmRollout);
    assert_eq!(sim.snap(), (Waiting, 0, 0, 0));
    sim.tick();
    sim.pass();
    assert_eq!(sim.snap(), (Progressing, 0, 0, 0));
    assert_eq!(kind(&sim.next()), PassKind::SkipAnalysis);
    assert_eq!(sim.snap(), (Succeeded, 0, 0, 0));
}

#[test]
fn rule_skip_analysis_set_during_a_run_promotes_at_the_next_pass() {
    let mut sim = Sim::started(canary("    stepWeight: 10\n"), "v2");
    sim.pass();
    sim.next();
    sim.spec.skip_analysis = true;
    assert_eq!(kind(&sim.next()), PassKind::SkipAnalysis);
    assert_eq!(sim.snap(), (Succeeded, 0, 0, 0));
}

#[test]
fn rule_suspend_skips_passes() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.spec.suspend = true;
    for _ in 0..20 {
        sim.tick();
        assert_eq!(
            plan(&sim.spec, &sim.state, sim.now),
            PassPlan::Idle(IdleReason::Suspended)
        );
    }
    sim.spec.suspend = false;
    sim.pass();
    assert_eq!(sim.snap(), (Progressing, 10, 0, 0));
}

#[test]
fn rule_a_refusing_traffic_gate_pauses_the_run_and_never_rolls_back() {
    let spec = canary(&format!(
        "    stepWeight: 10\n    interval: 1m\n{METRICS}    webhooks:\n{}",
        hook("more", "confirm-traffic-increase")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next(); // at 10
                // An hour of refusals (far past the 600 s default deadline): the run holds at 10.
    for _ in 0..60 {
        sim.tick();
        sim.fail_hooks(HookType::ConfirmTrafficIncrease);
    }
    assert_eq!(sim.snap(), (Progressing, 10, 0, 0));
    sim.next();
    assert_eq!(sim.snap(), (Progressing, 20, 0, 0));
}

#[test]
fn rule_a_canary_unready_past_the_deadline_rolls_back() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.next();
    assert_eq!(sim.snap(), (Progressing, 10, 0, 0));
    let t = on_not_ready(
        &sim.spec,
        &sim.state,
        "deployment podinfo not ready: 0 of 1 updated replicas are available",
        sim.now,
    );
    assert_eq!(t.state.phase, Failed);
    assert_eq!((t.state.weight, t.state.failed_checks), (0, 0));
    assert_eq!(t.state.failed_revision.as_deref(), Some("v2"));
    let messages: Vec<&str> = t
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages[0],
        "Rolling back test/podinfo revision v2: progress deadline exceeded (10m): deployment podinfo not ready: 0 of 1 updated replicas are available"
    );
    // Outside a run there is nothing to roll back.
    let idle = CanaryState {
        phase: Succeeded,
        ..CanaryState::default()
    };
    assert_eq!(on_not_ready(&sim.spec, &idle, "x", sim.now).state, idle);
}

#[test]
fn rule_controller_downtime_does_not_count_toward_the_progress_deadline() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.next();
    // The controller was down for an hour: the restart resumes at the same weight.
    sim.now = sim.now.plus(Duration::from_secs(3600));
    assert_eq!(kind(&sim.pass()), PassKind::Analysis);
    assert_eq!(sim.snap(), (Progressing, 20, 0, 0));
}

#[test]
fn rule_progress_is_a_weight_step_or_an_iteration() {
    let spec = canary(&format!("    stepWeight: 1\n    maxWeight: 100\n{METRICS}"));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    // 30 minutes of steady progress never hits the 10 minute deadline.
    for _ in 0..30 {
        sim.next();
    }
    assert_eq!(sim.snap(), (Progressing, 30, 0, 0));
}

#[test]
fn rule_interval_schedules_passes() {
    let mut sim = Sim::started(canary("    stepWeight: 10\n    interval: 15s\n"), "v2");
    // A posted revision makes the next pass due at once.
    assert_eq!(
        kind(&plan(&sim.spec, &sim.state, sim.now)),
        PassKind::ConfirmRollout
    );
    sim.pass();
    let next_at = sim.now.plus(Duration::from_secs(15));
    assert_eq!(
        plan(&sim.spec, &sim.state, sim.now.plus(Duration::from_secs(14))),
        PassPlan::Idle(IdleReason::NotDue { next_at })
    );
    assert_eq!(
        kind(&plan(&sim.spec, &sim.state, next_at)),
        PassKind::PreRollout
    );
}

// ---------------------------------------------------------------------------------------
// Commands

#[test]
fn rule_pause_stops_passes_and_resume_restarts_the_deadline_clock() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.next();
    sim.command(Command::Pause);
    for _ in 0..30 {
        sim.tick();
        assert_eq!(
            plan(&sim.spec, &sim.state, sim.now),
            PassPlan::Idle(IdleReason::Paused)
        );
    }
    sim.command(Command::Resume);
    sim.pass();
    // 30 minutes paused did not count toward the 10 minute progress deadline.
    assert_eq!(sim.snap(), (Progressing, 20, 0, 0));
}

#[test]
fn rule_manual_promote_skips_remaining_analysis_and_gates() {
    let spec = canary(&format!(
        "    stepWeight: 10\n    webhooks:\n{}",
        hook("approve", "confirm-promotion")
    ));
    let mut sim = Sim::started(spec, "v2");
    sim.pass();
    sim.next();
    sim.command(Command::Promote);
    assert_eq!(sim.snap(), (Promoting, 10, 0, 0));
    assert_eq!(kind(&sim.pass()), PassKind::Promote);
    assert_eq!(sim.snap(), (Finalising, 0, 0, 0));
}

#[test]
fn rule_manual_rollback_rolls_back_now() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.next();
    sim.take_actions();
    sim.command(Command::Rollback);
    assert_eq!(sim.snap(), (Failed, 0, 0, 0));
    assert_eq!(post_rollout(&sim.take_actions()), vec![Failed]);
}

#[test]
fn rule_commands_outside_a_run_are_refused_with_the_phase() {
    let mut sim = Sim::new(seed());
    sim.revision("v1");
    let e = on_command(&sim.spec, &sim.state, Command::Promote, sim.now).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot promote test/podinfo: phase is Initialized; only a Progressing or WaitingPromotion run can be promoted"
    );
    assert!(on_command(&sim.spec, &sim.state, Command::Rollback, sim.now).is_err());
}

// ---------------------------------------------------------------------------------------
// Crash safety: replay from any saved state

/// Every state a seed run persists, with failures sprinkled in.
fn saved_states() -> Vec<(CanarySpec, CanaryState, Timestamp)> {
    let spec = canary(&format!(
        "    stepWeight: 20\n    maxWeight: 50\n    threshold: 3\n{METRICS}    webhooks:\n{}{}",
        hook("approve", "confirm-promotion"),
        hook("acceptance", "pre-rollout")
    ));
    let mut sim = Sim::started(spec, "v2");
    let mut saved = vec![(sim.spec.clone(), sim.state.clone(), sim.now)];
    let script: [fn(&mut Sim); 10] = [
        |s| {
            s.pass();
        },
        |s| {
            s.fail_hooks(HookType::PreRollout);
        },
        |s| {
            s.pass();
        },
        |s| {
            s.fail_metrics();
        },
        |s| {
            s.pass();
        },
        |s| {
            s.pass();
        },
        |s| {
            s.fail_hooks(HookType::ConfirmPromotion);
        },
        |s| {
            s.pass();
        },
        |s| {
            s.pass();
        },
        |s| {
            s.pass();
        },
    ];
    for step in script {
        step(&mut sim);
        saved.push((sim.spec.clone(), sim.state.clone(), sim.now));
        sim.tick();
    }
    assert_eq!(sim.state.phase, Succeeded, "the script reaches the end");
    saved
}

#[test]
fn crash_restart_never_raises_the_weight_without_a_passing_analysis() {
    for (spec, state, now) in saved_states() {
        // After a restart the runner re-plans from the saved state; whatever fails or is
        // cut short, the weight does not rise.
        for later in [0, 1, 10] {
            let now = now.plus(spec.interval() * later);
            let p = plan(&spec, &state, now);
            let failing = observe(&p, |_| true);
            let cut_short = PassObservations::default();
            for obs in [failing, cut_short] {
                let t = advance(&spec, &state, &p, &obs, now);
                assert!(
                    t.state.weight <= state.weight,
                    "{:?} at {} rose to {} without a passing analysis",
                    state.phase,
                    state.weight,
                    t.state.weight
                );
                assert!(!t.state.mirror || state.mirror);
            }
        }
    }
}

#[test]
fn crash_restart_with_an_incomplete_pass_concludes_nothing() {
    for (spec, state, now) in saved_states() {
        let now = now.plus(spec.interval());
        let p = plan(&spec, &state, now);
        if let PassPlan::Run { steps, .. } = &p {
            if steps.is_empty() {
                continue; // nothing to interrupt
            }
            let t = advance(&spec, &state, &p, &PassObservations::default(), now);
            assert_eq!(
                (
                    t.state.phase,
                    t.state.weight,
                    t.state.failed_checks,
                    t.state.iterations
                ),
                (
                    state.phase,
                    state.weight,
                    state.failed_checks,
                    state.iterations
                )
            );
            assert!(!t
                .actions
                .iter()
                .any(|a| matches!(a, Action::PublishRoute(_))));
        }
    }
}

#[test]
fn crash_restart_never_repeats_a_completed_promotion() {
    for (spec, state, now) in saved_states() {
        // Replay from the saved state to the end with all checks passing: the primary is
        // promoted at most once in total, and never again once it was.
        let already = state.primary_revision.as_deref() == Some("v2");
        let mut sim = Sim {
            spec,
            state,
            now,
            actions: Vec::new(),
            plans: Vec::new(),
        };
        for _ in 0..20 {
            sim.tick();
            sim.pass_with(|_| false);
        }
        let promotions = sim
            .actions
            .iter()
            .filter(|a| matches!(a, Action::PromotePrimary { .. }))
            .count();
        assert_eq!(promotions, usize::from(!already));
        assert_eq!(sim.state.phase, Succeeded);
        let succeeded_hooks = post_rollout(&sim.actions).len();
        assert!(succeeded_hooks <= 1);
    }
}

#[test]
fn crash_restart_publishes_the_saved_weight() {
    for (spec, state, _) in saved_states() {
        let route = route_for_state(&spec, &state);
        assert_eq!(route.weight, state.weight * 100);
        assert_eq!(route.revision, state.route_revision());
        veer_core::validate_table(&veer_core::RoutingTable {
            generation: 1,
            routes: vec![route],
        })
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The persisted state

#[test]
fn state_file_format_is_stable_and_strict() {
    let mut sim = Sim::started(seed(), "v2");
    sim.pass();
    sim.next();
    let json = serde_json::to_value(&sim.state).unwrap();
    assert_eq!(json["phase"], "Progressing");
    assert_eq!(json["weight"], 10);
    assert_eq!(json["failedChecks"], 0);
    assert_eq!(json["cookieRevision"], "v2");
    assert_eq!(json["primaryRevision"], "v1");
    assert!(json["lastPassAt"].as_str().unwrap().ends_with('Z'));
    // A field this version does not know is an error, not a silent drop.
    let mut newer = json.clone();
    newer["fromTheFuture"] = serde_json::json!(1);
    let e = serde_json::from_value::<CanaryState>(newer).unwrap_err();
    assert!(
        e.to_string().contains("unknown field `fromTheFuture`"),
        "{e}"
    );
    // An older file without the optional fields reads with defaults.
    let old: CanaryState = serde_json::from_str(r#"{"phase":"Succeeded","weight":0}"#).unwrap();
    assert_eq!(old.phase, Succeeded);
    assert!(old.last_checks.is_empty());
}
