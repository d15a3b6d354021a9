//! The runner as the canary API sees it ([`CanaryControl`]): statuses, the gateways seen,
//! and operator commands.

use super::*;

impl Runner {
    /// One canary's status. `detail` lists every gateway with its confirmed generation;
    /// without it (the list of all canaries) only the counts and the gateways behind are
    /// given, so the list stays small with many canaries and gateways.
    pub(super) fn status(
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
    pub(super) fn live_gateways(&self) -> Vec<(String, crate::serve::table_hub::GatewaySeen)> {
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

    pub(super) fn key_of(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    pub(super) fn apply_command(&self, key: &str, cmd: &Command) -> Result<Value, CommandError> {
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

    pub(super) fn get_by_key(&self, key: &str) -> Option<Value> {
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
