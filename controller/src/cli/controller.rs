//! `veer controller`: the process around the runner — the token, the spec directory or the
//! cluster, the API listener, and the signals that reload or stop it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::checks::prometheus::PrometheusClient;
use crate::platform::kubernetes::cluster::Scope;
use crate::platform::kubernetes::leader::LeaseTimings;
use crate::platform::kubernetes::{KubeMode, KubeOptions};
use crate::platform::local::{load_state_file, log_problems, LocalPlatform, SpecDir};
use crate::runner::{Runner, RunnerConfig};
use crate::serve::api::{self, ServerState};
use crate::serve::table_hub::TableHub;
use crate::spec::{MetricSource, SpecSet};

use super::{fail, CliError, ControllerArgs};

fn read_token(args: &ControllerArgs) -> Result<Option<String>, CliError> {
    let token = if let Some(file) = &args.token_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| fail(format!("cannot read token file {}: {e}", file.display())))?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(fail(format!("token file {} is empty", file.display())));
        }
        Some(token)
    } else if let Some(var) = &args.token_env {
        let token = std::env::var(var)
            .map_err(|_| fail(format!("--token-env {var}: the variable is not set")))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(fail(format!("--token-env {var}: the variable is empty")));
        }
        Some(token)
    } else {
        None
    };
    if token
        .as_deref()
        .is_some_and(|t| t.contains(char::is_whitespace))
    {
        return Err(fail("the token must not contain whitespace"));
    }
    Ok(token)
}

/// Whether any canary has a metric that needs `--prometheus`.
fn needs_default_prometheus(set: &SpecSet) -> Vec<String> {
    set.canaries
        .iter()
        .filter(|c| {
            c.analysis.metrics.iter().any(|m| {
                !matches!(
                    m.source,
                    MetricSource::Template {
                        address: Some(_),
                        ..
                    }
                )
            })
        })
        .map(|c| c.key())
        .collect()
}

