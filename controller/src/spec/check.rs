//! Semantic checks: what a spec means beyond its shape (weights are percent, steps rise, a
//! metric has a usable threshold and query, a template exists, ...). Builds the
//! [`CanarySpec`] from the raw shapes, or reports why not.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use veer_core::{MatchRule, SessionAffinity, StringMatch};

use super::load::{problem, Severity, SpecProblem};
use super::raw::{RawAnalysis, RawCanary, RawMetric, RawWebhook};
use super::{
    route_for, AnalysisSpec, CanarySpec, GoDuration, LoadOptions, MetricSource, MetricSpec,
    MetricTemplate, SpecSource, VeerSpec, WebhookSpec, DEFAULT_COOKIE_MAX_AGE,
    DEFAULT_METRIC_INTERVAL, DEFAULT_MIN_INTERVAL, GATEWAY_API_PROVIDER, KUBERNETES_PROVIDER,
    KUBERNETES_PROVIDER_ITERATIONS, VEER_API_VERSION,
};
use crate::checks::prometheus::{render_query, BuiltinMetric, ThresholdRange};
use crate::checks::webhooks::{Hook, HookType};

/// What every canary of one load is checked against.
pub(super) struct CheckContext<'a> {
    /// Every template loaded, from any of the files.
    pub templates: &'a [MetricTemplate],
    /// The files read, named when a template is missing.
    pub files_read: String,
    pub opts: &'a LoadOptions,
}

/// The problems of one document: errors (the document is dropped) and warnings.
struct Report<'a> {
    source: &'a SpecSource,
    problems: &'a mut Vec<SpecProblem>,
    errors: usize,
}

impl Report<'_> {
    fn error(&mut self, path: &str, message: String) {
        self.errors += 1;
        self.problems.push(problem(
            Severity::Error,
            self.source,
            Some(path.to_string()),
            message,
        ));
    }

    fn warn(&mut self, path: &str, message: String) {
        self.problems.push(problem(
            Severity::Warning,
            self.source,
            Some(path.to_string()),
            message,
        ));
    }
}

