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

mod client;
mod controller;
pub mod explain;
mod offline;
mod template;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::checks::prometheus::MetricsSet;
use crate::spec;

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
            runtime.block_on(controller::run_controller(args))?;
            Ok(ExitCode::SUCCESS)
        }
        CliCommand::Explain(args) => offline::explain_file(&args),
        CliCommand::Render(args) => offline::render_file(&args),
        CliCommand::Validate(args) => offline::validate(&args),
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
            runtime.block_on(client::run_client(client))
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

#[cfg(test)]
mod tests {
    use super::client::{canary_path, status_table};
    use super::offline::parse_controller_endpoint;
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
