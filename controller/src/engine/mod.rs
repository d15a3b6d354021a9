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

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use veer_core::Route;

use crate::checks::webhooks::HookType;
use crate::spec::{route_for, CanarySpec, Strategy};

// ---------------------------------------------------------------------------------------
// Time

/// A point in time in milliseconds since the Unix epoch. Serialized as RFC 3339 so the
/// state file and the API read well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Converts a clock reading (taken by the caller; this module reads no clock).
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Timestamp(ms)
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map(Timestamp::from_system_time)
            .map_err(|e| {
                serde::de::Error::custom(format!("invalid RFC 3339 timestamp {text:?}: {e}"))
            })
    }
}

// ---------------------------------------------------------------------------------------
// State

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

    fn set_phase(&mut self, phase: Phase, now: Timestamp) {
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

// ---------------------------------------------------------------------------------------
// Plans and observations

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
// Transitions and actions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventSeverity {
    Normal,
    Warning,
}

impl EventSeverity {
    /// The `eventType` of Flagger's event webhook payload.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSeverity::Normal => "Normal",
            EventSeverity::Warning => "Warning",
        }
    }
}

/// An effect for the runner, applied after the new state is persisted.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish this route (weight, mirror or revision changed). It equals
    /// `route_for_state(spec, &transition.state)`.
    PublishRoute(Box<Route>),
    /// The primary now runs this revision (Kubernetes mode: copy the canary's template to
    /// the primary; local mode: record it).
    PromotePrimary { revision: String },
    /// Call the post-rollout hooks with this phase in the payload; failures are only logged.
    PostRolloutHooks { phase: Phase },
    /// Log this and send it to the event hooks.
    Event {
        severity: EventSeverity,
        message: String,
    },
}

/// The result of a pure step: the state to persist, then the effects to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: CanaryState,
    pub actions: Vec<Action>,
}

impl Transition {
    fn unchanged(state: &CanaryState) -> Transition {
        Transition {
            state: state.clone(),
            actions: Vec::new(),
        }
    }
}

/// Accumulates the new state and actions of one transition.
struct Builder<'a> {
    spec: &'a CanarySpec,
    state: CanaryState,
    actions: Vec<Action>,
    route_before: Route,
    now: Timestamp,
}

impl<'a> Builder<'a> {
    fn new(spec: &'a CanarySpec, state: &CanaryState, now: Timestamp) -> Builder<'a> {
        Builder {
            spec,
            state: state.clone(),
            actions: Vec::new(),
            route_before: route_for_state(spec, state),
            now,
        }
    }

    fn event(&mut self, severity: EventSeverity, message: String) {
        self.state.message.clone_from(&message);
        self.actions.push(Action::Event { severity, message });
    }

    fn info(&mut self, message: String) {
        self.event(EventSeverity::Normal, message);
    }

    fn warn(&mut self, message: String) {
        self.event(EventSeverity::Warning, message);
    }

    fn phase(&mut self, phase: Phase) {
        self.state.set_phase(phase, self.now);
    }

    fn progress(&mut self) {
        self.state.last_progress_at = Some(self.now);
    }

    /// Publishes the route if it changed; placed first so the runner applies it first.
    fn finish(self) -> Transition {
        let mut actions = self.actions;
        let route = route_for_state(self.spec, &self.state);
        if route != self.route_before {
            actions.insert(0, Action::PublishRoute(Box::new(route)));
        }
        Transition {
            state: self.state,
            actions,
        }
    }

    fn key(&self) -> String {
        self.spec.key()
    }

    fn roll_back(&mut self, why: &str) {
        let key = self.key();
        let revision = self.state.canary_revision.clone().unwrap_or_default();
        self.warn(format!("Rolling back {key} revision {revision}: {why}"));
        self.state.weight = 0;
        self.state.mirror = false;
        self.state.failed_checks = 0;
        self.state.iterations = 0;
        self.state.failed_revision = self.state.canary_revision.clone();
        self.phase(Phase::Failed);
        self.actions.push(Action::PostRolloutHooks {
            phase: Phase::Failed,
        });
        self.warn(format!(
            "Canary failed! All traffic of {key} is on the primary (revision {})",
            self.state.primary_revision.as_deref().unwrap_or("?")
        ));
    }

    /// Primary takes the canary revision; weight moves back in the Promoting passes.
    fn enter_promoting(&mut self) {
        let revision = self.state.canary_revision.clone().unwrap_or_default();
        self.state.primary_revision = Some(revision.clone());
        self.phase(Phase::Promoting);
        self.progress();
        self.actions.push(Action::PromotePrimary {
            revision: revision.clone(),
        });
        let key = self.key();
        self.info(format!(
            "Promoting {key}: the primary takes revision {revision}"
        ));
    }

    fn succeed(&mut self) {
        self.state.weight = 0;
        self.state.mirror = false;
        self.phase(Phase::Succeeded);
        self.actions.push(Action::PostRolloutHooks {
            phase: Phase::Succeeded,
        });
        let key = self.key();
        let revision = self.state.primary_revision.clone().unwrap_or_default();
        self.info(format!("Promotion completed! {key} revision {revision}"));
    }

    /// Starts (or restarts) a run on the current canary revision.
    fn start_run(&mut self) {
        self.state.weight = 0;
        self.state.mirror = false;
        self.state.failed_checks = 0;
        self.state.iterations = 0;
        self.state.failed_revision = None;
        self.state.cookie_revision = self.state.canary_revision.clone();
        self.state.last_checks.clear();
        self.progress();
        self.phase(Phase::Progressing);
    }
}

// ---------------------------------------------------------------------------------------
// Planning

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
fn pass_gap(spec: &CanarySpec, state: &CanaryState, now: Timestamp) -> Duration {
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
// Advancing

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
// External inputs

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
