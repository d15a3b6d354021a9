//! The Canary status as the state of a run, both ways, pure. Flagger's fields are written
//! for people and tools (`kubectl get canaries`, dashboards); `veerState` carries the
//! engine's whole [`CanaryState`], so a restarted controller resumes exactly where it was.
//! On a cluster with Flagger's own CRD, which prunes `veerState`, the state is rebuilt from
//! Flagger's fields: phase, weight, counters and revisions resume; the mirroring flag, the
//! last checks and the pass clock do not (the next pass runs at once).

use std::collections::BTreeMap;

use super::crd::{CanaryCondition, CanaryStatus};
use crate::engine::{CanaryState, Phase, Timestamp};

/// The status to write for `state`. `previous` is the status as last read, so the
/// condition keeps its transition time while its status does not change (Flagger's rule).
pub fn status_of(
    state: &CanaryState,
    tracked: &BTreeMap<String, String>,
    previous: Option<&CanaryStatus>,
    now: Timestamp,
) -> CanaryStatus {
    let phase = if state.primary_revision.is_none() {
        Phase::Initializing
    } else {
        state.phase
    };
    let condition = promoted_condition(phase, &state.message, previous, now);
    CanaryStatus {
        phase: Some(phase.as_str().to_string()),
        failed_checks: Some(f64::from(state.failed_checks)),
        canary_weight: Some(f64::from(state.weight)),
        iterations: Some(f64::from(state.iterations)),
        tracked_configs: Some(tracked.clone()),
        last_applied_spec: state.canary_revision.clone(),
        last_promoted_spec: state.primary_revision.clone(),
        last_transition_time: Some(state.last_transition_at.unwrap_or(now).to_string()),
        conditions: Some(vec![condition]),
        veer_state: serde_json::to_value(state).ok(),
        ..CanaryStatus::default()
    }
}

/// Flagger's one condition, type `Promoted`, reason = phase.
pub fn promoted_condition(
    phase: Phase,
    message: &str,
    previous: Option<&CanaryStatus>,
    now: Timestamp,
) -> CanaryCondition {
    let status = match phase {
        Phase::Initialized | Phase::Succeeded => "True",
        Phase::Failed => "False",
        _ => "Unknown",
    };
    let message = if message.is_empty() {
        default_message(phase).to_string()
    } else {
        message.to_string()
    };
    let before = previous
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.r#type == "Promoted"));
    let transition = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => None,
    };
    CanaryCondition {
        r#type: "Promoted".into(),
        status: status.into(),
        reason: phase.as_str().into(),
        message: Some(message),
        last_update_time: Some(now.to_string()),
        last_transition_time: Some(transition.unwrap_or_else(|| now.to_string())),
    }
}

/// Flagger's condition messages, for a phase reached without an event message.
fn default_message(phase: Phase) -> &'static str {
    match phase {
        Phase::Initializing => "New Deployment detected, starting initialization.",
        Phase::Initialized => "Deployment initialization completed.",
        Phase::Waiting | Phase::WaitingPromotion => "Waiting for approval.",
        Phase::Progressing => "New revision detected, progressing canary analysis.",
        Phase::Promoting => "Canary analysis completed, starting primary rolling update.",
        Phase::Finalising => "Canary analysis completed, routing all traffic to primary.",
        Phase::Succeeded => "Canary analysis completed successfully, promotion finished.",
        Phase::Failed => "Canary analysis failed, Deployment scaled to zero.",
    }
}

/// The condition for a Canary veer cannot run (invalid spec, unsupported target, an
/// object owned by someone else): `Promoted` stays in its phase, with the reason.
pub fn problem_condition(
    message: &str,
    previous: Option<&CanaryStatus>,
    now: Timestamp,
) -> CanaryCondition {
    let mut c = promoted_condition(Phase::Failed, message, previous, now);
    c.reason = "ReconcileError".into();
    c
}

