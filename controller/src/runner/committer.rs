//! The one writer of the state file. Each canary's task submits its transition; the
//! committer batches what arrives within the write spacing, saves the whole file, and only
//! then serves the table derived from it (see the runner's module doc for why that order).

use super::*;

/// One loaded canary as last committed.
pub(super) struct Entry {
    pub(super) spec: Arc<CanarySpec>,
    pub(super) state: CanaryState,
    /// Changes with every committed change of spec or state (globally unique, so a canary
    /// removed and added again cannot be confused with its former self).
    pub(super) version: u64,
    /// The table generation in which this canary's current route was first served: a
    /// gateway reporting at least this generation has applied the canary's weight.
    pub(super) route_generation: u64,
    /// Wakes the canary's task: a command, a revision or a new spec arrived.
    pub(super) wake: Arc<Notify>,
}

/// What the committer and the readers share.
pub(super) struct Shared {
    pub(super) hub: Arc<TableHub>,
    pub(super) book: Mutex<BTreeMap<String, Entry>>,
    pub(super) platform: Arc<dyn Platform>,
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
pub(super) enum Change {
    /// A canary's new state, computed from the state at `version`.
    State {
        key: String,
        version: u64,
        state: Box<CanaryState>,
    },
    /// The complete set of loaded specs (start, re-scan).
    Specs(Vec<Arc<CanarySpec>>),
}

pub(super) struct CommitRequest {
    pub(super) change: Change,
    pub(super) reply: oneshot::Sender<Result<Receipt, CommitError>>,
}

/// A committed change.
#[derive(Debug, Clone, Default)]
pub(super) struct Receipt {
    /// The generation of the table served after it.
    pub(super) generation: u64,
    pub(super) added: Vec<String>,
    pub(super) removed: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum CommitError {
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
pub(super) struct Committer {
    pub(super) shared: Arc<Shared>,
    /// The loaded canaries as last written (and served): the book's spec, state and
    /// version, with what is derived from them.
    pub(super) committed: BTreeMap<String, Staged>,
    /// Saved states of canaries with no loaded spec.
    pub(super) orphans: BTreeMap<String, CanaryState>,
    pub(super) next_version: u64,
    /// When the last write started, and the earliest start of the next one.
    pub(super) next_write_at: Option<Instant>,
}

/// One loaded canary in a write. Cheap to clone: a write copies every canary's entry and
/// replaces those that change.
#[derive(Clone)]
pub(super) struct Staged {
    pub(super) canary: CommittedCanary,
    /// The route of its spec and state, derived when either changes, not on every write.
    pub(super) route: Arc<Route>,
}

impl Staged {
    pub(super) fn new(spec: Arc<CanarySpec>, state: CanaryState, version: u64) -> Staged {
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
    pub(super) fn run(mut self, requests: mpsc::Receiver<CommitRequest>) {
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

    pub(super) fn version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    pub(super) fn commit(&mut self, batch: Vec<CommitRequest>) {
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
    pub(super) fn stage_specs(
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
