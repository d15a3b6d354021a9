//! Kubernetes mode: Canary resources in the cluster, Flagger's Deployment lifecycle around
//! the same engine and runner as local mode.
//!
//! - [`cluster`]: the watches and their in-memory stores.
//! - [`reconcile`]: the workloads around a run: primary, Services, VirtualService, scaling,
//!   new revisions, promotion, finalizer.
//! - [`objects`], [`revision`], [`readiness`], [`status`]: the pure rules those follow.
//! - [`crd`]: the CRDs veer ships.
//! - This module: [`KubePlatform`], the runner's seam (status as the state, readiness as
//!   the gate, Kubernetes Events), and the table generation kept on a Lease.

pub mod cluster;
pub mod crd;
pub mod events;
pub mod objects;
pub mod readiness;
pub mod reconcile;
pub mod revision;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use self::cluster::{canary_resource, Cluster, Scope};
use self::crd::CanaryStatus;
use self::events::{EventRecorder, EventType};
use self::objects::primary_revision;
use self::readiness::{readiness, Readiness};
use self::reconcile::Reconciler;
use super::{BoxFuture, Commit, Gate, Platform};
use crate::engine::{Action, CanaryState, EventSeverity, PassKind, Timestamp};
use crate::runner::{Restored, Runner, RunnerConfig};
use crate::spec::CanarySpec;

/// The field manager of everything veer applies, and the events' reporting controller.
pub const FIELD_MANAGER: &str = "veer";

/// The Lease that keeps the routing table's generation, so it never goes back across
/// restarts, and its annotation.
pub const GENERATION_LEASE: &str = "veer-table-generation";
const GENERATION_ANNOTATION: &str = "veer.dev/table-generation";
/// Generations reserved per Lease write: one write per this many tables.
const GENERATION_BLOCK: u64 = 1000;

/// Kubernetes mode's settings.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub scope: Scope,
    /// Where the generation Lease lives (the controller's own namespace).
    pub lease_namespace: String,
    /// This replica's name in events (the pod name).
    pub instance: String,
    /// How Canary specs are read (`--min-interval`).
    pub load: crate::spec::LoadOptions,
}

