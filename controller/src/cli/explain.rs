//! `veer explain FILE`: what a Canary will do, in plain words. The pass-by-pass timeline,
//! the earliest promotion and the worst-case rollback come from *simulating* the analysis
//! state machine ([`crate::engine`]) with scripted check results, so the explanation
//! cannot drift from what the controller does. It also prints each metric's rendered PromQL
//! with its threshold, what each webhook is for, and warnings about the traps the seed
//! document is about (overshoot, short query windows, gateways without `mesh`, ...).

use std::fmt::Write as _;
use std::time::Duration;

use crate::checks::prometheus::{builtin_query, render_query, MetricsSet};
use crate::checks::webhooks::HookType;
use crate::engine::{
    advance, on_revision, plan, route_for_state, CanaryState, CheckKind, CheckResult, IdleReason,
    PassKind, PassObservations, PassPlan, PassStep, Phase, StepResult, Timestamp,
};
use crate::spec::{
    CanarySpec, MetricSource, SpecProblem, SpecSet, Strategy, WeightSteps, DEFAULT_MIN_INTERVAL,
};

/// Prometheus' scrape interval assumed when none is given (Istio's and most charts').
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(15);

/// Inputs that are not in the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainOptions {
    /// The controller's `--metrics-set` (a spec's `spec.veer.metricsSet` wins).
    pub metrics_set: MetricsSet,
    /// Prometheus' scrape interval, to judge metric windows.
    pub scrape_interval: Duration,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            metrics_set: MetricsSet::default(),
            scrape_interval: DEFAULT_SCRAPE_INTERVAL,
        }
    }
}

