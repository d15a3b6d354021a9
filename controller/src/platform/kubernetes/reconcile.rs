//! The reconciler: brings the cluster in line with each Canary and its run. On every change
//! the watches see (and every few seconds), for each Canary it
//! 1. parses the spec exactly as local mode parses a file ([`crate::spec::load_texts`]);
//! 2. creates `<target>-primary`, the Services, and the DestinationRules and VirtualService
//!    (or, with `provider: gatewayapi:v1`, the HTTPRoute) ([`super::objects`]), refusing to
//!    adopt objects something else controls;
//! 3. initializes the primary, then reports new revisions of the target to the runner
//!    (the same `on_revision` that local mode's API calls);
//! 4. on promotion, copies the target's template and tracked configs into the primary;
//! 5. scales the target up for a run and down after it;
//! 6. honours `revertOnDeletion` with Flagger's finalizer.
//!
//! The analysis itself is the runner's; this only acts on the workloads around it.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::events::EventType;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::cluster::Cluster;
use super::objects::{
    controlled_by, owner_description, owner_reference, primary_deployment, primary_revision,
    routing_objects, scale_up_replicas, selector_label, target_scale, TargetScale,
};
use super::readiness::{readiness, Readiness};
use super::revision::{
    config_refs, is_tracked, primary_config_name, revision, tracked_configs, ConfigKind, ConfigRef,
    FoundConfig,
};
use super::{KubePlatform, FIELD_MANAGER};
use crate::runner::Runner;
use crate::serve::api::{CanaryControl, Command};
use crate::spec::{self, CanarySpec, LoadOptions, Severity, SpecProblem, SpecSet};

/// Flagger's finalizer, present exactly when `spec.revertOnDeletion` is set.
pub const FINALIZER: &str = "finalizer.flagger.app";

/// How often every Canary is reconciled even without a change.
const RESYNC: Duration = Duration::from_secs(2);

pub struct Reconciler {
    cluster: Cluster,
    runner: Arc<Runner>,
    platform: Arc<KubePlatform>,
    /// The routing objects last applied per canary (their JSON), so they are applied
    /// again only when they change.
    applied: HashMap<String, String>,
    /// The last problem reported per canary, so a problem is reported once, not per pass.
    reported: HashMap<String, String>,
    /// The specs last handed to the runner.
    loaded: Vec<CanarySpec>,
    /// How specs are read (`--min-interval`), as in local mode.
    load: LoadOptions,
}

impl Reconciler {
    pub fn new(
        cluster: Cluster,
        runner: Arc<Runner>,
        platform: Arc<KubePlatform>,
        load: LoadOptions,
    ) -> Reconciler {
        Reconciler {
            cluster,
            runner,
            platform,
            applied: HashMap::new(),
            reported: HashMap::new(),
            loaded: Vec::new(),
            load,
        }
    }