/// Checks meaning beyond shape and builds the spec. Returns `None` when an error was
/// pushed; every error names its field path.
pub(super) fn check_canary(
    raw: RawCanary,
    source: &SpecSource,
    context: &CheckContext<'_>,
    problems: &mut Vec<SpecProblem>,
) -> Option<CanarySpec> {
    let mut report = Report {
        source,
        problems,
        errors: 0,
    };
    let body = raw.spec;
    let namespace = raw
        .metadata
        .namespace
        .unwrap_or_else(|| "default".to_string());
    if raw.metadata.name.is_empty() {
        report.error("metadata.name", "must not be empty".into());
    }
    if body.target_ref.name.is_empty() {
        report.error("spec.targetRef.name", "must not be empty".into());
    }
    let progress_deadline_seconds = match body.progress_deadline_seconds {
        Some(s) if s <= 0 => {
            report.error(
                "spec.progressDeadlineSeconds",
                format!("must be positive, got {s}"),
            );
            None
        }
        other => other.map(|s| s as u64),
    };
    let analysis = match (body.analysis, body.canary_analysis) {
        (Some(a), Some(_)) => {
            report.warn(
                "spec.canaryAnalysis",
                "ignored: spec.analysis is also set and wins (as in Flagger)".into(),
            );
            Some(a)
        }
        (None, Some(a)) => {
            report.warn(
                "spec.canaryAnalysis",
                "the pre-v1beta1 name of spec.analysis, read as spec.analysis as Flagger does; rename it".into(),
            );
            Some(a)
        }
        (a, None) => a,
    };
    // Flagger promotes a Canary without an analysis as if skipAnalysis were set. veer asks
    // for that to be said: a forgotten analysis must not promote unchecked.
    let a = match analysis {
        Some(a) => a,
        None if body.skip_analysis => RawAnalysis::default(),
        None => {
            report.error(
                "spec.analysis",
                "missing: a Canary needs an analysis (interval, threshold, stepWeight or iterations, metrics). Flagger would promote every new revision unchecked, as with skipAnalysis; to mean that, set skipAnalysis: true"
                    .into(),
            );
            return None;
        }
    };

    // Weights are percent.
    for (path, value) in [
        ("spec.analysis.maxWeight", a.max_weight.unwrap_or(0)),
        ("spec.analysis.stepWeight", a.step_weight),
        ("spec.analysis.stepWeightPromotion", a.step_weight_promotion),
        ("spec.analysis.mirrorWeight", a.mirror_weight),
    ] {
        if value > 100 {
            report.error(path, format!("{value} is above 100 (weights are percent)"));
        }
    }
    let mut previous = 0;
    for (i, w) in a.step_weights.iter().enumerate() {
        let path = format!("spec.analysis.stepWeights[{i}]");
        if *w > 100 {
            report.error(&path, format!("{w} is above 100 (weights are percent)"));
        } else if *w <= previous {
            report.error(
                &path,
                format!("{w} does not rise above the previous step {previous}: steps must increase and be above 0"),
            );
        }
        previous = previous.max(*w);
    }
    let kubernetes = body.provider.as_deref() == Some(KUBERNETES_PROVIDER);
    if a.step_weight == 0
        && a.step_weights.is_empty()
        && a.iterations == 0
        && !body.skip_analysis
        && !kubernetes
    {
        report.error(
            "spec.analysis",
            "no stepWeight, stepWeights or iterations: the canary would never advance".into(),
        );
    }
    if let Some(interval) = &a.interval {
        if interval.duration.is_zero() {
            report.error("spec.analysis.interval", "must be above zero".into());
        } else if interval.duration < context.opts.min_interval {
            let floor = humantime::format_duration(context.opts.min_interval);
            let how = if context.opts.min_interval == DEFAULT_MIN_INTERVAL {
                "as Flagger does; `--min-interval` lowers the floor for demos and tests".to_string()
            } else {
                format!("the floor set by --min-interval {floor}")
            };
            report.warn(
                "spec.analysis.interval",
                format!("{interval} is below the {floor} floor: passes run every {floor} ({how})"),
            );
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
                report.error(
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

    // Metrics; their queries are rendered once the spec is built (they use its names).
    let mut metrics = Vec::new();
    let mut metric_paths = Vec::new();
    let mut metric_names = BTreeSet::new();
    for (i, m) in a.metrics.into_iter().enumerate() {
        let path = format!("spec.analysis.metrics[{i}]");
        if !metric_names.insert(m.name.clone()) {
            report.error(
                &format!("{path}.name"),
                format!("metric {:?} is listed twice", m.name),
            );
        }
        if let Some(metric) = check_metric(m, &path, &namespace, context, &mut report) {
            metrics.push(metric);
            metric_paths.push(path);
        }
    }

    // Webhooks.
    let webhooks = a
        .webhooks
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| check_webhook(w, &format!("spec.analysis.webhooks[{i}]"), &mut report))
        .collect();

    let session_affinity = a.session_affinity.map(|s| {
        if s.max_age.is_some_and(|m| m < 0) {
            report.error(
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

    let mut spec = CanarySpec {
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
        provider: body.provider,
        ingress_ref: body.ingress_ref,
        route_ref: body.route_ref,
        progress_deadline_seconds,
        skip_analysis: body.skip_analysis,
        revert_on_deletion: body.revert_on_deletion,
        suspend: body.suspend,
        veer,
        min_interval: context.opts.min_interval,
    };
    if ignored_veer {
        report.warn(
            "spec.veer",
            format!(
                "accepted but not used by veer (veer's extensions are read only with apiVersion {VEER_API_VERSION})"
            ),
        );
    }
    let a = &spec.analysis;
    if a.iterations > 0 && (a.step_weight > 0 || !a.step_weights.is_empty()) {
        report.warn(
            "spec.analysis.stepWeight",
            "ignored: iterations is set, so this is an A/B or Blue/Green run, not a weighted canary".into(),
        );
    }
    if a.step_weight > 0 && !a.step_weights.is_empty() {
        report.warn(
            "spec.analysis.stepWeights",
            "ignored: stepWeight is also set and wins".into(),
        );
    }
    if !a.step_weights.is_empty() && a.step_weight == 0 && a.max_weight.is_some() {
        report.warn(
            "spec.analysis.maxWeight",
            "ignored with stepWeights: the last entry is the max".into(),
        );
    }
    apply_provider(&mut spec, &mut report);
    for (m, path) in spec.analysis.metrics.iter().zip(&metric_paths) {
        if let MetricSource::Query(q) | MetricSource::Template { query: q, .. } = &m.source {
            if let Err(e) = render_query(q, &spec.query_vars(m)) {
                report.error(&format!("{path}.query"), e.to_string());
            }
        }
    }

    // The route must be one the filter accepts; check it with the filter's own validation.
    let route = route_for(&spec, 0, 0, "");
    let table = veer_core::RoutingTable {
        generation: 0,
        routes: vec![route],
    };
    if let Err(e) = veer_core::validate_table(&table) {
        report.error(
            "spec",
            format!("the routing-table route would be invalid: {e}"),
        );
    }

    (report.errors == 0).then_some(spec)
}

/// `spec.provider`, read as Flagger reads it. `kubernetes` is Blue/Green without traffic
/// routing: Flagger drops `match` (no A/B), does not mirror, and runs 10 iterations when
/// none are set; the spec is changed the same way, each change with a warning. Any other
/// provider is a mesh or ingress veer does not drive: veer's gateway filter splits the
/// traffic instead.
fn apply_provider(spec: &mut CanarySpec, report: &mut Report<'_>) {
    for (path, variable, reference) in [
        ("spec.ingressRef", "ingress", &spec.ingress_ref),
        ("spec.routeRef", "route", &spec.route_ref),
    ] {
        if let Some(r) = reference {
            report.warn(
                path,
                format!(
                    "{:?} is used only as {{{{ {variable} }}}} in metric queries, as in Flagger; veer's filter in the Istio/Envoy gateway splits the traffic, not this resource",
                    r.name
                ),
            );
        }
    }
    unused_routing_fields(spec, report);
    let Some(provider) = spec.provider.clone() else {
        return;
    };
    if provider == KUBERNETES_PROVIDER {
        let a = &mut spec.analysis;
        if !a.r#match.is_empty() {
            a.r#match.clear();
            report.warn(
                "spec.analysis.match",
                "ignored with provider kubernetes: without traffic routing there is no A/B testing (Flagger drops it too); the run is Blue/Green".into(),
            );
        }
        if a.mirror {
            a.mirror = false;
            report.warn(
                "spec.analysis.mirror",
                "ignored with provider kubernetes: no traffic is routed to the canary, so none is mirrored (as in Flagger)".into(),
            );
        }
        if a.session_affinity.take().is_some() {
            report.warn(
                "spec.analysis.sessionAffinity",
                "ignored with provider kubernetes: no traffic is split, so there is nothing to keep sticky".into(),
            );
        }
        if a.iterations == 0 {
            a.iterations = KUBERNETES_PROVIDER_ITERATIONS;
            let ignored = if a.step_weight > 0 || !a.step_weights.is_empty() {
                " (stepWeight, stepWeights and maxWeight are ignored)"
            } else {
                ""
            };
            report.warn(
                "spec.analysis.iterations",
                format!(
                    "not set: provider kubernetes has no progressive traffic, so this is a Blue/Green run of {KUBERNETES_PROVIDER_ITERATIONS} iterations, as Flagger sets{ignored}"
                ),
            );
        }
        return;
    }
    if spec.gateway_api() {
        if provider != GATEWAY_API_PROVIDER {
            report.warn(
                "spec.provider",
                format!(
                    "{provider:?}: read as {GATEWAY_API_PROVIDER:?} (as Flagger reads any gatewayapi:v1* provider); veer writes a gateway.networking.k8s.io/v1 HTTPRoute"
                ),
            );
        }
        return;
    }
    if provider != "istio" && !provider.is_empty() {
        report.warn(
            "spec.provider",
            format!(
                "{provider:?}: veer does not drive this provider; veer's filter in the Istio/Envoy gateway splits the traffic, and the builtin metrics use veer's query set (--metrics-set, default istio), not {provider}'s metrics"
            ),
        );
    }
}

/// The `spec.service` fields of the routing API the canary does not use: Gateway API fields
/// on a VirtualService canary, Istio's `gateways` on an HTTPRoute canary. Each is accepted
/// with a warning naming it, as an unread field would be.
fn unused_routing_fields(spec: &CanarySpec, report: &mut Report<'_>) {
    let s = &spec.service;
    let unused: &[(&str, bool, &str)] = if spec.gateway_api() {
        &[(
            "spec.service.gateways",
            !s.gateways.is_empty(),
            "an Istio field; with provider gatewayapi:v1 the HTTPRoute attaches to spec.service.gatewayRefs",
        )]
    } else {
        &[
            (
                "spec.service.match",
                !s.r#match.is_empty(),
                "the route covers the whole host (spec.veer.pathPrefix narrows it)",
            ),
            (
                "spec.service.mirror",
                !s.mirror.is_empty(),
                "a Gateway API field; use analysis.mirror",
            ),
            (
                "spec.service.gatewayRefs",
                !s.gateway_refs.is_empty(),
                "a Gateway API field, read with provider gatewayapi:v1; the VirtualService binds to spec.service.gateways",
            ),
            (
                "spec.service.backendTimeout",
                s.backend_timeout.is_some(),
                "a Gateway API field, read with provider gatewayapi:v1; spec.service.timeout sets the VirtualService's timeout",
            ),
        ]
    };
    for (path, present, why) in unused {
        if *present {
            report.warn(path, format!("accepted but not used by veer ({why})"));
        }
    }
}

/// One metric: its query source (builtin, inline query or template), its threshold and
/// window. `None` when an error was reported.
fn check_metric(
    m: RawMetric,
    path: &str,
    namespace: &str,
    context: &CheckContext<'_>,
    report: &mut Report<'_>,
) -> Option<MetricSpec> {
    let builtin = BuiltinMetric::from_name(&m.name);
    let source_of = match (m.query, m.template_ref) {
        (Some(_), Some(_)) => {
            report.error(path, "set either query or templateRef, not both".into());
            return None;
        }
        (Some(query), None) => MetricSource::Query(query),
        (None, Some(r)) => {
            let ns = r.namespace.unwrap_or_else(|| namespace.to_string());
            let found = context
                .templates
                .iter()
                .find(|t| t.name == r.name && t.namespace == ns);
            match found {
                None => {
                    let elsewhere = context
                        .templates
                        .iter()
                        .filter(|t| t.name == r.name)
                        .map(|t| format!("{}/{} in {}", t.namespace, t.name, t.source))
                        .collect::<Vec<_>>();
                    let hint = if elsewhere.is_empty() {
                        "pass the file that defines it too (-f), or put it in the same directory"
                            .to_string()
                    } else {
                        format!("found {} (set templateRef.namespace)", elsewhere.join(", "))
                    };
                    report.error(
                        &format!("{path}.templateRef"),
                        format!(
                            "no MetricTemplate {ns}/{} was loaded (searched {}): {hint}",
                            r.name, context.files_read
                        ),
                    );
                    return None;
                }
                Some(t) if t.provider_type != "prometheus" => {
                    report.error(
                        &format!("{path}.templateRef"),
                        format!(
                            "MetricTemplate {ns}/{} uses provider {:?}; veer queries Prometheus only",
                            r.name, t.provider_type
                        ),
                    );
                    return None;
                }
                Some(t) => MetricSource::Template {
                    name: t.name.clone(),
                    namespace: t.namespace.clone(),
                    query: t.query.clone(),
                    address: t.address.clone(),
                },
            }
        }
        (None, None) => match builtin {
            Some(b) => MetricSource::Builtin(b),
            None => {
                report.error(
                    &format!("{path}.name"),
                    format!(
                        "{:?} is not a builtin metric (request-success-rate, request-duration): give a query or a templateRef",
                        m.name
                    ),
                );
                return None;
            }
        },
    };
    if let (Some(b), false) = (builtin, matches!(source_of, MetricSource::Builtin(_))) {
        report.warn(
            &format!("{path}.name"),
            format!(
                "{b} is a builtin metric's name: Flagger runs the builtin {b} check as well as this metric's own query under it; veer runs only the query. Rename the metric, and list {b} on its own if you want the builtin check too"
            ),
        );
    }
    let range = threshold_range(m.threshold_range, m.threshold, &source_of, path, report)?;
    let interval = match m.interval {
        Some(i) if i.duration.is_zero() => {
            report.error(&format!("{path}.interval"), "must be above zero".into());
            return None;
        }
        Some(i) => i,
        None => GoDuration {
            text: DEFAULT_METRIC_INTERVAL.to_string(),
            duration: Duration::from_secs(60),
        },
    };
    Some(MetricSpec {
        name: m.name,
        interval,
        threshold_range: range,
        source: source_of,
        template_variables: m.template_variables,
    })
}

/// The range a metric must fall in. `thresholdRange` wins; without it, the deprecated
/// `threshold` is read as Flagger's scheduler applies it: a minimum for
/// `request-success-rate`, a maximum for `request-duration` and for custom metrics.
fn threshold_range(
    range: Option<super::raw::RawThresholdRange>,
    threshold: Option<f64>,
    source: &MetricSource,
    path: &str,
    report: &mut Report<'_>,
) -> Option<ThresholdRange> {
    let range = match (range, threshold) {
        (Some(range), threshold) => {
            if let Some(t) = threshold {
                report.warn(
                    &format!("{path}.threshold"),
                    format!("{t} is ignored: thresholdRange is set and wins (as in Flagger)"),
                );
            }
            ThresholdRange {
                min: range.min,
                max: range.max,
            }
        }
        (None, Some(t)) => {
            let (range, meaning) = match source {
                MetricSource::Builtin(BuiltinMetric::RequestSuccessRate) => (
                    ThresholdRange {
                        min: Some(t),
                        max: None,
                    },
                    "a minimum for request-success-rate",
                ),
                MetricSource::Builtin(BuiltinMetric::RequestDuration) => (
                    ThresholdRange {
                        min: None,
                        max: Some(t),
                    },
                    "a maximum for request-duration (ms)",
                ),
                MetricSource::Query(_) | MetricSource::Template { .. } => (
                    ThresholdRange {
                        min: None,
                        max: Some(t),
                    },
                    "a maximum for a custom metric",
                ),
            };
            let bound = match (range.min, range.max) {
                (Some(min), _) => format!("{{min: {min}}}"),
                (_, Some(max)) => format!("{{max: {max}}}"),
                _ => String::new(),
            };
            report.warn(
                &format!("{path}.threshold"),
                format!(
                    "deprecated; read as Flagger reads it, {meaning}: the same as thresholdRange: {bound}. Write thresholdRange instead"
                ),
            );
            range
        }
        (None, None) => {
            report.error(
                &format!("{path}.thresholdRange"),
                "missing: a metric needs thresholdRange.min and/or thresholdRange.max (or the deprecated threshold)".into(),
            );
            return None;
        }
    };
    if range.min.is_none() && range.max.is_none() {
        report.error(
            &format!("{path}.thresholdRange"),
            "needs min and/or max: an empty range would pass any value".into(),
        );
        return None;
    }
    if let (Some(min), Some(max)) = (range.min, range.max) {
        if min > max {
            report.error(
                &format!("{path}.thresholdRange"),
                format!("min {min} is above max {max}: no value could pass"),
            );
        }
    }
    Some(range)
}

/// One webhook: its type, URL and how it is called (timeout, retries, TLS).
fn check_webhook(w: RawWebhook, path: &str, report: &mut Report<'_>) -> Option<WebhookSpec> {
    let type_name = if w.r#type.is_empty() {
        "rollout"
    } else {
        w.r#type.as_str()
    };
    let hook_type = match type_name.parse::<HookType>() {
        Ok(t) => t,
        Err(e) => {
            report.error(&format!("{path}.type"), e.to_string());
            return None;
        }
    };
    let Some(url) = w.url.filter(|u| !u.trim().is_empty()) else {
        report.error(
            &format!("{path}.url"),
            format!("missing: webhook {:?} needs a url", w.name),
        );
        return None;
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        report.error(
            &format!("{path}.url"),
            format!("{url:?} is not an http:// or https:// URL"),
        );
        return None;
    }
    let retries = match w.retries {
        Some(r) if r < 0 => {
            report.error(
                &format!("{path}.retries"),
                format!("must not be negative, got {r}"),
            );
            return None;
        }
        Some(r) => u32::try_from(r).unwrap_or(u32::MAX),
        None => 0,
    };
    if w.disable_tls && url.starts_with("http://") {
        report.warn(
            &format!("{path}.disableTLS"),
            "has no effect: the URL is http://, not https://".into(),
        );
    }
    Some(WebhookSpec {
        hook_type,
        hook: Hook {
            name: w.name,
            url,
            timeout: w.timeout.map(|t| t.duration),
            metadata: w.metadata,
            retries,
            disable_tls: w.disable_tls,
        },
    })
}
