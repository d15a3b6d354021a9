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

// ---------------------------------------------------------------------------------------
// Committed state

/// One loaded canary as last committed.
struct Entry {
    spec: Arc<CanarySpec>,
    state: CanaryState,
    /// Changes with every committed change of spec or state (globally unique, so a canary
    /// removed and added again cannot be confused with its former self).
    version: u64,
    /// The table generation in which this canary's current route was first served: a
    /// gateway reporting at least this generation has applied the canary's weight.
    route_generation: u64,
    /// Wakes the canary's task: a command, a revision or a new spec arrived.
    wake: Arc<Notify>,
}

/// What the committer and the readers share.
struct Shared {
    hub: Arc<TableHub>,
    book: Mutex<BTreeMap<String, Entry>>,
    platform: Arc<dyn Platform>,
}

impl GaugeSource for Shared {
    fn gauges(&self) -> Vec<CanaryGauges> {
        lock(&self.book)
            .iter()
            .map(|(key, e)| CanaryGauges {
                canary: key.clone(),
                phase: e.state.phase,
                weight: e.state.weight,
                failed_checks: e.state.failed_checks,
                iterations: e.state.iterations,
            })
            .collect()
    }
}

/// A change for the committer.
enum Change {
    /// A canary's new state, computed from the state at `version`.
    State {
        key: String,
        version: u64,
        state: Box<CanaryState>,
    },
    /// The complete set of loaded specs (start, re-scan).
    Specs(Vec<Arc<CanarySpec>>),
}

struct CommitRequest {
    change: Change,
    reply: oneshot::Sender<Result<Receipt, CommitError>>,
}

/// A committed change.
#[derive(Debug, Clone, Default)]
struct Receipt {
    /// The generation of the table served after it.
    generation: u64,
    added: Vec<String>,
    removed: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
enum CommitError {
    #[error("the canary's state changed while this transition was computed")]
    Stale,
    #[error("the canary is no longer loaded")]
    Gone,
    #[error("{0}")]
    Save(String),
    #[error("the controller is shutting down")]
    Closed,
}

/// The one writer of the state file and the table. Runs on its own thread: writes are
/// blocking file I/O with fsync, which must not stall the async runtime.
struct Committer {
    shared: Arc<Shared>,
    /// The loaded canaries as last written (and served): the book's spec, state and
    /// version, with what is derived from them.
    committed: BTreeMap<String, Staged>,
    /// Saved states of canaries with no loaded spec.
    orphans: BTreeMap<String, CanaryState>,
    next_version: u64,
    /// When the last write started, and the earliest start of the next one.
    next_write_at: Option<Instant>,
}

/// One loaded canary in a write. Cheap to clone: a write copies every canary's entry and
/// replaces those that change.
#[derive(Clone)]
struct Staged {
    canary: CommittedCanary,
    /// The route of its spec and state, derived when either changes, not on every write.
    route: Arc<Route>,
}

impl Staged {
    fn new(spec: Arc<CanarySpec>, state: CanaryState, version: u64) -> Staged {
        let route = Arc::new(engine::route_for_state(&spec, &state));
        Staged {
            canary: CommittedCanary {
                spec,
                state: Arc::new(state),
                version,
            },
            route,
        }
    }
}

impl Committer {
    fn run(mut self, requests: mpsc::Receiver<CommitRequest>) {
        while let Ok(first) = requests.recv() {
            let wait = self
                .next_write_at
                .and_then(|at| at.checked_duration_since(Instant::now()));
            if let Some(wait) = wait {
                // Sleeping rather than receiving: transitions queue up meanwhile without
                // waking this thread for each of them.
                std::thread::sleep(wait);
            }
            let mut batch = vec![first];
            // Whatever is queued shares this write.
            batch.extend(requests.try_iter());
            let started = Instant::now();
            self.commit(batch);
            self.next_write_at = Some(started + WRITE_SPACING);
        }
    }

