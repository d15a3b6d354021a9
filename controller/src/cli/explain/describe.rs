//! Plain words for a simulated pass: its steps, gates, hooks and timing.

use super::*;

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

pub(super) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

pub(super) fn hook_names(spec: &CanarySpec, t: HookType) -> String {
    spec.hooks(t)
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The steps of a pass in words: "rollout hook load-test; metrics a, b".
pub(super) fn describe_steps(spec: &CanarySpec, steps: &[PassStep]) -> Vec<String> {
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

pub(super) fn describe_pass(spec: &CanarySpec, p: &SimulatedPass) -> String {
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

pub(super) fn hooks_suffix(spec: &CanarySpec, t: HookType) -> String {
    let names = hook_names(spec, t);
    if names.is_empty() {
        ": none".to_string()
    } else {
        format!(" {names}")
    }
}

/// "confirm-promotion approves; " when this pass asked that gate (and it has hooks).
pub(super) fn gate_in(spec: &CanarySpec, p: &SimulatedPass, t: HookType) -> String {
    if spec.hooks(t).is_empty() || !p.steps.contains(&PassStep::Hooks(t)) {
        String::new()
    } else {
        format!("{t} approves; ")
    }
}

pub(super) fn interval_words(spec: &CanarySpec) -> String {
    format_duration(spec.interval())
}

/// Where the effective interval comes from: the spec, the default, or the floor.
pub(super) fn interval_source(spec: &CanarySpec) -> String {
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
pub(super) fn skip_analysis_words(spec: &CanarySpec) -> String {
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