/// The runner's seam in Kubernetes mode.
pub struct KubePlatform {
    cluster: Cluster,
    handle: tokio::runtime::Handle,
    recorder: EventRecorder,
    generation: GenerationLease,
    /// `status.trackedConfigs` per canary, from the reconciler.
    tracked: Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// The state version last written to each canary's status.
    written: Mutex<HashMap<String, u64>>,
    /// The last readiness wait reported per canary, so each is one event, not one per try.
    waits: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KubePlatform {
    pub fn set_tracked(&self, key: &str, tracked: BTreeMap<String, String>) {
        lock(&self.tracked).insert(key.to_string(), tracked);
    }

    /// The run's state as the Canary's status holds it.
    pub fn status_state(&self, canary: &DynamicObject) -> Option<CanaryState> {
        status::state_of(&status_of_object(canary)?)
    }

    fn canary_api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.cluster.client.clone(), namespace, &canary_resource())
    }

    /// A Kubernetes Event on the Canary, in Flagger's form (reason `Synced`).
    pub async fn event(&self, canary: &DynamicObject, type_: EventType, message: String) {
        let reference = canary.object_ref(&canary_resource());
        if let Err(e) = self.recorder.record(&reference, type_, &message).await {
            tracing::warn!(canary = %canary.name_any(), error = %e, "cannot record a Kubernetes event");
        }
    }

    /// The `Promoted` condition for a Canary veer cannot run.
    pub async fn write_problem(&self, canary: &DynamicObject, message: &str) -> Result<(), String> {
        let previous = status_of_object(canary);
        let condition = status::problem_condition(message, previous.as_ref(), now());
        let namespace = canary.namespace().unwrap_or_default();
        self.canary_api(&namespace)
            .patch_status(
                &canary.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "conditions": [condition] } })),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub async fn patch_finalizers(
        &self,
        canary: &DynamicObject,
        finalizers: Vec<String>,
    ) -> Result<(), String> {
        let namespace = canary.namespace().unwrap_or_default();
        self.canary_api(&namespace)
            .patch(
                &canary.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "finalizers": finalizers } })),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn canary_by_key(&self, key: &str) -> Option<Arc<DynamicObject>> {
        let (namespace, name) = key.split_once('/')?;
        self.cluster.canary(namespace, name)
    }

    async fn write_status(&self, key: &str, state: &CanaryState) -> Result<(), String> {
        let Some(canary) = self.canary_by_key(key) else {
            return Ok(()); // deleted: nothing to write
        };
        let tracked = lock(&self.tracked).get(key).cloned().unwrap_or_default();
        let previous = status_of_object(&canary);
        let status = status::status_of(state, &tracked, previous.as_ref(), now());
        let namespace = canary.namespace().unwrap_or_default();
        match self
            .canary_api(&namespace)
            .patch_status(
                &canary.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!("cannot write the status of Canary {key}: {e}")),
        }
    }

    /// Readiness of the canary (during a run) or of the primary (promoting): a wait is
    /// reported once as a Warning event, as Flagger reports "not ready" each tick.
    async fn gate_pass(&self, spec: &CanarySpec, state: &CanaryState, kind: PassKind) -> Gate {
        let namespace = spec.namespace.as_str();
        let target = spec.target_ref.name.as_str();
        let deadline = spec.progress_deadline();
        let gate = match kind {
            PassKind::PreRollout | PassKind::Analysis | PassKind::SkipAnalysis => {
                match self.cluster.deployment(namespace, target) {
                    None => Gate::Wait(format!("canary deployment {namespace}/{target} not found")),
                    Some(d) => match readiness(&d, 100, deadline, SystemTime::now()) {
                        Readiness::Ready => Gate::Proceed,
                        Readiness::NotYet(why) => Gate::Wait(format!("canary {why}")),
                        Readiness::Failed(why) => Gate::Fail(format!("canary {why}")),
                    },
                }
            }
            PassKind::Promote | PassKind::Finalise => {
                let primary = format!("{target}-primary");
                match self.cluster.deployment(namespace, &primary) {
                    None => Gate::Wait(format!("primary deployment {namespace}/{primary} not found")),
                    Some(d) if primary_revision(&d) != state.primary_revision.as_deref() => {
                        Gate::Wait(format!(
                            "primary deployment {namespace}/{primary} has not taken revision {} yet",
                            state.primary_revision.as_deref().unwrap_or("?")
                        ))
                    }
                    Some(d) => match readiness(&d, 100, deadline, SystemTime::now()) {
                        Readiness::Ready => Gate::Proceed,
                        Readiness::NotYet(why) | Readiness::Failed(why) => {
                            Gate::Wait(format!("primary {why}"))
                        }
                    },
                }
            }
            PassKind::ConfirmRollout | PassKind::RollBack(_) => Gate::Proceed,
        };
        let key = spec.key();
        match &gate {
            Gate::Wait(why) => {
                let new = lock(&self.waits).insert(key.clone(), why.clone()).as_ref() != Some(why);
                if new {
                    if let Some(canary) = self.canary_by_key(&key) {
                        self.event(&canary, EventType::Warning, why.clone()).await;
                    }
                }
            }
            _ => {
                lock(&self.waits).remove(&key);
            }
        }
        gate
    }
}

fn status_of_object(canary: &DynamicObject) -> Option<CanaryStatus> {
    serde_json::from_value(canary.data.get("status")?.clone()).ok()
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

impl Platform for KubePlatform {
    fn save(&self, commit: &Commit<'_>) -> Result<(), String> {
        // The generation first: once a table is served, no restart may serve a lower one.
        self.handle
            .block_on(self.generation.reserve(commit.generation))?;
        let changed: Vec<(&String, &Arc<CanaryState>, u64)> = {
            let written = lock(&self.written);
            commit
                .canaries
                .iter()
                .filter(|(key, c)| written.get(*key) != Some(&c.version))
                .map(|(key, c)| (key, &c.state, c.version))
                .collect()
        };
        for (key, state, version) in changed {
            self.handle.block_on(self.write_status(key, state))?;
            lock(&self.written).insert(key.clone(), version);
        }
        lock(&self.written).retain(|key, _| commit.canaries.contains_key(key));
        Ok(())
    }

    fn saved_state(&self, key: &str) -> Option<CanaryState> {
        self.status_state(&*self.canary_by_key(key)?)
    }

    fn gate<'a>(
        &'a self,
        spec: &'a CanarySpec,
        state: &'a CanaryState,
        kind: PassKind,
    ) -> BoxFuture<'a, Gate> {
        Box::pin(self.gate_pass(spec, state, kind))
    }

    fn apply<'a>(
        &'a self,
        spec: &'a CanarySpec,
        _state: &'a CanaryState,
        action: &'a Action,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match action {
                Action::Event { severity, message } => {
                    if let Some(canary) = self.canary_by_key(&spec.key()) {
                        let type_ = match severity {
                            EventSeverity::Normal => EventType::Normal,
                            EventSeverity::Warning => EventType::Warning,
                        };
                        self.event(&canary, type_, message.clone()).await;
                    }
                }
                // The reconciler copies the template into the primary (and again after a
                // restart, since it compares the primary's revision with the state's).
                Action::PromotePrimary { .. } => self.cluster.changed.notify_one(),
                Action::PublishRoute(_) | Action::PostRolloutHooks { .. } => {}
            }
        })
    }
}