    fn version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn commit(&mut self, batch: Vec<CommitRequest>) {
        let mut staged = self.committed.clone();
        let mut orphans = self.orphans.clone();
        let mut verdicts = Vec::with_capacity(batch.len());
        for request in batch {
            let verdict = match request.change {
                Change::State {
                    key,
                    version,
                    state,
                } => match staged.get(&key) {
                    None => Err(CommitError::Gone),
                    Some(s) if s.canary.version != version => Err(CommitError::Stale),
                    Some(s) => {
                        let spec = s.canary.spec.clone();
                        let version = self.version();
                        staged.insert(key, Staged::new(spec, *state, version));
                        Ok(Receipt::default())
                    }
                },
                Change::Specs(specs) => Ok(self.stage_specs(&mut staged, &mut orphans, specs)),
            };
            verdicts.push((request.reply, verdict));
        }
        if verdicts.iter().all(|(_, v)| v.is_err()) {
            for (reply, verdict) in verdicts {
                let _ = reply.send(verdict);
            }
            return;
        }

        // The platform saves the commit (state file, or Canary status) before its table is
        // served; a table that did not change still needs the states saved.
        let canaries: BTreeMap<String, CommittedCanary> = staged
            .iter()
            .map(|(key, s)| (key.clone(), s.canary.clone()))
            .collect();
        let platform = &self.shared.platform;
        let save = |generation: u64, table: Option<&PublishedTable>| {
            platform.save(&Commit {
                generation,
                table,
                canaries: &canaries,
                orphans: &orphans,
            })
        };
        let routes: Vec<Route> = staged.values().map(|s| (*s.route).clone()).collect();
        let mut saved = false;
        let published = self.shared.hub.publish_checked(routes, |table| {
            save(table.table().generation, Some(table))?;
            saved = true;
            Ok::<(), String>(())
        });
        let result = match published {
            Ok(generation) if !saved => save(generation, None).map(|()| generation),
            other => other.map_err(|e| e.to_string()),
        };
        let generation = match result {
            Ok(generation) => generation,
            Err(message) => {
                tracing::error!(
                    error = %message,
                    "cannot save the state; the transitions of this batch are not taken and are retried"
                );
                for (reply, verdict) in verdicts {
                    let _ = reply.send(verdict.and(Err(CommitError::Save(message.clone()))));
                }
                return;
            }
        };

        // Saved and served: install into the book.
        let route_changed = |key: &str, s: &Staged| {
            self.committed
                .get(key)
                .is_none_or(|c| !Arc::ptr_eq(&c.route, &s.route) && c.route != s.route)
        };
        {
            let mut book = lock(&self.shared.book);
            book.retain(|key, entry| {
                let keep = staged.contains_key(key);
                if !keep {
                    entry.wake.notify_one();
                }
                keep
            });
            for (key, s) in &staged {
                let route_changed = route_changed(key, s);
                match book.get_mut(key) {
                    Some(entry) => {
                        if entry.version != s.canary.version {
                            let spec_changed = !Arc::ptr_eq(&entry.spec, &s.canary.spec);
                            entry.spec = s.canary.spec.clone();
                            entry.state = (*s.canary.state).clone();
                            entry.version = s.canary.version;
                            if spec_changed {
                                entry.wake.notify_one();
                            }
                        }
                        if route_changed {
                            entry.route_generation = generation;
                        }
                    }
                    None => {
                        book.insert(
                            key.clone(),
                            Entry {
                                spec: s.canary.spec.clone(),
                                state: (*s.canary.state).clone(),
                                version: s.canary.version,
                                route_generation: generation,
                                wake: Arc::new(Notify::new()),
                            },
                        );
                    }
                }
            }
        }
        self.committed = staged;
        self.orphans = orphans;
        for (reply, verdict) in verdicts {
            let _ = reply.send(verdict.map(|mut receipt| {
                receipt.generation = generation;
                receipt
            }));
        }
    }