pub(super) async fn run_controller(args: ControllerArgs) -> Result<(), CliError> {
    let token = read_token(&args)?;
    let prometheus = args
        .prometheus
        .as_deref()
        .map(PrometheusClient::new)
        .transpose()
        .map_err(|e| fail(format!("--prometheus: {e}")))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| fail(format!("cannot listen on {}: {e}", args.listen)))?;
    let listen = listener
        .local_addr()
        .map_or(args.listen.clone(), |a: SocketAddr| a.to_string());
    let mut registry = prometheus_client::registry::Registry::default();
    let config = RunnerConfig {
        metrics_set: args.metrics_set,
        prometheus,
        gateway_ttl: args.gateway_id_ttl,
    };
    if token.is_none() {
        tracing::warn!("no --token-file or --token-env: writes to the API are not authenticated");
    }
    if args.kubernetes {
        let options = KubeOptions {
            scope: Scope {
                namespaces: args.namespaces.clone(),
                selector: args.selector.clone(),
            },
            lease_namespace: args.lease_namespace.clone(),
            instance: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "veer".into()),
            load: args.spec.load_options(),
        };
        let election = args.leader_election.then_some(LeaseTimings {
            lease_duration: args.leader_election_lease_duration,
            renew_deadline: args.leader_election_renew_deadline,
            retry_period: args.leader_election_retry_period,
        });
        let mut mode = KubeMode::start(options, config, election)
            .await
            .map_err(fail)?;
        let server = ApiServer::start(listener, mode.hub(), mode.control(), registry, token);
        tracing::info!(%listen, metrics_set = %args.metrics_set, "veer controller running (Kubernetes mode)");
        let mut signals = Signals::new()?;
        let ended = loop {
            tokio::select! {
                signal = signals.next() => if signal == Signal::Stop { break None },
                why = mode.ended() => break Some(why),
            }
        };
        server.stop();
        mode.shutdown().await;
        server.join().await;
        return match ended {
            None => {
                tracing::info!("stopped");
                Ok(())
            }
            // As Flagger does: exit, and let the pod restart as a follower.
            Some(why) => Err(fail(format!("{why}: exiting"))),
        };
    }

    let (Some(dir), Some(state_file)) = (args.canaries.clone(), args.state.clone()) else {
        return Err(fail(
            "--canaries DIR and --state FILE are required (or --kubernetes)",
        ));
    };
    let saved = load_state_file(&state_file).map_err(|e| fail(e.to_string()))?;
    match &saved {
        Some(s) => tracing::info!(
            state = %state_file.display(), canaries = s.canaries.len(), generation = s.table_generation,
            "state file loaded"
        ),
        None => tracing::info!(state = %state_file.display(), "no state file yet: starting fresh"),
    }
    let mut spec_dir = SpecDir::new(dir.clone(), args.spec.load_options());
    let set = spec_dir
        .load_if_changed()
        .map_err(|e| fail(e.to_string()))?
        .unwrap_or_default();
    log_problems(&set);
    if config.prometheus.is_none() {
        let needing = needs_default_prometheus(&set);
        if !needing.is_empty() {
            tracing::warn!(
                canaries = %needing.join(", "),
                "these canaries have metrics but no --prometheus is set: their metric checks will fail"
            );
        }
    }
    let loaded = set.canaries.len();
    let platform = Arc::new(LocalPlatform::new(state_file.clone()));
    let restored = saved.map(|s| s.restored()).unwrap_or_default();
    let runner = Runner::start(config, platform, restored, set.canaries, &mut registry)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let server = ApiServer::start(listener, runner.hub(), runner.clone(), registry, token);
    tracing::info!(
        %listen,
        canaries = loaded,
        dir = %dir.display(),
        state = %state_file.display(),
        metrics_set = %args.metrics_set,
        min_interval = %humantime::format_duration(args.spec.min_interval),
        "veer controller running (local mode)"
    );
    let mut signals = Signals::new()?;
    let mut rescan = tokio::time::interval(args.rescan_interval.max(Duration::from_millis(100)));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await;
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => {
                    tracing::info!(dir = %spec_dir.path().display(), "SIGHUP: re-reading the canary directory");
                    spec_dir.invalidate();
                }
            },
            _ = rescan.tick() => {}
        }
        match spec_dir.load_if_changed() {
            Ok(Some(set)) => {
                log_problems(&set);
                if let Err(e) = runner.reload(&set).await {
                    tracing::error!(error = %e, "the re-read canaries are not applied; retrying at the next scan");
                    spec_dir.invalidate();
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the canary directory; keeping the loaded canaries")
            }
        }
    }
    server.stop();
    runner.shutdown().await;
    server.join().await;
    tracing::info!("stopped");
    Ok(())
}

/// The HTTP API over a runner, the same in both modes.
struct ApiServer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ApiServer {
    fn start(
        listener: tokio::net::TcpListener,
        hub: Arc<TableHub>,
        control: Arc<dyn api::CanaryControl>,
        registry: prometheus_client::registry::Registry,
        token: Option<String>,
    ) -> ApiServer {
        let app = api::router(ServerState::new(hub.clone(), control, registry, token));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server_stop = {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
                hub.close();
            }
        };
        ApiServer {
            stop,
            task: tokio::spawn(api::serve(listener, app, server_stop)),
        }
    }

    fn stop(&self) {
        self.stop.send_replace(true);
    }

    async fn join(self) {
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the HTTP server failed"),
            Err(e) => tracing::error!(error = %e, "the HTTP server task failed"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        let make = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| fail(format!("cannot handle {name}: {e}")))
        };
        Ok(Signals {
            term: make(SignalKind::terminate(), "SIGTERM")?,
            int: make(SignalKind::interrupt(), "SIGINT")?,
            hup: make(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => { tracing::info!("SIGTERM: shutting down"); Signal::Stop }
            _ = self.int.recv() => { tracing::info!("SIGINT: shutting down"); Signal::Stop }
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