/// The state a status holds: `veerState` when present, else rebuilt from Flagger's fields.
/// `None`: nothing was ever written (a new Canary).
pub fn state_of(status: &CanaryStatus) -> Option<CanaryState> {
    if let Some(state) = status
        .veer_state
        .as_ref()
        .and_then(|v| serde_json::from_value::<CanaryState>(v.clone()).ok())
    {
        return Some(state);
    }
    let phase = parse_phase(status.phase.as_deref()?)?;
    let primary = status.last_promoted_spec.clone().filter(|s| !s.is_empty());
    primary.as_ref()?;
    let canary = status.last_applied_spec.clone().filter(|s| !s.is_empty());
    let count = |v: Option<f64>| v.map_or(0, |v| v.max(0.0) as u32);
    let running = phase.is_running() || matches!(phase, Phase::Promoting | Phase::Finalising);
    Some(CanaryState {
        phase,
        weight: count(status.canary_weight).min(100),
        failed_checks: count(status.failed_checks),
        iterations: count(status.iterations),
        failed_revision: canary.clone().filter(|_| phase == Phase::Failed),
        cookie_revision: if running {
            canary.clone()
        } else {
            primary.clone()
        },
        canary_revision: canary,
        primary_revision: primary,
        last_transition_at: status
            .last_transition_time
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map(Timestamp::from_system_time),
        ..CanaryState::default()
    })
}

fn parse_phase(text: &str) -> Option<Phase> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> CanaryState {
        CanaryState {
            phase: Phase::Progressing,
            weight: 30,
            failed_checks: 1,
            iterations: 0,
            canary_revision: Some("b2".into()),
            primary_revision: Some("a1".into()),
            cookie_revision: Some("b2".into()),
            last_transition_at: Some(Timestamp::from_millis(1_764_842_400_000)),
            message: "Advance test/podinfo canary weight 30".into(),
            ..CanaryState::default()
        }
    }

    #[test]
    fn flagger_fields_and_the_whole_state_round_trip() {
        let now = Timestamp::from_millis(1_764_842_460_000);
        let tracked = BTreeMap::from([("configmap/settings".to_string(), "ab12".to_string())]);
        let status = status_of(&running(), &tracked, None, now);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "Progressing");
        assert_eq!(json["canaryWeight"], 30.0);
        assert_eq!(json["failedChecks"], 1.0);
        assert_eq!(json["lastAppliedSpec"], "b2");
        assert_eq!(json["lastPromotedSpec"], "a1");
        assert_eq!(json["trackedConfigs"]["configmap/settings"], "ab12");
        assert_eq!(json["conditions"][0]["type"], "Promoted");
        assert_eq!(json["conditions"][0]["status"], "Unknown");
        assert_eq!(json["conditions"][0]["reason"], "Progressing");
        assert_eq!(state_of(&status), Some(running()));
    }

    #[test]
    fn without_veer_state_flagger_fields_resume_the_run() {
        let now = Timestamp::from_millis(1_764_842_460_000);
        let mut status = status_of(&running(), &BTreeMap::new(), None, now);
        status.veer_state = None; // what Flagger's CRD prunes
        let state = state_of(&status).unwrap();
        assert_eq!(
            (state.phase, state.weight, state.failed_checks),
            (Phase::Progressing, 30, 1)
        );
        assert_eq!(state.canary_revision.as_deref(), Some("b2"));
        assert_eq!(state.primary_revision.as_deref(), Some("a1"));
        assert_eq!(state.cookie_revision.as_deref(), Some("b2"));
        // A status Flagger wrote before initialization finished holds no run.
        let fresh = CanaryStatus {
            phase: Some("Initializing".into()),
            ..CanaryStatus::default()
        };
        assert_eq!(state_of(&fresh), None);
    }

    #[test]
    fn the_condition_keeps_its_transition_time_while_its_status_holds() {
        let t1 = Timestamp::from_millis(1_764_842_400_000);
        let t2 = Timestamp::from_millis(1_764_842_500_000);
        let first = status_of(&running(), &BTreeMap::new(), None, t1);
        let mut later = running();
        later.weight = 40;
        let second = status_of(&later, &BTreeMap::new(), Some(&first), t2);
        let c = &second.conditions.unwrap()[0];
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some(t1.to_string().as_str())
        );
        assert_eq!(c.last_update_time.as_deref(), Some(t2.to_string().as_str()));
        let mut done = running();
        done.phase = Phase::Succeeded;
        let third = status_of(&done, &BTreeMap::new(), Some(&first), t2);
        let c = &third.conditions.unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Succeeded")
        );
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some(t2.to_string().as_str())
        );
    }
}
