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
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
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
use crate::platform::local::store::{self, StoreError};
use crate::serve::api::{CanaryControl, Command, CommandError};
use crate::serve::observe::{CanaryGauges, GaugeSource, PassOutcome, RunnerMetrics};
use crate::serve::table_hub::TableHub;
use crate::spec::{CanarySpec, MetricSource, Severity, SpecSet};

/// The state file format this veer writes and reads.
pub const STATE_FILE_VERSION: u32 = 1;

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
// The state file

/// The local-mode state file: everything a restart needs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    /// The generation of the last table served (or about to be): the next run serves a
    /// higher one, so gateways holding it take the new table.
    pub table_generation: u64,
    /// By `namespace/name`. Canaries whose spec is gone are kept, so a spec that comes back
    /// (or was only broken for a while) resumes where it was.
    #[serde(default)]
    pub canaries: BTreeMap<String, CanaryState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "state file {} has format version {found}, this veer reads version {STATE_FILE_VERSION}",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
}

/// Reads the state file; `Ok(None)` only when it does not exist.
pub fn load_state_file(path: &Path) -> Result<Option<StateFile>, StateFileError> {
    let Some(file) = store::load::<StateFile>(path)? else {
        return Ok(None);
    };
    if file.version != STATE_FILE_VERSION {
        return Err(StateFileError::Version {
            path: path.to_path_buf(),
            found: file.version,
        });
    }
    Ok(Some(file))
}

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
    state_file: PathBuf,
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
    spec: Arc<CanarySpec>,
    state: Arc<CanaryState>,
    version: u64,
    /// The route of `spec` and `state`, derived when either changes, not on every write.
    route: Arc<Route>,
    /// `state` as it appears in the state file ([`state_json`]); encoded once per change.
    json: Option<Arc<[u8]>>,
}

impl Staged {
    fn new(spec: Arc<CanarySpec>, state: CanaryState, version: u64) -> Staged {
        let route = Arc::new(engine::route_for_state(&spec, &state));
        Staged {
            spec,
            state: Arc::new(state),
            version,
            route,
            json: None,
        }
    }
}

/// A canary's state as the state file's pretty-printed JSON has it: at depth 2, inside
/// `"canaries"`. Encoded on its own, a state starts at depth 0, so every line after the
/// first gets two more levels of indentation (JSON strings never contain a raw newline).
fn state_json(state: &CanaryState) -> Result<Arc<[u8]>, serde_json::Error> {
    let flat = serde_json::to_vec_pretty(state)?;
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 8);
    for &b in &flat {
        out.push(b);
        if b == b'\n' {
            out.extend_from_slice(b"    ");
        }
    }
    Ok(out.into())
}