    /// Makes `specs` the loaded set: new canaries take their saved state (or start fresh),
    /// removed ones keep theirs in the file, changed ones get the new spec.
    fn stage_specs(
        &mut self,
        staged: &mut BTreeMap<String, Staged>,
        orphans: &mut BTreeMap<String, CanaryState>,
        specs: Vec<Arc<CanarySpec>>,
    ) -> Receipt {
        let mut receipt = Receipt::default();
        let keys: BTreeSet<String> = specs.iter().map(|s| s.key()).collect();
        let gone: Vec<String> = staged
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(s) = staged.remove(&key) {
                orphans.insert(key.clone(), Arc::unwrap_or_clone(s.canary.state));
                receipt.removed.push(key);
            }
        }
        for spec in specs {
            let key = spec.key();
            match staged.get_mut(&key) {
                Some(s) => {
                    if *s.canary.spec != *spec {
                        s.route = Arc::new(engine::route_for_state(&spec, &s.canary.state));
                        s.canary.spec = spec;
                        s.canary.version = self.version();
                    }
                }
                None => {
                    let state = orphans
                        .remove(&key)
                        .or_else(|| self.shared.platform.saved_state(&key))
                        .unwrap_or_default();
                    let version = self.version();
                    staged.insert(key.clone(), Staged::new(spec, state, version));
                    receipt.added.push(key);
                }
            }
        }
        receipt
    }
}