/// The table generation, reserved in blocks on a Lease annotation.
struct GenerationLease {
    api: Api<Lease>,
    reserved: AtomicU64,
}

impl GenerationLease {
    /// Reads (or creates) the Lease; the value returned is above every generation any
    /// previous controller served.
    async fn open(client: Client, namespace: &str) -> Result<(GenerationLease, u64), String> {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let read = |lease: &Lease| {
            lease
                .annotations()
                .get(GENERATION_ANNOTATION)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        format!("Lease {namespace}/{GENERATION_LEASE}: annotation {GENERATION_ANNOTATION} is not a number: {v:?}")
                    })
                })
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let base = match api.get_opt(GENERATION_LEASE).await {
            Ok(Some(lease)) => read(&lease)?,
            Ok(None) => {
                let mut lease = Lease::default();
                lease.metadata.name = Some(GENERATION_LEASE.into());
                lease.metadata.annotations = Some(BTreeMap::from([(
                    GENERATION_ANNOTATION.to_string(),
                    "0".to_string(),
                )]));
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => 0,
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let lease = api.get(GENERATION_LEASE).await.map_err(|e| e.to_string())?;
                        read(&lease)?
                    }
                    Err(e) => {
                        return Err(format!(
                            "cannot create Lease {namespace}/{GENERATION_LEASE} for the table generation: {e}"
                        ))
                    }
                }
            }
            Err(e) => {
                return Err(format!(
                    "cannot read Lease {namespace}/{GENERATION_LEASE} for the table generation: {e}"
                ))
            }
        };
        Ok((
            GenerationLease {
                api,
                reserved: AtomicU64::new(base),
            },
            base,
        ))
    }

    async fn reserve(&self, generation: u64) -> Result<(), String> {
        if generation <= self.reserved.load(Ordering::SeqCst) {
            return Ok(());
        }
        let up_to = generation + GENERATION_BLOCK;
        self.api
            .patch(
                GENERATION_LEASE,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { GENERATION_ANNOTATION: up_to.to_string() } } })),
            )
            .await
            .map_err(|e| format!("cannot reserve table generations on Lease {GENERATION_LEASE}: {e}"))?;
        self.reserved.store(up_to, Ordering::SeqCst);
        Ok(())
    }
}

/// A running Kubernetes mode: the runner (served by the HTTP API like local mode's) and
/// the reconciler around it.
pub struct KubeMode {
    pub runner: Arc<Runner>,
    stop: tokio::sync::watch::Sender<bool>,
    reconciler: tokio::task::JoinHandle<()>,
}

impl KubeMode {
    /// Connects (kubeconfig or in-cluster), waits for the first full read of the cluster,
    /// restores the table generation and starts the runner and the reconciler.
    pub async fn start(
        options: KubeOptions,
        config: RunnerConfig,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<KubeMode, String> {
        let client = Client::try_default().await.map_err(|e| {
            format!("cannot connect to Kubernetes (KUBECONFIG, or in-cluster config): {e}")
        })?;
        let cluster = Cluster::watch(client.clone(), &options.scope).await?;
        let (generation, base) =
            GenerationLease::open(client.clone(), &options.lease_namespace).await?;
        let recorder = EventRecorder::new(client, options.instance.clone());
        let platform = Arc::new(KubePlatform {
            cluster: cluster.clone(),
            handle: tokio::runtime::Handle::current(),
            recorder,
            generation,
            tracked: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            waits: Mutex::new(HashMap::new()),
        });
        let restored = Restored {
            table_generation: base,
            canaries: BTreeMap::new(),
        };
        let runner = Runner::start(config, platform.clone(), restored, Vec::new(), registry)
            .await
            .map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let reconciler = tokio::spawn(
            Reconciler::new(cluster, runner.clone(), platform, options.load).run(stopped),
        );
        tracing::info!(
            generation_base = base,
            namespaces = ?options.scope.namespaces,
            selector = ?options.scope.selector,
            "Kubernetes mode: watching Canaries"
        );
        Ok(KubeMode {
            runner,
            stop,
            reconciler,
        })
    }

    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.reconciler.await {
            tracing::error!(error = %e, "the reconciler ended abnormally");
        }
        self.runner.shutdown().await;
    }
}
