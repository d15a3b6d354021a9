//! Metric checks against Prometheus: the builtin `request-success-rate` and
//! `request-duration` queries in three query sets (istio, veer, envoy), Flagger-style query
//! templates (`{{ namespace }}`, `{{ variables.x }}`, ...), the instant-query client and the
//! inclusive threshold check. An empty result, NaN or several series is an error here, never
//! a silent pass: the analysis must not promote a canary nobody measured. (Flagger fails an
//! empty result and NaN too, but takes the last of several series.)

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
    /// `ingressRef.name`, else the target name.
    pub ingress: String,
    /// `routeRef.name`, else the target name.
    pub route: String,
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
            "ingress" => Some(&self.ingress),
            "route" => Some(&self.route),
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
         target, service, ingress, route, interval and variables.<key> ({known_variables})"
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
/// - `envoy` reads `envoy_cluster_upstream_rq` / `envoy_cluster_upstream_rq_time_bucket` for
///   Istio's canary cluster `outbound|<port>||<target>-canary.<namespace>.svc.cluster.local`
///   (any port), with the labels Istio's bootstrap `stats_tags` produce: `cluster_name` and
///   `response_code_class="5xx"`. Envoy's *default* tag extraction cannot serve here: it
///   cuts the cluster name at its first `.` (`envoy_cluster_name="outbound|9898||podinfo-canary"`)
///   and moves the rest into the metric name. A plain Envoy needs Istio's `stats_config`
///   (`use_all_default_tags: false`, tags `cluster_name` =
///   `^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)`, `response_code` = `_rq(_(\d{3}))$`,
///   `response_code_class` = `_rq(_(\dxx))$`). In Istio the sidecar/gateway must also expose
///   `cluster.outbound` stats (`proxyStatsMatcher` / `statsInclusionPrefixes`).
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
            let route = promql_string(&veer_core::stat_route_token(&format!("{namespace}/{name}")));
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
            let selector = format!("cluster_name=~{cluster}");
            match metric {
                // Each response is counted twice in `envoy_cluster_upstream_rq`, once with
                // `response_code` and once with `response_code_class`; only the latter
                // series are summed.
                BuiltinMetric::RequestSuccessRate => format!(
                    r#"sum(
    rate(
        envoy_cluster_upstream_rq{{{selector}, response_code_class=~"[1-4]xx"}}[{interval}]
    )
)
/
sum(
    rate(
        envoy_cluster_upstream_rq{{{selector}, response_code_class=~"[1-5]xx"}}[{interval}]
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

/// The most of a Prometheus answer we read; an instant query for one value is tiny, so
/// anything near this is a misconfigured address, not a metric.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a metric query produced no usable value. Every variant fails the check.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("invalid Prometheus address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("no values found: is traffic reaching the canary? (query: {query})")]
    NoValues { query: String },
    #[error("the query returned NaN: no requests in the interval, or 0/0 (query: {query})")]
    NaN { query: String },
    #[error(
        "the query returned {count} series, expected exactly one: aggregate it (e.g. sum(...)). \
         Flagger would take the last series and ignore the others; veer fails the check rather \
         than judge the canary on an arbitrary one (query: {query})"
    )]
    SeveralSeries { count: usize, query: String },
    #[error(
        "the query returned a {result_type} result, expected a vector or scalar (query: {query})"
    )]
    UnsupportedResultType { result_type: String, query: String },
    #[error("Prometheus answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("Prometheus rejected the query ({error_type}): {error}")]
    PrometheusError { error_type: String, error: String },
    #[error("Prometheus's answer is not a query result: {reason} (body starts: {body:?})")]
    Parse { reason: String, body: String },
    #[error("Prometheus did not answer within {}", humantime::format_duration(*.after))]
    Timeout { after: Duration },
    #[error("cannot reach Prometheus at {url}: {reason}")]
    Transport { url: String, reason: String },
}

/// Runs instant queries against one Prometheus (`/api/v1/query`).
#[derive(Debug, Clone)]
pub struct PrometheusClient {
    http: reqwest::Client,
    query_url: reqwest::Url,
    timeout: Duration,
}

impl PrometheusClient {
    /// A client for the Prometheus at `address` (e.g. `http://prometheus.istio-system:9090`,
    /// a path prefix is kept), with the default 5s query timeout.
    pub fn new(address: &str) -> Result<PrometheusClient, MetricError> {
        let invalid = |reason: String| MetricError::InvalidAddress {
            address: address.to_string(),
            reason,
        };
        let mut base = reqwest::Url::parse(address).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "scheme {:?} is not http or https",
                base.scheme()
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let query_url = base
            .join("api/v1/query")
            .map_err(|e| invalid(e.to_string()))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(PrometheusClient {
            http,
            query_url,
            timeout: DEFAULT_QUERY_TIMEOUT,
        })
    }