    /// Reconciles until `stop` turns true.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.reconcile_all().await;
            let changed = self.cluster.changed.clone();
            tokio::select! {
                () = async {
                    changed.notified().await;
                    // Let a burst of watch events settle into one pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } => {}
                () = tokio::time::sleep(RESYNC) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn reconcile_all(&mut self) {
        // A replica that lost the leadership changes nothing (it exits shortly).
        if !self.platform.leadership.holds() {
            return;
        }
        let templates: Vec<(PathBuf, String)> = self
            .cluster
            .templates
            .state()
            .iter()
            .map(|t| {
                let file = PathBuf::from(format!(
                    "metrictemplate {}/{}",
                    t.namespace().unwrap_or_default(),
                    t.name_any()
                ));
                (file, serde_json::to_string(&**t).unwrap_or_default())
            })
            .collect();
        let mut specs = Vec::new();
        let mut problems = Vec::new();
        let mut canaries = self.cluster.canaries.state();
        canaries.sort_by_key(|c| (c.namespace(), c.name_any()));
        for canary in canaries {
            let namespace = canary.namespace().unwrap_or_default();
            let name = canary.name_any();
            let key = format!("{namespace}/{name}");
            if canary.metadata.deletion_timestamp.is_some() {
                self.finalize(&canary).await;
                continue;
            }
            let file = PathBuf::from(format!("canary {key}"));
            let mut inputs = vec![(
                file.clone(),
                serde_json::to_string(&*canary).unwrap_or_default(),
            )];
            inputs.extend(templates.iter().cloned());
            let set = spec::load_texts(&inputs, &self.load);
            let mine: Vec<SpecProblem> = set
                .problems
                .into_iter()
                .filter(|p| p.file == file)
                .collect();
            let errors: Vec<String> = mine
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(|p| match &p.path {
                    Some(path) => format!("{path}: {}", p.message),
                    None => p.message.clone(),
                })
                .collect();
            let Some(spec) = set
                .canaries
                .into_iter()
                .next()
                .filter(|_| errors.is_empty())
            else {
                let message = format!("invalid Canary: {}", errors.join("; "));
                self.report(&canary, &key, &message).await;
                problems.extend(mine);
                continue;
            };
            if let Err(e) = self.ensure_finalizer(&canary, &spec).await {
                tracing::warn!(canary = %key, error = %e, "cannot update the finalizer");
            }
            match self.reconcile_canary(&canary, &spec).await {
                Ok(()) => {
                    if self.reported.remove(&key).is_some() {
                        tracing::info!(canary = %key, "the Canary's problem is resolved");
                    }
                    specs.push(spec);
                }
                Err(message) => {
                    self.report(&canary, &key, &message).await;
                    problems.push(SpecProblem {
                        severity: Severity::Error,
                        file,
                        doc: None,
                        path: None,
                        message,
                    });
                }
            }
        }
        if specs != self.loaded {
            let set = SpecSet {
                canaries: specs.clone(),
                problems,
                ..SpecSet::default()
            };
            match self.runner.reload(&set).await {
                Ok(()) => self.loaded = specs,
                Err(e) => tracing::error!(error = %e, "the Canaries could not be loaded; retrying"),
            }
        }
    }

    /// A Canary veer cannot run: a Warning event and the `Promoted` condition say why,
    /// once per distinct problem. Other Canaries are not affected.
    async fn report(&mut self, canary: &DynamicObject, key: &str, message: &str) {
        if self.reported.get(key).map(String::as_str) == Some(message) {
            return;
        }
        tracing::warn!(canary = %key, "{message}");
        self.reported.insert(key.to_string(), message.to_string());
        self.platform
            .event(canary, EventType::Warning, message.to_string())
            .await;
        if let Err(e) = self.platform.write_problem(canary, message).await {
            tracing::warn!(canary = %key, error = %e, "cannot write the Canary's status condition");
        }
    }

    async fn reconcile_canary(
        &mut self,
        canary: &DynamicObject,
        spec: &CanarySpec,
    ) -> Result<(), String> {
        let namespace = spec.namespace.as_str();
        let name = spec.name.as_str();
        let key = spec.key();
        let uid = canary.uid().unwrap_or_default();
        let owner = owner_reference(name, &uid);
        let kind = spec.target_ref.kind.as_deref().unwrap_or("Deployment");
        if kind != "Deployment" {
            return Err(format!(
                "spec.targetRef.kind: {kind} is not supported: veer's Kubernetes mode runs Deployments (Flagger also runs DaemonSets and Services); this Canary is left alone"
            ));
        }
        let target_name = spec.target_ref.name.as_str();
        let target = self
            .cluster
            .deployment(namespace, target_name)
            .ok_or_else(|| {
                format!("spec.targetRef: deployment {namespace}/{target_name} not found")
            })?;
        let selector = selector_label(&target)?;
        let template = target
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let refs = config_refs(&template);
        let tracked = tracked_configs(&refs, |r| self.find_config(namespace, r));
        let tracked_refs: BTreeSet<ConfigRef> = refs
            .iter()
            .filter(|r| {
                self.find_config(namespace, r)
                    .is_some_and(|f| is_tracked(&f))
            })
            .cloned()
            .collect();
        let rev = revision(&template, &tracked);
        self.platform.set_tracked(&key, tracked);

        let state = self
            .runner
            .state(namespace, name)
            .or_else(|| self.platform.status_state(canary));
        let primary_name = format!("{target_name}-primary");
        let primary = self.cluster.deployment(namespace, &primary_name);
        match &primary {
            Some(p) if !controlled_by(&p.metadata, &uid) => {
                return Err(format!(
                    "deployment {namespace}/{primary_name} exists and is controlled by {}: veer does not adopt or overwrite it",
                    owner_description(&p.metadata)
                ));
            }
            Some(p) => {
                let promoted = state.as_ref().and_then(|s| s.primary_revision.as_deref());
                if promoted == Some(rev.as_str()) && primary_revision(p) != Some(rev.as_str()) {
                    self.platform
                        .event(
                            canary,
                            EventType::Normal,
                            format!("Copying {target_name}.{namespace} template spec to {primary_name}.{namespace}"),
                        )
                        .await;
                    let replicas = p.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    self.copy_configs(namespace, &tracked_refs, &owner).await?;
                    let desired = primary_deployment(
                        &target,
                        &owner,
                        &selector,
                        &tracked_refs,
                        &rev,
                        replicas,
                    );
                    self.apply(&desired).await?;
                }
            }
            None => {
                let replicas = scale_up_replicas(&target, None);
                self.copy_configs(namespace, &tracked_refs, &owner).await?;
                let desired =
                    primary_deployment(&target, &owner, &selector, &tracked_refs, &rev, replicas);
                self.apply(&desired).await?;
                tracing::info!(canary = %key, primary = %primary_name, "primary created");
            }
        }
        self.apply_routing(spec, &selector, &owner).await?;

        let Some(state) = state.filter(|s| s.primary_revision.is_some()) else {
            // Initializing: the first revision becomes the primary's once it is ready.
            let ready = primary.as_ref().is_some_and(|p| {
                readiness(p, 100, spec.progress_deadline(), SystemTime::now()) == Readiness::Ready
            });
            if ready && self.runner.state(namespace, name).is_some() {
                self.revision(namespace, name, &rev);
                self.scale(&target, 0).await?;
            }
            return Ok(());
        };
        if state.canary_revision.as_deref() != Some(rev.as_str()) {
            self.revision(namespace, name, &rev);
        }
        let state = self.runner.state(namespace, name).unwrap_or(state);
        match target_scale(&state) {
            TargetScale::Unchanged => {}
            TargetScale::Zero => {
                if replicas_of(&target) != 0 {
                    self.platform
                        .event(
                            canary,
                            EventType::Normal,
                            format!("Scaling down {target_name}.{namespace}"),
                        )
                        .await;
                    self.scale(&target, 0).await?;
                }
            }
            TargetScale::Up => {
                if replicas_of(&target) == 0 {
                    let replicas = scale_up_replicas(&target, primary.as_deref());
                    self.platform
                        .event(
                            canary,
                            EventType::Normal,
                            format!("New revision detected! Scaling up {target_name}.{namespace}"),
                        )
                        .await;
                    self.scale(&target, replicas).await?;
                }
            }
        }
        Ok(())
    }

    fn revision(&self, namespace: &str, name: &str, rev: &str) {
        // The same call as local mode's `POST .../revision` (it waits for the commit).
        let answer = self
            .runner
            .command(namespace, name, Command::Revision(rev.to_string()));
        if let Err(e) = answer {
            tracing::warn!(canary = %format!("{namespace}/{name}"), error = %e, "the new revision is not taken yet; retrying");
        }
    }

    fn find_config(&self, namespace: &str, r: &ConfigRef) -> Option<FoundConfig> {
        match r.kind {
            ConfigKind::ConfigMap => self
                .cluster
                .configmaps
                .get(&kube::runtime::reflector::ObjectRef::new(&r.name).within(namespace))
                .map(FoundConfig::ConfigMap),
            ConfigKind::Secret => self
                .cluster
                .secrets
                .get(&kube::runtime::reflector::ObjectRef::new(&r.name).within(namespace))
                .map(FoundConfig::Secret),
        }
    }

    async fn copy_configs(
        &self,
        namespace: &str,
        tracked: &BTreeSet<ConfigRef>,
        owner: &OwnerReference,
    ) -> Result<(), String> {
        for r in tracked {
            let copy_meta = |meta: &ObjectMeta| ObjectMeta {
                name: Some(primary_config_name(&r.name)),
                namespace: Some(namespace.to_string()),
                labels: meta.labels.clone(),
                owner_references: Some(vec![OwnerReference {
                    controller: None,
                    ..owner.clone()
                }]),
                ..ObjectMeta::default()
            };
            match self.find_config(namespace, r) {
                Some(FoundConfig::ConfigMap(cm)) => {
                    let copy = ConfigMap {
                        metadata: copy_meta(&cm.metadata),
                        data: cm.data.clone(),
                        binary_data: cm.binary_data.clone(),
                        immutable: None,
                    };
                    self.apply(&copy).await?;
                }
                Some(FoundConfig::Secret(s)) => {
                    let copy = Secret {
                        metadata: copy_meta(&s.metadata),
                        data: s.data.clone(),
                        string_data: s.string_data.clone(),
                        type_: s.type_.clone(),
                        immutable: None,
                    };
                    self.apply(&copy).await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Server-side apply as `veer` of a typed object.
    async fn apply<K>(&self, object: &K) -> Result<(), String>
    where
        K: kube::Resource<DynamicType = ()>
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        let name = object.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.cluster.client.clone(), &namespace);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(object),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot apply {} {namespace}/{name}: {e}", K::kind(&())))
    }

    /// The Services and routing objects, applied when they change.
    async fn apply_routing(
        &mut self,
        spec: &CanarySpec,
        selector: &(String, String),
        owner: &OwnerReference,
    ) -> Result<(), String> {
        let docs = routing_objects(spec, selector, owner)?;
        let fingerprint = serde_json::to_string(&docs).unwrap_or_default();
        let key = spec.key();
        if self.applied.get(&key) == Some(&fingerprint) {
            return Ok(());
        }
        for doc in &docs {
            let (resource, name) = dynamic_resource(doc)?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.cluster.client.clone(), &spec.namespace, &resource);
            let what = format!("{} {}/{name}", resource.kind, spec.namespace);
            match api.get_opt(&name).await {
                Ok(Some(existing)) if !controlled_by(&existing.metadata, &owner.uid) => {
                    return Err(format!(
                        "{what} exists and is controlled by {}: veer does not adopt or overwrite it",
                        owner_description(&existing.metadata)
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("cannot read {what}: {e}")),
            }
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(doc),
            )
            .await
            .map_err(|e| format!("cannot apply {what}: {e}"))?;
        }
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        tracing::info!(canary = %key, objects = docs.len(), kinds = ?kinds, "routing objects applied");
        self.applied.insert(key, fingerprint);
        Ok(())
    }

    async fn scale(&self, target: &Deployment, replicas: i32) -> Result<(), String> {
        let namespace = target.namespace().unwrap_or_default();
        let name = target.name_any();
        let api: Api<Deployment> = Api::namespaced(self.cluster.client.clone(), &namespace);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot scale deployment {namespace}/{name} to {replicas}: {e}"))
    }

    /// Adds or removes Flagger's finalizer so it is present exactly when
    /// `spec.revertOnDeletion` is set.
    async fn ensure_finalizer(
        &self,
        canary: &DynamicObject,
        spec: &CanarySpec,
    ) -> Result<(), String> {
        let want = spec.revert_on_deletion;
        let finalizers = canary.finalizers().to_vec();
        let has = finalizers.iter().any(|f| f == FINALIZER);
        if want == has {
            return Ok(());
        }
        let mut next: Vec<String> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
        if want {
            next.push(FINALIZER.to_string());
        }
        self.platform.patch_finalizers(canary, next).await
    }

    /// A Canary being deleted with `revertOnDeletion`: the target takes its traffic back
    /// (scaled like the primary), then the finalizer goes and Kubernetes removes what the
    /// Canary owns.
    async fn finalize(&mut self, canary: &DynamicObject) {
        if !canary.finalizers().iter().any(|f| f == FINALIZER) {
            return;
        }
        let namespace = canary.namespace().unwrap_or_default();
        let name = canary.name_any();
        let key = format!("{namespace}/{name}");
        if self.reported.get(&key).map(String::as_str) != Some("terminating") {
            self.platform
                .event(
                    canary,
                    EventType::Normal,
                    format!("Terminating canary {name}.{namespace}"),
                )
                .await;
            self.reported.insert(key.clone(), "terminating".into());
        }
        let target_name = canary
            .data
            .pointer("/spec/targetRef/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(target) = self.cluster.deployment(&namespace, &target_name) {
            let primary = self
                .cluster
                .deployment(&namespace, &format!("{target_name}-primary"));
            let replicas = primary
                .as_ref()
                .and_then(|p| p.spec.as_ref()?.replicas)
                .filter(|r| *r > 0)
                .unwrap_or_else(|| scale_up_replicas(&target, None));
            if let Err(e) = self.scale(&target, replicas).await {
                tracing::warn!(canary = %key, error = %e, "cannot scale the target back up; retrying");
                return;
            }
        }
        let rest: Vec<String> = canary
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        match self.platform.patch_finalizers(canary, rest).await {
            Ok(()) => {
                self.platform
                    .event(
                        canary,
                        EventType::Normal,
                        format!("Terminated canary {name}.{namespace}"),
                    )
                    .await;
                self.reported.remove(&key);
            }
            Err(e) => {
                tracing::warn!(canary = %key, error = %e, "cannot remove the finalizer; retrying")
            }
        }
    }
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// The API resource and name of a rendered document.
fn dynamic_resource(doc: &Value) -> Result<(ApiResource, String), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = match kind {
        "Service" => "services".to_string(),
        "VirtualService" => "virtualservices".to_string(),
        "DestinationRule" => "destinationrules".to_string(),
        "HTTPRoute" => "httproutes".to_string(),
        other => return Err(format!("internal: no API resource for kind {other}")),
    };
    Ok((ApiResource::from_gvk_with_plural(&gvk, &plural), name))
}
