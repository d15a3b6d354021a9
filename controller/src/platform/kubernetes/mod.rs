//! Kubernetes mode: Canary resources in the cluster, Flagger's Deployment lifecycle around
//! the same engine and runner as local mode.
//!
//! - [`cluster`]: the watches and their in-memory stores.
//! - [`reconcile`]: the workloads around a run: primary, Services, VirtualService, scaling,
//!   new revisions, promotion, finalizer.
//! - [`objects`], [`revision`], [`readiness`], [`status`]: the pure rules those follow.
//! - [`crd`]: the CRDs veer ships.
//! - [`leader`]: leadership among replicas (a Lease) and the fence on every write.
//! - [`table_map`]: the routing table every replica serves, kept in a ConfigMap.
//! - This module: [`KubePlatform`], the runner's seam (status as the state, readiness as
//!   the gate, Kubernetes Events), and [`KubeMode`], a replica that follows until it
//!   leads.

pub mod cluster;
pub mod crd;
pub mod events;
pub mod leader;
pub mod objects;
pub mod readiness;
pub mod reconcile;
pub mod revision;
pub mod status;
pub mod table_map;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use self::cluster::{canary_resource, Cluster, Scope};
use self::crd::CanaryStatus;
use self::events::{EventRecorder, EventType};
use self::leader::{LeaderElection, Leadership, LeaseTimings, LEADER_LEASE};
use self::objects::primary_revision;
use self::readiness::{readiness, Readiness};
use self::reconcile::Reconciler;
use self::table_map::TableMap;
use super::{BoxFuture, Commit, Gate, Platform};
use crate::engine::{Action, CanaryState, EventSeverity, PassKind, Timestamp};
use crate::runner::{Restored, Runner, RunnerConfig};
use crate::serve::api::{CanaryControl, Command, CommandError};
use crate::serve::table_hub::TableHub;
use crate::spec::CanarySpec;

/// The field manager of everything veer applies, and the events' reporting controller.
pub const FIELD_MANAGER: &str = "veer";