    /// The same client with another per-query timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> PrometheusClient {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `/api/v1/query` URL queries go to.
    pub fn query_url(&self) -> &str {
        self.query_url.as_str()
    }

    /// Runs `promql` as an instant query and returns its single value. An empty result, NaN,
    /// several series, a matrix/string result, an error answer, a timeout or a transport
    /// failure is an error.
    pub async fn query_value(&self, promql: &str) -> Result<f64, MetricError> {
        let request = self
            .http
            // POST (form-encoded), which Prometheus accepts like GET: long rendered
            // templates cannot hit URL length limits of proxies in front of it.
            .post(self.query_url.clone())
            .form(&[("query", promql)])
            .timeout(self.timeout)
            .send();
        let (status, body) = tokio::time::timeout(self.timeout, async {
            let response = request.await.map_err(|e| self.request_error(&e))?;
            let status = response.status();
            let body = crate::checks::webhooks::read_body_capped(response, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| self.request_error(&e))?;
            Ok::<_, MetricError>((status, body))
        })
        .await
        .map_err(|_| MetricError::Timeout {
            after: self.timeout,
        })??;
        parse_query_response(status.as_u16(), &body.bytes, promql)
    }

    fn request_error(&self, e: &reqwest::Error) -> MetricError {
        if e.is_timeout() {
            MetricError::Timeout {
                after: self.timeout,
            }
        } else {
            MetricError::Transport {
                url: self.query_url.to_string(),
                reason: crate::checks::webhooks::error_chain(e),
            }
        }
    }
}

/// Interprets an `/api/v1/query` answer. Separate from the transport so every shape of
/// answer is testable without a server.
fn parse_query_response(status: u16, body: &[u8], promql: &str) -> Result<f64, MetricError> {
    // Only error messages carry the query; a successful answer must not pay for it.
    let query = || one_line(promql);
    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(body);
    let json = match parsed {
        Ok(json) => json,
        Err(e) => {
            let body = excerpt(body);
            return Err(if (200..300).contains(&status) {
                MetricError::Parse {
                    reason: format!("not JSON ({e})"),
                    body,
                }
            } else {
                MetricError::Http { status, body }
            });
        }
    };
    let field = |name: &str| json.get(name).and_then(serde_json::Value::as_str);
    if field("status") == Some("error") {
        return Err(MetricError::PrometheusError {
            error_type: field("errorType").unwrap_or("unknown").to_string(),
            error: field("error").unwrap_or("(no message)").to_string(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(MetricError::Http {
            status,
            body: excerpt(body),
        });
    }
    let parse_error = |reason: &str| MetricError::Parse {
        reason: reason.to_string(),
        body: excerpt(body),
    };
    if field("status") != Some("success") {
        return Err(parse_error("no \"status\": \"success\""));
    }
    let data = json
        .get("data")
        .ok_or_else(|| parse_error("no \"data\" field"))?;
    let result_type = data
        .get("resultType")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| parse_error("no \"data.resultType\" field"))?;
    let result = data
        .get("result")
        .ok_or_else(|| parse_error("no \"data.result\" field"))?;
    let sample = match result_type {
        "scalar" => result,
        "vector" => {
            let series = result
                .as_array()
                .ok_or_else(|| parse_error("\"data.result\" of a vector is not an array"))?;
            match series.as_slice() {
                [] => return Err(MetricError::NoValues { query: query() }),
                [one] => one
                    .get("value")
                    .ok_or_else(|| parse_error("a vector sample has no \"value\""))?,
                several => {
                    return Err(MetricError::SeveralSeries {
                        count: several.len(),
                        query: query(),
                    })
                }
            }
        }
        other => {
            return Err(MetricError::UnsupportedResultType {
                result_type: other.to_string(),
                query: query(),
            })
        }
    };
    let text = sample
        .get(1)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| parse_error("a sample is not [<time>, \"<value>\"]"))?;
    let value = match text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        text => text
            .parse::<f64>()
            .map_err(|_| parse_error(&format!("sample value {text:?} is not a number")))?,
    };
    if value.is_nan() {
        return Err(MetricError::NaN { query: query() });
    }
    Ok(value)
}

