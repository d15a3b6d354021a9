//! Leadership among the controller's replicas: a `coordination.k8s.io/v1` Lease, acquired
//! and renewed with client-go's algorithm (the one Flagger's `-enable-leader-election`
//! uses), and the local fence every write checks.
//!
//! - A candidate takes the Lease when it has no holder, or when its record has not changed
//!   for `lease_duration` as this replica observed it (its own clock, never the holder's
//!   timestamps, so clock skew between nodes does not matter).
//! - The leader renews every `retry_period`. Every update carries the `resourceVersion` it
//!   read, so two candidates can never both win one round: the API server refuses the
//!   second with a conflict.
//! - [`Leadership::holds`] is true only while the last successful renewal *started* less
//!   than `renew_deadline` ago. `renew_deadline < lease_duration`, so a leader stops
//!   writing before any other replica may take over, even when it was paused (SIGSTOP, a
//!   long GC, a frozen node) and has not yet run its renew loop: it checks the clock, not
//!   the loop.
//! - A leader that loses the Lease exits, as Flagger does; its pod restarts as a follower.
//!   On a graceful stop it hands the Lease back (client-go's `ReleaseOnCancel`), so a
//!   rolling update does not wait out the lease.
//!
//! kube-lease-manager (the maintained Lease crate for kube 5) was considered: it has
//! duration and grace in whole seconds but no separate renew deadline and retry period,
//! panics on invalid parameters, and does not expose when the Lease was last renewed, which
//! the fence needs. This module is the algorithm of client-go's `leaderelection` package,
//! on kube-rs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

/// The Lease's name (Flagger's is `flagger-leader-election`).
pub const LEADER_LEASE: &str = "veer-leader-election";

/// client-go's three durations. Flagger's values are the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a follower waits, from the last change it saw, before taking the Lease.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire, and the leader renews.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            lease_duration: Duration::from_secs(60),
            renew_deadline: Duration::from_secs(15),
            retry_period: Duration::from_secs(5),
        }
    }
}

impl LeaseTimings {
    /// client-go's constraints, which make the fence sound.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "--leader-election-renew-deadline ({:?}) must be shorter than --leader-election-lease-duration ({:?}): \
                 a leader must stop before another replica may take over",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "--leader-election-retry-period ({:?}) must be above zero and shorter than --leader-election-renew-deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err("--leader-election-lease-duration must be at least 1s (the Lease counts whole seconds)".into());
        }
        Ok(())
    }
}

/// Whether this replica may act as the leader right now.
#[derive(Debug)]
pub struct Leadership {
    /// When the last successful acquire or renew started.
    renewed: Mutex<Option<Instant>>,
    renew_deadline: Duration,
}

impl Leadership {
    /// A replica that always leads: leader election is off (one replica).
    pub fn sole() -> Leadership {
        Leadership {
            renewed: Mutex::new(None),
            renew_deadline: Duration::MAX,
        }
    }

    /// A candidate that does not hold the Lease yet.
    pub fn elected(renew_deadline: Duration) -> Leadership {
        Leadership {
            renewed: Mutex::new(None),
            renew_deadline,
        }
    }

    /// The fence: true while the last renewal started less than the renew deadline ago.
    pub fn holds(&self) -> bool {
        if self.renew_deadline == Duration::MAX {
            return true;
        }
        let renewed = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        renewed.is_some_and(|at| at.elapsed() < self.renew_deadline)
    }

    /// `Err` with the reason when this replica may not write.
    pub fn check(&self) -> Result<(), String> {
        if self.holds() {
            Ok(())
        } else {
            Err(format!(
                "this replica is not the leader (no renewal of Lease {LEADER_LEASE} within the renew deadline): writing nothing"
            ))
        }
    }

    fn renewed_at(&self, at: Instant) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }
}

/// One replica's candidacy.
pub struct LeaderElection {
    api: Api<Lease>,
    identity: String,
    timings: LeaseTimings,
    /// The last Lease read, and when this replica saw its record change.
    observed: Option<(Lease, Instant)>,
}

