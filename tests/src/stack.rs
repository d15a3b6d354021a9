//! The whole loop on 127.0.0.1, as the full-loop tests and the demo run it: two backends
//! (primary and canary), a webhook receiver, the gateway Envoy with the release filter pulling
//! its table from the controller, Prometheus scraping the gateway, the real `veer controller`
//! with one Canary, and the recorders of what the controller served and decided. Everything
//! stops on drop (children are killed), also when a test panics.

use crate::backend::Backend;
use crate::controller::{Controller, ControllerSpec, StatusLog, TableLog};
use crate::envoy::{render, Envoy, GatewaySpec};
use crate::ports::free_port;
use crate::process::{poll_until, work_dir};
use crate::prometheus::Prometheus;
use crate::webhook_receiver::WebhookReceiver;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The gateway template's cluster for the controller.
pub const CONTROLLER_CLUSTER: &str = "outbound|8080||veer-controller.veer-system.svc.cluster.local";

/// What varies between stacks.
#[derive(Debug, Clone)]
pub struct StackSpec {
    /// Names the work directory under `target/e2e/`.
    pub name: String,
    /// The Canary YAML; `${WEBHOOK_URL}` is replaced with the webhook receiver's base URL.
    pub canary_yaml: String,
    /// `namespace/name` of the Canary.
    pub key: String,
    /// What the two backends answer as at the start.
    pub primary_identity: String,
    pub canary_identity: String,
    pub scrape_interval: Duration,
    /// Gateway Envoy worker threads.
    pub concurrency: u32,
    /// How often the filter polls the controller when a poll fails (it long-polls otherwise).
    pub poll_ms: u64,
    /// Run the controller in Kubernetes mode with this kubeconfig. The test then applies
    /// the Canary to the cluster itself ([`Stack::canary_yaml`] has it rendered).
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: this many controller replicas with `--leader-election` and
    /// [`StackSpec::controller_args`], all behind the gateway's controller cluster.
    pub replicas: usize,
    /// More controller arguments, for every replica.
    pub controller_args: Vec<String>,
    /// The gateway listener's Envoy `route_config`, in place of the template's hand-written
    /// one (which imitates Istio's rendering of the VirtualService); e.g. what
    /// [`crate::gateway_api::route_config`] makes of an HTTPRoute.
    pub route_config: Option<serde_json::Value>,
    /// Run the gateway as [`crate::istio`] does, configured by real istiod instead of the
    /// hand-written template: the test then applies the Gateway, the WasmPlugin and the
    /// WorkloadEntries itself (`plugin_config`, `route_config` and `poll_ms` do not apply).
    pub istiod: Option<IstiodGateway>,
}

/// A gateway that gets its config from istiod ([`StackSpec::istiod`]).
#[derive(Debug, Clone)]
pub struct IstiodGateway {
    /// istiod's plaintext xDS address.
    pub xds: SocketAddr,
    /// The Gateway's port, which istiod's listener binds on 0.0.0.0.
    pub port: u16,
    /// The gateway's environment (`VEER_COOKIE_KEYS`, which the WasmPlugin reads).
    pub env: Vec<(String, String)>,
}

impl StackSpec {
    pub fn new(name: &str, canary_yaml: &str) -> StackSpec {
        StackSpec {
            name: name.to_string(),
            canary_yaml: canary_yaml.to_string(),
            key: "test/podinfo".into(),
            primary_identity: "v1".into(),
            canary_identity: "v2".into(),
            scrape_interval: Duration::from_secs(1),
            concurrency: 2,
            poll_ms: 200,
            kubeconfig: None,
            replicas: 1,
            controller_args: Vec::new(),
            route_config: None,
            istiod: None,
        }
    }
}

/// A running loop. Fields drop in order: the recorders first, the backends last.
pub struct Stack {
    pub status_log: StatusLog,
    pub table_log: TableLog,
    pub controller: Controller,
    /// The other replicas (Kubernetes mode with leader election).
    pub replicas: Vec<Controller>,
    pub prometheus: Prometheus,
    pub gateway: Envoy,
    pub webhooks: WebhookReceiver,
    pub primary: Backend,
    pub canary: Backend,
    pub gateway_addr: SocketAddr,
    pub dir: PathBuf,
    pub key: String,
    /// The Canary YAML with the webhook receiver's URL filled in.
    pub canary_yaml: String,
}

