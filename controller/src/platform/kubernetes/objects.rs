//! The objects a Canary owns, as they should be, and the target's scale, as pure functions
//! of the Canary, its target Deployment and the run's state. The reconciler compares them
//! with the cluster and applies the difference; what happens on promotion in Kubernetes
//! mode is [`primary_deployment`] with the promoted template.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::Value;

use super::revision::{primary_template, ConfigRef};
use crate::engine::{CanaryState, Phase};
use crate::render::{render_documents, RenderOptions};
use crate::spec::CanarySpec;

/// Annotation on the primary Deployment: the revision its template was copied from.
pub const REVISION_ANNOTATION: &str = "veer.dev/revision";

/// The label keys that name an app in a Deployment's selector, in Flagger's order
/// (`-selector-labels`).
const SELECTOR_LABELS: [&str; 3] = ["app", "name", "app.kubernetes.io/name"];

/// The Canary as owner of what veer creates, so Kubernetes' garbage collector removes it
/// with the Canary.
pub fn owner_reference(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "flagger.app/v1beta1".into(),
        kind: "Canary".into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// Whether `meta` is controlled by the Canary with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Who controls `meta`, for the error that says veer will not adopt it.
pub fn owner_description(meta: &ObjectMeta) -> String {
    match meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        Some(o) => format!("{} {} (uid {})", o.kind, o.name, o.uid),
        None => "no controller (it was created by hand or by another tool)".into(),
    }
}

/// The app label of the target's selector: the key and its value.
pub fn selector_label(target: &Deployment) -> Result<(String, String), String> {
    let name = target.metadata.name.as_deref().unwrap_or("?");
    let labels = target
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref());
    SELECTOR_LABELS
        .iter()
        .find_map(|key| labels.and_then(|l| l.get(*key)).map(|v| (key.to_string(), v.clone())))
        .ok_or_else(|| {
            format!(
                "deployment {name}: spec.selector.matchLabels has none of the labels {}: veer (like Flagger) needs one to select the primary's and the canary's pods",
                SELECTOR_LABELS.join(", ")
            )
        })
}

/// `<target>-primary`: the target's spec with the primary's selector value, its template as
/// the primary runs it ([`primary_template`]) and the revision it came from.
pub fn primary_deployment(
    target: &Deployment,
    owner: &OwnerReference,
    selector: &(String, String),
    tracked: &BTreeSet<ConfigRef>,
    revision: &str,
    replicas: i32,
) -> Deployment {
    let namespace = target.metadata.namespace.clone();
    let name = format!("{}-primary", target.metadata.name.as_deref().unwrap_or(""));
    let primary_value = format!("{}-primary", selector.1);
    let spec = target.spec.clone().unwrap_or_default();
    let labels = BTreeMap::from([(selector.0.clone(), primary_value.clone())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace,
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                REVISION_ANNOTATION.to_string(),
                revision.to_string(),
            )])),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            },
            template: primary_template(&spec.template, &selector.0, &primary_value, tracked),
            progress_deadline_seconds: spec.progress_deadline_seconds,
            min_ready_seconds: spec.min_ready_seconds,
            revision_history_limit: spec.revision_history_limit,
            strategy: spec.strategy,
            paused: None,
        }),
        status: None,
    }
}

/// The revision the primary's template was copied from.
pub fn primary_revision(primary: &Deployment) -> Option<&str> {
    primary
        .metadata
        .annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)
        .map(String::as_str)
}

/// The Services and the static routes of the Canary (DestinationRules and VirtualService, or
/// the HTTPRoute with `provider: gatewayapi:v1`): exactly what `veer render` prints for it
/// (one code path), with the Services selecting the target's pods by its own selector
/// label, and every object owned by the Canary. The WasmPlugin is the gateway's, installed
/// once, not per Canary.
pub fn routing_objects(
    spec: &CanarySpec,
    selector: &(String, String),
    owner: &OwnerReference,
) -> Result<Vec<Value>, String> {
    let opts = RenderOptions {
        selector_label: selector.0.clone(),
        ..RenderOptions::default()
    };
    let docs = render_documents(spec, &opts).map_err(|e| e.to_string())?;
    let owner = serde_json::to_value(owner).map_err(|e| e.to_string())?;
    let primary_pods = format!("{}-primary", spec.target_ref.name);
    let mut out = Vec::new();
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or("").to_string();
        if kind == "WasmPlugin" {
            continue;
        }
        if kind == "Service" {
            // render selects pods by `<target>`/`<target>-primary`; in the cluster they
            // carry the target's own label value.
            let pods = doc["spec"]["selector"][&selector.0]
                .as_str()
                .unwrap_or("")
                .to_string();
            let value = if pods == primary_pods {
                format!("{}-primary", selector.1)
            } else {
                selector.1.clone()
            };
            doc["spec"]["selector"] = serde_json::json!({ selector.0.clone(): value });
        }
        doc["metadata"]["ownerReferences"] = Value::Array(vec![owner.clone()]);
        out.push(doc);
    }
    Ok(out)
}

