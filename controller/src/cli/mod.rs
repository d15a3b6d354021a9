//! The `veer` command line: the controller process (`veer controller`: signals, the spec
//! directory scan, the listener) and the client and offline commands (`status`, `rollout`,
//! `promote|rollback|pause|resume`, `explain`, `render`, `validate`).
//!
//! Every failure is one line on stderr starting with `error:` and a non-zero exit status
//! (1; 2 for usage errors, as clap does).
//!
//! The controller re-reads its canary directory every `--rescan-interval` (default 5s) when
//! a YAML file was added, removed or changed (name, size or mtime), and at once on SIGHUP.
//! SIGTERM or SIGINT stops it gracefully: passes in flight are abandoned (nothing of them
//! was saved), the state writer finishes its batch, long-polls end, then the process exits.

pub mod explain;
mod template;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::checks::prometheus::{MetricsSet, PrometheusClient};
use crate::cli::explain::{explain, ExplainOptions};
use crate::platform::kubernetes::cluster::Scope;
use crate::platform::kubernetes::leader::LeaseTimings;
use crate::platform::kubernetes::{KubeMode, KubeOptions};
use crate::platform::local::{load_state_file, log_problems, LocalPlatform, SpecDir};
use crate::render::{render, render_all, RenderOptions};
use crate::runner::{Runner, RunnerConfig};
use crate::serve::api::{self, ServerState};
use crate::serve::table_hub::TableHub;
use crate::spec::{self, MetricSource, SpecSet};

/// The controller's default API address, for the client commands.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// How long a client command waits for the controller.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Parser)]
#[command(
    name = "veer",
    version,
    about = "Canary and A/B releases decided inside the gateway, with Flagger's Canary specs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the controller: analysis for every Canary in a directory, the routing table for
    /// the gateways, the canary API and /metrics.
    Controller(ControllerArgs),
    /// Show every canary: phase, weight, failed checks, revisions and which gateways
    /// applied the current weight.
    Status(StatusArgs),
    /// Start a run of NS/NAME for a new revision (local mode's trigger).
    Rollout(RolloutArgs),
    /// Promote NS/NAME now, skipping the remaining analysis and gates.
    Promote(TargetArgs),
    /// Roll NS/NAME back now.
    Rollback(TargetArgs),
    /// Stop the passes of NS/NAME until resumed.
    Pause(TargetArgs),
    /// Resume the passes of NS/NAME.
    Resume(TargetArgs),
    /// Explain in plain words what the Canaries in the given files and directories will do:
    /// timeline, metrics, traps.
    Explain(ExplainArgs),
    /// Print the Istio resources (Services, DestinationRules, VirtualService, WasmPlugin)
    /// for the Canary in FILE.
    Render(RenderArgs),
    /// Check every Canary and MetricTemplate in the given files and directories; exits
    /// non-zero on errors, or when there is no Canary. For CI pipelines.
    Validate(ValidateArgs),
    /// Print the CustomResourceDefinitions of Canary and MetricTemplate (flagger.app/v1beta1)
    /// for Kubernetes mode: `veer crds | kubectl apply --server-side -f -`.
    Crds,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Directory of Canary and MetricTemplate YAML files (flagger.app/v1beta1 or
    /// veer.dev/v1alpha1).
    #[arg(long, value_name = "DIR", required_unless_present = "kubernetes")]
    pub canaries: Option<PathBuf>,
    /// Prometheus for the builtin and inline metrics, e.g. http://prometheus:9090.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Address of the HTTP API (table, canaries, metrics, health).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The state file (written atomically after every transition).
    #[arg(long, value_name = "FILE", required_unless_present = "kubernetes")]
    pub state: Option<PathBuf>,
    /// Query set of the builtin metrics: istio, veer or envoy.
    #[arg(long, value_name = "SET", default_value = "istio", value_parser = parse_metrics_set)]
    pub metrics_set: MetricsSet,
    /// File holding the bearer token that writes (revision, promote, ...) must carry.
    #[arg(long, value_name = "FILE", conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token for writes.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Gateways not heard from for this long are left out of canary status.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub gateway_id_ttl: Duration,
    /// How often the canary directory is checked for changes (SIGHUP re-reads at once).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub rescan_interval: Duration,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Kubernetes mode: Canary resources in the cluster (KUBECONFIG or in-cluster config),
    /// the target Deployments' lifecycle as Flagger runs it, the state in each Canary's
    /// status.
    #[arg(long, conflicts_with_all = ["canaries", "state"])]
    pub kubernetes: bool,
    /// Kubernetes mode: run only the Canaries of this namespace (repeat for several;
    /// default: all namespaces).
    #[arg(long = "namespace", value_name = "NS", requires = "kubernetes")]
    pub namespaces: Vec<String>,
    /// Kubernetes mode: run only Canaries with these labels (a label selector, e.g.
    /// `team=shop`).
    #[arg(long, value_name = "SELECTOR", requires = "kubernetes")]
    pub selector: Option<String>,
    /// Kubernetes mode: namespace of the leader Lease and of the ConfigMap that holds the
    /// routing table (the controller's own namespace).
    #[arg(
        long,
        value_name = "NS",
        env = "POD_NAMESPACE",
        default_value = "veer-system"
    )]
    pub lease_namespace: String,
    /// Kubernetes mode: run as one of several replicas. The holder of the Lease
    /// `veer-leader-election` runs the canaries; every replica serves the routing table.
    #[arg(long, requires = "kubernetes")]
    pub leader_election: bool,
    /// How long followers wait, from the last renewal they saw, before taking the Lease.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps acting without renewing the Lease (below the lease duration).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// How often candidates try to take the Lease and the leader renews it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub leader_election_retry_period: Duration,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The controller's API.
    #[arg(long, value_name = "URL", env = "VEER_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token for writes (the controller's --token-file/--token-env).
    #[arg(long, value_name = "TOKEN", env = "VEER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the controller's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Add the last event message of each canary.
    #[arg(long, short)]
    pub wide: bool,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The canary, as NAMESPACE/NAME.
    #[arg(value_name = "NS/NAME")]
    pub canary: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The new revision (an image tag, a commit, a pod-template hash).
    #[arg(long, value_name = "R")]
    pub revision: String,
}

