//! `veer explain FILE`: what a Canary will do, in plain words. The pass-by-pass timeline,
//! the earliest promotion and the worst-case rollback come from *simulating* the analysis
//! state machine ([`crate::engine`]) with scripted check results, so the explanation
//! cannot drift from what the controller does. It also prints each metric's rendered PromQL
//! with its threshold, what each webhook is for, and warnings about the traps the seed
//! document is about (overshoot, short query windows, gateways without `mesh`, ...).

mod describe;
mod simulate;

pub use describe::format_duration;
use describe::*;
pub use simulate::{simulate, Script, SimulatedPass};

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