/// How the target (the canary Deployment) should be scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetScale {
    /// Leave it: the primary is not initialized yet.
    Unchanged,
    /// Scaled down: no run holds it (Flagger scales it to zero between runs).
    Zero,
    /// Up, for a run.
    Up,
}

/// The target's scale for the run's state: up while a revision waits for or is in a run
/// (Waiting through Finalising), zero otherwise once the primary took over.
pub fn target_scale(state: &CanaryState) -> TargetScale {
    if state.primary_revision.is_none() {
        return TargetScale::Unchanged;
    }
    let in_run = matches!(
        state.phase,
        Phase::Waiting
            | Phase::Progressing
            | Phase::WaitingPromotion
            | Phase::Promoting
            | Phase::Finalising
    );
    if in_run || state.run_pending() {
        TargetScale::Up
    } else {
        TargetScale::Zero
    }
}

/// Replicas for a target scaled up from zero (Flagger's ScaleFromZero): its own if it has
/// some, else the primary's, else one.
pub fn scale_up_replicas(target: &Deployment, primary: Option<&Deployment>) -> i32 {
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let own = replicas(target);
    if own > 0 {
        return own;
    }
    primary.map(replicas).filter(|r| *r > 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_runs_only_while_a_revision_waits_or_runs() {
        let mut s = CanaryState::default();
        assert_eq!(target_scale(&s), TargetScale::Unchanged);
        s.primary_revision = Some("a".into());
        s.canary_revision = Some("a".into());
        s.phase = Phase::Initialized;
        assert_eq!(target_scale(&s), TargetScale::Zero);
        s.canary_revision = Some("b".into());
        assert_eq!(
            target_scale(&s),
            TargetScale::Up,
            "a new revision waits to start"
        );
        for phase in [Phase::Progressing, Phase::Promoting, Phase::Finalising] {
            s.phase = phase;
            assert_eq!(target_scale(&s), TargetScale::Up, "{phase}");
        }
        s.phase = Phase::Succeeded;
        s.primary_revision = Some("b".into());
        assert_eq!(target_scale(&s), TargetScale::Zero);
        s.phase = Phase::Failed;
        s.primary_revision = Some("a".into());
        s.failed_revision = Some("b".into());
        assert_eq!(
            target_scale(&s),
            TargetScale::Zero,
            "a failed revision does not run again"
        );
    }

    #[test]
    fn the_primary_copies_the_target_with_its_own_selector() {
        let target: Deployment = serde_norway::from_str(
            "metadata: {name: podinfo, namespace: test, labels: {app: podinfo, team: x}}
spec:
  replicas: 0
  progressDeadlineSeconds: 120
  selector: {matchLabels: {app: podinfo}}
  template:
    metadata: {labels: {app: podinfo}}
    spec: {containers: [{name: app, image: 'podinfo:6.1.0'}]}",
        )
        .unwrap();
        let selector = selector_label(&target).unwrap();
        assert_eq!(selector, ("app".to_string(), "podinfo".to_string()));
        let owner = owner_reference("podinfo", "uid-1");
        let primary = primary_deployment(&target, &owner, &selector, &BTreeSet::new(), "rev1", 2);
        let json = serde_json::to_value(&primary).unwrap();
        assert_eq!(json["metadata"]["name"], "podinfo-primary");
        assert_eq!(
            json["metadata"]["labels"],
            serde_json::json!({"app": "podinfo-primary"})
        );
        assert_eq!(json["metadata"]["annotations"][REVISION_ANNOTATION], "rev1");
        assert_eq!(json["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(json["spec"]["replicas"], 2);
        assert_eq!(json["spec"]["progressDeadlineSeconds"], 120);
        assert_eq!(
            json["spec"]["selector"]["matchLabels"]["app"],
            "podinfo-primary"
        );
        assert_eq!(
            json["spec"]["template"]["metadata"]["labels"]["app"],
            "podinfo-primary"
        );
        assert_eq!(
            json["spec"]["template"]["spec"]["containers"][0]["image"],
            "podinfo:6.1.0"
        );
        assert!(controlled_by(&primary.metadata, "uid-1"));
        assert!(!controlled_by(&primary.metadata, "uid-2"));
        assert_eq!(scale_up_replicas(&target, Some(&primary)), 2);
        assert_eq!(scale_up_replicas(&target, None), 1);
    }

    #[test]
    fn a_selector_without_an_app_label_is_an_error_naming_the_labels() {
        let target: Deployment = serde_norway::from_str(
            "metadata: {name: odd}\nspec: {selector: {matchLabels: {tier: web}}, template: {}}",
        )
        .unwrap();
        let err = selector_label(&target).unwrap_err();
        assert!(err.contains("app, name, app.kubernetes.io/name"), "{err}");
    }
}
