//! Canary specs as users already write them: `flagger.app/v1beta1` `Canary` and
//! `MetricTemplate`, plus `veer.dev/v1alpha1` `Canary` (the same schema with `spec.veer`
//! extensions). This module owns loading a directory of YAML files into checked specs, the
//! per-field verdict on what veer does not implement (a warning naming the field, never a
//! silent drop), the semantic checks, and the mapping of a spec onto a routing-table route.
//!
//! One bad document never hides the others: [`SpecSet`] holds every good canary next to the
//! problems of the bad ones, each naming the file, the document, the field path and the
//! reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use veer_core::{MatchRule, Override, Route, SameSite, SessionAffinity, StickyKey, StringMatch};

use crate::checks::prometheus::{BuiltinMetric, MetricsSet, QueryVars, ThresholdRange};
use crate::checks::webhooks::{Hook, HookType};

/// `apiVersion` of Flagger's resources.
pub const FLAGGER_API_VERSION: &str = "flagger.app/v1beta1";
/// `apiVersion` of veer's own Canary (Flagger's schema plus `spec.veer`).
pub const VEER_API_VERSION: &str = "veer.dev/v1alpha1";

/// Default `analysis.interval` (Flagger's).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest `analysis.interval` veer runs. Flagger's floor is 10s because each pass pushes
/// xDS; veer's weight change is a table poll, so tests and fast pipelines may go lower.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default `progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Default metric `interval` (also for template metrics, unlike Flagger).
pub const DEFAULT_METRIC_INTERVAL: &str = "1m";
/// Default `sessionAffinity.maxAge` (Flagger's).
pub const DEFAULT_COOKIE_MAX_AGE: i64 = 86_400;

// ---------------------------------------------------------------------------------------
// Durations

/// A Go duration as Flagger's specs write it (`1m`, `30s`, `1m30s`, `1.5h`, `500ms`), kept
/// with its text because query templates use the text (`{{ interval }}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoDuration {
    pub text: String,
    pub duration: Duration,
}

impl GoDuration {
    pub fn parse(text: &str) -> Result<GoDuration, String> {
        parse_go_duration(text).map(|duration| GoDuration {
            text: text.to_string(),
            duration,
        })
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct GoDurationVisitor;
        impl de::Visitor<'_> for GoDurationVisitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration like \"1m\", \"30s\" or \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<GoDuration, E> {
                GoDuration::parse(text).map_err(E::custom)
            }
            // A bare number is the commonest mistake (`interval: 90`): say which unit is
            // missing instead of "expected a string".
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<GoDuration, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<GoDuration, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<GoDuration, E> {
                self.visit_str(&n.to_string())
            }
        }
        d.deserialize_any(GoDurationVisitor)
    }
}

/// Parses Go's `time.ParseDuration` syntax: a sequence of decimal numbers, each with an
/// optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), or a bare `0`.
/// Negative durations are rejected: no spec field means anything by one.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("invalid duration {text:?}: {why} (Go syntax, e.g. \"1m\", \"30s\", \"1m30s\")")
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('-') {
        return Err(bad("negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad("malformed number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad("out of range"))
}

// ---------------------------------------------------------------------------------------
// The spec as read

/// Where a document came from, for every message about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecSource {
    pub file: PathBuf,
    /// 1-based index of the YAML document within the file.
    pub doc: usize,
}

impl fmt::Display for SpecSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (doc {})", self.file.display(), self.doc)
    }
}

/// A loaded, checked Canary. Defaults are applied by the accessor methods, so the fields
/// keep what the user wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySpec {
    pub source: SpecSource,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    pub target_ref: TargetRef,
    pub service: ServiceSpec,
    pub analysis: AnalysisSpec,
    pub progress_deadline_seconds: Option<u64>,
    pub skip_analysis: bool,
    pub suspend: bool,
    /// Kubernetes mode: on deletion, give the target its traffic back (Flagger's finalizer).
    pub revert_on_deletion: bool,
    /// `veer.dev/v1alpha1` extensions; empty for Flagger's apiVersion.
    pub veer: VeerSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
}

