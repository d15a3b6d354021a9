//! Whether a Deployment has rolled out, by Flagger's rules (flagger-k8s rule 13), as a pure
//! function of the Deployment object and the time. The Deployment controller (real, in the
//! cluster) keeps the status these rules read.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;

/// The verdict on one Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Still rolling out: wait and look again.
    NotYet(String),
    /// It will not become ready: its own progress deadline passed, or it has been without
    /// its minimum available replicas for longer than the Canary's
    /// `progressDeadlineSeconds`.
    Failed(String),
}

/// The rollout state of `d`. `threshold_percent` is the share of updated replicas that must
/// be available (Flagger's `canaryReadyThreshold`/`primaryReadyThreshold`, default 100).
/// A Deployment scaled to zero is not ready: a canary must have pods to be analysed.
pub fn readiness(
    d: &Deployment,
    threshold_percent: u32,
    deadline: Duration,
    now: SystemTime,
) -> Readiness {
    let name = d.metadata.name.as_deref().unwrap_or("?");
    let Some(spec) = &d.spec else {
        return Readiness::NotYet(format!("deployment {name} has no spec"));
    };
    let status = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    if generation > status.observed_generation.unwrap_or(0) {
        return Readiness::NotYet(format!(
            "waiting for rollout of deployment {name} to start: observed generation is behind"
        ));
    }
    let conditions = status.conditions.clone().unwrap_or_default();
    let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind);
    if let Some(c) = condition("Progressing") {
        if c.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return Readiness::Failed(format!("deployment {name} exceeded its progress deadline"));
        }
    }
    let desired = spec.replicas.unwrap_or(1);
    if desired == 0 {
        return Readiness::NotYet(format!("deployment {name} is scaled to zero"));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let wanted_available = (i64::from(updated) * i64::from(threshold_percent) / 100) as i32;
    let waiting = if updated < desired {
        Some(format!(
            "waiting for rollout of deployment {name} to finish: {updated} of {desired} updated replicas"
        ))
    } else if replicas > updated {
        Some(format!(
            "waiting for rollout of deployment {name} to finish: {} old replicas are pending termination",
            replicas - updated
        ))
    } else if available < wanted_available {
        Some(format!(
            "waiting for rollout of deployment {name} to finish: {available} of {updated} updated replicas are available"
        ))
    } else {
        None
    };
    let Some(waiting) = waiting else {
        return Readiness::Ready;
    };
    let stuck_since = condition("Available")
        .filter(|c| {
            c.status == "False" && c.reason.as_deref() == Some("MinimumReplicasUnavailable")
        })
        .and_then(|c| {
            c.last_update_time
                .as_ref()
                .or(c.last_transition_time.as_ref())
        })
        .map(|t| SystemTime::from(t.0));
    match stuck_since {
        Some(since) if since + deadline < now => Readiness::Failed(format!(
            "{waiting}; no minimum availability for more than {}",
            humantime::format_duration(deadline)
        )),
        _ => Readiness::NotYet(waiting),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(status: &str, replicas: i32) -> Deployment {
        serde_norway::from_str(&format!(
            "metadata: {{name: podinfo, generation: 2}}\nspec:\n  replicas: {replicas}\n  selector: {{}}\n  template: {{}}\nstatus:\n{status}"
        ))
        .unwrap()
    }

    const T0: &str = "2026-12-04T10:00:00Z";

    fn at(secs: u64) -> SystemTime {
        SystemTime::from(T0.parse::<k8s_openapi::jiff::Timestamp>().unwrap())
            + Duration::from_secs(secs)
    }

    #[test]
    fn the_rules_in_order() {
        let deadline = Duration::from_secs(60);
        let ready = deployment(
            "  observedGeneration: 2\n  replicas: 2\n  updatedReplicas: 2\n  availableReplicas: 2",
            2,
        );
        assert_eq!(readiness(&ready, 100, deadline, at(0)), Readiness::Ready);
        let behind = deployment("  observedGeneration: 1", 2);
        assert!(
            matches!(readiness(&behind, 100, deadline, at(0)), Readiness::NotYet(m) if m.contains("observed generation"))
        );
        let rolling = deployment(
            "  observedGeneration: 2\n  replicas: 3\n  updatedReplicas: 2\n  availableReplicas: 2",
            2,
        );
        assert_eq!(
            readiness(&rolling, 100, deadline, at(0)),
            Readiness::NotYet("waiting for rollout of deployment podinfo to finish: 1 old replicas are pending termination".into())
        );
        let half = deployment(
            "  observedGeneration: 2\n  replicas: 2\n  updatedReplicas: 2\n  availableReplicas: 1",
            2,
        );
        assert!(matches!(
            readiness(&half, 100, deadline, at(0)),
            Readiness::NotYet(_)
        ));
        // canaryReadyThreshold: 50 accepts half.
        assert_eq!(readiness(&half, 50, deadline, at(0)), Readiness::Ready);
        let zero = deployment("  observedGeneration: 2", 0);
        assert!(
            matches!(readiness(&zero, 100, deadline, at(0)), Readiness::NotYet(m) if m.contains("scaled to zero"))
        );
    }

    #[test]
    fn unavailable_past_the_canary_deadline_fails() {
        let stuck = deployment(
            &format!("  observedGeneration: 2\n  replicas: 1\n  updatedReplicas: 1\n  availableReplicas: 0\n  conditions:\n    - {{type: Available, status: 'False', reason: MinimumReplicasUnavailable, lastUpdateTime: '{T0}'}}"),
            1,
        );
        let deadline = Duration::from_secs(60);
        assert!(matches!(
            readiness(&stuck, 100, deadline, at(59)),
            Readiness::NotYet(_)
        ));
        assert_eq!(
            readiness(&stuck, 100, deadline, at(61)),
            Readiness::Failed("waiting for rollout of deployment podinfo to finish: 0 of 1 updated replicas are available; no minimum availability for more than 1m".into())
        );
        let exceeded = deployment(
            "  observedGeneration: 2\n  conditions:\n    - {type: Progressing, status: 'False', reason: ProgressDeadlineExceeded}",
            1,
        );
        assert_eq!(
            readiness(&exceeded, 100, deadline, at(0)),
            Readiness::Failed("deployment podinfo exceeded its progress deadline".into())
        );
    }
}
