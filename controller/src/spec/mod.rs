//! Canary specs as users already write them: `flagger.app/v1beta1` `Canary` and
//! `MetricTemplate`, plus `veer.dev/v1alpha1` `Canary` (the same schema with `spec.veer`
//! extensions). This module owns loading a directory of YAML files into checked specs, the
//! per-field verdict on what veer does not implement (a warning naming the field, never a
//! silent drop), the semantic checks, and the mapping of a spec onto a routing-table route.
//!
//! One bad document never hides the others: [`SpecSet`] holds every good canary next to the
//! problems of the bad ones, each naming the file, the document, the field path and the
//! reason.

mod check;
mod duration;
mod load;
mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use veer_core::{MatchRule, Override, Route, SessionAffinity, StickyKey};

use crate::checks::prometheus::{BuiltinMetric, MetricsSet, QueryVars, ThresholdRange};
use crate::checks::webhooks::{Hook, HookType};

pub use duration::{parse_go_duration, GoDuration};
pub use load::{
    load_dir, load_file, load_paths, load_texts, Severity, SpecDirError, SpecProblem, SpecSet,
};

/// `apiVersion` of Flagger's resources.
pub const FLAGGER_API_VERSION: &str = "flagger.app/v1beta1";
/// `apiVersion` of veer's own Canary (Flagger's schema plus `spec.veer`).
pub const VEER_API_VERSION: &str = "veer.dev/v1alpha1";
/// `spec.provider` of Flagger's Blue/Green without traffic routing.
pub const KUBERNETES_PROVIDER: &str = "kubernetes";
/// `spec.provider` of Flagger's Gateway API router: the canary is routed by an `HTTPRoute`
/// instead of a VirtualService. Flagger takes any provider starting with it
/// (`gatewayapi:v1beta1` included) for Gateway API, and so does veer.
pub const GATEWAY_API_PROVIDER: &str = "gatewayapi:v1";

/// Default `analysis.interval` (Flagger's).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest `analysis.interval` by default: Flagger raises anything shorter to 10s, and so
/// does veer (with a warning). `--min-interval` lowers it for demos and tests.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// `iterations` of a `provider: kubernetes` canary that sets none (Flagger's).
pub const KUBERNETES_PROVIDER_ITERATIONS: u32 = 10;
/// Default `progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Default metric `interval` (also for template metrics, unlike Flagger).
pub const DEFAULT_METRIC_INTERVAL: &str = "1m";
/// Default `sessionAffinity.maxAge` (Flagger's).
pub const DEFAULT_COOKIE_MAX_AGE: i64 = 86_400;

/// The controller's settings that change what a spec means; the same for `veer controller`,
/// `veer explain` and `veer validate`, so they read a spec alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The floor of `analysis.interval` ([`DEFAULT_MIN_INTERVAL`] unless lowered).
    pub min_interval: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            min_interval: DEFAULT_MIN_INTERVAL,
        }
    }
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
    /// `spec.provider`; only `kubernetes` changes what veer does ([`CanarySpec::routes_traffic`]).
    pub provider: Option<String>,
    /// `spec.ingressRef` and `spec.routeRef` (ingress providers): veer routes in its own
    /// gateway filter, so only their names are used, as `{{ ingress }}` and `{{ route }}`
    /// in metric queries, as in Flagger.
    pub ingress_ref: Option<TargetRef>,
    pub route_ref: Option<TargetRef>,
    pub progress_deadline_seconds: Option<u64>,
    pub skip_analysis: bool,
    pub suspend: bool,
    /// Kubernetes mode: on deletion, give the target its traffic back (Flagger's finalizer).
    pub revert_on_deletion: bool,
    /// `veer.dev/v1alpha1` extensions; empty for Flagger's apiVersion.
    pub veer: VeerSpec,
    /// The floor of `analysis.interval` it was loaded with ([`LoadOptions::min_interval`]).
    pub min_interval: Duration,
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
    /// Gateway API: the Gateways the HTTPRoute attaches to (its `parentRefs`).
    #[serde(default)]
    pub gateway_refs: Vec<serde_json::Value>,
    /// Istio `HTTPMatchRequest`s; the HTTPRoute's matches (Gateway API only).
    #[serde(default, rename = "match")]
    pub r#match: Vec<serde_json::Value>,
    /// Gateway API `RequestMirror` filters (Gateway API only).
    #[serde(default)]
    pub mirror: Vec<serde_json::Value>,
    /// The HTTPRoute's `timeouts.backendRequest` (Gateway API only).
    #[serde(default)]
    pub backend_timeout: Option<String>,
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
    /// `iterations` without `match`: test, optionally mirror, then switch all traffic to
    /// the canary. With `provider: kubernetes` (`switches_traffic: false`) no traffic
    /// reaches the canary before promotion: its own Service is tested by the hooks, then
    /// the primary takes the new revision.
    BlueGreen {
        iterations: u32,
        switches_traffic: bool,
    },
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

    /// Time between passes: `analysis.interval`, default 60s, never below the floor it was
    /// loaded with (10s, as Flagger, unless `--min-interval` lowers it). The one place the
    /// floor applies: the runner, the engine and `veer explain` all read this.
    pub fn interval(&self) -> Duration {
        self.analysis
            .interval
            .as_ref()
            .map_or(DEFAULT_INTERVAL, |i| i.duration)
            .max(self.min_interval)
    }

    /// Whether veer moves traffic for this canary. `provider: kubernetes` is Flagger's
    /// Blue/Green without traffic routing: the canary is tested through its own Service and
    /// gets no share of the apex traffic before promotion.
    pub fn routes_traffic(&self) -> bool {
        self.provider.as_deref() != Some(KUBERNETES_PROVIDER)
    }

    /// Whether the canary is routed by a Gateway API `HTTPRoute` (`provider: gatewayapi:v1`)
    /// rather than an Istio VirtualService.
    pub fn gateway_api(&self) -> bool {
        self.provider
            .as_deref()
            .is_some_and(|p| p.starts_with(GATEWAY_API_PROVIDER))
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
                    switches_traffic: self.routes_traffic(),
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
            ingress: self
                .ingress_ref
                .as_ref()
                .map_or(&self.target_ref.name, |r| &r.name)
                .clone(),
            route: self
                .route_ref
                .as_ref()
                .map_or(&self.target_ref.name, |r| &r.name)
                .clone(),
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