/// `spec.service`. The Istio policy fields are kept as raw values for `veer render`, which
/// copies them into the VirtualService and DestinationRules it writes.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub port_name: Option<String>,
    /// A number or a port name.
    #[serde(default)]
    pub target_port: Option<serde_json::Value>,
    #[serde(default)]
    pub app_protocol: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub traffic_policy: Option<serde_json::Value>,
    #[serde(default)]
    pub retries: Option<serde_json::Value>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub cors_policy: Option<serde_json::Value>,
    #[serde(default)]
    pub headers: Option<serde_json::Value>,
    #[serde(default)]
    pub rewrite: Option<serde_json::Value>,
    /// Labels/annotations for the apex, primary and canary Services.
    #[serde(default)]
    pub apex: Option<serde_json::Value>,
    #[serde(default)]
    pub primary: Option<serde_json::Value>,
    #[serde(default)]
    pub canary: Option<serde_json::Value>,
}

/// `spec.analysis`, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnalysisSpec {
    pub interval: Option<GoDuration>,
    pub iterations: u32,
    pub threshold: u32,
    pub max_weight: Option<u32>,
    pub step_weight: u32,
    pub step_weights: Vec<u32>,
    pub step_weight_promotion: u32,
    pub mirror: bool,
    pub mirror_weight: u32,
    /// A/B rules, already in the table's shape.
    pub r#match: Vec<MatchRule>,
    pub metrics: Vec<MetricSpec>,
    pub webhooks: Vec<WebhookSpec>,
    pub session_affinity: Option<SessionAffinity>,
}

/// One metric check, resolved: where its query comes from and what range passes.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    pub name: String,
    /// The query range (`{{ interval }}`), default `1m`.
    pub interval: GoDuration,
    pub threshold_range: ThresholdRange,
    pub source: MetricSource,
    pub template_variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricSource {
    /// `request-success-rate` or `request-duration`: the query comes from the metrics set.
    Builtin(BuiltinMetric),
    /// An inline `query`, a template rendered with the canary's variables.
    Query(String),
    /// A `templateRef` to a Prometheus MetricTemplate.
    Template {
        name: String,
        namespace: String,
        query: String,
        /// The template's Prometheus; `None` means the controller's `--prometheus`.
        address: Option<String>,
    },
}

/// One webhook, resolved: its type and the call the webhook caller makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    pub hook_type: HookType,
    pub hook: Hook,
}

/// `spec.veer` (only with `apiVersion: veer.dev/v1alpha1`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VeerSpec {
    /// QA access rules, copied into the route's `overrides`.
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// Kubernetes Secret holding the cookie signing keys; `veer render` wires it into the
    /// WasmPlugin's environment.
    #[serde(default)]
    pub cookie_signing: Option<CookieSigningRef>,
    /// Which query set the builtin metrics use for this canary (overrides `--metrics-set`).
    #[serde(default, deserialize_with = "metrics_set_opt")]
    pub metrics_set: Option<MetricsSet>,
    /// Bucket users by a request header instead of the cookie.
    #[serde(default)]
    pub sticky_key: Option<StickyKey>,
    /// The route's path prefix (default `/`).
    #[serde(default)]
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CookieSigningRef {
    pub secret_name: String,
    /// Key inside the Secret; comma-separated base64 keys. Default `keys`.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

fn default_secret_key() -> String {
    "keys".to_string()
}

fn metrics_set_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MetricsSet>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    name.map(|n| n.parse::<MetricsSet>().map_err(de::Error::custom))
        .transpose()
}

/// A `MetricTemplate`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricTemplate {
    pub source: SpecSource,
    pub name: String,
    pub namespace: String,
    pub provider_type: String,
    pub address: Option<String>,
    pub query: String,
}

/// How the canary moves traffic, derived from the analysis fields as Flagger does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Rising weight (`stepWeight`/`stepWeights`), with or without `match`.
    Canary(WeightSteps),
    /// `match` + `iterations`: matching requests all go to the canary.
    ABTesting { iterations: u32 },
    /// `iterations` without `match`: test, optionally mirror, then switch.
    BlueGreen { iterations: u32 },
}

/// The weight ladder of a Canary strategy, in percent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSteps {
    /// `min(100, weight + step)` until `weight >= max`.
    Step { step: u32, max: u32 },
    /// The next entry above the current weight; the last entry is the max.
    List(Vec<u32>),
}

impl WeightSteps {
    /// The weight after `weight`.
    pub fn next(&self, weight: u32) -> u32 {
        match self {
            WeightSteps::Step { step, .. } => (weight + step).min(100),
            WeightSteps::List(list) => list
                .iter()
                .copied()
                .find(|w| *w > weight)
                .unwrap_or_else(|| list.last().copied().unwrap_or(100)),
        }
    }

