//! The controller's runner: the effects around the pure analysis state machine
//! ([`crate::engine`]). It owns one task per canary (plan, execute hooks and metric
//! queries, advance), the one writer of the state file (the committer), the table the
//! gateways pull, and the answers of the canary API ([`CanaryControl`]).
//!
//! The order of a transition is fixed, and is what makes a crash at any point safe:
//! 1. the canary's task plans and executes the pass (no state changes yet);
//! 2. `advance` computes the next state;
//! 3. the committer saves the whole state file (every canary and the table generation)
//!    and only then serves the table derived from it;
//! 4. the task applies the remaining effects (post-rollout and event hooks, logs).
//!
//! If the save fails, nothing of the transition happens: the in-memory state stays the old
//! one (it never runs ahead of the file), the table is not changed, and the pass is retried
//! one interval later.
//!
//! The committer is one long-lived thread. Under load it batches the transitions that
//! arrive while it waits for the spacing between writes into one write, so a thousand
//! canaries do not mean a thousand writes of the state file per interval. A write encodes
//! and derives (state JSON, route) only what changed since the last one. Every commit
//! carries the version of the state it was computed from; a commit computed from an
//! outdated state (a command arrived during the pass, or the spec changed) is refused and
//! the pass runs again from the new state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinSet;
use veer_core::Route;

use crate::checks::prometheus::{builtin_query, render_query, MetricsSet, PrometheusClient};
use crate::checks::webhooks::{CanaryIdentity, HookType, WebhookCaller};
use crate::engine::{
    self, Action, CanaryState, CheckKind, CheckResult, EventSeverity, IdleReason, PassObservations,
    PassPlan, PassStep, Phase, StepResult, Timestamp,
};
use crate::platform::{Commit, CommittedCanary, Gate, Platform};
use crate::serve::api::{CanaryControl, Command, CommandError};
use crate::serve::observe::{CanaryGauges, GaugeSource, PassOutcome, RunnerMetrics};
use crate::serve::table_hub::{PublishedTable, TableHub};
use crate::spec::{CanarySpec, MetricSource, Severity, SpecSet};

mod committer;
mod control;
mod pass;

use committer::{Change, CommitError, CommitRequest, Committer, Entry, Receipt, Shared};
/// How long shutdown waits for canary tasks to leave their pass before aborting them.
/// Aborting is safe (nothing is committed mid-pass), only effects in flight are lost.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Spacing of state file writes: a write starts no sooner than this after the previous one
/// started, and transitions arriving meanwhile share the next write, so a lone transition
/// (the usual case) is written at once while a thousand canaries stepping mean two writes a
/// second, not a hundred. Each write that changes a route is a new table generation, which
/// every gateway fetches in full (a 200 makes the filter poll again at once): this spacing
/// also keeps the table's generation rate, and so the cost of serving it, at two per
/// second however many canaries and gateways there are.
const WRITE_SPACING: Duration = Duration::from_millis(500);

/// What a restarted runner resumes from.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The generation of the last table served (or reserved): the first table served now
    /// is above it, so gateways holding an older one take it.
    pub table_generation: u64,
    /// Saved states by `namespace/name`, for canaries whose specs load now or later.
    pub canaries: BTreeMap<String, CanaryState>,
}

/// How the runner is set up.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The builtin metrics' query set unless a spec picks another.
    pub metrics_set: MetricsSet,
    /// `--prometheus`; `None` makes every builtin or inline metric check fail with a
    /// message saying so (template metrics may name their own address).
    pub prometheus: Option<PrometheusClient>,
    /// Gateways not heard from for this long are left out of canary status.
    pub gateway_ttl: Duration,
}

/// Why the runner could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the state writer thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot build the webhook HTTP client: {0}")]
    Http(String),
    #[error("cannot save the state at start, so nothing can be served safely: {0}")]
    FirstSave(String),
}

/// The running controller's canaries. Share it as `Arc<Runner>`; it is also the server's
/// [`CanaryControl`].
pub struct Runner {
    me: Weak<Runner>,
    shared: Arc<Shared>,
    commits: Mutex<Option<mpsc::Sender<CommitRequest>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    caller: WebhookCaller,
    config: RunnerConfig,
    /// Clients for MetricTemplate addresses other than `--prometheus`, by address.
    template_clients: Mutex<HashMap<String, Result<PrometheusClient, String>>>,
    metrics: RunnerMetrics,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
}