/// Kubernetes mode's settings.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub scope: Scope,
    /// Where the leader Lease and the table ConfigMap live (the controller's namespace).
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
    /// The fence every write checks: true while this replica leads.
    leadership: Arc<Leadership>,
    table_map: Arc<TableMap>,
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
        if !self.leadership.holds() {
            return;
        }
        let reference = canary.object_ref(&canary_resource());
        if let Err(e) = self.recorder.record(&reference, type_, &message).await {
            tracing::warn!(canary = %canary.name_any(), error = %e, "cannot record a Kubernetes event");
        }
    }

    /// The `Promoted` condition for a Canary veer cannot run.
    pub async fn write_problem(&self, canary: &DynamicObject, message: &str) -> Result<(), String> {
        self.leadership.check()?;
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
        self.leadership.check()?;
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
        if let Err(why) = self.leadership.check() {
            return Gate::Wait(why);
        }
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
        self.leadership.check()?;
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
            self.leadership.check()?;
            self.handle.block_on(self.write_status(key, state))?;
            lock(&self.written).insert(key.clone(), version);
        }
        lock(&self.written).retain(|key, _| commit.canaries.contains_key(key));
        // The states first, then the table: a table is served (by any replica) only once
        // the states it derives from are in the Canaries' status, so a new leader restores
        // at least what gateways were sent.
        if let Some(table) = commit.table {
            self.leadership.check()?;
            self.handle.block_on(self.table_map.write(table))?;
        }
        Ok(())
    }

    fn may_act(&self) -> Result<(), String> {
        self.leadership.check()
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

/// The canary API of a replica: the runner's while it leads; a follower refuses with the
/// reason, since the leader runs the canaries.
pub struct KubeControl {
    identity: String,
    lease_namespace: String,
    leading: Mutex<Option<(Arc<Runner>, Arc<prometheus_client::registry::Registry>)>>,
}

impl KubeControl {
    fn runner(&self) -> Result<Arc<Runner>, CommandError> {
        lock(&self.leading)
            .as_ref()
            .map(|(runner, _)| runner.clone())
            .ok_or_else(|| {
                CommandError::Unavailable(format!(
                    "replica {} follows: the leader (the holder of Lease {}/{LEADER_LEASE}) runs the canaries and answers this; \
                     `kubectl get canaries` shows their status from any replica",
                    self.identity, self.lease_namespace
                ))
            })
    }
}

impl CanaryControl for KubeControl {
    fn list(&self) -> Result<serde_json::Value, CommandError> {
        self.runner()?.list()
    }

    fn get(&self, namespace: &str, name: &str) -> Result<Option<serde_json::Value>, CommandError> {
        self.runner()?.get(namespace, name)
    }

    fn command(
        &self,
        namespace: &str,
        name: &str,
        cmd: Command,
    ) -> Result<serde_json::Value, CommandError> {
        self.runner()?.command(namespace, name, cmd)
    }

    fn metrics_text(&self) -> String {
        let leading = lock(&self.leading).clone();
        let mut text = format!(
            "# HELP veer_leader Whether this replica leads (runs the canaries) or follows (serves the leader's table).\n\
             # TYPE veer_leader gauge\nveer_leader {}\n",
            u8::from(leading.is_some())
        );
        if let Some((runner, registry)) = leading {
            let mut runner_text = String::new();
            if prometheus_client::encoding::text::encode_registry(&mut runner_text, &registry)
                .is_ok()
            {
                text.push_str(&runner_text);
            }
            text.push_str(&runner.metrics_text());
        }
        text
    }
}

/// How this replica ended on its own (not by a stop).
pub type Ended = String;

/// A running Kubernetes mode: the table served on [`KubeMode::hub`] and the canary API on
/// [`KubeMode::control`], whether this replica leads or follows.
pub struct KubeMode {
    hub: Arc<TableHub>,
    control: Arc<KubeControl>,
    stop: tokio::sync::watch::Sender<bool>,
    role: Option<tokio::task::JoinHandle<Option<Ended>>>,
}

/// What leading runs: the runner and the reconciler around it.
struct Leading {
    runner: Arc<Runner>,
    stop: tokio::sync::watch::Sender<bool>,
    reconciler: tokio::task::JoinHandle<()>,
}

impl Leading {
    /// Watches the cluster, restores the runs from the Canaries' status and starts the
    /// runner (publishing on `hub`, above the table the ConfigMap holds) and the reconciler.
    async fn start(replica: &Replica) -> Result<Leading, String> {
        let options = &replica.options;
        if let Some(stored) = replica.table_map.read().await? {
            replica.hub.adopt(stored).map_err(|e| e.to_string())?;
        }
        let cluster = Cluster::watch(replica.client.clone(), &options.scope).await?;
        let recorder = EventRecorder::new(replica.client.clone(), options.instance.clone());
        let platform = Arc::new(KubePlatform {
            cluster: cluster.clone(),
            handle: tokio::runtime::Handle::current(),
            recorder,
            leadership: replica.leadership.clone(),
            table_map: replica.table_map.clone(),
            tracked: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            waits: Mutex::new(HashMap::new()),
        });
        let restored = Restored {
            table_generation: replica.hub.generation(),
            canaries: BTreeMap::new(),
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let runner = Runner::start_on(
            replica.hub.clone(),
            replica.config.clone(),
            platform.clone(),
            restored,
            Vec::new(),
            &mut registry,
        )
        .await
        .map_err(|e| e.to_string())?;
        *lock(&replica.control.leading) = Some((runner.clone(), Arc::new(registry)));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let reconciler = tokio::spawn(
            Reconciler::new(cluster, runner.clone(), platform, options.load).run(stopped),
        );
        tracing::info!(
            generation = replica.hub.generation(),
            namespaces = ?options.scope.namespaces,
            selector = ?options.scope.selector,
            "Kubernetes mode: leading, running the Canaries"
        );
        Ok(Leading {
            runner,
            stop,
            reconciler,
        })
    }

    async fn shutdown(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.reconciler.await {
            tracing::error!(error = %e, "the reconciler ended abnormally");
        }
        self.runner.shutdown().await;
    }
}

/// One replica: what it shares between following and leading.
struct Replica {
    client: Client,
    options: KubeOptions,
    config: RunnerConfig,
    hub: Arc<TableHub>,
    control: Arc<KubeControl>,
    table_map: Arc<TableMap>,
    leadership: Arc<Leadership>,
}

impl Replica {
    /// Follows until elected, then leads until stopped (`None`) or until the Lease is lost
    /// (`Some(why)`: the process should exit, as Flagger's does).
    async fn elected(
        self,
        mut election: LeaderElection,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<Ended> {
        let (stop_following, following) = tokio::sync::watch::channel(false);
        let follower = {
            let (map, hub) = (self.table_map.clone(), self.hub.clone());
            tokio::spawn(async move { map.follow(hub, following).await })
        };
        let stopped = tokio::select! {
            () = election.acquire(&self.leadership) => false,
            () = until_stopped(&mut stop) => true,
        };
        stop_following.send_replace(true);
        let _ = follower.await;
        if stopped {
            return None;
        }
        let leading = match Leading::start(&self).await {
            Ok(leading) => leading,
            Err(e) => return Some(e),
        };
        tokio::select! {
            // Lost: the process exits without waiting for the runner (it can write nothing).
            why = election.keep(&self.leadership) => Some(why),
            () = until_stopped(&mut stop) => {
                leading.shutdown().await;
                election.release().await;
                None
            }
        }
    }
}

impl KubeMode {
    /// Connects (kubeconfig or in-cluster) and serves the last stored table at once.
    /// Without `election`, this replica leads now (errors, such as a missing permission,
    /// are returned here); with it, it follows until it holds the Lease.
    pub async fn start(
        options: KubeOptions,
        config: RunnerConfig,
        election: Option<LeaseTimings>,
    ) -> Result<KubeMode, String> {
        let client = Client::try_default().await.map_err(|e| {
            format!("cannot connect to Kubernetes (KUBECONFIG, or in-cluster config): {e}")
        })?;
        let table_map = Arc::new(TableMap::new(client.clone(), &options.lease_namespace));
        let hub = Arc::new(TableHub::new(0));
        // A follower serves the stored table at once; a leader reads it as it starts leading
        // (`Leading::start`), so a sole replica does not read it twice.
        if election.is_some() {
            if let Some(stored) = table_map.read().await? {
                hub.adopt(stored).map_err(|e| e.to_string())?;
            }
        }
        let identity = replica_identity(&options.instance);
        let control = Arc::new(KubeControl {
            identity: identity.clone(),
            lease_namespace: options.lease_namespace.clone(),
            leading: Mutex::new(None),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let lease_namespace = options.lease_namespace.clone();
        let replica = Replica {
            client: client.clone(),
            options,
            config,
            hub: hub.clone(),
            control: control.clone(),
            table_map,
            leadership: Arc::new(match election {
                Some(timings) => Leadership::elected(timings.renew_deadline),
                None => Leadership::sole(),
            }),
        };
        let role = match election {
            None => {
                let leading = Leading::start(&replica).await?;
                tokio::spawn(async move {
                    let mut stop = stopped;
                    until_stopped(&mut stop).await;
                    leading.shutdown().await;
                    None
                })
            }
            Some(timings) => {
                timings.check()?;
                tracing::info!(%identity, lease = %format!("{lease_namespace}/{LEADER_LEASE}"), "leader election: following until this replica holds the Lease");
                let election = LeaderElection::new(client, &lease_namespace, identity, timings);
                tokio::spawn(replica.elected(election, stopped))
            }
        };
        Ok(KubeMode {
            hub,
            control,
            stop,
            role: Some(role),
        })
    }

    pub fn hub(&self) -> Arc<TableHub> {
        self.hub.clone()
    }

    pub fn control(&self) -> Arc<KubeControl> {
        self.control.clone()
    }

    /// Resolves when this replica ends on its own: it lost the Lease, or could not start
    /// leading. Pending forever otherwise.
    pub async fn ended(&mut self) -> Ended {
        let Some(role) = self.role.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = role.await;
        self.role = None;
        match outcome {
            Ok(Some(why)) => why,
            Ok(None) => std::future::pending().await,
            Err(e) => format!("the controller's main task failed: {e}"),
        }
    }

    /// Stops leading (the runner and reconciler finish their step) and hands the Lease back.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(role) = self.role.take() {
            if let Err(e) = role.await {
                tracing::error!(error = %e, "the controller's main task failed");
            }
        }
    }
}

/// The Lease holder's name: the pod's, made unique per process, as client-go does, so a
/// restarted pod waits for its old self's lease like any other candidate.
fn replica_identity(instance: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{instance}_{:08x}", nanos ^ std::process::id())
}

/// Until `stop` turns true (the guard `wait_for` returns is dropped here, so callers may
/// await after it).
async fn until_stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