    /// The weight at which the last analysis runs before promotion.
    pub fn max(&self) -> u32 {
        match self {
            WeightSteps::Step { max, .. } => *max,
            WeightSteps::List(list) => list.last().copied().unwrap_or(100),
        }
    }
}

impl CanarySpec {
    /// `namespace/name`: the route name and the key of everything about this canary.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Time between passes: `analysis.interval`, default 60s, never below 1s.
    pub fn interval(&self) -> Duration {
        self.analysis
            .interval
            .as_ref()
            .map_or(DEFAULT_INTERVAL, |i| i.duration.max(MIN_INTERVAL))
    }

    /// Failed checks that trigger a rollback: `analysis.threshold`, default 1 as Flagger.
    pub fn threshold(&self) -> u32 {
        self.analysis.threshold.max(1)
    }

    pub fn progress_deadline(&self) -> Duration {
        self.progress_deadline_seconds
            .map_or(DEFAULT_PROGRESS_DEADLINE, Duration::from_secs)
    }

    /// Percent of primary-bound traffic mirrored while mirroring: `mirrorWeight`, or 100.
    pub fn mirror_weight(&self) -> u32 {
        match self.analysis.mirror_weight {
            0 => 100,
            w => w,
        }
    }

    pub fn strategy(&self) -> Strategy {
        let a = &self.analysis;
        if a.iterations > 0 {
            if a.r#match.is_empty() {
                Strategy::BlueGreen {
                    iterations: a.iterations,
                }
            } else {
                Strategy::ABTesting {
                    iterations: a.iterations,
                }
            }
        } else if a.step_weight > 0 {
            Strategy::Canary(WeightSteps::Step {
                step: a.step_weight,
                max: a.max_weight.filter(|m| *m > 0).unwrap_or(100),
            })
        } else {
            Strategy::Canary(WeightSteps::List(a.step_weights.clone()))
        }
    }

    /// The hooks of one type, in spec order.
    pub fn hooks(&self, hook_type: HookType) -> Vec<Hook> {
        self.analysis
            .webhooks
            .iter()
            .filter(|w| w.hook_type == hook_type)
            .map(|w| w.hook.clone())
            .collect()
    }

    /// The builtin metrics' query set: `spec.veer.metricsSet`, else the controller's.
    pub fn metrics_set(&self, controller_default: MetricsSet) -> MetricsSet {
        self.veer.metrics_set.unwrap_or(controller_default)
    }

    /// The apex Service name: `service.name`, else the target's name.
    pub fn service_name(&self) -> &str {
        self.service
            .name
            .as_deref()
            .unwrap_or(&self.target_ref.name)
    }

    /// Template variables for one metric of this canary.
    pub fn query_vars(&self, metric: &MetricSpec) -> QueryVars {
        QueryVars {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            target: self.target_ref.name.clone(),
            service: self.service_name().to_string(),
            interval: metric.interval.text.clone(),
            variables: metric.template_variables.clone(),
        }
    }
}

