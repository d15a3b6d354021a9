//! Executing a pass's steps (rollback hooks, gates and rollout hooks, metric queries) and
//! applying the effects of a committed transition.

use super::*;

impl Runner {
    /// Executes the plan's steps in order, stopping at the first that is not ok.
    pub(super) async fn execute(
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
    pub(super) async fn rollback_hooks(
        &self,
        spec: &CanarySpec,
        identity: &CanaryIdentity,
    ) -> StepResult {
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

    pub(super) async fn hooks(
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

    pub(super) async fn metric(&self, spec: &CanarySpec, index: usize) -> StepResult {
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
    pub(super) async fn read_metric(&self, spec: &CanarySpec, index: usize) -> Result<f64, String> {
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
    pub(super) fn template_client(&self, address: &str) -> Result<PrometheusClient, String> {
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
    pub(super) async fn apply_actions(
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
}