impl Runner {
    /// Restores `restored` (what the platform saved), loads `specs`, saves through the
    /// platform and serves the first table (its generation above any the previous run
    /// served), then starts one task per canary. Registers the runner's metrics in
    /// `registry`.
    pub async fn start(
        config: RunnerConfig,
        platform: Arc<dyn Platform>,
        restored: Restored,
        specs: Vec<CanarySpec>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Arc<Runner>, StartError> {
        let hub = Arc::new(TableHub::new(restored.table_generation));
        Runner::start_on(hub, config, platform, restored, specs, registry).await
    }

    /// As [`start`](Runner::start), publishing on `hub`, which may already serve a table
    /// (a follower that became the leader keeps serving what it served, and the first table
    /// it publishes is above it).
    pub async fn start_on(
        hub: Arc<TableHub>,
        config: RunnerConfig,
        platform: Arc<dyn Platform>,
        restored: Restored,
        specs: Vec<CanarySpec>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Arc<Runner>, StartError> {
        let saved = restored;
        let shared = Arc::new(Shared {
            hub,
            book: Mutex::new(BTreeMap::new()),
            platform,
        });
        let metrics = RunnerMetrics::register(registry, shared.clone());
        let caller = WebhookCaller::new().map_err(|e| StartError::Http(e.to_string()))?;
        let (sender, requests) = mpsc::channel();
        let committer = Committer {
            shared: shared.clone(),
            committed: BTreeMap::new(),
            orphans: saved.canaries,
            next_version: 0,
            next_write_at: None,
        };
        let thread = std::thread::Builder::new()
            .name("veer-state-writer".into())
            .spawn(move || committer.run(requests))
            .map_err(StartError::Thread)?;
        let runner = Arc::new_cyclic(|me| Runner {
            me: me.clone(),
            shared,
            commits: Mutex::new(Some(sender)),
            committer: Mutex::new(Some(thread)),
            caller,
            config,
            template_clients: Mutex::new(HashMap::new()),
            metrics,
            shutdown: watch::channel(false).0,
            tasks: Mutex::new(JoinSet::new()),
        });
        let specs = specs.into_iter().map(Arc::new).collect();
        let receipt = runner
            .submit(Change::Specs(specs))
            .await
            .map_err(|e| StartError::FirstSave(e.to_string()))?;
        tracing::info!(
            generation = receipt.generation,
            canaries = receipt.added.len(),
            "state restored, first table served"
        );
        for key in receipt.added {
            runner.spawn_task(key);
        }
        Ok(runner)
    }

    /// The committed state of `namespace/name`, if it is loaded.
    pub fn state(&self, namespace: &str, name: &str) -> Option<CanaryState> {
        self.snapshot(&Runner::key_of(namespace, name))
            .map(|(_, state, _, _)| state)
    }

    /// The table the gateways pull.
    pub fn hub(&self) -> Arc<TableHub> {
        self.shared.hub.clone()
    }

    /// Replaces the loaded specs with a re-scanned set. A canary missing from `set` whose
    /// file has errors keeps running on its last good spec; one whose file is gone or
    /// valid without it is stopped (its route withdrawn, its state kept in the file).
    /// An error (the state file could not be written) changes nothing; load again later.
    pub async fn reload(&self, set: &SpecSet) -> Result<(), String> {
        let mut specs: Vec<Arc<CanarySpec>> = set.canaries.iter().cloned().map(Arc::new).collect();
        let keys: BTreeSet<String> = specs.iter().map(|s| s.key()).collect();
        let kept: Vec<Arc<CanarySpec>> = lock(&self.shared.book)
            .iter()
            .filter(|(key, _)| !keys.contains(*key))
            .filter(|(_, e)| {
                set.errors()
                    .any(|p| p.file == e.spec.source.file && p.severity == Severity::Error)
            })
            .map(|(_, e)| e.spec.clone())
            .collect();
        for spec in kept {
            tracing::warn!(
                canary = %spec.key(),
                file = %spec.source.file.display(),
                "the canary's file has errors now; it keeps running on its last good spec"
            );
            specs.push(spec);
        }
        let receipt = self
            .submit(Change::Specs(specs))
            .await
            .map_err(|e| e.to_string())?;
        for key in &receipt.removed {
            tracing::warn!(
                canary = %key,
                "canary removed from the canary directory: its route is withdrawn, its state stays in the state file"
            );
            self.metrics.forget(key);
        }
        for key in receipt.added {
            tracing::info!(canary = %key, "canary loaded");
            self.spawn_task(key);
        }
        Ok(())
    }

    /// Stops every canary task (an in-flight pass is abandoned: nothing of it was
    /// committed, so it runs again after a restart), then lets the state writer finish the
    /// batch in hand. The state file is consistent at every point of this.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let joined = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!("canary tasks did not stop within {SHUTDOWN_GRACE:?}; aborting them");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        lock(&self.commits).take();
        let thread = lock(&self.committer).take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the state writer thread ended abnormally");
            }
        }
        self.shared.hub.close();
    }

    fn arc(&self) -> Option<Arc<Runner>> {
        self.me.upgrade()
    }

    fn spawn_task(&self, key: String) {
        let Some(runner) = self.arc() else { return };
        let mut tasks = lock(&self.tasks);
        // Reap the tasks of unloaded canaries, so the set does not grow with every reload.
        while let Some(ended) = tasks.try_join_next() {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a canary task ended abnormally");
            }
        }
        tasks.spawn(runner.canary_task(key));
    }

    fn request(
        &self,
        change: Change,
    ) -> Result<oneshot::Receiver<Result<Receipt, CommitError>>, CommitError> {
        let (reply, receive) = oneshot::channel();
        let commits = lock(&self.commits);
        let sender = commits.as_ref().ok_or(CommitError::Closed)?;
        sender
            .send(CommitRequest { change, reply })
            .map_err(|_| CommitError::Closed)?;
        Ok(receive)
    }

    async fn submit(&self, change: Change) -> Result<Receipt, CommitError> {
        self.request(change)?
            .await
            .map_err(|_| CommitError::Closed)?
    }

    /// For the synchronous [`CanaryControl`] calls, which the server makes from a runtime
    /// worker: `block_in_place` lets the worker wait without stalling other tasks.
    fn submit_blocking(&self, change: Change) -> Result<Receipt, CommitError> {
        let receive = self.request(change)?;
        tokio::task::block_in_place(|| receive.blocking_recv()).map_err(|_| CommitError::Closed)?
    }

    /// The committed spec, state and version of `key`, and its wake-up.
    fn snapshot(&self, key: &str) -> Option<(Arc<CanarySpec>, CanaryState, u64, Arc<Notify>)> {
        lock(&self.shared.book)
            .get(key)
            .map(|e| (e.spec.clone(), e.state.clone(), e.version, e.wake.clone()))
    }

    // -----------------------------------------------------------------------------------
    // One canary's loop

    async fn canary_task(self: Arc<Self>, key: String) {
        let mut stop = self.shutdown.subscribe();
        // Canaries restored together are all due at once, and would stay in lockstep (a
        // pass is due one interval after the last), hitting Prometheus in one burst per
        // interval. A fixed per-canary offset within one interval spreads them for good.
        if let Some((spec, state, _, wake)) = self.snapshot(&key) {
            let due = matches!(engine::plan(&spec, &state, now()), PassPlan::Run { .. });
            if due && !state.pass_requested {
                tokio::select! {
                    () = tokio::time::sleep(spread(&key, spec.interval())) => {}
                    () = wake.notified() => wake.notify_one(),
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
            }
        }
        loop {
            if *stop.borrow() {
                return;
            }
            let Some((spec, state, version, wake)) = self.snapshot(&key) else {
                tracing::debug!(canary = %key, "canary unloaded; its task ends");
                return;
            };
            let now = now();
            let plan = engine::plan(&spec, &state, now);
            let PassPlan::Run { kind, steps } = &plan else {
                let sleep = match &plan {
                    PassPlan::Idle(IdleReason::NotDue { next_at }) => Some(next_at.since(now)),
                    _ => None,
                };
                let until_due = async {
                    match sleep {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = until_due => {}
                    () = wake.notified() => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
                continue;
            };
            // The workloads must be ready for this pass (Kubernetes mode); a canary unready
            // past its deadline is rolled back through the engine like any transition.
            let gated = tokio::select! {
                gate = self.shared.platform.gate(&spec, &state, *kind) => gate,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let gated_transition = match gated {
                Gate::Proceed => None,
                Gate::Wait(why) => {
                    tracing::info!(canary = %key, phase = %state.phase, "waiting before the pass: {why}");
                    tokio::select! {
                        () = tokio::time::sleep(self.shared.platform.gate_retry()) => {}
                        () = wake.notified() => {}
                        _ = stop.wait_for(|stopped| *stopped) => return,
                    }
                    continue;
                }
                Gate::Fail(why) => Some(engine::on_not_ready(&spec, &state, &why, now)),
            };
            let started = Instant::now();
            let (pass_kind, planned_steps) = (*kind, steps.len());
            let executed = gated_transition.is_none();
            let (observations, transition) = match gated_transition {
                Some(transition) => (PassObservations::default(), transition),
                None => {
                    let observations = tokio::select! {
                        observations = self.execute(&spec, &state, steps) => observations,
                        _ = stop.wait_for(|stopped| *stopped) => {
                            tracing::info!(canary = %key, "shutting down: the pass in flight is abandoned and runs again after restart");
                            return;
                        }
                    };
                    let transition =
                        engine::advance(&spec, &state, &plan, &observations, self::now());
                    (observations, transition)
                }
            };
            let took = started.elapsed();
            let new_state = transition.state.clone();
            // The controller's own record of each pass, written before its transition is
            // saved: a weight anyone sees (API, table, gateway) was preceded by this line,
            // even if the process is killed right after the save. `passed`: every planned
            // step ran and was ok. The kill -9 tests read it to check that each raise of the
            // weight followed a passing analysis at the previous weight.
            let passed = executed
                && observations.results.len() == planned_steps
                && observations.results.iter().all(|r| r.ok);
            tracing::info!(
                canary = %key, kind = ?pass_kind, passed,
                weight = state.weight, next_weight = new_state.weight,
                phase = %state.phase, next_phase = %new_state.phase,
                "pass concluded; saving its transition"
            );
            match self
                .submit(Change::State {
                    key: key.clone(),
                    version,
                    state: Box::new(transition.state),
                })
                .await
            {
                Ok(receipt) => {
                    self.metrics.observe_pass(&key, took, &observations);
                    self.metrics.count_pass(&key, PassOutcome::Committed);
                    tokio::select! {
                        () = self.apply_actions(&spec, &new_state, transition.actions, receipt.generation) => {}
                        _ = stop.wait_for(|stopped| *stopped) => return,
                    }
                }
                Err(CommitError::Stale) => {
                    self.metrics.count_pass(&key, PassOutcome::Stale);
                    tracing::info!(canary = %key, "the state changed during the pass (a command or a new spec); its results are dropped and it runs again");
                }
                Err(CommitError::Gone | CommitError::Closed) => return,
                Err(CommitError::Save(error)) => {
                    self.metrics.count_pass(&key, PassOutcome::NotSaved);
                    tracing::warn!(
                        canary = %key, %error,
                        "the pass's transition is not taken because the state could not be saved; retrying in one interval"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(spec.interval()) => {}
                        () = wake.notified() => {}
                        _ = stop.wait_for(|stopped| *stopped) => return,
                    }
                }
            }
        }
    }
}

/// The canary fields of every webhook payload. The checksum identifies the revision under
/// analysis (local mode has no pod template to hash), so it changes with every new run.
fn identity(spec: &CanarySpec, state: &CanaryState, phase: Phase) -> CanaryIdentity {
    CanaryIdentity {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        phase: phase.as_str().to_string(),
        checksum: state
            .canary_revision
            .clone()
            .or_else(|| state.primary_revision.clone())
            .unwrap_or_default(),
    }
}

/// A stable offset in `0..interval` for `key`.
fn spread(key: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    let millis = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(hasher.finish() % millis)
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// Every critical section here is a plain read or a map update, so a panic elsewhere
/// cannot leave the data half-changed and a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