/// Explains every canary in `set`, after its load errors (if any).
pub fn explain(set: &SpecSet, opts: &ExplainOptions) -> String {
    let mut out = String::new();
    for e in set.errors() {
        let _ = writeln!(out, "error: {e}");
    }
    let has_errors = set.errors().next().is_some();
    if has_errors {
        out.push('\n');
    }
    if set.canaries.is_empty() {
        if has_errors {
            out.push_str("No valid Canary to explain: the errors above say why.\n");
        } else {
            let mut message = set.no_canary_message();
            if let Some(first) = message.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            let _ = writeln!(out, "{message}.");
        }
    }
    for (i, spec) in set.canaries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let warnings: Vec<&SpecProblem> = set.problems_of(&spec.source).collect();
        out.push_str(&explain_canary(spec, &warnings, opts));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Simulation

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

// ---------------------------------------------------------------------------------------
// Words

/// `1m30s`, `45s`, `2h`, `500ms`: Go's style, as the specs write durations.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 || out.is_empty() {
        let _ = write!(out, "{s}s");
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

fn hook_names(spec: &CanarySpec, t: HookType) -> String {
    spec.hooks(t)
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The steps of a pass in words: "rollout hook load-test; metrics a, b".
fn describe_steps(spec: &CanarySpec, steps: &[PassStep]) -> Vec<String> {
    let mut parts = Vec::new();
    let mut metrics = Vec::new();
    for step in steps {
        match step {
            PassStep::RollbackHooks => {
                let n = spec.hooks(HookType::Rollback).len();
                parts.push(format!(
                    "rollback {} {} (a 2xx answer rolls back)",
                    plural(n, "hook", "hooks"),
                    hook_names(spec, HookType::Rollback)
                ));
            }
            PassStep::Hooks(t) => {
                let n = spec.hooks(*t).len();
                parts.push(format!(
                    "{t} {} {}",
                    plural(n, "hook", "hooks"),
                    hook_names(spec, *t)
                ));
            }
            PassStep::Metric { index } => {
                if let Some(m) = spec.analysis.metrics.get(*index) {
                    metrics.push(m.name.clone());
                }
            }
        }
    }
    if !metrics.is_empty() {
        let at = parts
            .iter()
            .position(|p| p.starts_with("confirm-"))
            .unwrap_or(parts.len());
        parts.insert(
            at,
            format!(
                "{} {}",
                plural(metrics.len(), "metric", "metrics"),
                metrics.join(", ")
            ),
        );
    }
    parts
}

fn describe_pass(spec: &CanarySpec, p: &SimulatedPass) -> String {
    let mut what = describe_steps(spec, &p.steps);
    let b = &p.before;
    let a = &p.after;
    match p.kind {
        PassKind::ConfirmRollout if what.is_empty() => what.push("no confirm-rollout hooks".into()),
        PassKind::PreRollout => {
            if what.is_empty() {
                what.push("no pre-rollout hooks".into());
            }
            what.push("no metrics at weight 0".into());
        }
        PassKind::Analysis if what.is_empty() => {
            what.push("no metrics and no rollout hooks: nothing is checked".into())
        }
        PassKind::Promote => what.push("promotion".into()),
        PassKind::Finalise => what.push("in-flight requests drain".into()),
        PassKind::SkipAnalysis => what.push(
            "skipAnalysis (Kubernetes mode: once the canary is ready): no metrics, no rollout hooks"
                .into(),
        ),
        PassKind::RollBack(_) => what.push("failed checks threshold reached".into()),
        _ => {}
    }
    let mut result = Vec::new();
    if a.failed_checks > b.failed_checks {
        result.push(format!(
            "check fails ({}/{} failed checks)",
            a.failed_checks,
            spec.threshold()
        ));
    }
    match (b.phase, a.phase) {
        (_, Phase::Progressing) if b.phase != Phase::Progressing => {
            result.push("the run starts: Progressing at weight 0".into());
            if spec.skip_analysis {
                result.push("skipAnalysis: promoted at the next pass".into());
            }
        }
        (_, Phase::Failed) => result.push(format!(
            "rolled back: weight {} → 0, Failed; post-rollout hooks{}",
            b.weight,
            hooks_suffix(spec, HookType::PostRollout)
        )),
        (_, Phase::Promoting) if b.phase != Phase::Promoting => {
            let at_max = match spec.strategy() {
                Strategy::Canary(steps) => format!(
                    "weight {} ≥ maxWeight {}: one more analysis passed; ",
                    b.weight,
                    steps.max()
                ),
                Strategy::ABTesting { iterations } => format!("{iterations} iterations done; "),
                Strategy::BlueGreen { iterations, .. } => {
                    format!("one more analysis passed after {iterations} iterations; ")
                }
            };
            result.push(format!(
                "{at_max}{}Promoting: the primary takes the new revision",
                gate_in(spec, p, HookType::ConfirmPromotion)
            ));
        }
        (_, Phase::Succeeded) if p.kind == PassKind::SkipAnalysis => result.push(format!(
            "the primary takes the new revision; Succeeded; post-rollout hooks{}",
            hooks_suffix(spec, HookType::PostRollout)
        )),
        (Phase::Promoting, Phase::Finalising) if b.weight == 0 => result.push(
            "no canary traffic to move back: the primary serves the new revision; Finalising"
                .into(),
        ),
        (Phase::Promoting, Phase::Finalising) => result.push(format!(
            "weight {} → 0: all traffic on the primary; Finalising",
            b.weight
        )),
        (Phase::Promoting, Phase::Promoting) => result.push(format!(
            "weight {} → {} (stepWeightPromotion)",
            b.weight, a.weight
        )),
        (_, Phase::Succeeded) => result.push(format!(
            "Succeeded; post-rollout hooks{}",
            hooks_suffix(spec, HookType::PostRollout)
        )),
        (_, Phase::Waiting) => result.push("Waiting for confirm-rollout".into()),
        (_, Phase::WaitingPromotion) if b.phase != Phase::WaitingPromotion => {
            result.push("WaitingPromotion".into())
        }
        _ => {}
    }
    if a.phase == b.phase && a.phase == Phase::Progressing {
        if a.mirror && !b.mirror {
            result.push(format!(
                "mirroring {}% of primary traffic to the canary, weight {}",
                spec.mirror_weight(),
                a.weight
            ));
        }
        if a.weight != b.weight {
            let stop = if b.mirror && !a.mirror {
                "mirroring stops, "
            } else {
                ""
            };
            let gate = if a.weight > b.weight {
                gate_in(spec, p, HookType::ConfirmTrafficIncrease)
            } else {
                String::new()
            };
            let matching = if spec.analysis.r#match.is_empty() {
                ""
            } else {
                " for matching requests"
            };
            result.push(format!(
                "{gate}{stop}weight {} → {}{matching}",
                b.weight, a.weight
            ));
        }
        if a.iterations != b.iterations {
            let total = spec.analysis.iterations;
            if a.iterations <= total {
                result.push(format!("iteration {}/{total}", a.iterations));
            } else if a.weight == 0 && !spec.routes_traffic() {
                result.push(format!(
                    "{}{total} iterations done; still no traffic on the canary (provider kubernetes): one more analysis, then promotion",
                    gate_in(spec, p, HookType::ConfirmPromotion)
                ));
            }
        }
    }
    if result.is_empty() {
        result.push(format!("{} at weight {}", a.phase, a.weight));
    }
    format!("{} → {}", what.join("; "), result.join("; "))
}

fn hooks_suffix(spec: &CanarySpec, t: HookType) -> String {
    let names = hook_names(spec, t);
    if names.is_empty() {
        ": none".to_string()
    } else {
        format!(" {names}")
    }
}

/// "confirm-promotion approves; " when this pass asked that gate (and it has hooks).
fn gate_in(spec: &CanarySpec, p: &SimulatedPass, t: HookType) -> String {
    if spec.hooks(t).is_empty() || !p.steps.contains(&PassStep::Hooks(t)) {
        String::new()
    } else {
        format!("{t} approves; ")
    }
}

fn interval_words(spec: &CanarySpec) -> String {
    format_duration(spec.interval())
}

/// Where the effective interval comes from: the spec, the default, or the floor.
fn interval_source(spec: &CanarySpec) -> String {
    let floor = spec.min_interval;
    let floor_words = if floor == DEFAULT_MIN_INTERVAL {
        format!("the {} floor, Flagger's", format_duration(floor))
    } else {
        format!("the {} floor set by --min-interval", format_duration(floor))
    };
    let mut words = match &spec.analysis.interval {
        Some(i) if i.duration < floor => {
            format!("analysis.interval {i} raised to {floor_words}")
        }
        Some(_) => "analysis.interval".to_string(),
        None => "the default; analysis.interval is not set".to_string(),
    };
    if spec.interval() < DEFAULT_MIN_INTERVAL {
        let _ = write!(
            words,
            "; below Flagger's {} floor, allowed by --min-interval {}",
            format_duration(DEFAULT_MIN_INTERVAL),
            format_duration(floor)
        );
    }
    words
}

/// What `skipAnalysis` does, naming the hooks that still run and the ones that do not.
fn skip_analysis_words(spec: &CanarySpec) -> String {
    let mut text = "skipAnalysis: as in Flagger, a new revision starts a run, and the next pass promotes it with no metrics and no rollout hooks (in Kubernetes mode, once the canary is ready).".to_string();
    let running: Vec<String> = [
        HookType::ConfirmRollout,
        HookType::PostRollout,
        HookType::Event,
    ]
    .into_iter()
    .filter(|t| !spec.hooks(*t).is_empty())
    .map(|t| format!("{t} ({})", hook_names(spec, t)))
    .collect();
    let skipped: Vec<String> = [
        HookType::PreRollout,
        HookType::Rollout,
        HookType::ConfirmTrafficIncrease,
        HookType::ConfirmPromotion,
        HookType::Rollback,
    ]
    .into_iter()
    .filter(|t| !spec.hooks(*t).is_empty())
    .map(|t| format!("{t} ({})", hook_names(spec, t)))
    .collect();
    if !running.is_empty() {
        let _ = write!(text, " Hooks that still run: {}.", running.join(", "));
    }
    if !skipped.is_empty() {
        let _ = write!(text, " Hooks not called: {}.", skipped.join(", "));
    }
    if !spec.analysis.metrics.is_empty() {
        let names: Vec<&str> = spec
            .analysis
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        let _ = write!(text, " Metrics not checked: {}.", names.join(", "));
    }
    text
}

// ---------------------------------------------------------------------------------------
// The explanation

/// Explains one canary; `spec_warnings` are the loader's warnings for its document.
pub fn explain_canary(
    spec: &CanarySpec,
    spec_warnings: &[&SpecProblem],
    opts: &ExplainOptions,
) -> String {
    let mut out = String::new();
    let key = spec.key();
    let _ = writeln!(out, "Canary {key} ({})", spec.source);
    let interval = interval_words(spec);

    // What it is.
    let strategy = match spec.strategy() {
        Strategy::Canary(WeightSteps::Step { step, max }) => format!(
            "Canary: the canary's share rises by stepWeight {step}% per passing analysis until it reaches maxWeight {max}%"
        ),
        Strategy::Canary(WeightSteps::List(list)) if list.is_empty() => {
            "No traffic steps (no stepWeight, stepWeights or iterations, which skipAnalysis allows): no traffic is shifted to the canary".to_string()
        }
        Strategy::Canary(WeightSteps::List(list)) => format!(
            "Canary: the canary's share follows stepWeights {}",
            list.iter().map(|w| format!("{w}%")).collect::<Vec<_>>().join(" → ")
        ),
        Strategy::ABTesting { iterations } => format!(
            "A/B testing: requests matching analysis.match all go to the canary for {iterations} passing iterations; the rest stay on the primary"
        ),
        Strategy::BlueGreen {
            iterations,
            switches_traffic: true,
        } => format!(
            "Blue/Green: {iterations} passing iterations with the canary tested by its hooks{}, then all traffic switches to it",
            if spec.analysis.mirror { " and mirrored traffic" } else { "" }
        ),
        Strategy::BlueGreen {
            iterations,
            switches_traffic: false,
        } => format!(
            "Blue/Green without traffic routing (provider kubernetes, as in Flagger): {iterations} passing iterations test the canary through its own Service, {}-canary, by its hooks and metrics; it gets no share of the traffic, and at promotion the primary takes the new revision",
            spec.service_name()
        ),
    };
    let _ = writeln!(out, "  {strategy}.");
    let _ = writeln!(
        out,
        "  One pass every {interval} ({}). Rollback after {} failed {} (analysis.threshold), counted over the whole run, not consecutively.",
        interval_source(spec),
        spec.threshold(),
        plural(spec.threshold() as usize, "check", "checks")
    );
    let _ = writeln!(
        out,
        "  Progress deadline {} (progressDeadlineSeconds): it bounds readiness, as in Flagger. In Kubernetes mode the canary must become ready within it during a run, or the run is rolled back; on promotion veer waits for the primary to become ready while the canary keeps its share. Local mode has no readiness to wait for, so there it does not apply.",
        format_duration(spec.progress_deadline())
    );
    if spec.skip_analysis {
        let _ = writeln!(out, "  {}", skip_analysis_words(spec));
    }
    if spec.suspend {
        let _ = writeln!(out, "  suspend: no passes run until suspend is removed (the timeline shows what happens then).");
    }

    // Routing.
    let state = CanaryState::default();
    let route = route_for_state(spec, &state);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Routing (veer's filter in the gateway decides per request):"
    );
    let _ = writeln!(
        out,
        "  Route {}: hosts {}, path prefix {}.",
        route.name,
        route.hosts.join(", "),
        route.path_prefix
    );
    // What `veer render` does with the gateways, from its own rule, so the two agree.
    if spec.gateway_api() {
        match crate::render::gateway_api_parents(spec) {
            Ok(parents) => {
                let names: Vec<String> = parents
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect();
                let _ = writeln!(
                    out,
                    "  Gateway API: an HTTPRoute attached to the Gateways {}.",
                    names.join(", ")
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  veer render refuses this Canary: {e}.");
            }
        }
    } else {
        match crate::render::virtual_service_gateways(spec) {
            Ok(gateways) => {
                let _ = writeln!(out, "  Gateways: {}.", gateways.join(", "));
            }
            Err(e) => {
                let _ = writeln!(out, "  veer render refuses this Canary: {e}.");
            }
        }
    }
    if !spec.routes_traffic() {
        let _ = writeln!(
            out,
            "  provider kubernetes: the route keeps weight 0 for the whole run; the canary is reached only through its own Service ({}-canary), e.g. by the load tester.",
            spec.service_name()
        );
    } else if !route.r#match.is_empty() {
        let _ = writeln!(
            out,
            "  Only requests matching one of {} analysis.match {} take part; all others stay on the primary.",
            route.r#match.len(),
            plural(route.r#match.len(), "rule", "rules")
        );
    }
    match &route.session_affinity {
        _ if !spec.routes_traffic() => {}
        Some(sa) => {
            let _ = writeln!(
                out,
                "  Session affinity: cookie {} (Max-Age {}s) keeps each user's bucket for the run; as the weight rises users only move from primary to canary.",
                sa.cookie_name, sa.max_age
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  No sessionAffinity: each request is split on its own, so one user can see both versions."
            );
        }
    }

    // Timeline.
    let happy = simulate(spec, Script::AllPass);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Timeline when every check passes (time since the new revision arrived):"
    );
    for p in &happy {
        let _ = writeln!(
            out,
            "  {:>6}  pass {:>2}: {}",
            format_duration(p.at),
            p.number,
            describe_pass(spec, p)
        );
    }
    let promoted = happy.iter().find(|p| {
        p.after.phase == Phase::Promoting
            || (p.before.phase != Phase::Succeeded
                && p.after.phase == Phase::Succeeded
                && p.before.phase != Phase::Finalising)
    });
    let drained = happy.iter().find(|p| p.after.phase == Phase::Finalising);
    let done = happy.iter().find(|p| p.after.phase == Phase::Succeeded);
    match (promoted, done) {
        (Some(pr), Some(d)) => {
            let mut line = format!(
                "Earliest promotion: {} after the new revision (pass {})",
                format_duration(pr.at),
                pr.number
            );
            if let Some(f) = drained {
                let _ = write!(
                    line,
                    "; all traffic on the new primary at {}",
                    format_duration(f.at)
                );
            }
            let _ = write!(line, "; Succeeded at {}.", format_duration(d.at));
            let _ = writeln!(out, "{line}");
        }
        _ => {
            let _ = writeln!(
                out,
                "This canary is never promoted by the simulation; see the warnings."
            );
        }
    }

    // Rollback.
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Rollback (a failure in pass N rolls back in pass N+1, since the threshold is checked before the analysis):"
    );
    let has_checks = !spec.analysis.metrics.is_empty()
        || !spec.hooks(HookType::Rollout).is_empty()
        || !spec.hooks(HookType::PreRollout).is_empty();
    let rollback_hooks = hook_names(spec, HookType::Rollback);
    if spec.skip_analysis {
        let _ = writeln!(
            out,
            "  skipAnalysis: no check runs and no rollback hook is called, so nothing fails this canary{}.",
            if has_checks { " (its metrics and hooks are skipped)" } else { "" }
        );
    } else if !has_checks {
        let by_hooks = if rollback_hooks.is_empty() {
            String::new()
        } else {
            format!("; only its rollback hooks ({rollback_hooks}) can roll it back")
        };
        let _ = writeln!(
            out,
            "  No check can fail this canary: it has no metrics and no pre-rollout or rollout hooks{by_hooks}."
        );
    } else {
        let first_check = happy
            .iter()
            .find(|p| matches!(p.kind, PassKind::PreRollout | PassKind::Analysis))
            .map_or(1, |p| p.number);
        let early = simulate(spec, Script::FailFrom(first_check));
        out.push_str(&describe_rollback(
            "Every check failing from the start",
            &early,
        ));
        let last_analysis = happy
            .iter()
            .rev()
            .find(|p| matches!(p.kind, PassKind::Analysis | PassKind::PreRollout))
            .map_or(first_check, |p| p.number);
        if last_analysis > first_check {
            let late = simulate(spec, Script::FailFrom(last_analysis));
            out.push_str(&describe_rollback(
                "Checks failing only at the last step (the latest a failing canary is rolled back; earlier failures use up the same budget)",
                &late,
            ));
        }
    }
    if !spec.skip_analysis && !rollback_hooks.is_empty() {
        let _ = writeln!(
            out,
            "  Any pass may also roll back at once: the rollback hooks ({rollback_hooks}) are called first in every pass, and a 2xx answer rolls back."
        );
    }
    if !spec.skip_analysis && !spec.hooks(HookType::ConfirmTrafficIncrease).is_empty() {
        let _ = writeln!(
            out,
            "  A confirm-traffic-increase refusal pauses the run at its weight, asked again every {interval}; it is not a failed check and never rolls back by itself."
        );
    }

    if !spec.skip_analysis && !spec.hooks(HookType::ConfirmPromotion).is_empty() {
        let _ = writeln!(
            out,
            "  In WaitingPromotion there is no deadline: the run waits for confirm-promotion as long as it takes, while its analysis keeps running and failures still count."
        );
    }

    // Metrics.
    let set = spec.metrics_set(opts.metrics_set);
    let _ = writeln!(out);
    if spec.analysis.metrics.is_empty() {
        let _ = writeln!(out, "Metrics: none.");
    } else {
        let _ = writeln!(
            out,
            "Metrics (instant queries each analysis pass, in order; the first failure ends the pass; no data, NaN or several series fail: Flagger also fails no data and NaN, but takes the last of several series):"
        );
        let _ = writeln!(
            out,
            "  A metric's `interval` is its query's look-back window, not how often it is checked: every metric is checked once per pass, every {interval}."
        );
    }
    let mut warnings: Vec<String> = Vec::new();
    for m in &spec.analysis.metrics {
        let vars = spec.query_vars(m);
        let (query, origin, unit) = match &m.source {
            MetricSource::Builtin(b) => (
                Ok(builtin_query(set, *b, &vars)),
                format!("builtin, query set {set}"),
                format!(" ({})", b.unit()),
            ),
            MetricSource::Query(q) => (
                render_query(q, &vars),
                "inline query".to_string(),
                String::new(),
            ),
            MetricSource::Template {
                name,
                namespace,
                query,
                address,
            } => (
                render_query(query, &vars),
                format!(
                    "MetricTemplate {namespace}/{name}{}",
                    address
                        .as_deref()
                        .map(|a| format!(" at {a}"))
                        .unwrap_or_default()
                ),
                String::new(),
            ),
        };
        let _ = writeln!(
            out,
            "  {}: passes when {}{unit}; window {} ({origin})",
            m.name, m.threshold_range, m.interval
        );
        match query {
            Ok(q) => {
                for line in q.lines() {
                    let _ = writeln!(out, "      {line}");
                }
                if q.contains("irate(") {
                    let _ = writeln!(
                        out,
                        "    irate uses only the last two samples inside the {} window: the value reflects about one scrape interval ({}) of traffic, not the whole window.",
                        m.interval,
                        format_duration(opts.scrape_interval)
                    );
                }
            }
            Err(e) => warnings.push(format!(
                "metric {}: its query cannot be rendered: {e}",
                m.name
            )),
        }
        if m.interval.duration < opts.scrape_interval * 2 {
            warnings.push(format!(
                "metric {} has interval {} but Prometheus scrapes every {}: the window holds fewer than two samples, so rate()/irate() find no data and the check fails (\"no values found\"). Use at least {}.",
                m.name,
                m.interval,
                format_duration(opts.scrape_interval),
                format_duration(opts.scrape_interval * 2)
            ));
        }
        if m.interval.duration > spec.interval() * 5 {
            warnings.push(format!(
                "metric {} looks back {} while a pass comes every {interval}: a regression shows late, diluted by older traffic.",
                m.name, m.interval
            ));
        }
        if let MetricSource::Builtin(b) = &m.source {
            use crate::checks::prometheus::BuiltinMetric;
            match b {
                BuiltinMetric::RequestSuccessRate => {
                    if m.threshold_range.min.is_some_and(|v| v <= 1.0) {
                        warnings.push(format!(
                            "metric {}: min {} looks like a fraction, but the value is a percentage (0-100): almost anything passes.",
                            m.name,
                            m.threshold_range.min.unwrap_or_default()
                        ));
                    }
                }
                BuiltinMetric::RequestDuration => {
                    if m.threshold_range.max.is_some_and(|v| v < 5.0) {
                        warnings.push(format!(
                            "metric {}: max {} is in milliseconds, not seconds: almost nothing passes.",
                            m.name,
                            m.threshold_range.max.unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }

    // Webhooks.
    let _ = writeln!(out);
    if spec.analysis.webhooks.is_empty() {
        let _ = writeln!(out, "Webhooks: none.");
    } else {
        let _ = writeln!(
            out,
            "Webhooks (POST Flagger's JSON payload; only 200, 201 and 202 pass):"
        );
    }
    for w in &spec.analysis.webhooks {
        let role = match w.hook_type {
            HookType::ConfirmRollout => "before a run starts; a refusal means Waiting, asked again every interval",
            HookType::PreRollout => "once at weight 0, before any traffic; a failure is a failed check and it runs again next pass",
            HookType::Rollout => "every analysis pass, before the metrics; a failure is a failed check",
            HookType::ConfirmTrafficIncrease => "before each weight increase; a refusal pauses the run at its weight until it approves",
            HookType::ConfirmPromotion => "before promotion; a refusal means WaitingPromotion, where analysis and gate repeat every interval",
            HookType::PostRollout => "after promotion or rollback; failures are only logged",
            HookType::Rollback => "every pass; a 2xx answer rolls back at once",
            HookType::Event => "receives every event",
        };
        let skipped = spec.skip_analysis
            && !matches!(
                w.hook_type,
                HookType::ConfirmRollout | HookType::PostRollout | HookType::Event
            );
        let mut call = format!("timeout {}", format_duration(w.hook.timeout()));
        if w.hook.retries > 0 {
            let _ = write!(
                call,
                ", {} {} with backoff, up to {} in all",
                w.hook.retries,
                plural(w.hook.retries as usize, "retry", "retries"),
                format_duration(w.hook.worst_case())
            );
        }
        if w.hook.disable_tls {
            call.push_str(", certificate not verified (disableTLS)");
        }
        let _ = writeln!(
            out,
            "  {} {} → {} ({call}): {role}{}.",
            w.hook_type,
            w.hook.name,
            w.hook.url,
            if skipped {
                " (not called: skipAnalysis)"
            } else {
                ""
            }
        );
    }
    // Rollout hooks run in every analysis pass, one after another; Flagger's docs ask that
    // their timeouts add up to less than the interval. Other hooks run once or only gate.
    let rollout = spec.hooks(HookType::Rollout);
    let rollout_worst: Duration = rollout.iter().map(|h| h.worst_case()).sum();
    if !spec.skip_analysis && rollout_worst > spec.interval() {
        let names: Vec<&str> = rollout.iter().map(|h| h.name.as_str()).collect();
        warnings.push(format!(
            "rollout {} {} may take up to {} in all (timeouts{}) but a pass comes every {interval}: slow rollout hooks delay every pass.",
            plural(names.len(), "hook", "hooks"),
            names.join(", "),
            format_duration(rollout_worst),
            if rollout.iter().any(|h| h.retries > 0) { " and retries" } else { "" }
        ));
    }

    warnings.extend(traps(spec));
    warnings.extend(spec_warnings.iter().map(|p| match &p.path {
        Some(path) => format!("{path}: {}", p.message),
        None => p.message.clone(),
    }));
    let _ = writeln!(out);
    if warnings.is_empty() {
        let _ = writeln!(out, "Warnings: none.");
    } else {
        let _ = writeln!(out, "Warnings:");
        for w in warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

fn describe_rollback(title: &str, passes: &[SimulatedPass]) -> String {
    let failing: Vec<usize> = passes
        .iter()
        .filter(|p| p.after.failed_checks > p.before.failed_checks)
        .map(|p| p.number)
        .collect();
    let Some(rb) = passes.iter().find(|p| p.after.phase == Phase::Failed) else {
        return format!("  {title}: no rollback happens in the simulation.\n");
    };
    let peak = passes
        .iter()
        .map(|p| p.before.weight)
        .max()
        .unwrap_or_default();
    let list = failing
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let peak = if peak > rb.before.weight {
        format!(" (at most {peak}% during the run)")
    } else {
        String::new()
    };
    format!(
        "  {title}: checks fail in {} {list}; pass {} rolls back at {}, with the canary at weight {} until then{peak}.\n",
        plural(failing.len(), "pass", "passes"),
        rb.number,
        format_duration(rb.at),
        rb.before.weight
    )
}

/// Configuration traps worth a warning, beyond the loader's field warnings.
fn traps(spec: &CanarySpec) -> Vec<String> {
    let mut w = Vec::new();
    let a = &spec.analysis;
    match spec.strategy() {
        Strategy::Canary(WeightSteps::Step { step, max }) => {
            let mut weight = 0;
            let mut ladder = Vec::new();
            while weight < max && ladder.len() < 200 {
                weight = (weight + step).min(100);
                ladder.push(weight);
            }
            if weight > max {
                w.push(format!(
                    "stepWeight {step} with maxWeight {max} goes {}: the last step overshoots maxWeight to {weight}%. maxWeight is where the steps stop, not a cap; use a maxWeight that is a multiple of stepWeight, or stepWeights.",
                    ladder.iter().map(u32::to_string).collect::<Vec<_>>().join(" → ")
                ));
            }
            if max >= 100 {
                w.push(format!(
                    "maxWeight {max}: every request goes to the canary before promotion, so the last analysis has no primary traffic left to protect; a lower maxWeight (e.g. 50) keeps the blast radius of a late failure smaller."
                ));
            }
        }
        Strategy::Canary(WeightSteps::List(list)) => {
            if list.last().is_some_and(|l| *l >= 100) {
                w.push(
                    "stepWeights ends at 100: every request goes to the canary before promotion."
                        .into(),
                );
            }
        }
        Strategy::ABTesting { .. } => {
            if a.session_affinity.is_some() {
                w.push("sessionAffinity with A/B testing: matching requests all go to the canary anyway (weight 100), so the cookie pins nothing; affinity is for weighted canaries.".into());
            }
            if a.mirror {
                w.push("mirror with A/B testing: veer does not mirror in A/B runs (matching requests already reach the canary).".into());
            }
        }
        Strategy::BlueGreen { .. } => {}
    }
    if !a.r#match.is_empty() && a.iterations == 0 {
        w.push("analysis.match without iterations: this is not an A/B test but a canary limited to matching requests (the weight rises for them only). For A/B testing (all matching requests on the canary) set iterations.".into());
    }
    if a.mirror && a.iterations == 0 && a.r#match.is_empty() {
        w.push(format!(
            "mirror: the first step only mirrors {}% of requests to the canary (responses discarded); mirrored writes (POST, PUT) reach the canary for real.",
            spec.mirror_weight()
        ));
    }
    let gateways = &spec.service.gateways;
    if !gateways.is_empty() && !gateways.iter().any(|g| g == "mesh") {
        w.push(format!(
            "service.gateways lists {} without `mesh`: only requests entering through that gateway are split; in-mesh calls to {}.{} bypass the canary routing and always reach the primary (veer decides in the ingress gateway; sidecars run no veer filter).",
            gateways.join(", "),
            spec.service_name(),
            spec.namespace
        ));
    }
    if spec.service.hosts.is_empty() {
        w.push(format!(
            "service.hosts is empty: the route matches only Host `{}`; requests through a gateway with a public host name are not split. List the public hosts in service.hosts.",
            spec.service_name()
        ));
    } else if spec.service.hosts.iter().any(|h| h == "*") {
        w.push("service.hosts contains `*`: every request through the gateway, for any host, takes part in this canary.".into());
    }
    if a.metrics.is_empty() && !spec.skip_analysis {
        w.push("no metrics: only hooks are checked, so a canary answering 500s is promoted unless a hook notices.".into());
    }
    if a.threshold == 0 {
        w.push("analysis.threshold is not set: one failed check (e.g. a single Prometheus timeout) rolls back.".into());
    }
    w
}
