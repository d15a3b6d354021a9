//! Where canaries live, behind one seam. The runner ([`crate::runner`]) drives the pure
//! engine the same way on every platform; what differs is behind [`Platform`]:
//! - where a committed state is kept (a state file, or the Canary's status),
//! - whether the workloads let a planned pass run now (readiness, in Kubernetes mode),
//! - what promotion and events do beyond the routing table.
//!
//! [`local`]: spec files and a state file; workloads are not veer's to watch.
//! [`kubernetes`]: Canary resources, their Deployments, Services, VirtualService and status.

pub mod kubernetes;
pub mod local;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::engine::{Action, CanaryState, PassKind};
use crate::serve::table_hub::PublishedTable;
use crate::spec::CanarySpec;

/// A boxed future, so that [`Platform`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One loaded canary as the runner commits it.
#[derive(Debug, Clone)]
pub struct CommittedCanary {
    pub spec: Arc<CanarySpec>,
    pub state: Arc<CanaryState>,
    /// Changes with every committed change of spec or state, so a platform can tell which
    /// canaries a commit changed (and cache what it derives from the others).
    pub version: u64,
}

/// What one commit saves: every loaded canary, the states of canaries no longer loaded
/// (kept, so they resume if their spec comes back), and the table generation the commit
/// is served as.
pub struct Commit<'a> {
    pub generation: u64,
    /// The new table, when this commit publishes one (`None`: the served table stays).
    pub table: Option<&'a PublishedTable>,
    pub canaries: &'a BTreeMap<String, CommittedCanary>,
    pub orphans: &'a BTreeMap<String, CanaryState>,
}

/// Whether a planned pass may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Proceed,
    /// Not yet (a workload is rolling out): try again shortly; not a failed check.
    Wait(String),
    /// The canary stayed unready past `progressDeadlineSeconds`: roll the run back.
    Fail(String),
}

/// The seam between the runner and where canaries live.
pub trait Platform: Send + Sync + 'static {
    /// Saves a commit before its table is served; an error means nothing of the commit is
    /// taken (the runner retries). Blocking: called on the state writer's own thread.
    fn save(&self, commit: &Commit<'_>) -> Result<(), String>;

    /// The saved state of a canary that was just loaded and is not among the states the
    /// runner was started with (Kubernetes mode: its status). `None`: it starts fresh.
    fn saved_state(&self, _key: &str) -> Option<CanaryState> {
        None
    }

    /// Whether the workloads let a pass of this kind run now.
    fn gate<'a>(
        &'a self,
        spec: &'a CanarySpec,
        state: &'a CanaryState,
        kind: PassKind,
    ) -> BoxFuture<'a, Gate>;

    /// The platform's part of a committed transition's action (the routing table is
    /// already served; hooks are the runner's). Failures are the platform's to log.
    fn apply<'a>(
        &'a self,
        spec: &'a CanarySpec,
        state: &'a CanaryState,
        action: &'a Action,
    ) -> BoxFuture<'a, ()>;

    /// Whether this process may act on the world now (call webhooks, write): `Err` says
    /// why not (Kubernetes mode: another replica leads).
    fn may_act(&self) -> Result<(), String> {
        Ok(())
    }

    /// How long the runner waits before planning again after [`Gate::Wait`].
    fn gate_retry(&self) -> std::time::Duration {
        std::time::Duration::from_secs(2)
    }
}