impl Stack {
    /// Starts every part and waits until each is ready and the controller has loaded the
    /// Canary.
    pub fn start(spec: &StackSpec) -> Result<Stack, String> {
        // Missing tools fail before anything starts, each with its install command.
        crate::envoy::envoy_binary()?;
        crate::envoy::filter_wasm()?;
        crate::prometheus::prometheus_binary()?;
        crate::controller::controller_binary()?;

        let dir = work_dir(&spec.name)?;
        let primary = Backend::start(&spec.primary_identity)?;
        let canary = Backend::start(&spec.canary_identity)?;
        let webhooks = WebhookReceiver::start()?;
        // The gateway's bootstrap names the controller's port, so it is picked first; a
        // restarted controller binds it again.
        let controller_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let replica_addrs: Vec<SocketAddr> = (1..spec.replicas)
            .map(|_| free_port().map(|port| SocketAddr::from(([127, 0, 0, 1], port))))
            .collect::<Result<_, _>>()?;

        let plugin_config = serde_json::json!({
            "decisionHeader": true,
            "controller": {
                "cluster": CONTROLLER_CLUSTER,
                "pollMs": spec.poll_ms,
                "timeoutMs": 10000
            }
        });
        let mut gateway_spec = GatewaySpec::new(&plugin_config, primary.addr(), canary.addr());
        gateway_spec.controller = Some(controller_addr);
        gateway_spec.more_controllers = replica_addrs.clone();
        gateway_spec.node_id = format!("{}-gateway", spec.name);
        gateway_spec.concurrency = spec.concurrency;
        // Envoy merges histograms into what /stats/prometheus shows only at each stats
        // flush (5s by default); with a 1s scrape the P99 would lag by up to 5s.
        let mut bootstrap = gateway_spec.bootstrap()?;
        if let Some(routes) = &spec.route_config {
            bootstrap = with_route_config(&bootstrap, routes)?;
        }
        let bootstrap = format!(
            "{bootstrap}\nstats_flush_interval: {}s\n",
            spec.scrape_interval.as_secs().max(1)
        );
        let gateway_dir = dir.join("gateway");
        std::fs::create_dir_all(&gateway_dir).map_err(|e| e.to_string())?;
        let (gateway, gateway_addr) = match &spec.istiod {
            Some(istiod) => {
                // Its listener comes once the test applies the Gateway
                // (crate::istio::wait_listener).
                let gateway = Envoy::start(
                    &gateway_dir,
                    &crate::istio::gateway_bootstrap(istiod.xds)?,
                    spec.concurrency,
                    &istiod.env,
                )?;
                (gateway, SocketAddr::from(([127, 0, 0, 1], istiod.port)))
            }
            None => {
                let gateway = Envoy::start(
                    &gateway_dir,
                    &bootstrap,
                    gateway_spec.concurrency,
                    &gateway_spec.env,
                )?;
                let addr = gateway.gateway_addr()?;
                (gateway, addr)
            }
        };

        let prometheus = Prometheus::start(
            &dir,
            gateway.admin_addr(),
            controller_addr,
            spec.scrape_interval,
        )?;
        prometheus.wait_for_gateway_scrape(Duration::from_secs(20))?;

        let canaries_dir = dir.join("canaries");
        std::fs::create_dir_all(&canaries_dir).map_err(|e| e.to_string())?;
        let yaml = render(&spec.canary_yaml, &[("WEBHOOK_URL", webhooks.base_url())])?;
        if spec.kubeconfig.is_none() {
            std::fs::write(canaries_dir.join("canary.yaml"), &yaml).map_err(|e| e.to_string())?;
        }
        let replica = |index: usize, listen: SocketAddr| {
            let mut extra_args = spec.controller_args.clone();
            if spec.replicas > 1 {
                extra_args.push("--leader-election".into());
            }
            let replica_dir = if index == 0 {
                dir.clone()
            } else {
                dir.join(format!("replica-{index}"))
            };
            std::fs::create_dir_all(&replica_dir).map_err(|e| e.to_string())?;
            Controller::start(
                &replica_dir,
                ControllerSpec {
                    canaries_dir: canaries_dir.clone(),
                    state_file: dir.join("state.json"),
                    kubeconfig: spec.kubeconfig.clone(),
                    prometheus_url: prometheus.url(),
                    listen,
                    metrics_set: "veer".into(),
                    extra_args,
                    instance: (spec.replicas > 1).then(|| format!("replica-{index}")),
                },
            )
        };
        let controller = replica(0, controller_addr)?;
        let replicas = replica_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| replica(i + 1, *addr))
            .collect::<Result<Vec<_>, _>>()?;
        if spec.kubeconfig.is_none() {
            controller.wait_for_canary(&spec.key)?;
        }
        let table_log = TableLog::start(controller_addr, &spec.key)?;
        let status_log = StatusLog::start(controller_addr, &spec.key)?;
        Ok(Stack {
            status_log,
            table_log,
            controller,
            replicas,
            prometheus,
            gateway,
            webhooks,
            primary,
            canary,
            gateway_addr,
            dir,
            key: spec.key.clone(),
            canary_yaml: yaml,
        })
    }

    /// The canary's status now.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        self.controller.canary(&self.key)
    }

    /// Gives the canary its first revision, which becomes the primary without analysis
    /// (phase Initialized), and waits until the gateway applied that table.
    pub fn initialize(&self, revision: &str) -> Result<(), String> {
        self.controller.rollout(&self.key, revision)?;
        let rev = revision.to_string();
        self.controller.wait_status(
            &self.key,
            &format!("{} to be Initialized on {revision}", self.key),
            Duration::from_secs(20),
            |s| s["phase"] == "Initialized" && s["primaryRevision"] == rev.as_str(),
        )?;
        self.wait_gateway_applied(Duration::from_secs(10))
    }

    /// Waits until the gateway reports (through its polls) the generation of the canary's
    /// current route.
    pub fn wait_gateway_applied(&self, timeout: Duration) -> Result<(), String> {
        poll_until(
            "the gateway to apply the canary's current table",
            timeout,
            Duration::from_millis(50),
            || {
                let s = self.status()?;
                let gateways = s["gateways"].as_array().cloned().unwrap_or_default();
                if !gateways.is_empty() && gateways.iter().all(|g| g["applied"] == true) {
                    Ok(())
                } else {
                    Err(format!("gateways: {}", s["gateways"]))
                }
            },
        )
    }

    /// Waits for the run to end (phase Succeeded or Failed), returning the final status.
    pub fn wait_run_end(&self, timeout: Duration) -> Result<serde_json::Value, String> {
        let end = self.controller.wait_status(
            &self.key,
            &format!("the run of {} to end", self.key),
            timeout,
            |s| s["phase"] == "Succeeded" || s["phase"] == "Failed",
        )?;
        let phase = end["phase"].as_str().unwrap_or("");
        self.status_log
            .wait_for_phase(phase, Duration::from_secs(5))?;
        Ok(end)
    }

    /// Waits until Prometheus has seen traffic through the gateway on the primary (two
    /// scrapes with requests in them), so the first analysis of a run has a baseline and
    /// a scrape history to work with.
    pub fn wait_for_primary_traffic(&self, timeout: Duration) -> Result<(), String> {
        let route = veer_core::stat_route_token(&self.key);
        let query = format!(
            r#"sum(rate(veer_responses_total{{veer_route="{route}", veer_variant="primary"}}[10s]))"#
        );
        poll_until(
            "Prometheus to see traffic on the primary",
            timeout,
            Duration::from_millis(200),
            || match self.prometheus.query(&query)? {
                Some(v) if v > 0.0 => Ok(()),
                other => Err(format!("{query} = {other:?}")),
            },
        )
    }

    /// The filter's `veer_errors_total` in the gateway.
    pub fn filter_errors(&self) -> Result<f64, String> {
        let text = self.gateway.prometheus()?;
        Ok(crate::envoy::prometheus_value(&text, "veer_errors_total", &[]).unwrap_or(0.0))
    }
}

/// The bootstrap with the gateway listener's `route_config` replaced.
fn with_route_config(bootstrap: &str, routes: &serde_json::Value) -> Result<String, String> {
    let mut doc: serde_json::Value =
        serde_norway::from_str(bootstrap).map_err(|e| format!("the gateway bootstrap: {e}"))?;
    let slot = doc
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config",
        )
        .ok_or("the gateway template has no route_config in its first listener")?;
    *slot = routes.clone();
    serde_norway::to_string(&doc).map_err(|e| format!("the gateway bootstrap: {e}"))
}
