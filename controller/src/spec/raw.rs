//! The YAML as read: serde shapes of only the fields veer reads, tracked so an error names
//! its field path and every field veer does not read becomes a warning naming it (with the
//! reason, for the fields Flagger has and veer does not act on).

use std::collections::BTreeMap;

use serde::Deserialize;
use veer_core::{SameSite, StringMatch};

use super::{GoDuration, ServiceSpec, TargetRef, VeerSpec};

/// Deserializes with the exact field path on error, collecting every ignored field path.
pub(super) fn deserialize_tracked<T: for<'de> Deserialize<'de>>(
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
pub(super) fn format_ignored(path: &serde_ignored::Path) -> String {
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
pub(super) const NOT_USED: &[(&str, &str)] = &[
    ("spec.autoscalerRef", "veer does not copy the autoscaler: in Kubernetes mode the -primary Deployment gets no HPA of its own (scale it yourself), and local mode manages no workloads"),
    ("spec.metricsServer", "the controller's --prometheus flag sets the Prometheus address; a MetricTemplate's provider.address sets one per metric"),
    ("spec.upstreamRef", "a Gloo provider field; veer routes in the Istio/Envoy gateway"),
    ("spec.service.portDiscovery", "veer render writes the one port in service.port"),
    ("spec.service.headless", "veer routes through ClusterIP Services"),
    ("spec.service.meshName", "an App Mesh field"),
    ("spec.service.backends", "an App Mesh field"),
    ("spec.service.delegation", "veer render writes a standalone VirtualService"),
    ("spec.service.unmanagedMetadata", "veer does not take over existing Services"),
    ("spec.service.trafficDistribution", "veer render does not set Service.trafficDistribution"),
    ("spec.analysis.primaryReadyThreshold", "Kubernetes mode counts the primary ready when all its updated replicas are available, Flagger's default of 100%; local mode has no readiness"),
    ("spec.analysis.canaryReadyThreshold", "Kubernetes mode counts the canary ready when all its updated replicas are available, Flagger's default of 100%; local mode has no readiness"),
    ("spec.analysis.alerts", "veer has no alert providers; an `event` webhook receives every event"),
    ("spec.analysis.match[].sourceLabels", "applies to in-mesh sidecar traffic; veer decides in the ingress gateway"),
    ("spec.analysis.webhooks[].muteAlert", "veer has no alert providers"),
    ("spec.provider.insecureSkipVerify", "a MetricTemplate's Prometheus is queried with certificate verification; put a trusted certificate on it"),
    ("spec.provider.region", "a CloudWatch field; veer queries Prometheus only"),
    ("spec.analysis.sessionAffinity.primaryCookieName", "not needed: the sticky bucket already keeps primary users on primary within a run"),
];

/// Turns an ignored field path into a warning, or `None` where Kubernetes metadata and
/// status are rightly ignored.
pub(super) fn classify_ignored(path: &str) -> Option<String> {
    if path == "apiVersion" || path == "kind" || path == "status" || path.starts_with("metadata.") {
        return None;
    }
    // Flagger still reads the pre-v1beta1 `canaryAnalysis` as `analysis`, and so does veer.
    let generic = generic_path(path).replacen("spec.canaryAnalysis.", "spec.analysis.", 1);
    if let Some((_, why)) = NOT_USED.iter().find(|(p, _)| *p == generic) {
        return Some(format!("accepted but not used by veer ({why})"));
    }
    Some("unknown field, ignored (Flagger would ignore it silently; is it a typo?)".to_string())
}

/// `spec.analysis.metrics[3].foo` → `spec.analysis.metrics[].foo`.
pub(super) fn generic_path(path: &str) -> String {
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
pub(super) struct RawCanary {
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: RawMeta,
    pub(super) spec: RawCanaryBody,
}

#[derive(Deserialize)]
pub(super) struct RawMeta {
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawCanaryBody {
    #[serde(default)]
    pub(super) provider: Option<String>,
    #[serde(default)]
    pub(super) ingress_ref: Option<TargetRef>,
    #[serde(default)]
    pub(super) route_ref: Option<TargetRef>,
    #[serde(default)]
    pub(super) progress_deadline_seconds: Option<i64>,
    pub(super) target_ref: TargetRef,
    #[serde(default)]
    pub(super) service: ServiceSpec,
    #[serde(default)]
    pub(super) skip_analysis: bool,
    #[serde(default)]
    pub(super) revert_on_deletion: bool,
    #[serde(default)]
    pub(super) suspend: bool,
    #[serde(default)]
    pub(super) analysis: Option<RawAnalysis>,
    /// The pre-v1beta1 name of `analysis`, which Flagger still reads when `analysis` is
    /// not set.
    #[serde(default)]
    pub(super) canary_analysis: Option<RawAnalysis>,
    #[serde(default)]
    pub(super) veer: Option<VeerSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawAnalysis {
    #[serde(default)]
    pub(super) interval: Option<GoDuration>,
    #[serde(default)]
    pub(super) iterations: u32,
    #[serde(default)]
    pub(super) threshold: u32,
    #[serde(default)]
    pub(super) max_weight: Option<u32>,
    #[serde(default)]
    pub(super) step_weight: u32,
    #[serde(default)]
    pub(super) step_weights: Vec<u32>,
    #[serde(default)]
    pub(super) step_weight_promotion: u32,
    #[serde(default)]
    pub(super) mirror: bool,
    #[serde(default)]
    pub(super) mirror_weight: u32,
    #[serde(default)]
    pub(super) r#match: Vec<RawHttpMatch>,
    #[serde(default)]
    pub(super) metrics: Vec<RawMetric>,
    #[serde(default)]
    pub(super) webhooks: Vec<RawWebhook>,
    #[serde(default)]
    pub(super) session_affinity: Option<RawSessionAffinity>,
}

/// The part of Istio's `HTTPMatchRequest` veer decides on.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawHttpMatch {
    #[serde(default)]
    pub(super) headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub(super) query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub(super) uri: Option<StringMatch>,
    #[serde(default)]
    pub(super) method: Option<StringMatch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawMetric {
    pub(super) name: String,
    #[serde(default)]
    pub(super) interval: Option<GoDuration>,
    #[serde(default)]
    pub(super) threshold_range: Option<RawThresholdRange>,
    /// Flagger's deprecated single bound, read as Flagger's scheduler applies it.
    #[serde(default)]
    pub(super) threshold: Option<f64>,
    #[serde(default)]
    pub(super) query: Option<String>,
    #[serde(default)]
    pub(super) template_ref: Option<RawTemplateRef>,
    #[serde(default)]
    pub(super) template_variables: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub(super) struct RawThresholdRange {
    #[serde(default)]
    pub(super) min: Option<f64>,
    #[serde(default)]
    pub(super) max: Option<f64>,
}

#[derive(Deserialize)]
pub(super) struct RawTemplateRef {
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawWebhook {
    pub(super) name: String,
    #[serde(default)]
    pub(super) r#type: String,
    #[serde(default)]
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) timeout: Option<GoDuration>,
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) retries: Option<i64>,
    #[serde(default, rename = "disableTLS")]
    pub(super) disable_tls: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawSessionAffinity {
    pub(super) cookie_name: String,
    #[serde(default)]
    pub(super) max_age: Option<i64>,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) domain: Option<String>,
    #[serde(default)]
    pub(super) secure: Option<bool>,
    #[serde(default)]
    pub(super) http_only: Option<bool>,
    #[serde(default)]
    pub(super) same_site: Option<SameSite>,
    #[serde(default)]
    pub(super) partitioned: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RawMetricTemplate {
    pub(super) metadata: RawMeta,
    pub(super) spec: RawTemplateSpec,
}

#[derive(Deserialize)]
pub(super) struct RawTemplateSpec {
    pub(super) provider: RawProvider,
    pub(super) query: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawProvider {
    pub(super) r#type: String,
    #[serde(default)]
    pub(super) address: Option<String>,
    #[serde(default)]
    pub(super) secret_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) headers: Option<serde_json::Value>,
}