/// The specs' files and directories, as kubectl takes them: `-f a.yaml -f dir/` or
/// `-f a.yaml,b.yaml`, or as plain arguments. They are read together, so a Canary may use
/// a MetricTemplate from another file.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct InputArgs {
    /// YAML files, or directories of them (not recursive).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// A YAML file or directory, as kubectl's -f; repeat it or separate paths with commas.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub filenames: Vec<PathBuf>,
}

impl InputArgs {
    /// Every path given, plain arguments first.
    pub fn all(&self) -> Vec<PathBuf> {
        self.paths.iter().chain(&self.filenames).cloned().collect()
    }
}

/// The controller's settings that change what a spec means; `explain` and `validate` take
/// them too, so they read a spec as the controller does.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The shortest analysis interval: a shorter analysis.interval is raised to it, with a
    /// warning. 10s is Flagger's floor; lower it for demos and tests (e.g. 1s).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_min_interval)]
    pub min_interval: Duration,
}

impl SpecArgs {
    pub fn load_options(&self) -> spec::LoadOptions {
        spec::LoadOptions {
            min_interval: self.min_interval,
        }
    }
}

/// The lowest `--min-interval`: below it a pass would run back to back with the next.
const MIN_INTERVAL_FLOOR: Duration = Duration::from_millis(100);

fn parse_min_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < MIN_INTERVAL_FLOOR {
        return Err(format!(
            "{text} is below {}: passes would run back to back",
            humantime::format_duration(MIN_INTERVAL_FLOOR)
        ));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Query set of the builtin metrics, as the controller's --metrics-set.
    #[arg(long, value_name = "SET", default_value = "istio", value_parser = parse_metrics_set)]
    pub metrics_set: MetricsSet,
    /// Prometheus' scrape interval, to judge the metrics' query windows.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// A YAML file with one or more Canaries.
    pub file: PathBuf,
    /// The filter's OCI image for the WasmPlugin.
    #[arg(long, value_name = "IMAGE")]
    pub filter_image: Option<String>,
    /// sha256 digest pinning the filter image.
    #[arg(long, value_name = "HEX")]
    pub filter_sha256: Option<String>,
    /// Namespace of Istio's ingress gateway (and of the WasmPlugin). With provider
    /// gatewayapi:v1 the WasmPlugin goes to the namespace of the Canary's Gateway instead.
    #[arg(long, value_name = "NS")]
    pub gateway_namespace: Option<String>,
    /// The controller's Service as NAME.NAMESPACE:PORT, where the filter pulls the table.
    #[arg(long, value_name = "SVC.NS:PORT")]
    pub controller: Option<String>,
    /// The controller's --metrics-set: `veer` turns on the filter's `responseMetrics`, which
    /// that set reads; with `istio` (the default) and `envoy` they stay off.
    #[arg(long, value_name = "SET", default_value = "istio", value_parser = parse_metrics_set)]
    pub metrics_set: MetricsSet,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
}