// ---------------------------------------------------------------------------------------
// The runner

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

    /// Executes the plan's steps in order, stopping at the first that is not ok.
    async fn execute(
        &self,
        spec: &CanarySpec,
        state: &CanaryState,
        steps: &[PassStep],
    ) -> PassObservations {
        let identity = identity(spec, state, state.phase);
        let mut results = Vec::with_capacity(steps.len());
        for step in steps {
            let result = match *step {
                PassStep::RollbackHooks => self.rollback_hooks(spec, &identity).await,
                PassStep::Hooks(hook_type) => self.hooks(spec, hook_type, &identity).await,
                PassStep::Metric { index } => self.metric(spec, index).await,
            };
            let ok = result.ok;
            results.push(result);
            if !ok {
                break;
            }
        }
        PassObservations { results }
    }

    /// Rollback hooks are inverted: a passing answer from any of them means roll back.
    async fn rollback_hooks(&self, spec: &CanarySpec, identity: &CanaryIdentity) -> StepResult {
        let mut checks = Vec::new();
        for hook in spec.hooks(HookType::Rollback) {
            if let Err(e) = self.shared.platform.may_act() {
                return StepResult {
                    step: PassStep::RollbackHooks,
                    ok: true,
                    checks: vec![CheckResult {
                        name: hook.name.clone(),
                        kind: CheckKind::Hook(HookType::Rollback),
                        passed: true,
                        value: None,
                        message: e,
                    }],
                };
            }
            let payload = identity.payload(hook.metadata.clone());
            let answer = self.caller.call(&hook, &payload).await;
            let rollback = answer.is_ok();
            if let Err(e) = &answer {
                tracing::debug!(canary = %spec.key(), hook = %hook.name, error = %e, "rollback hook: no rollback requested");
            }
            checks.push(CheckResult {
                name: hook.name.clone(),
                kind: CheckKind::Hook(HookType::Rollback),
                passed: !rollback,
                value: None,
                message: if rollback {
                    format!(
                        "rollback webhook {:?} answered 2xx: roll back now",
                        hook.name
                    )
                } else {
                    String::new()
                },
            });
            if rollback {
                return StepResult {
                    step: PassStep::RollbackHooks,
                    ok: false,
                    checks,
                };
            }
        }
        StepResult {
            step: PassStep::RollbackHooks,
            ok: true,
            checks,
        }
    }

    async fn hooks(
        &self,
        spec: &CanarySpec,
        hook_type: HookType,
        identity: &CanaryIdentity,
    ) -> StepResult {
        let hooks = spec.hooks(hook_type);
        // A replica that may not act (it lost the leadership) calls no webhook.
        if let (Err(e), Some(first)) = (self.shared.platform.may_act(), hooks.first()) {
            return StepResult {
                step: PassStep::Hooks(hook_type),
                ok: false,
                checks: vec![CheckResult {
                    name: first.name.clone(),
                    kind: CheckKind::Hook(hook_type),
                    passed: false,
                    value: None,
                    message: e,
                }],
            };
        }
        let outcome = self.caller.run_in_order(hook_type, &hooks, identity).await;
        let failed_at = outcome.as_ref().err().map(|f| f.index);
        let checks = hooks
            .iter()
            .enumerate()
            .take(failed_at.map_or(hooks.len(), |i| i + 1))
            .map(|(i, hook)| {
                let failure = outcome.as_ref().err().filter(|_| Some(i) == failed_at);
                CheckResult {
                    name: hook.name.clone(),
                    kind: CheckKind::Hook(hook_type),
                    passed: failure.is_none(),
                    value: None,
                    message: failure.map(|f| f.to_string()).unwrap_or_default(),
                }
            })
            .collect();
        StepResult {
            step: PassStep::Hooks(hook_type),
            ok: outcome.is_ok(),
            checks,
        }
    }

    async fn metric(&self, spec: &CanarySpec, index: usize) -> StepResult {
        let step = PassStep::Metric { index };
        let Some(metric) = spec.analysis.metrics.get(index) else {
            return StepResult {
                step,
                ok: false,
                checks: vec![CheckResult {
                    name: format!("metric #{index}"),
                    kind: CheckKind::Metric,
                    passed: false,
                    value: None,
                    message: format!("the spec has no metric #{index}"),
                }],
            };
        };
        let reading = self.read_metric(spec, index).await;
        let (passed, value, message) = match reading {
            Ok(v) if metric.threshold_range.contains(v) => (true, Some(v), String::new()),
            Ok(v) => (
                false,
                Some(v),
                format!(
                    "metric {}: value {v} is outside the threshold range ({})",
                    metric.name, metric.threshold_range
                ),
            ),
            Err(e) => (false, None, format!("metric {}: {e}", metric.name)),
        };
        StepResult {
            step,
            ok: passed,
            checks: vec![CheckResult {
                name: metric.name.clone(),
                kind: CheckKind::Metric,
                passed,
                value,
                message,
            }],
        }
    }

    /// The metric's rendered query, run against its Prometheus.
    async fn read_metric(&self, spec: &CanarySpec, index: usize) -> Result<f64, String> {
        let metric = spec
            .analysis
            .metrics
            .get(index)
            .ok_or_else(|| format!("the spec has no metric #{index}"))?;
        let vars = spec.query_vars(metric);
        let (query, address) = match &metric.source {
            MetricSource::Builtin(builtin) => (
                builtin_query(spec.metrics_set(self.config.metrics_set), *builtin, &vars),
                None,
            ),
            MetricSource::Query(template) => (
                render_query(template, &vars)
                    .map_err(|e| format!("cannot render the query: {e}"))?,
                None,
            ),
            MetricSource::Template {
                name,
                namespace,
                query,
                address,
            } => (
                render_query(query, &vars)
                    .map_err(|e| format!("cannot render MetricTemplate {namespace}/{name}: {e}"))?,
                address.clone(),
            ),
        };
        let client = match address {
            Some(address) => self.template_client(&address)?,
            None => self.config.prometheus.clone().ok_or_else(|| {
                "no Prometheus configured: start the controller with --prometheus URL".to_string()
            })?,
        };
        client.query_value(&query).await.map_err(|e| e.to_string())
    }

    /// The client for a MetricTemplate's own address (cached; the `--prometheus` client
    /// when it is the same server, so both share connections).
    fn template_client(&self, address: &str) -> Result<PrometheusClient, String> {
        lock(&self.template_clients)
            .entry(address.to_string())
            .or_insert_with(|| {
                let client = PrometheusClient::new(address).map_err(|e| e.to_string())?;
                Ok(match &self.config.prometheus {
                    Some(default) if default.query_url() == client.query_url() => default.clone(),
                    _ => client,
                })
            })
            .clone()
    }

    /// The effects of a committed transition. The route is already served (the commit
    /// publishes it); post-rollout and event hook failures are only logged.
    async fn apply_actions(
        &self,
        spec: &CanarySpec,
        state: &CanaryState,
        actions: Vec<Action>,
        generation: u64,
    ) {
        let key = spec.key();
        for action in actions {
            self.shared.platform.apply(spec, state, &action).await;
            match action {
                Action::PublishRoute(route) => tracing::info!(
                    canary = %key, weight_bp = route.weight, mirror_bp = route.mirror_weight, generation,
                    "routing table updated"
                ),
                Action::PromotePrimary { revision } => {
                    tracing::info!(canary = %key, %revision, "the primary now runs this revision");
                }
                Action::PostRolloutHooks { phase } => {
                    let hooks = spec.hooks(HookType::PostRollout);
                    if hooks.is_empty() {
                        continue;
                    }
                    let identity = identity(spec, state, phase);
                    if let Err(e) = self
                        .caller
                        .run_in_order(HookType::PostRollout, &hooks, &identity)
                        .await
                    {
                        tracing::warn!(canary = %key, error = %e, "post-rollout webhook failed (only logged)");
                    }
                }
                Action::Event { severity, message } => {
                    match severity {
                        EventSeverity::Normal => {
                            tracing::info!(canary = %key, phase = %state.phase, "{message}")
                        }
                        EventSeverity::Warning => {
                            tracing::warn!(canary = %key, phase = %state.phase, "{message}")
                        }
                    }
                    let hooks = spec.hooks(HookType::Event);
                    if hooks.is_empty() {
                        continue;
                    }
                    let identity = identity(spec, state, state.phase);
                    for hook in &hooks {
                        if let Err(e) = self
                            .caller
                            .send_event(hook, &identity, &message, severity.as_str())
                            .await
                        {
                            tracing::warn!(canary = %key, error = %e, "event webhook failed (only logged)");
                        }
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Status

    /// One canary's status. `detail` lists every gateway with its confirmed generation;
    /// without it (the list of all canaries) only the counts and the gateways behind are
    /// given, so the list stays small with many canaries and gateways.
    fn status(
        &self,
        key: &str,
        entry: &Entry,
        gateways: &[(String, crate::serve::table_hub::GatewaySeen)],
        detail: bool,
    ) -> Value {
        let spec = &entry.spec;
        let s = &entry.state;
        let applied =
            |seen: &crate::serve::table_hub::GatewaySeen| seen.generation >= entry.route_generation;
        let applied_count = gateways.iter().filter(|(_, seen)| applied(seen)).count();
        let gateway_json = |(id, seen): &(String, crate::serve::table_hub::GatewaySeen)| {
            json!({
                "id": id,
                "generation": seen.generation,
                "applied": applied(seen),
                "lastSeen": humantime::format_rfc3339_millis(seen.last_seen).to_string(),
            })
        };
        let listed: Vec<Value> = gateways
            .iter()
            .filter(|(_, seen)| detail || !applied(seen))
            .map(gateway_json)
            .collect();
        let gateways_key = if detail { "gateways" } else { "gatewaysBehind" };
        let next_pass = match engine::plan(spec, s, now()) {
            PassPlan::Idle(IdleReason::NotDue { next_at }) => Some(next_at.to_string()),
            PassPlan::Run { .. } => Some(now().to_string()),
            PassPlan::Idle(_) => None,
        };
        json!({
            "name": spec.name,
            "namespace": spec.namespace,
            "key": key,
            "source": spec.source.to_string(),
            "phase": s.phase,
            "weight": s.weight,
            "mirror": s.mirror,
            "failedChecks": s.failed_checks,
            "threshold": spec.threshold(),
            "iterations": s.iterations,
            "canaryRevision": s.canary_revision,
            "primaryRevision": s.primary_revision,
            "failedRevision": s.failed_revision,
            "paused": s.paused,
            "suspended": spec.suspend,
            "interval": humantime::format_duration(spec.interval()).to_string(),
            "lastTransitionTime": s.last_transition_at,
            "lastPassTime": s.last_pass_at,
            "nextPassTime": next_pass,
            "message": s.message,
            "lastChecks": s.last_checks,
            "routeGeneration": entry.route_generation,
            "gatewaysApplied": applied_count,
            "gatewaysTotal": gateways.len(),
            gateways_key: listed,
        })
    }

    /// Gateways heard from within the TTL.
    fn live_gateways(&self) -> Vec<(String, crate::serve::table_hub::GatewaySeen)> {
        let now = SystemTime::now();
        self.shared
            .hub
            .gateways()
            .into_iter()
            .filter(|(_, seen)| {
                now.duration_since(seen.last_seen)
                    .map_or(true, |age| age <= self.config.gateway_ttl)
            })
            .collect()
    }

    fn key_of(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    fn apply_command(&self, key: &str, cmd: &Command) -> Result<Value, CommandError> {
        let not_found = || CommandError::NotFound(format!("no canary {key}"));
        // A pass may commit between our read and our commit; then recompute from the new
        // state. A handful of attempts is plenty: passes are at least a second apart.
        for _ in 0..8 {
            let (spec, state, version, wake) = self.snapshot(key).ok_or_else(not_found)?;
            let at = now();
            let transition = match cmd {
                Command::Revision(revision) => engine::on_revision(&spec, &state, revision, at),
                Command::Promote => command(&spec, &state, engine::Command::Promote, at)?,
                Command::Rollback => command(&spec, &state, engine::Command::Rollback, at)?,
                Command::Pause => command(&spec, &state, engine::Command::Pause, at)?,
                Command::Resume => command(&spec, &state, engine::Command::Resume, at)?,
            };
            if transition.state == state {
                return self.get_by_key(key).ok_or_else(not_found);
            }
            let new_state = transition.state.clone();
            match self.submit_blocking(Change::State {
                key: key.to_string(),
                version,
                state: Box::new(transition.state),
            }) {
                Ok(receipt) => {
                    wake.notify_one();
                    if let Some(runner) = self.arc() {
                        let actions = transition.actions;
                        tokio::spawn(async move {
                            runner
                                .apply_actions(&spec, &new_state, actions, receipt.generation)
                                .await;
                        });
                    }
                    return self.get_by_key(key).ok_or_else(not_found);
                }
                Err(CommitError::Stale) => continue,
                Err(CommitError::Gone) => return Err(not_found()),
                Err(e @ (CommitError::Save(_) | CommitError::Closed)) => {
                    return Err(CommandError::Unavailable(format!(
                        "not applied, the state could not be saved: {e}"
                    )))
                }
            }
        }
        Err(CommandError::Conflict(format!(
            "{key} kept changing while the command was applied; try again"
        )))
    }

    fn get_by_key(&self, key: &str) -> Option<Value> {
        let gateways = self.live_gateways();
        let book = lock(&self.shared.book);
        book.get(key).map(|e| self.status(key, e, &gateways, true))
    }
}

fn command(
    spec: &CanarySpec,
    state: &CanaryState,
    cmd: engine::Command,
    at: Timestamp,
) -> Result<engine::Transition, CommandError> {
    engine::on_command(spec, state, cmd, at).map_err(|e| CommandError::Conflict(e.to_string()))
}

impl CanaryControl for Runner {
    fn list(&self) -> Result<Value, CommandError> {
        let gateways = self.live_gateways();
        let book = lock(&self.shared.book);
        let canaries: Vec<Value> = book
            .iter()
            .map(|(key, e)| self.status(key, e, &gateways, false))
            .collect();
        Ok(json!({
            "tableGeneration": self.shared.hub.generation(),
            "gateways": gateways.iter().map(|(id, seen)| json!({
                "id": id,
                "generation": seen.generation,
                "lastSeen": humantime::format_rfc3339_millis(seen.last_seen).to_string(),
            })).collect::<Vec<_>>(),
            "canaries": canaries,
        }))
    }

    fn get(&self, namespace: &str, name: &str) -> Result<Option<Value>, CommandError> {
        Ok(self.get_by_key(&Runner::key_of(namespace, name)))
    }

    fn command(&self, namespace: &str, name: &str, cmd: Command) -> Result<Value, CommandError> {
        let key = Runner::key_of(namespace, name);
        let answer = self.apply_command(&key, &cmd);
        match &answer {
            Ok(_) => tracing::info!(canary = %key, command = ?cmd, "command applied"),
            Err(e) => tracing::warn!(canary = %key, command = ?cmd, error = %e, "command refused"),
        }
        answer
    }

    fn metrics_text(&self) -> String {
        // Everything is in the shared registry (see observe.rs).
        String::new()
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
