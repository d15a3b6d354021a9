//! Semantic checks: what a spec means beyond its shape (weights are percent, steps rise, a
//! metric has a usable threshold and query, a template exists, ...). Builds the
//! [`CanarySpec`] from the raw shapes, or reports why not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use veer_core::{MatchRule, SessionAffinity, StringMatch};

use super::load::{problem, Severity, SpecProblem};
use super::raw::RawCanary;
use super::{
    route_for, AnalysisSpec, CanarySpec, GoDuration, MetricSource, MetricSpec, MetricTemplate,
    SpecSource, VeerSpec, WebhookSpec, DEFAULT_COOKIE_MAX_AGE, DEFAULT_METRIC_INTERVAL,
    VEER_API_VERSION,
};
use crate::checks::prometheus::{BuiltinMetric, QueryVars, ThresholdRange};
use crate::checks::webhooks::{Hook, HookType};

/// Checks meaning beyond shape and builds the spec. Returns `None` when an error was
/// pushed; every error names its field path.
pub(super) fn check_canary(
    raw: RawCanary,
    source: &SpecSource,
    templates: &[MetricTemplate],
    problems: &mut Vec<SpecProblem>,
) -> Option<CanarySpec> {
    let errors_before = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let mut error = |path: &str, message: String| {
        problems.push(problem(
            Severity::Error,
            source,
            Some(path.to_string()),
            message,
        ));
    };
    let body = raw.spec;
    let namespace = raw
        .metadata
        .namespace
        .unwrap_or_else(|| "default".to_string());
    if raw.metadata.name.is_empty() {
        error("metadata.name", "must not be empty".into());
    }
    if body.target_ref.name.is_empty() {
        error("spec.targetRef.name", "must not be empty".into());
    }
    let progress_deadline_seconds = match body.progress_deadline_seconds {
        Some(s) if s <= 0 => {
            error(
                "spec.progressDeadlineSeconds",
                format!("must be positive, got {s}"),
            );
            None
        }
        other => other.map(|s| s as u64),
    };
    let Some(a) = body.analysis else {
        error(
            "spec.analysis",
            "missing: a Canary needs an analysis (interval, threshold, stepWeight or iterations, metrics)"
                .into(),
        );
        return None;
    };

    // Weights are percent.
    for (path, value) in [
        ("spec.analysis.maxWeight", a.max_weight.unwrap_or(0)),
        ("spec.analysis.stepWeight", a.step_weight),
        ("spec.analysis.stepWeightPromotion", a.step_weight_promotion),
        ("spec.analysis.mirrorWeight", a.mirror_weight),
    ] {
        if value > 100 {
            error(path, format!("{value} is above 100 (weights are percent)"));
        }
    }
    let mut previous = 0;
    for (i, w) in a.step_weights.iter().enumerate() {
        let path = format!("spec.analysis.stepWeights[{i}]");
        if *w > 100 {
            error(&path, format!("{w} is above 100 (weights are percent)"));
        } else if *w <= previous {
            error(
                &path,
                format!("{w} does not rise above the previous step {previous}: steps must increase and be above 0"),
            );
        }
        previous = previous.max(*w);
    }
    if a.step_weight == 0 && a.step_weights.is_empty() && a.iterations == 0 && !body.skip_analysis {
        error(
            "spec.analysis",
            "no stepWeight, stepWeights or iterations: the canary would never advance".into(),
        );
    }
    if let Some(interval) = &a.interval {
        if interval.duration.is_zero() {
            error("spec.analysis.interval", "must be above zero".into());
        }
    }

    // A/B rules.
    let mut rules = Vec::new();
    for (i, m) in a.r#match.into_iter().enumerate() {
        let method = match m.method {
            None => None,
            Some(StringMatch {
                exact: Some(exact),
                prefix: None,
                suffix: None,
                regex: None,
                present: None,
            }) => Some(exact),
            Some(_) => {
                error(
                    &format!("spec.analysis.match[{i}].method"),
                    "only `exact` is supported for the method".into(),
                );
                None
            }
        };
        rules.push(MatchRule {
            headers: m.headers,
            cookies: BTreeMap::new(),
            query_params: m.query_params,
            method,
            uri: m.uri,
        });
    }

    // Metrics.
    let mut metrics = Vec::new();
    let mut metric_names = BTreeSet::new();
    for (i, m) in a.metrics.into_iter().enumerate() {
        let path = format!("spec.analysis.metrics[{i}]");
        if !metric_names.insert(m.name.clone()) {
            error(
                &format!("{path}.name"),
                format!("metric {:?} is listed twice", m.name),
            );
        }
        let Some(range) = m.threshold_range else {
            let advice = if m.threshold.is_some() {
                "the deprecated `threshold` is not supported: write thresholdRange.min or .max"
            } else {
                "a metric needs thresholdRange.min and/or thresholdRange.max"
            };
            error(
                &format!("{path}.thresholdRange"),
                format!("missing: {advice}"),
            );
            continue;
        };
        if range.min.is_none() && range.max.is_none() {
            error(
                &format!("{path}.thresholdRange"),
                "needs min and/or max: an empty range would pass any value".into(),
            );
            continue;
        }
        if let (Some(min), Some(max)) = (range.min, range.max) {
            if min > max {
                error(
                    &format!("{path}.thresholdRange"),
                    format!("min {min} is above max {max}: no value could pass"),
                );
            }
        }
        let source_of = match (m.query, m.template_ref) {
            (Some(_), Some(_)) => {
                error(&path, "set either query or templateRef, not both".into());
                continue;
            }
            (Some(query), None) => MetricSource::Query(query),
            (None, Some(r)) => {
                let ns = r.namespace.unwrap_or_else(|| namespace.clone());
                match templates
                    .iter()
                    .find(|t| t.name == r.name && t.namespace == ns)
                {
                    None => {
                        error(
                            &format!("{path}.templateRef"),
                            format!("no MetricTemplate {ns}/{} was loaded", r.name),
                        );
                        continue;
                    }
                    Some(t) if t.provider_type != "prometheus" => {
                        error(
                            &format!("{path}.templateRef"),
                            format!(
                                "MetricTemplate {ns}/{} uses provider {:?}; veer queries Prometheus only",
                                r.name, t.provider_type
                            ),
                        );
                        continue;
                    }
                    Some(t) => MetricSource::Template {
                        name: t.name.clone(),
                        namespace: t.namespace.clone(),
                        query: t.query.clone(),
                        address: t.address.clone(),
                    },
                }
            }
            (None, None) => match BuiltinMetric::from_name(&m.name) {
                Some(b) => MetricSource::Builtin(b),
                None => {
                    error(
                        &format!("{path}.name"),
                        format!(
                            "{:?} is not a builtin metric (request-success-rate, request-duration): give a query or a templateRef",
                            m.name
                        ),
                    );
                    continue;
                }
            },
        };
        let interval = match m.interval {
            Some(i) if i.duration.is_zero() => {
                error(&format!("{path}.interval"), "must be above zero".into());
                continue;
            }
            Some(i) => i,
            None => GoDuration {
                text: DEFAULT_METRIC_INTERVAL.to_string(),
                duration: Duration::from_secs(60),
            },
        };
        if let MetricSource::Query(q) | MetricSource::Template { query: q, .. } = &source_of {
            let vars = QueryVars {
                name: raw.metadata.name.clone(),
                namespace: namespace.clone(),
                target: body.target_ref.name.clone(),
                service: body
                    .service
                    .name
                    .clone()
                    .unwrap_or_else(|| body.target_ref.name.clone()),
                interval: interval.text.clone(),
                variables: m.template_variables.clone(),
            };
            if let Err(e) = crate::checks::prometheus::render_query(q, &vars) {
                error(&format!("{path}.query"), e.to_string());
                continue;
            }
        }
        metrics.push(MetricSpec {
            name: m.name,
            interval,
            threshold_range: ThresholdRange {
                min: range.min,
                max: range.max,
            },
            source: source_of,
            template_variables: m.template_variables,
        });
    }

    // Webhooks.
    let mut webhooks = Vec::new();
    for (i, w) in a.webhooks.into_iter().enumerate() {
        let path = format!("spec.analysis.webhooks[{i}]");
        let type_name = if w.r#type.is_empty() {
            "rollout"
        } else {
            w.r#type.as_str()
        };
        let hook_type = match type_name.parse::<HookType>() {
            Ok(t) => t,
            Err(e) => {
                error(&format!("{path}.type"), e.to_string());
                continue;
            }
        };
        let Some(url) = w.url.filter(|u| !u.trim().is_empty()) else {
            error(
                &format!("{path}.url"),
                format!("missing: webhook {:?} needs a url", w.name),
            );
            continue;
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            error(
                &format!("{path}.url"),
                format!("{url:?} is not an http:// or https:// URL"),
            );
            continue;
        }
        webhooks.push(WebhookSpec {
            hook_type,
            hook: Hook {
                name: w.name,
                url,
                timeout: w.timeout.map(|t| t.duration),
                metadata: w.metadata,
            },
        });
    }

    let session_affinity = a.session_affinity.map(|s| {
        if s.max_age.is_some_and(|m| m < 0) {
            error(
                "spec.analysis.sessionAffinity.maxAge",
                "must not be negative".into(),
            );
        }
        SessionAffinity {
            cookie_name: s.cookie_name,
            max_age: s.max_age.unwrap_or(DEFAULT_COOKIE_MAX_AGE),
            path: s.path.unwrap_or_else(|| "/".to_string()),
            domain: s.domain,
            secure: s.secure.unwrap_or(false),
            http_only: s.http_only.unwrap_or(true),
            same_site: s.same_site,
            partitioned: s.partitioned.unwrap_or(false),
        }
    });

    let is_veer = raw.api_version == VEER_API_VERSION;
    let ignored_veer = !is_veer && body.veer.is_some();
    let veer = if is_veer {
        body.veer.unwrap_or_default()
    } else {
        VeerSpec::default()
    };

    let spec = CanarySpec {
        source: source.clone(),
        api_version: raw.api_version,
        name: raw.metadata.name,
        namespace,
        target_ref: body.target_ref,
        service: body.service,
        analysis: AnalysisSpec {
            interval: a.interval,
            iterations: a.iterations,
            threshold: a.threshold,
            max_weight: a.max_weight,
            step_weight: a.step_weight,
            step_weights: a.step_weights,
            step_weight_promotion: a.step_weight_promotion,
            mirror: a.mirror,
            mirror_weight: a.mirror_weight,
            r#match: rules,
            metrics,
            webhooks,
            session_affinity,
        },
        progress_deadline_seconds,
        skip_analysis: body.skip_analysis,
        suspend: body.suspend,
        veer,
    };

    // The route must be one the filter accepts; check it with the filter's own validation.
    let route = route_for(&spec, 0, 0, "");
    let table = veer_core::RoutingTable {
        generation: 0,
        routes: vec![route],
    };
    if let Err(e) = veer_core::validate_table(&table) {
        error(
            "spec",
            format!("the routing-table route would be invalid: {e}"),
        );
    }

    let mut warn = |path: &str, message: String| {
        problems.push(problem(
            Severity::Warning,
            source,
            Some(path.to_string()),
            message,
        ));
    };
    if ignored_veer {
        warn(
            "spec.veer",
            format!(
                "accepted but not used by veer (veer's extensions are read only with apiVersion {VEER_API_VERSION})"
            ),
        );
    }
    if let Some(p) = body.provider.as_deref().filter(|p| *p != "istio") {
        warn(
            "spec.provider",
            format!("{p:?}: accepted but not used by veer (the split is done by veer's filter in the Istio/Envoy gateway)"),
        );
    }
    let a = &spec.analysis;
    if a.iterations > 0 && (a.step_weight > 0 || !a.step_weights.is_empty()) {
        warn(
            "spec.analysis.stepWeight",
            "ignored: iterations is set, so this is an A/B or Blue/Green run, not a weighted canary".into(),
        );
    }
    if a.step_weight > 0 && !a.step_weights.is_empty() {
        warn(
            "spec.analysis.stepWeights",
            "ignored: stepWeight is also set and wins".into(),
        );
    }
    if !a.step_weights.is_empty() && a.step_weight == 0 && a.max_weight.is_some() {
        warn(
            "spec.analysis.maxWeight",
            "ignored with stepWeights: the last entry is the max".into(),
        );
    }

    let errors_after = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    (errors_after == errors_before).then_some(spec)
}