/// The state file's bytes from every canary's [`state_json`] in key order: the same bytes
/// `serde_json::to_vec_pretty` gives for the whole [`StateFile`] (plus a final newline),
/// without encoding again the states that did not change.
fn state_file_json<'a>(
    table_generation: u64,
    canaries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = format!(
        "{{\n  \"version\": {STATE_FILE_VERSION},\n  \"tableGeneration\": {table_generation},\n  \"canaries\": {{"
    )
    .into_bytes();
    let mut any = false;
    for (key, json) in canaries {
        out.extend_from_slice(if any { b",\n    " } else { b"\n    " });
        serde_json::to_writer(&mut out, key)?;
        out.extend_from_slice(b": ");
        out.extend_from_slice(json);
        any = true;
    }
    out.extend_from_slice(if any { b"\n  }\n}\n" } else { b"}\n}\n" });
    Ok(out)
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
                    Some(s) if s.version != version => Err(CommitError::Stale),
                    Some(s) => {
                        let spec = s.spec.clone();
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

        let path = self.shared.state_file.clone();
        let result = Self::encode_states(&mut staged, &orphans)
            .map_err(|source| {
                StoreError::Encode {
                    path: path.clone(),
                    source,
                }
                .to_string()
            })
            .and_then(|orphans_json| {
                // A canary is either loaded or an orphan, never both.
                let mut canaries: BTreeMap<&str, &[u8]> = orphans_json
                    .iter()
                    .map(|(key, json)| (*key, &json[..]))
                    .collect();
                canaries.extend(
                    staged
                        .iter()
                        .filter_map(|(key, s)| Some((key.as_str(), s.json.as_deref()?))),
                );
                let document = |generation: u64| {
                    state_file_json(generation, canaries.iter().map(|(k, j)| (*k, *j))).map_err(
                        |source| StoreError::Encode {
                            path: path.clone(),
                            source,
                        },
                    )
                };
                let routes: Vec<Route> = staged.values().map(|s| (*s.route).clone()).collect();
                let mut saved = false;
                let published = self.shared.hub.publish_checked(routes, |generation| {
                    store::save_json(&path, &document(generation)?)?;
                    saved = true;
                    Ok::<(), StoreError>(())
                });
                match published {
                    // The table did not change: the states still must reach the file.
                    Ok(generation) if !saved => document(generation)
                        .and_then(|json| store::save_json(&path, &json))
                        .map(|()| generation)
                        .map_err(|e| e.to_string()),
                    other => other.map_err(|e| e.to_string()),
                }
            });
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
                        if entry.version != s.version {
                            let spec_changed = !Arc::ptr_eq(&entry.spec, &s.spec);
                            entry.spec = s.spec.clone();
                            entry.state = (*s.state).clone();
                            entry.version = s.version;
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
                                spec: s.spec.clone(),
                                state: (*s.state).clone(),
                                version: s.version,
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

    /// Encodes the states that changed since they were last written (in place), and every
    /// orphan's (there are none unless canary files were removed).
    fn encode_states<'a>(
        staged: &mut BTreeMap<String, Staged>,
        orphans: &'a BTreeMap<String, CanaryState>,
    ) -> Result<BTreeMap<&'a str, Arc<[u8]>>, serde_json::Error> {
        for s in staged.values_mut().filter(|s| s.json.is_none()) {
            s.json = Some(state_json(&s.state)?);
        }
        orphans
            .iter()
            .map(|(key, state)| Ok((key.as_str(), state_json(state)?)))
            .collect()
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
                orphans.insert(key.clone(), Arc::unwrap_or_clone(s.state));
                receipt.removed.push(key);
            }
        }
        for spec in specs {
            let key = spec.key();
            match staged.get_mut(&key) {
                Some(s) => {
                    if *s.spec != *spec {
                        s.route = Arc::new(engine::route_for_state(&spec, &s.state));
                        s.spec = spec;
                        s.version = self.version();
                    }
                }
                None => {
                    let state = orphans.remove(&key).unwrap_or_default();
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

/// How the runner is set up.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub state_file: PathBuf,
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
    #[error("cannot write the state file at start, so nothing can be served safely: {0}")]
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
    /// Restores `saved` (from [`load_state_file`]), loads `specs`, writes the state file and
    /// serves the first table (its generation above any the previous run served), then
    /// starts one task per canary. Registers the runner's metrics in `registry`.
    pub async fn start(
        config: RunnerConfig,
        saved: Option<StateFile>,
        specs: Vec<CanarySpec>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Arc<Runner>, StartError> {
        let saved = saved.unwrap_or_default();
        let hub = Arc::new(TableHub::new(saved.table_generation));
        let shared = Arc::new(Shared {
            hub,
            book: Mutex::new(BTreeMap::new()),
            state_file: config.state_file.clone(),
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
            let PassPlan::Run { steps, .. } = &plan else {
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
            let started = Instant::now();
            let observations = tokio::select! {
                observations = self.execute(&spec, &state, steps) => observations,
                _ = stop.wait_for(|stopped| *stopped) => {
                    tracing::info!(canary = %key, "shutting down: the pass in flight is abandoned and runs again after restart");
                    return;
                }
            };
            let took = started.elapsed();
            let transition = engine::advance(&spec, &state, &plan, &observations, self::now());
            let new_state = transition.state.clone();
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
            let payload = identity.payload(hook.metadata.clone());
            let timeout = hook
                .timeout
                .unwrap_or(crate::checks::webhooks::DEFAULT_HOOK_TIMEOUT);
            let answer = self
                .caller
                .call(&hook.name, &hook.url, timeout, &payload)
                .await;
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
    fn list(&self) -> Value {
        let gateways = self.live_gateways();
        let book = lock(&self.shared.book);
        let canaries: Vec<Value> = book
            .iter()
            .map(|(key, e)| self.status(key, e, &gateways, false))
            .collect();
        json!({
            "tableGeneration": self.shared.hub.generation(),
            "gateways": gateways.iter().map(|(id, seen)| json!({
                "id": id,
                "generation": seen.generation,
                "lastSeen": humantime::format_rfc3339_millis(seen.last_seen).to_string(),
            })).collect::<Vec<_>>(),
            "canaries": canaries,
        })
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        self.get_by_key(&Runner::key_of(namespace, name))
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

// ---------------------------------------------------------------------------------------
// The canary directory

/// A canary directory re-read only when its YAML files change (names, sizes or mtimes), so
/// a frequent check costs a directory listing, not a parse of every spec.
#[derive(Debug)]
pub struct SpecDir {
    dir: PathBuf,
    seen: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

impl SpecDir {
    pub fn new(dir: PathBuf) -> SpecDir {
        SpecDir { dir, seen: None }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the next [`load_if_changed`](SpecDir::load_if_changed) read the directory.
    pub fn invalidate(&mut self) {
        self.seen = None;
    }

    /// Loads the directory if it changed since the last load (or was never loaded).
    /// `Ok(None)`: unchanged.
    pub fn load_if_changed(&mut self) -> Result<Option<SpecSet>, crate::spec::SpecDirError> {
        let signature = self
            .signature()
            .map_err(|source| crate::spec::SpecDirError {
                dir: self.dir.clone(),
                source,
            })?;
        if self.seen.as_ref() == Some(&signature) {
            return Ok(None);
        }
        let set = crate::spec::load_dir(&self.dir)?;
        self.seen = Some(signature);
        Ok(Some(set))
    }

    fn signature(&self) -> std::io::Result<Vec<(PathBuf, u64, Option<SystemTime>)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let yaml = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml");
            if !yaml {
                continue;
            }
            // Follows symlinks, as a ConfigMap volume's files are symlinks.
            match std::fs::metadata(&path) {
                Ok(meta) => files.push((path, meta.len(), meta.modified().ok())),
                Err(_) => files.push((path, 0, None)),
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Logs every problem of a loaded set, each naming its file, document and field.
pub fn log_problems(set: &SpecSet) {
    for problem in &set.problems {
        match problem.severity {
            Severity::Warning => tracing::warn!("{problem}"),
            Severity::Error => tracing::error!("{problem} (this document is not loaded)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CheckKind, CheckResult};

    fn state(weight: u32, message: &str) -> CanaryState {
        CanaryState {
            phase: Phase::Progressing,
            weight,
            canary_revision: Some("v2".into()),
            primary_revision: Some("v\"1\"\n".into()),
            last_pass_at: Some(Timestamp::from_millis(1_700_000_000_123)),
            last_checks: vec![CheckResult {
                name: "request-success-rate".into(),
                kind: CheckKind::Metric,
                passed: true,
                value: Some(99.5),
                message: String::new(),
            }],
            message: message.into(),
            ..CanaryState::default()
        }
    }

    /// The state file assembled from per-canary pieces must be byte for byte what encoding
    /// the whole document gives, so it reads back the same and looks the same to a person.
    #[test]
    fn assembled_state_file_is_the_pretty_json_of_the_whole_document() {
        let file = StateFile {
            version: STATE_FILE_VERSION,
            table_generation: 42,
            canaries: BTreeMap::from([
                (
                    "a/one".to_string(),
                    state(10, "Advance a/one canary weight 10"),
                ),
                ("b/\"odd\" name".to_string(), CanaryState::default()),
                ("c/three".to_string(), state(0, "line one\nline two")),
            ]),
        };
        let pieces: Vec<(String, Arc<[u8]>)> = file
            .canaries
            .iter()
            .map(|(k, s)| (k.clone(), state_json(s).unwrap()))
            .collect();
        let assembled = state_file_json(
            file.table_generation,
            pieces.iter().map(|(k, j)| (k.as_str(), &j[..])),
        )
        .unwrap();
        let mut whole = serde_json::to_vec_pretty(&file).unwrap();
        whole.push(b'\n');
        assert_eq!(
            String::from_utf8(assembled.clone()).unwrap(),
            String::from_utf8(whole).unwrap()
        );
        let read_back: StateFile = serde_json::from_slice(&assembled).unwrap();
        assert_eq!(read_back, file);

        let empty = StateFile {
            version: STATE_FILE_VERSION,
            table_generation: 7,
            canaries: BTreeMap::new(),
        };
        let mut whole = serde_json::to_vec_pretty(&empty).unwrap();
        whole.push(b'\n');
        assert_eq!(state_file_json(7, []).unwrap(), whole);
    }
}