/// A failed command: one line for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn fail(message: impl Into<String>) -> CliError {
    CliError(message.into())
}

fn parse_metrics_set(text: &str) -> Result<MetricsSet, String> {
    text.parse::<MetricsSet>().map_err(|e| e.to_string())
}

/// Runs a parsed command line and returns the exit status.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        CliCommand::Controller(args) => {
            init_logging("info");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("veer")
                .build()
                .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
            runtime.block_on(run_controller(args))?;
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Explain(args) => explain_file(&args),
        CliCommand::Render(args) => render_file(&args),
        CliCommand::Validate(args) => validate(&args),
        CliCommand::Crds => {
            let yaml = crate::platform::kubernetes::crd::crds_yaml()
                .map_err(|e| fail(format!("cannot encode the CRDs: {e}")))?;
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        client => {
            init_logging("warn");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
            runtime.block_on(run_client(client))
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

// ---------------------------------------------------------------------------------------
// veer controller

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

async fn run_controller(args: ControllerArgs) -> Result<(), CliError> {
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

// ---------------------------------------------------------------------------------------
// Offline commands

fn explain_file(args: &ExplainArgs) -> Result<ExitCode, CliError> {
    let set = spec::load_paths(&args.input.all(), &args.spec.load_options());
    let opts = ExplainOptions {
        metrics_set: args.metrics_set,
        scrape_interval: args.scrape_interval,
    };
    print!("{}", explain(&set, &opts));
    let errors = set.errors().count();
    if errors > 0 {
        let what = if set.canaries.is_empty() {
            "no valid Canary to explain"
        } else {
            "the Canaries above are the valid ones"
        };
        let message = format!(
            "{errors} error{} (listed above): {what}",
            if errors == 1 { "" } else { "s" }
        );
        return Err(match args.input.all().first() {
            Some(file) => unless_template(file, message),
            None => fail(message),
        });
    }
    if set.canaries.is_empty() {
        return Err(fail(set.no_canary_message()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The command line as typed, for commands printed back to the user.
fn command_line() -> Vec<String> {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The failure of an offline command on `file`: `message`, unless the file is a template
/// that failed on its placeholders; then the command that fills it in and runs again.
fn unless_template(file: &Path, message: String) -> CliError {
    fail(template::hint(file, &command_line()).unwrap_or(message))
}

fn parse_controller_endpoint(text: &str) -> Result<(String, String, u16), CliError> {
    let bad = || {
        fail(format!(
            "--controller {text:?}: expected SERVICE.NAMESPACE:PORT, e.g. veer-controller.veer-system:8080"
        ))
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let (service, namespace) = host.split_once('.').ok_or_else(bad)?;
    if service.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return Err(bad());
    }
    Ok((service.to_string(), namespace.to_string(), port))
}

fn render_file(args: &RenderArgs) -> Result<ExitCode, CliError> {
    let set = spec::load_file(&args.file, &spec::LoadOptions::default());
    let errors: Vec<String> = set.errors().map(ToString::to_string).collect();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        return Err(unless_template(
            &args.file,
            format!(
                "{}: {} error(s); nothing rendered",
                args.file.display(),
                errors.len()
            ),
        ));
    }
    if set.canaries.is_empty() {
        return Err(fail(format!("{}: no Canary found", args.file.display())));
    }
    for warning in set.warnings() {
        eprintln!("warning: {warning}");
    }
    let mut opts = RenderOptions {
        response_metrics: args.metrics_set == MetricsSet::Veer,
        ..RenderOptions::default()
    };
    if let Some(image) = &args.filter_image {
        opts.filter_image.clone_from(image);
    }
    if let Some(sha) = &args.filter_sha256 {
        opts.filter_sha256 = Some(sha.clone());
    }
    if let Some(ns) = &args.gateway_namespace {
        opts.gateway_namespace.clone_from(ns);
    }
    if let Some(endpoint) = &args.controller {
        let (service, namespace, port) = parse_controller_endpoint(endpoint)?;
        opts.controller = RenderOptions::controller_endpoint(&service, &namespace, port);
    }
    // Several canaries share the gateway's one WasmPlugin, so they render together.
    let out = match set.canaries.as_slice() {
        [one] => render(one, &opts),
        all => render_all(all, &opts),
    }
    .map_err(|e| fail(e.to_string()))?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn validate(args: &ValidateArgs) -> Result<ExitCode, CliError> {
    let set = spec::load_paths(&args.input.all(), &args.spec.load_options());
    for problem in &set.problems {
        let severity = match problem.severity {
            spec::Severity::Error => "error",
            spec::Severity::Warning => "warning",
        };
        println!("{severity}: {problem}");
    }
    let mut errors = set.errors().count();
    if set.canaries.is_empty() && errors == 0 {
        println!("error: {}", set.no_canary_message());
        errors += 1;
    }
    let warnings = set.warnings().count();
    if errors > 0 {
        let hints = args.input.all().into_iter().filter(|p| p.is_file());
        for hint in hints.filter_map(|p| template::hint(&p, &command_line())) {
            println!("hint: {hint}");
        }
    }
    for canary in &set.canaries {
        println!("ok: {} ({})", canary.key(), canary.source);
    }
    println!(
        "{} canar{} valid, {} metric template{}, {errors} error{}, {warnings} warning{}",
        set.canaries.len(),
        if set.canaries.len() == 1 { "y" } else { "ies" },
        set.templates.len(),
        if set.templates.len() == 1 { "" } else { "s" },
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

// ---------------------------------------------------------------------------------------
// Client commands

/// The controller's API as the CLI sees it.
struct ApiClient {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    fn new(args: &ServerArgs) -> Result<ApiClient, CliError> {
        let mut base = reqwest::Url::parse(&args.server)
            .map_err(|e| fail(format!("--server {:?}: {e}", args.server)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(fail(format!(
                "--server {:?}: the scheme must be http or https",
                args.server
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .user_agent(concat!("veer-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("cannot build the HTTP client: {e}")))?;
        Ok(ApiClient {
            base,
            token: args.token.clone().filter(|t| !t.is_empty()),
            http,
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, CliError> {
        self.base
            .join(path)
            .map_err(|e| fail(format!("bad API path {path:?}: {e}")))
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let response = request.send().await.map_err(|e| {
            fail(format!(
                "cannot reach the controller at {}: {} (is `veer controller` running? set --server or VEER_SERVER)",
                self.base,
                error_chain(&e)
            ))
        })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| fail(format!("cannot read the controller's answer: {e}")))?;
        let json: Option<Value> = serde_json::from_str(&body).ok();
        if status.is_success() {
            return json
                .ok_or_else(|| fail(format!("the controller's answer is not JSON: {body:.200}")));
        }
        let message = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(Value::as_str)
            .map_or_else(|| body.trim().to_string(), str::to_string);
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (pass --token or set VEER_TOKEN)"
        } else {
            ""
        };
        Err(fail(format!(
            "the controller answered HTTP {}: {message}{hint}",
            status.as_u16()
        )))
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.answer(self.http.get(self.url(path)?)).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        let mut request = self.http.post(self.url(path)?).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.answer(request).await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// `NS/NAME` as an API path prefix.
fn canary_path(canary: &str) -> Result<String, CliError> {
    let bad = || fail(format!("{canary:?} is not NAMESPACE/NAME"));
    let (ns, name) = canary.split_once('/').ok_or_else(bad)?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if !valid(ns) || !valid(name) {
        return Err(bad());
    }
    Ok(format!("v1/canaries/{ns}/{name}"))
}

async fn run_client(command: CliCommand) -> Result<ExitCode, CliError> {
    let (target, action, body) = match command {
        CliCommand::Status(args) => {
            let client = ApiClient::new(&args.server)?;
            let list = client.get("v1/canaries").await?;
            if args.json {
                let text = serde_json::to_string_pretty(&list)
                    .map_err(|e| fail(format!("cannot print JSON: {e}")))?;
                println!("{text}");
            } else {
                print!("{}", status_table(&list, args.wide));
            }
            return Ok(ExitCode::SUCCESS);
        }
        CliCommand::Rollout(args) => {
            let body = serde_json::json!({ "revision": args.revision });
            (args.target, "revision", body)
        }
        CliCommand::Promote(t) => (t, "promote", Value::Null),
        CliCommand::Rollback(t) => (t, "rollback", Value::Null),
        CliCommand::Pause(t) => (t, "pause", Value::Null),
        CliCommand::Resume(t) => (t, "resume", Value::Null),
        CliCommand::Controller(_)
        | CliCommand::Explain(_)
        | CliCommand::Render(_)
        | CliCommand::Validate(_)
        | CliCommand::Crds => {
            return Err(fail("internal: not a client command"));
        }
    };
    let client = ApiClient::new(&target.server)?;
    let path = format!("{}/{action}", canary_path(&target.canary)?);
    let body = if body.is_null() {
        serde_json::json!({})
    } else {
        body
    };
    let answer = client.post(&path, body).await?;
    println!("{}", one_line_status(&answer));
    Ok(ExitCode::SUCCESS)
}

fn text_of(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    }
}

fn one_line_status(canary: &Value) -> String {
    let mut line = format!(
        "{}: {}, weight {}",
        text_of(canary, "key"),
        text_of(canary, "phase"),
        text_of(canary, "weight")
    );
    let message = text_of(canary, "message");
    if message != "-" && !message.is_empty() {
        line.push_str(" (");
        line.push_str(&message);
        line.push(')');
    }
    line
}

/// The `veer status` table.
pub fn status_table(list: &Value, wide: bool) -> String {
    let mut rows: Vec<Vec<String>> = vec![[
        "NAME", "PHASE", "WEIGHT", "FAILED", "ITER", "REVISION", "PRIMARY", "GATEWAYS",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()];
    if wide {
        rows[0].push("MESSAGE".into());
    }
    let canaries = list
        .get("canaries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in &canaries {
        let mut phase = text_of(c, "phase");
        if c.get("paused").and_then(Value::as_bool) == Some(true) {
            phase.push_str(" (paused)");
        }
        if c.get("suspended").and_then(Value::as_bool) == Some(true) {
            phase.push_str(" (suspended)");
        }
        let mut weight = text_of(c, "weight");
        if c.get("mirror").and_then(Value::as_bool) == Some(true) {
            weight.push_str("+mirror");
        }
        let total = c.get("gatewaysTotal").and_then(Value::as_u64).unwrap_or(0);
        let applied = c
            .get("gatewaysApplied")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let gateways = if total == 0 {
            "-".to_string()
        } else {
            format!("{applied}/{total} applied")
        };
        let mut row = vec![
            text_of(c, "key"),
            phase,
            weight,
            format!("{}/{}", text_of(c, "failedChecks"), text_of(c, "threshold")),
            text_of(c, "iterations"),
            text_of(c, "canaryRevision"),
            text_of(c, "primaryRevision"),
            gateways,
        ];
        if wide {
            row.push(text_of(c, "message"));
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if canaries.is_empty() {
        out.push_str("(no canaries loaded)\n");
    }
    let gateways = list
        .get("gateways")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    out.push_str(&format!(
        "table generation {}, {gateways} gateway{} polling\n",
        text_of(list, "tableGeneration"),
        if gateways == 1 { "" } else { "s" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_defaults_match_the_library() {
        let cli = Cli::try_parse_from(["veer", "explain", "c.yaml"]).unwrap();
        let CliCommand::Explain(args) = cli.command else {
            panic!("not explain")
        };
        assert_eq!(
            args.scrape_interval,
            crate::cli::explain::DEFAULT_SCRAPE_INTERVAL
        );
        assert_eq!(args.metrics_set, MetricsSet::default());
    }

    #[test]
    fn canary_paths_are_checked() {
        assert_eq!(
            canary_path("test/podinfo").unwrap(),
            "v1/canaries/test/podinfo"
        );
        assert!(canary_path("podinfo").is_err());
        assert!(canary_path("a/b/c").is_err());
        assert!(canary_path("/b").is_err());
    }

    #[test]
    fn controller_endpoint_parses() {
        assert_eq!(
            parse_controller_endpoint("veer-controller.veer-system:8080").unwrap(),
            ("veer-controller".into(), "veer-system".into(), 8080)
        );
        assert!(parse_controller_endpoint("veer-controller:8080").is_err());
        assert!(parse_controller_endpoint("a.b:x").is_err());
    }

    #[test]
    fn status_table_has_a_row_per_canary() {
        let list = serde_json::json!({
            "tableGeneration": 7,
            "gateways": [{"id": "gw-1", "generation": 7}],
            "canaries": [{
                "key": "test/podinfo", "phase": "Progressing", "weight": 20, "mirror": false,
                "failedChecks": 1, "threshold": 3, "iterations": 0,
                "canaryRevision": "v2", "primaryRevision": "v1", "paused": false,
                "gatewaysApplied": 1, "gatewaysTotal": 1, "gatewaysBehind": [],
                "message": "Advance test/podinfo canary weight 20"
            }]
        });
        let table = status_table(&list, true);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{table}");
        assert!(
            lines[1].starts_with("test/podinfo  Progressing  20"),
            "{table}"
        );
        assert!(lines[1].contains("1/3"));
        assert!(lines[1].contains("1/1 applied"));
        assert!(lines[1].ends_with("Advance test/podinfo canary weight 20"));
        assert_eq!(lines[2], "table generation 7, 1 gateway polling");
    }
}