/// A query on one line with runs of whitespace collapsed, for error messages and logs.
pub fn one_line(promql: &str) -> String {
    promql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The start of a body, as text, for error messages.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text = one_line(&text);
    if body.len() > MAX {
        format!("{text}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> QueryVars {
        QueryVars {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo".into(),
            ingress: "podinfo-ingress".into(),
            route: "podinfo-route".into(),
            interval: "1m".into(),
            variables: BTreeMap::from([("region".to_string(), "eu-west-1".to_string())]),
        }
    }

    #[test]
    fn renders_all_variables_with_and_without_spaces() {
        let out = render_query(
            "{{name}}|{{ namespace }}|{{  target}}|{{service }}|{{ ingress }}|{{route}}|{{ interval }}|{{ variables.region }}",
            &vars(),
        )
        .unwrap();
        assert_eq!(
            out,
            "podinfo|test|podinfo|podinfo|podinfo-ingress|podinfo-route|1m|eu-west-1"
        );
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
    fn veer_set_uses_the_filter_stat_token_for_dotted_names() {
        let dotted = QueryVars {
            name: "pod.info".into(),
            ..vars()
        };
        let q = builtin_query(MetricsSet::Veer, BuiltinMetric::RequestSuccessRate, &dotted);
        assert!(q.contains(r#"veer_route="test/pod_info""#), "{q}");
    }

    #[test]
    fn envoy_set_matches_only_the_canary_cluster() {
        let q = builtin_query(
            MetricsSet::Envoy,
            BuiltinMetric::RequestSuccessRate,
            &vars(),
        );
        let selector = r#"cluster_name=~"outbound\\|[0-9]+\\|\\|podinfo-canary\\.test\\.svc\\.cluster\\.local""#;
        assert!(q.contains(selector), "{q}");
        assert!(q.contains(r#"response_code_class=~"[1-4]xx""#), "{q}");
        assert!(q.contains(r#"response_code_class=~"[1-5]xx""#), "{q}");
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

    fn parse(status: u16, body: &str) -> Result<f64, MetricError> {
        parse_query_response(status, body.as_bytes(), "sum(up)")
    }

    #[test]
    fn parses_vector_and_scalar_answers() {
        let v = parse(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"99.5"]}]}}"#,
        );
        assert_eq!(v.unwrap(), 99.5);
        let s = parse(
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"3"]}}"#,
        );
        assert_eq!(s.unwrap(), 3.0);
        let inf = parse(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}}"#,
        );
        assert_eq!(inf.unwrap(), f64::INFINITY);
    }

    #[test]
    fn rejects_every_unusable_answer_clearly() {
        let empty = parse(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        );
        let msg = empty.unwrap_err().to_string();
        assert!(
            msg.starts_with("no values found: is traffic reaching the canary?"),
            "{msg}"
        );
        assert!(msg.contains("sum(up)"), "{msg}");
        let nan = parse(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#,
        );
        assert!(matches!(nan, Err(MetricError::NaN { .. })));
        let two = parse(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}"#,
        );
        assert!(matches!(
            two,
            Err(MetricError::SeveralSeries { count: 2, .. })
        ));
        let matrix = parse(
            200,
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
        );
        assert!(
            matches!(&matrix, Err(MetricError::UnsupportedResultType { result_type, .. }) if result_type == "matrix")
        );
        let string = parse(
            200,
            r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#,
        );
        assert!(matches!(
            string,
            Err(MetricError::UnsupportedResultType { .. })
        ));
        let error = parse(
            400,
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#,
        );
        let msg = error.unwrap_err().to_string();
        assert!(
            msg.contains("bad_data") && msg.contains("parse error at char 4"),
            "{msg}"
        );
        let html = parse(200, "<html><body>Grafana</body></html>");
        assert!(matches!(&html, Err(MetricError::Parse { body, .. }) if body.contains("<html>")));
        let gateway = parse(502, "<html>Bad Gateway</html>");
        assert!(matches!(
            gateway,
            Err(MetricError::Http { status: 502, .. })
        ));
        let not_a_number = parse(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#,
        );
        assert!(matches!(not_a_number, Err(MetricError::Parse { .. })));
    }

    #[test]
    fn client_builds_the_query_url_from_the_address() {
        let c = PrometheusClient::new("http://prom:9090").unwrap();
        assert_eq!(c.query_url(), "http://prom:9090/api/v1/query");
        let c = PrometheusClient::new("http://prom:9090/prefix").unwrap();
        assert_eq!(c.query_url(), "http://prom:9090/prefix/api/v1/query");
        assert_eq!(c.timeout(), DEFAULT_QUERY_TIMEOUT);
        assert!(matches!(
            PrometheusClient::new("prom:9090"),
            Err(MetricError::InvalidAddress { .. })
        ));
        assert!(PrometheusClient::new("not a url").is_err());
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