/// The table route for `spec` at the given analysis state: weights in basis points
/// (0..=10000) and the run's revision, which salts the sticky bucket.
pub fn route_for(
    spec: &CanarySpec,
    weight_bp: u32,
    mirror_weight_bp: u32,
    revision: &str,
) -> Route {
    let hosts = if spec.service.hosts.is_empty() {
        vec![spec.service_name().to_string()]
    } else {
        spec.service.hosts.clone()
    };
    Route {
        name: spec.key(),
        hosts,
        path_prefix: spec
            .veer
            .path_prefix
            .clone()
            .unwrap_or_else(|| "/".to_string()),
        weight: weight_bp,
        mirror_weight: mirror_weight_bp,
        revision: revision.to_string(),
        overrides: spec.veer.overrides.clone(),
        r#match: spec.analysis.r#match.clone(),
        session_affinity: spec.analysis.session_affinity.clone(),
        sticky_key: spec.veer.sticky_key.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Problems and the loaded set

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// Something wrong or ignored in a spec. Errors drop the document; warnings keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based document index; `None` for problems with the file as a whole.
    pub doc: Option<usize>,
    /// Field path, e.g. `spec.analysis.stepWeight`.
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.doc {
            write!(f, " (doc {doc})")?;
        }
        f.write_str(": ")?;
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Everything loaded from a directory or file: the good canaries and templates, and every
/// problem found (errors of dropped documents and warnings of kept ones).
#[derive(Debug, Clone, Default)]
pub struct SpecSet {
    pub canaries: Vec<CanarySpec>,
    pub templates: Vec<MetricTemplate>,
    pub problems: Vec<SpecProblem>,
}

impl SpecSet {
    pub fn errors(&self) -> impl Iterator<Item = &SpecProblem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &SpecProblem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
    }

    /// The problems of one file and document (e.g. the warnings of one canary).
    pub fn problems_of(&self, source: &SpecSource) -> impl Iterator<Item = &SpecProblem> {
        let source = source.clone();
        self.problems
            .iter()
            .filter(move |p| p.file == source.file && p.doc == Some(source.doc))
    }
}

/// The directory itself could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read canary directory {}: {source}", dir.display())]
pub struct SpecDirError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// Loads every `*.yaml`/`*.yml` file in `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> Result<SpecSet, SpecDirError> {
    let err = |source| SpecDirError {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut inputs = Vec::new();
    let mut set = SpecSet::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => inputs.push((file, text)),
            Err(e) => set.problems.push(SpecProblem {
                severity: Severity::Error,
                file,
                doc: None,
                path: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut loaded = load_texts(&inputs);
    set.problems.append(&mut loaded.problems);
    loaded.problems = set.problems;
    Ok(loaded)
}

/// Loads one file (`veer explain FILE`, `veer render FILE`). An unreadable file is one
/// error problem in the set.
pub fn load_file(file: &Path) -> SpecSet {
    match std::fs::read_to_string(file) {
        Ok(text) => load_texts(&[(file.to_path_buf(), text)]),
        Err(e) => SpecSet {
            problems: vec![SpecProblem {
                severity: Severity::Error,
                file: file.to_path_buf(),
                doc: None,
                path: None,
                message: format!("cannot read: {e}"),
            }],
            ..SpecSet::default()
        },
    }
}

/// Loads YAML texts, each named by the file it came from. Templates are resolved across all
/// of them, so a canary may refer to a template in another file.
pub fn load_texts(inputs: &[(PathBuf, String)]) -> SpecSet {
    let mut set = SpecSet::default();
    let mut raw_canaries = Vec::new();
    for (file, text) in inputs {
        for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let source = SpecSource {
                file: file.clone(),
                doc: index + 1,
            };
            let value = match serde_norway::Value::deserialize(document) {
                Ok(v) => v,
                Err(e) => {
                    set.problems
                        .push(problem(Severity::Error, &source, None, format!("{e}")));
                    // The YAML stream cannot be resynchronised after a syntax error.
                    break;
                }
            };
            read_document(value, source, &mut set, &mut raw_canaries);
        }
    }
    for (source, raw) in raw_canaries {
        let mut problems = Vec::new();
        if let Some(canary) = check_canary(raw, &source, &set.templates, &mut problems) {
            let duplicate = set
                .canaries
                .iter()
                .find(|c| c.name == canary.name && c.namespace == canary.namespace);
            if let Some(first) = duplicate {
                problems.push(problem(
                    Severity::Error,
                    &source,
                    Some("metadata.name".into()),
                    format!(
                        "canary {} is already defined in {}; this one is ignored",
                        canary.key(),
                        first.source
                    ),
                ));
            } else if !problems.iter().any(|p| p.severity == Severity::Error) {
                set.canaries.push(canary);
            }
        }
        set.problems.append(&mut problems);
    }
    set
}

fn problem(
    severity: Severity,
    source: &SpecSource,
    path: Option<String>,
    message: String,
) -> SpecProblem {
    SpecProblem {
        severity,
        file: source.file.clone(),
        doc: Some(source.doc),
        path,
        message,
    }
}

fn read_document(
    value: serde_norway::Value,
    source: SpecSource,
    set: &mut SpecSet,
    raw_canaries: &mut Vec<(SpecSource, RawCanary)>,
) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    match (api_version.as_str(), kind.as_str()) {
        (FLAGGER_API_VERSION | VEER_API_VERSION, "Canary") => {
            let mut warnings = Vec::new();
            match deserialize_tracked::<RawCanary>(value, &mut warnings) {
                Ok(raw) => {
                    for path in warnings {
                        if let Some(w) = classify_ignored(&path) {
                            set.problems
                                .push(problem(Severity::Warning, &source, Some(path), w));
                        }
                    }
                    raw_canaries.push((source, raw));
                }
                Err((path, message)) => {
                    set.problems
                        .push(problem(Severity::Error, &source, path, message));
                }
            }
        }
        (FLAGGER_API_VERSION, "MetricTemplate") => {
            let mut warnings = Vec::new();
            match deserialize_tracked::<RawMetricTemplate>(value, &mut warnings) {
                Ok(raw) => {
                    for path in warnings {
                        if let Some(w) = classify_ignored(&path) {
                            set.problems
                                .push(problem(Severity::Warning, &source, Some(path), w));
                        }
                    }
                    if let Some(w) = template_warnings(&raw) {
                        set.problems.push(problem(
                            Severity::Warning,
                            &source,
                            Some(w.0.into()),
                            w.1,
                        ));
                    }
                    set.templates.push(MetricTemplate {
                        source,
                        namespace: raw
                            .metadata
                            .namespace
                            .unwrap_or_else(|| "default".to_string()),
                        name: raw.metadata.name,
                        provider_type: raw.spec.provider.r#type,
                        address: raw.spec.provider.address,
                        query: raw.spec.query,
                    });
                }
                Err((path, message)) => {
                    set.problems
                        .push(problem(Severity::Error, &source, path, message));
                }
            }
        }
        _ => {
            tracing::debug!(
                file = %source.file.display(),
                doc = source.doc,
                %api_version,
                %kind,
                "skipping a document that is not a Canary or MetricTemplate"
            );
        }
    }
}

fn template_warnings(raw: &RawMetricTemplate) -> Option<(&'static str, String)> {
    let p = &raw.spec.provider;
    if p.secret_ref.is_some() || p.headers.is_some() {
        return Some((
            "spec.provider",
            "secretRef/headers: accepted but not used by veer (queries are sent without \
             credentials; put an authenticating proxy in front of Prometheus)"
                .to_string(),
        ));
    }
    None
}

/// Deserializes with the exact field path on error, collecting every ignored field path.
fn deserialize_tracked<T: for<'de> Deserialize<'de>>(
    value: serde_norway::Value,
    ignored: &mut Vec<String>,
) -> Result<T, (Option<String>, String)> {
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let tracked = serde_path_to_error::Deserializer::new(value, &mut track);
        let mut on_ignored = |path: serde_ignored::Path| ignored.push(format_ignored(&path));
        T::deserialize(serde_ignored::Deserializer::new(tracked, &mut on_ignored))
    };
    result.map_err(|e| {
        let path = track.path().to_string();
        let path = (path != ".").then_some(path);
        (path, e.to_string())
    })
}

