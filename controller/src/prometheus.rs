//! Metric checks against Prometheus: the builtin `request-success-rate` and
//! `request-duration` queries in three query sets (istio, veer, envoy), Flagger-style query
//! templates (`{{ namespace }}`, `{{ variables.x }}`, ...), the instant-query client and the
//! inclusive threshold check. An empty result, NaN or several series is an error here, never
//! a silent pass: the analysis must not promote a canary nobody measured.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Which telemetry the builtin metrics read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MetricsSet {
    /// Istio standard metrics (`istio_requests_total`, ...), the seed's queries.
    #[default]
    Istio,
    /// The veer filter's own per-route, per-variant stats.
    Veer,
    /// Envoy cluster stats for the `-canary` cluster.
    Envoy,
}

impl MetricsSet {
    pub const ALL: [MetricsSet; 3] = [MetricsSet::Istio, MetricsSet::Veer, MetricsSet::Envoy];

    pub fn as_str(self) -> &'static str {
        match self {
            MetricsSet::Istio => "istio",
            MetricsSet::Veer => "veer",
            MetricsSet::Envoy => "envoy",
        }
    }
}

impl fmt::Display for MetricsSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A metrics-set name that is none of `istio`, `veer`, `envoy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metrics set {0:?}: expected one of \"istio\", \"veer\", \"envoy\"")]
pub struct UnknownMetricsSet(pub String);

impl FromStr for MetricsSet {
    type Err = UnknownMetricsSet;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MetricsSet::ALL
            .into_iter()
            .find(|set| set.as_str() == s)
            .ok_or_else(|| UnknownMetricsSet(s.to_string()))
    }
}

/// The metrics Flagger knows by name, without a query or template in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinMetric {
    /// Percent (0..=100) of canary responses that are not 5xx.
    RequestSuccessRate,
    /// P99 of the canary's request duration, in milliseconds.
    RequestDuration,
}

impl BuiltinMetric {
    pub const ALL: [BuiltinMetric; 2] = [
        BuiltinMetric::RequestSuccessRate,
        BuiltinMetric::RequestDuration,
    ];

    /// The builtin metric with this Flagger name, if it is one.
    pub fn from_name(name: &str) -> Option<BuiltinMetric> {
        BuiltinMetric::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            BuiltinMetric::RequestSuccessRate => "request-success-rate",
            BuiltinMetric::RequestDuration => "request-duration",
        }
    }

    /// The unit of the value the query returns, for messages and `veer explain`.
    pub fn unit(self) -> &'static str {
        match self {
            BuiltinMetric::RequestSuccessRate => "%",
            BuiltinMetric::RequestDuration => "ms",
        }
    }
}

impl fmt::Display for BuiltinMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The values a query template can refer to; the same model as Flagger's
/// `MetricTemplateModel` plus the canary's `templateVariables`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryVars {
    /// The Canary's name.
    pub name: String,
    /// The Canary's namespace.
    pub namespace: String,
    /// `targetRef.name`: the workload under test.
    pub target: String,
    /// The apex Service name (`service.name`, else the target name).
    pub service: String,
    /// The metric's range, as written in the spec (e.g. `1m`, `30s`).
    pub interval: String,
    /// `templateVariables` of the metric, reachable as `{{ variables.<key> }}`.
    pub variables: BTreeMap<String, String>,
}

impl QueryVars {
    fn lookup(&self, variable: &str) -> Option<&str> {
        match variable {
            "name" => Some(&self.name),
            "namespace" => Some(&self.namespace),
            "target" => Some(&self.target),
            "service" => Some(&self.service),
            "interval" => Some(&self.interval),
            other => other
                .strip_prefix("variables.")
                .and_then(|key| self.variables.get(key))
                .map(String::as_str),
        }
    }
}

/// A query template that cannot be rendered. Offsets are byte offsets into the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown template variable {name:?} at offset {offset}: known are name, namespace, \
         target, service, interval and variables.<key> ({known_variables})"
    )]
    UnknownVariable {
        name: String,
        offset: usize,
        /// The `variables.<key>` names that were available, for the message.
        known_variables: String,
    },
    #[error("unclosed \"{{{{\" at offset {offset}: expected \"}}}}\"")]
    Unclosed { offset: usize },
}

/// Renders a Flagger query template: every `{{ var }}` (whitespace inside the braces is
/// optional) is replaced by its value. An unknown variable is an error naming it, because a
/// query with a hole in it would silently match nothing and read as "no traffic".
pub fn render_query(template: &str, vars: &QueryVars) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut consumed = 0usize;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let offset = consumed + open;
        let after_open = &rest[open + 2..];
        let close = after_open
            .find("}}")
            .ok_or(TemplateError::Unclosed { offset })?;
        let name = after_open[..close].trim();
        let value = vars
            .lookup(name)
            .ok_or_else(|| TemplateError::UnknownVariable {
                name: name.to_string(),
                offset,
                known_variables: if vars.variables.is_empty() {
                    "no templateVariables set".to_string()
                } else {
                    let keys: Vec<String> = vars
                        .variables
                        .keys()
                        .map(|k| format!("variables.{k}"))
                        .collect();
                    format!("templateVariables: {}", keys.join(", "))
                },
            })?;
        out.push_str(value);
        let advance = open + 2 + close + 2;
        consumed += advance;
        rest = &rest[advance..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The PromQL of a builtin metric in one query set, rendered for one canary. Every set
/// measures the canary variant only, as Flagger's builtins do.
///
/// - `istio` is the seed's PromQL verbatim (including its `=~` matchers and `irate` for the
///   duration), except that the success rate is multiplied by 100, as Flagger's builtin does:
///   the seed's `thresholdRange.min: 99` is a percentage.
/// - `veer` reads the filter's `veer_responses_total` / `veer_request_duration_ms_bucket`
///   for `veer_route="<stat_route_token(namespace/name)>"`, `veer_variant="canary"`.
/// - `envoy` reads `envoy_cluster_upstream_rq_xx` / `envoy_cluster_upstream_rq_time_bucket`
///   for Istio's canary cluster `outbound|<port>||<target>-canary.<namespace>.svc.cluster.local`
///   (any port).
pub fn builtin_query(set: MetricsSet, metric: BuiltinMetric, vars: &QueryVars) -> String {
    let QueryVars {
        name,
        namespace,
        target,
        interval,
        ..
    } = vars;
    match (set, metric) {
        (MetricsSet::Istio, BuiltinMetric::RequestSuccessRate) => format!(
            r#"sum(
    rate(
        istio_requests_total{{
        reporter="destination",
        destination_workload_namespace=~"{namespace}",
        destination_workload=~"{target}",
        response_code!~"5.*"
        }}[{interval}]
    )
)
/
sum(
    rate(
        istio_requests_total{{
        reporter="destination",
        destination_workload_namespace=~"{namespace}",
        destination_workload=~"{target}"
        }}[{interval}]
    )
)
* 100"#
        ),
        (MetricsSet::Istio, BuiltinMetric::RequestDuration) => format!(
            r#"histogram_quantile(0.99,
sum(
    irate(
    istio_request_duration_milliseconds_bucket{{
        reporter="destination",
        destination_workload=~"{target}",
        destination_workload_namespace=~"{namespace}"
    }}[{interval}]
    )
) by (le)
)"#
        ),
        (MetricsSet::Veer, metric) => {
            let route = promql_string(&stat_route_token(&format!("{namespace}/{name}")));
            let selector = format!("veer_route={route}, veer_variant=\"canary\"");
            match metric {
                BuiltinMetric::RequestSuccessRate => format!(
                    r#"sum(
    rate(
        veer_responses_total{{{selector}, veer_class!="5xx"}}[{interval}]
    )
)
/
sum(
    rate(
        veer_responses_total{{{selector}}}[{interval}]
    )
)
* 100"#
                ),
                BuiltinMetric::RequestDuration => format!(
                    r#"histogram_quantile(0.99,
sum(
    rate(
        veer_request_duration_ms_bucket{{{selector}}}[{interval}]
    )
) by (le)
)"#
                ),
            }
        }
        (MetricsSet::Envoy, metric) => {
            let cluster = envoy_canary_cluster_regex(target, namespace);
            let selector = format!("envoy_cluster_name=~{cluster}");
            match metric {
                BuiltinMetric::RequestSuccessRate => format!(
                    r#"sum(
    rate(
        envoy_cluster_upstream_rq_xx{{{selector}, envoy_response_code_class!="5"}}[{interval}]
    )
)
/
sum(
    rate(
        envoy_cluster_upstream_rq_xx{{{selector}}}[{interval}]
    )
)
* 100"#
                ),
                BuiltinMetric::RequestDuration => format!(
                    r#"histogram_quantile(0.99,
sum(
    rate(
        envoy_cluster_upstream_rq_time_bucket{{{selector}}}[{interval}]
    )
) by (le)
)"#
                ),
            }
        }
    }
}

/// Istio's name for the canary Service's cluster, `outbound|<port>||<target>-canary.<ns>.svc.cluster.local`,
/// as an anchored PromQL regex literal matching any port.
fn envoy_canary_cluster_regex(target: &str, namespace: &str) -> String {
    let host = format!("{target}-canary.{namespace}.svc.cluster.local");
    promql_string(&format!(r"outbound\|[0-9]+\|\|{}", regex_escape(&host)))
}

/// The filter's `veer_route` tag value for a route name. Mirrors the contract of
/// `veer_core::stat_route_token` (`.` and characters outside `[A-Za-z0-9_/-]` become `_`)
/// until veer-core exposes it; then this delegates there.
fn stat_route_token(route: &str) -> String {
    route
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Escapes RE2 metacharacters so a name matches only itself.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A PromQL double-quoted string literal.
fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `thresholdRange`: inclusive bounds; a missing bound does not constrain.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ThresholdRange {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl ThresholdRange {
    /// Whether `v` lies within the bounds (inclusive). NaN is never inside.
    pub fn contains(&self, v: f64) -> bool {
        if v.is_nan() {
            return false;
        }
        self.min.is_none_or(|min| v >= min) && self.max.is_none_or(|max| v <= max)
    }
}

impl fmt::Display for ThresholdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max) {
            (Some(min), Some(max)) => write!(f, "{min} <= value <= {max}"),
            (Some(min), None) => write!(f, "value >= {min}"),
            (None, Some(max)) => write!(f, "value <= {max}"),
            (None, None) => f.write_str("any value"),
        }
    }
}

/// How long a metric query may take before it fails the check (the design's 5s).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> QueryVars {
        QueryVars {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo".into(),
            interval: "1m".into(),
            variables: BTreeMap::from([("region".to_string(), "eu-west-1".to_string())]),
        }
    }

    #[test]
    fn renders_all_variables_with_and_without_spaces() {
        let out = render_query(
            "{{name}}|{{ namespace }}|{{  target}}|{{service }}|{{ interval }}|{{ variables.region }}",
            &vars(),
        )
        .unwrap();
        assert_eq!(out, "podinfo|test|podinfo|podinfo|1m|eu-west-1");
    }

    #[test]
    fn unknown_variable_is_an_error_naming_it() {
        let err = render_query("rate(x[{{ intervall }}])", &vars()).unwrap_err();
        assert!(
            matches!(&err, TemplateError::UnknownVariable { name, offset: 7, .. } if name == "intervall")
        );
        assert!(err.to_string().contains("\"intervall\""), "{err}");
        let err = render_query("{{ variables.zone }}", &vars()).unwrap_err();
        assert!(err.to_string().contains("variables.zone"), "{err}");
        assert!(err.to_string().contains("variables.region"), "{err}");
    }

    #[test]
    fn unclosed_braces_are_an_error() {
        let err = render_query("sum(x) {{ name ", &vars()).unwrap_err();
        assert_eq!(err, TemplateError::Unclosed { offset: 7 });
    }

    #[test]
    fn text_without_variables_is_unchanged() {
        let q = "sum(rate(a{b=\"c\"}[1m]))";
        assert_eq!(render_query(q, &vars()).unwrap(), q);
    }

    #[test]
    fn istio_set_is_the_seed_query_times_100() {
        let q = builtin_query(
            MetricsSet::Istio,
            BuiltinMetric::RequestSuccessRate,
            &vars(),
        );
        assert!(
            q.contains(r#"destination_workload_namespace=~"test""#),
            "{q}"
        );
        assert!(q.contains(r#"destination_workload=~"podinfo""#), "{q}");
        assert!(q.contains(r#"response_code!~"5.*""#), "{q}");
        assert!(q.contains("}[1m]"), "{q}");
        assert!(q.trim_end().ends_with("* 100"), "{q}");
        let d = builtin_query(MetricsSet::Istio, BuiltinMetric::RequestDuration, &vars());
        assert!(d.starts_with("histogram_quantile(0.99,"), "{d}");
        assert!(
            d.contains("istio_request_duration_milliseconds_bucket{"),
            "{d}"
        );
        assert!(d.contains(") by (le)"), "{d}");
    }

    #[test]
    fn veer_set_selects_the_canary_variant_of_the_route() {
        let q = builtin_query(MetricsSet::Veer, BuiltinMetric::RequestSuccessRate, &vars());
        assert!(
            q.contains(r#"veer_responses_total{veer_route="test/podinfo", veer_variant="canary", veer_class!="5xx"}[1m]"#),
            "{q}"
        );
        let d = builtin_query(MetricsSet::Veer, BuiltinMetric::RequestDuration, &vars());
        assert!(
            d.contains(r#"veer_request_duration_ms_bucket{veer_route="test/podinfo", veer_variant="canary"}[1m]"#),
            "{d}"
        );
    }

    #[test]
    fn envoy_set_matches_only_the_canary_cluster() {
        let q = builtin_query(
            MetricsSet::Envoy,
            BuiltinMetric::RequestSuccessRate,
            &vars(),
        );
        let selector = r#"envoy_cluster_name=~"outbound\\|[0-9]+\\|\\|podinfo-canary\\.test\\.svc\\.cluster\\.local""#;
        assert!(q.contains(selector), "{q}");
        assert!(q.contains(r#"envoy_response_code_class!="5""#), "{q}");
        let d = builtin_query(MetricsSet::Envoy, BuiltinMetric::RequestDuration, &vars());
        assert!(d.contains("envoy_cluster_upstream_rq_time_bucket{"), "{d}");
        assert!(d.contains(selector), "{d}");
    }

    #[test]
    fn metrics_set_round_trips_and_rejects_unknown() {
        for set in MetricsSet::ALL {
            assert_eq!(set.to_string().parse::<MetricsSet>().unwrap(), set);
        }
        let err = "prometheus".parse::<MetricsSet>().unwrap_err();
        assert!(err.to_string().contains("\"prometheus\""));
        assert_eq!(MetricsSet::default(), MetricsSet::Istio);
    }

    #[test]
    fn builtin_metric_names() {
        assert_eq!(
            BuiltinMetric::from_name("request-success-rate"),
            Some(BuiltinMetric::RequestSuccessRate)
        );
        assert_eq!(
            BuiltinMetric::from_name("request-duration"),
            Some(BuiltinMetric::RequestDuration)
        );
        assert_eq!(BuiltinMetric::from_name("error-rate"), None);
    }

    #[test]
    fn threshold_bounds_are_inclusive_and_nan_is_outside() {
        let r = ThresholdRange {
            min: Some(99.0),
            max: None,
        };
        assert!(r.contains(99.0));
        assert!(r.contains(100.0));
        assert!(!r.contains(98.99));
        assert!(!r.contains(f64::NAN));
        let r = ThresholdRange {
            min: None,
            max: Some(500.0),
        };
        assert!(r.contains(500.0));
        assert!(!r.contains(500.01));
        let both = ThresholdRange {
            min: Some(1.0),
            max: Some(2.0),
        };
        assert!(
            both.contains(1.0) && both.contains(2.0) && !both.contains(0.5) && !both.contains(2.5)
        );
        assert!(ThresholdRange::default().contains(-1e9));
    }
}