/// The outcome of one try.
enum Attempt {
    Held,
    HeldByOther(String),
}

impl LeaderElection {
    pub fn new(
        client: Client,
        namespace: &str,
        identity: String,
        timings: LeaseTimings,
    ) -> LeaderElection {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            identity,
            timings,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Tries every retry period until this replica holds the Lease, logging the holder
    /// each time it changes.
    pub async fn acquire(&mut self, leadership: &Leadership) {
        let mut last_holder = String::new();
        loop {
            let started = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    leadership.renewed_at(started);
                    tracing::info!(identity = %self.identity, lease = LEADER_LEASE, "became the leader");
                    return;
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    if holder != last_holder {
                        tracing::info!(leader = %holder, "another replica leads; following");
                        last_holder = holder;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot acquire the leader Lease; retrying"),
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    /// Renews every retry period; returns (with the reason) once a renewal has not
    /// succeeded within the renew deadline, or the Lease is someone else's.
    pub async fn keep(&mut self, leadership: &Leadership) -> String {
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            let started = Instant::now();
            match tokio::time::timeout(self.timings.renew_deadline, self.try_acquire_or_renew())
                .await
            {
                Ok(Ok(Attempt::Held)) => leadership.renewed_at(started),
                Ok(Ok(Attempt::HeldByOther(holder))) => {
                    return format!("the Lease {LEADER_LEASE} is now held by {holder}")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader Lease; retrying"),
                Err(_) => tracing::warn!("renewing the leader Lease timed out; retrying"),
            }
            if !leadership.holds() {
                return format!(
                    "the Lease {LEADER_LEASE} was not renewed within the renew deadline ({:?})",
                    self.timings.renew_deadline
                );
            }
        }
    }

    /// Hands the Lease back on a graceful stop, so the next leader need not wait out the
    /// lease duration.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEADER_LEASE).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(LEADER_LEASE, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("handed the leader Lease back"),
            Err(e) => tracing::warn!(error = %e, "cannot hand the leader Lease back"),
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, String> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.timings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = self
            .api
            .get_opt(LEADER_LEASE)
            .await
            .map_err(|e| format!("get Lease {LEADER_LEASE}: {e}"))?
        else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(LEADER_LEASE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observed = Some((created, Instant::now()));
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    Ok(Attempt::HeldByOther("(another replica, just now)".into()))
                }
                Err(e) => Err(format!("create Lease {LEADER_LEASE}: {e}")),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        // The record changed since last seen: restart the expiry clock from now.
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| seen.spec != current.spec);
        if changed {
            self.observed = Some((current.clone(), Instant::now()));
        }
        let observed_at = self
            .observed
            .as_ref()
            .map_or_else(Instant::now, |(_, at)| *at);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_by_me = holder == self.identity;
        let their_duration = spec
            .lease_duration_seconds
            .map_or(self.timings.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        if !holder.is_empty() && !held_by_me && observed_at.elapsed() < their_duration {
            return Ok(Attempt::HeldByOther(holder));
        }
        let mut next = current.clone();
        let next_spec = next.spec.get_or_insert_with(LeaseSpec::default);
        if !held_by_me {
            next_spec.acquire_time = Some(MicroTime(now));
            next_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next_spec.holder_identity = Some(self.identity.clone());
        next_spec.lease_duration_seconds = Some(seconds);
        next_spec.renew_time = Some(MicroTime(now));
        // `replace` sends the resourceVersion read above: a concurrent winner makes this
        // a conflict, never a second holder.
        match self
            .api
            .replace(LEADER_LEASE, &PostParams::default(), &next)
            .await
        {
            Ok(updated) => {
                self.observed = Some((updated, Instant::now()));
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::HeldByOther(
                "(another replica, in the same round)".into(),
            )),
            Err(e) => Err(format!("update Lease {LEADER_LEASE}: {e}")),
        }
    }
}