/// `spec.analysis.metrics[0].foo`, in the same style as serde_path_to_error's paths.
fn format_ignored(path: &serde_ignored::Path) -> String {
    match path {
        serde_ignored::Path::Root => String::new(),
        serde_ignored::Path::Seq { parent, index } => {
            format!("{}[{index}]", format_ignored(parent))
        }
        serde_ignored::Path::Map { parent, key } => {
            let p = format_ignored(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => format_ignored(parent),
    }
}

/// Fields Flagger has and veer accepts but does not act on, with the reason. Paths use `[]`
/// for any list index.
const NOT_USED: &[(&str, &str)] = &[
    ("spec.autoscalerRef", "veer does not create the -primary workload, so there is no HPA to copy for it; scale both Deployments yourself"),
    ("spec.provider", "the traffic split is done by veer's filter in the gateway; only `istio` makes sense here"),
    ("spec.metricsServer", "the controller's --prometheus flag sets the Prometheus address; a MetricTemplate's provider.address sets one per metric"),
    ("spec.ingressRef", "an ingress-controller provider field; veer routes in the Istio/Envoy gateway"),
    ("spec.routeRef", "an APISIX provider field; veer routes in the Istio/Envoy gateway"),
    ("spec.upstreamRef", "a Gloo provider field; veer routes in the Istio/Envoy gateway"),
    ("spec.canaryAnalysis", "the pre-v1beta1 name of spec.analysis; rename it to spec.analysis"),
    ("spec.service.portDiscovery", "veer render writes the one port in service.port"),
    ("spec.service.headless", "veer routes through ClusterIP Services"),
    ("spec.service.meshName", "an App Mesh field"),
    ("spec.service.backends", "an App Mesh field"),
    ("spec.service.delegation", "veer render writes a standalone VirtualService"),
    ("spec.service.match", "the route covers the whole host (spec.veer.pathPrefix narrows it)"),
    ("spec.service.mirror", "a Gateway API field; use analysis.mirror"),
    ("spec.service.gatewayRefs", "a Gateway API field; veer runs in the Istio/Envoy gateway"),
    ("spec.service.unmanagedMetadata", "veer does not take over existing Services"),
    ("spec.service.trafficDistribution", "veer render does not set Service.trafficDistribution"),
    ("spec.analysis.primaryReadyThreshold", "veer does not watch pod readiness"),
    ("spec.analysis.canaryReadyThreshold", "veer does not watch pod readiness"),
    ("spec.analysis.alerts", "veer has no alert providers; an `event` webhook receives every event"),
    ("spec.analysis.match[].sourceLabels", "applies to in-mesh sidecar traffic; veer decides in the ingress gateway"),
    ("spec.analysis.webhooks[].muteAlert", "veer has no alert providers"),
    ("spec.analysis.webhooks[].retries", "veer calls each hook once per pass; a failed hook is retried at the next interval"),
    ("spec.analysis.webhooks[].disableTLS", "veer always verifies TLS"),
    ("spec.analysis.sessionAffinity.primaryCookieName", "not needed: the sticky bucket already keeps primary users on primary within a run"),
];

/// Turns an ignored field path into a warning, or `None` where Kubernetes metadata and
/// status are rightly ignored.
fn classify_ignored(path: &str) -> Option<String> {
    if path == "apiVersion" || path == "kind" || path == "status" || path.starts_with("metadata.") {
        return None;
    }
    let generic = generic_path(path);
    if let Some((_, why)) = NOT_USED.iter().find(|(p, _)| *p == generic) {
        return Some(format!("accepted but not used by veer ({why})"));
    }
    Some("unknown field, ignored (Flagger would ignore it silently; is it a typo?)".to_string())
}

/// `spec.analysis.metrics[3].foo` → `spec.analysis.metrics[].foo`.
fn generic_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Raw serde shapes (only what veer reads; everything else is reported by path)

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCanary {
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: RawMeta,
    spec: RawCanaryBody,
}

#[derive(Deserialize)]
struct RawMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCanaryBody {
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    progress_deadline_seconds: Option<i64>,
    target_ref: TargetRef,
    #[serde(default)]
    service: ServiceSpec,
    #[serde(default)]
    skip_analysis: bool,
    #[serde(default)]
    suspend: bool,
    #[serde(default)]
    revert_on_deletion: bool,
    #[serde(default)]
    analysis: Option<RawAnalysis>,
    #[serde(default)]
    veer: Option<VeerSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawAnalysis {
    #[serde(default)]
    interval: Option<GoDuration>,
    #[serde(default)]
    iterations: u32,
    #[serde(default)]
    threshold: u32,
    #[serde(default)]
    max_weight: Option<u32>,
    #[serde(default)]
    step_weight: u32,
    #[serde(default)]
    step_weights: Vec<u32>,
    #[serde(default)]
    step_weight_promotion: u32,
    #[serde(default)]
    mirror: bool,
    #[serde(default)]
    mirror_weight: u32,
    #[serde(default)]
    r#match: Vec<RawHttpMatch>,
    #[serde(default)]
    metrics: Vec<RawMetric>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
    #[serde(default)]
    session_affinity: Option<RawSessionAffinity>,
}

/// The part of Istio's `HTTPMatchRequest` veer decides on.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpMatch {
    #[serde(default)]
    headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    uri: Option<StringMatch>,
    #[serde(default)]
    method: Option<StringMatch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetric {
    name: String,
    #[serde(default)]
    interval: Option<GoDuration>,
    #[serde(default)]
    threshold_range: Option<RawThresholdRange>,
    /// Flagger's deprecated single bound; rejected with advice.
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    template_ref: Option<RawTemplateRef>,
    #[serde(default)]
    template_variables: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawThresholdRange {
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

#[derive(Deserialize)]
struct RawTemplateRef {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawWebhook {
    name: String,
    #[serde(default)]
    r#type: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    timeout: Option<GoDuration>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSessionAffinity {
    cookie_name: String,
    #[serde(default)]
    max_age: Option<i64>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    secure: Option<bool>,
    #[serde(default)]
    http_only: Option<bool>,
    #[serde(default)]
    same_site: Option<SameSite>,
    #[serde(default)]
    partitioned: Option<bool>,
}

#[derive(Deserialize)]
struct RawMetricTemplate {
    metadata: RawMeta,
    spec: RawTemplateSpec,
}

#[derive(Deserialize)]
struct RawTemplateSpec {
    provider: RawProvider,
    query: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProvider {
    r#type: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    secret_ref: Option<serde_json::Value>,
    #[serde(default)]
    headers: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------
// Semantic checks

/// Checks meaning beyond shape and builds the spec. Returns `None` when an error was
/// pushed; every error names its field path.
fn check_canary(
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
        revert_on_deletion: body.revert_on_deletion,
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
