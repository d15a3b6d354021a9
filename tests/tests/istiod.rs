#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Real istiod in the loop (issue #18): `pilot-discovery` built from istio.io/istio
//! (`scripts/istiod-build.sh`) runs against the local control plane (`scripts/kube-up.sh
//! --istio`), and a plain upstream Envoy bootstrapped only to it is the ingress gateway. The
//! project's manifests go in as shipped, apart from the local substitutions in
//! `veer_e2e::istio`; the gateway's listeners, routes and filter are istiod's rendering.
//!
//! Here: istiod starts and serves the shipped Gateway and WasmPlugin; broken manifests fail
//! visibly; a sticky release runs through the istiod-configured gateway, and VirtualService
//! edits reach it within istiod's push time. The tests run one at a time, as the other
//! Kubernetes tests do.

use std::net::SocketAddr;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use serde_json::json;
use veer_e2e::backend::Backend;
use veer_e2e::envoy::Envoy;
use veer_e2e::istio;
use veer_e2e::kube::KubeCluster;
use veer_e2e::kube_release::*;
use veer_e2e::ports::free_port;
use veer_e2e::process::{poll_until, work_dir};
use veer_e2e::stack::{IstiodGateway, Stack};
use veer_e2e::users::{flip_backs, Variant};

/// A 32-byte cookie-signing key (base64), as the gateway's environment would have it from
/// the veer-cookie-keys Secret.
const COOKIE_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn cookie_keys() -> Vec<(String, String)> {
    vec![("VEER_COOKIE_KEYS".to_string(), COOKIE_KEY.to_string())]
}

/// A Service `web` in namespace `web` reaching `backend` (through a WorkloadEntry), and a
/// VirtualService sending `app.example.com` through the shipped `public-gateway` to it.
fn web_app_yaml(backend: &Backend) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: web
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: web
spec:
  selector:
    app: web
  ports:
    - name: http
      port: 9898
      targetPort: 9898
      protocol: TCP
---
{}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: web
spec:
  hosts:
    - app.example.com
  gateways:
    - istio-system/public-gateway
  http:
    - route:
        - destination:
            host: web
            port:
              number: 9898
"#,
        istio::workload_entry(
            "web",
            "web-local",
            &[("app", "web")],
            "http",
            backend.addr()
        )
    )
}

/// One short test's istiod world: its own control plane and istiod, the shipped Gateway on a
/// free port, the web app on a local backend, the shipped WasmPlugin as `plugin` edits it, and
/// the gateway Envoy (with `env`) once istiod has given it the Gateway's listener.
struct IstiodWorld {
    cluster: KubeCluster,
    envoy: Envoy,
    gateway: SocketAddr,
    _backend: Backend,
    _took: Took,
    _serial: MutexGuard<'static, ()>,
}

impl IstiodWorld {
    fn start(
        test: &'static str,
        plugin: impl FnOnce(&mut serde_json::Value),
        env: &[(String, String)],
    ) -> IstiodWorld {
        let serial = one_at_a_time();
        let took = Took(test, Instant::now());
        let cluster = KubeCluster::up_istio().unwrap();
        let port = free_port().unwrap();
        let backend = Backend::start("web-v1").unwrap();
        cluster
            .apply(&istio::gateway_manifest(port).unwrap())
            .unwrap();
        cluster.apply(&web_app_yaml(&backend)).unwrap();
        cluster
            .apply(&istio::wasmplugin_manifest(plugin).unwrap())
            .unwrap();
        let envoy = istio::start_gateway(&work_dir(test).unwrap(), &cluster, env).unwrap();
        let gateway = istio::wait_listener(&envoy, port, Duration::from_secs(30)).unwrap();
        IstiodWorld {
            cluster,
            envoy,
            gateway,
            _backend: backend,
            _took: took,
            _serial: serial,
        }
    }

    /// Waits until istiod's route takes `app.example.com` to the web backend.
    fn wait_for_backend(&self) {
        poll_until(
            "istiod's route to reach the backend",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || match istio::get(self.gateway, "app.example.com", &[])? {
                (200, who) if who == "web-v1" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .unwrap();
    }

    /// What the backend saw of a client's `x-veer-route: canary` (it echoes it as
    /// `x-seen-route`, `-` when absent).
    fn seen_route_header(&self) -> Option<String> {
        let r = veer_e2e::client::HttpClient::new(self.gateway)
            .get("app.example.com", "/", &[("x-veer-route", "canary")])
            .unwrap();
        assert_eq!(r.status, 200);
        r.header("x-seen-route").map(str::to_string)
    }
}

/// istiod becomes ready and turns the shipped Gateway, a VirtualService and the shipped
/// WasmPlugin into a listener, a route to a local backend and the veer filter (by ECDS) on
/// a plain Envoy, which accepts all of it (no NACK).
#[test]
fn istiod_serves_the_shipped_gateway_and_filter_to_a_plain_envoy() {
    let world = IstiodWorld::start(
        "istiod_serves_the_shipped_gateway_and_filter_to_a_plain_envoy",
        |_| {},
        &cookie_keys(),
    );
    let ready = istiod_ready_seconds(&world.cluster);
    println!("istiod /ready {ready} ms after its start");
    world.wait_for_backend();
    assert!(
        istio::has_veer_filter(&world.envoy).unwrap(),
        "no {} among the gateway's HTTP filters: {:?}",
        istio::FILTER_NAME,
        istio::http_filters(&world.envoy).unwrap()
    );
    // The filter runs on the request: it sets its affinity cookie on the response only
    // when a route has a canary; with an empty table it strips a client's route header.
    assert_eq!(
        world.seen_route_header().as_deref(),
        Some("-"),
        "the filter ran"
    );
    assert_eq!(istio::rejected_updates(&world.envoy).unwrap(), Vec::new());
    let log = istio::istiod_log(&world.cluster);
    assert!(!log.contains("ACK ERROR"), "istiod saw a NACK:\n{log}");
}

/// A WasmPlugin whose selector matches no gateway leaves the filter out, which the gateway's
/// config dump shows; fixing the selector puts it in.
#[test]
fn a_wasmplugin_selecting_no_gateway_leaves_the_filter_out() {
    // A typo'd label, as a user might make it.
    let world = IstiodWorld::start(
        "a_wasmplugin_selecting_no_gateway_leaves_the_filter_out",
        |p| p["spec"]["selector"]["matchLabels"] = json!({"istio": "ingress-gateway"}),
        &cookie_keys(),
    );
    world.wait_for_backend();
    let filters = istio::http_filters(&world.envoy).unwrap();
    assert!(
        !filters.is_empty() && !filters.iter().any(|f| f == istio::FILTER_NAME),
        "HTTP filters: {filters:?}"
    );
    // Without the filter, nothing strips a client's route header.
    assert_eq!(world.seen_route_header().as_deref(), Some("canary"));

    world
        .cluster
        .apply(&istio::wasmplugin_manifest(|_| {}).unwrap())
        .unwrap();
    poll_until(
        "the filter to arrive once the selector matches",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || match istio::has_veer_filter(&world.envoy)? {
            true => Ok(()),
            false => Err(format!("{:?}", istio::http_filters(&world.envoy)?)),
        },
    )
    .unwrap();
    assert_eq!(istio::rejected_updates(&world.envoy).unwrap(), Vec::new());
}

/// A pluginConfig the filter rejects (cookie keys from an environment variable the gateway
/// does not have) is delivered by istiod, refused by the filter, and the error reaches both
/// logs: Envoy's (the filter's message) and istiod's (the NACK of the ECDS update). Requests
/// then fail with 500 despite `failStrategy: FAIL_OPEN`, which covers a module that cannot
/// be fetched or a VM that crashes, not a configuration the module rejects.
#[test]
fn a_bad_plugin_config_is_rejected_through_istiod_and_logged_by_both() {
    // No VEER_COOKIE_KEYS in the gateway's environment.
    let world = IstiodWorld::start(
        "a_bad_plugin_config_is_rejected_through_istiod_and_logged_by_both",
        |_| {},
        &[],
    );
    let envoy_line = "invalid plugin configuration: cookieSigning.keysEnv: environment variable VEER_COOKIE_KEYS is not set";
    // The ECDS resource's short name, as istiod logs it.
    let resource = "istio-system.veer~istio-translated-wasmplugin";
    let istiod_line = format!("ADS:ECDS: ACK ERROR ... Unable to create Wasm plugin {resource}");
    poll_until(
        "the filter's error in Envoy's log and the NACK in istiod's",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let in_envoy = world.envoy.log().contains(envoy_line);
            let in_istiod = istio::istiod_log(&world.cluster).lines().any(|l| {
                l.contains("ADS:ECDS: ACK ERROR")
                    && l.contains(&format!("Unable to create Wasm plugin {resource}"))
            });
            if in_envoy && in_istiod {
                Ok(())
            } else {
                Err(format!(
                    "Envoy has {envoy_line:?}: {in_envoy}; istiod has {istiod_line:?}: {in_istiod}"
                ))
            }
        },
    )
    .unwrap();
    let (status, _) = istio::get(world.gateway, "app.example.com", &[]).unwrap();
    assert_eq!(status, 500, "a rejected filter config fails requests");
    let rejected = istio::rejected_updates(&world.envoy).unwrap();
    assert!(
        rejected
            .iter()
            .any(|(name, _)| name.contains("extension_config_discovery")),
        "the ECDS rejection is counted: {rejected:?}"
    );
}

/// Milliseconds from istiod's start to its `/ready`, from kube-up's log line.
fn istiod_ready_seconds(cluster: &KubeCluster) -> String {
    let log = std::fs::read_to_string(cluster.dir().with_extension("kube-up.log")).unwrap();
    log.lines()
        .find_map(|l| l.split("istiod ready in ").nth(1))
        .map(|s| s.trim_end_matches(" ms").to_string())
        .unwrap_or_else(|| panic!("kube-up's log has no `istiod ready in`:\n{log}"))
}

/// The cluster side of a release under istiod: the Gateway and the WasmPlugin (the filter
/// reports per-response metrics, which the stack's controller reads with `--metrics-set
/// veer`, and says its decision in `x-veer-decision`, which the users record), the
/// controller's shipped Service, and WorkloadEntries that make the controller's Service and
/// veer's `-primary`/`-canary` Services reach the stack's local processes.
fn apply_release_manifests(cluster: &KubeCluster, stack: &Stack, port: u16) {
    cluster
        .apply(&istio::gateway_manifest(port).unwrap())
        .unwrap();
    cluster
        .apply(
            &istio::wasmplugin_manifest(|p| {
                let config = &mut p["spec"]["pluginConfig"];
                config["decisionHeader"] = json!(true);
                config["responseMetrics"] = json!(true);
            })
            .unwrap(),
        )
        .unwrap();
    let service = veer_e2e::workspace_root().join("manifests/istio/controller/service.yaml");
    cluster
        .apply(&std::fs::read_to_string(service).unwrap())
        .unwrap();
    let entries = [
        istio::workload_entry(
            "veer-system",
            "veer-controller-local",
            &[("app.kubernetes.io/name", "veer-controller")],
            "http",
            stack.controller.addr(),
        ),
        // veer's Services select app=podinfo-primary (primary and apex) and app=podinfo
        // (canary), with a port named http.
        istio::workload_entry(
            NS,
            "podinfo-primary-local",
            &[("app", "podinfo-primary")],
            "http",
            stack.primary.addr(),
        ),
        istio::workload_entry(
            NS,
            "podinfo-canary-local",
            &[("app", "podinfo")],
            "http",
            stack.canary.addr(),
        ),
    ];
    for entry in entries {
        cluster.apply(&entry).unwrap();
    }
}

/// A VirtualService of the test's own (veer's controller owns `podinfo` and would put its
/// spec back): `probe.example.com` goes to the canary when `x-probe` is `value`, else to the
/// primary.
fn probe_virtual_service(value: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: probe
  namespace: {NS}
spec:
  hosts:
    - probe.example.com
  gateways:
    - istio-system/public-gateway
  http:
    - match:
        - headers:
            x-probe:
              exact: "{value}"
      route:
        - destination:
            host: podinfo-canary
            port:
              number: 9898
    - route:
        - destination:
            host: podinfo-primary
            port:
              number: 9898
"#
    )
}

/// A sticky canary release through the gateway that istiod configures: istiod renders
/// veer's VirtualService (the `x-veer-route: canary` route to `podinfo-canary`) and delivers
/// the filter; the controller's weights reach the filter through the controller Service's
/// cluster that istiod generates. The weight rises step by step, every user the filter sends
/// to the canary reaches the canary's backend, no user flips back, and the promotion
/// succeeds. Then 20 edits of a VirtualService each change the gateway's routing: the time
/// each takes (istiod's push) is printed beside veer's table propagation in the same run.
#[test]
fn a_sticky_release_and_virtualservice_edits_run_through_istiod() {
    let _serial = one_at_a_time();
    let _took = Took(
        "a_sticky_release_and_virtualservice_edits_run_through_istiod",
        Instant::now(),
    );
    let cluster = KubeCluster::up_istio().unwrap();
    cluster
        .apply(&app_yaml("podinfo", "podinfo:6.0.0"))
        .unwrap();
    let port = free_port().unwrap();
    let mut spec = stack_spec(&cluster, "istiod-release", &canary_yaml("podinfo", ""));
    spec.istiod = Some(IstiodGateway {
        xds: cluster.istiod_xds().unwrap(),
        port,
        env: cookie_keys(),
    });
    let stack = Stack::start(&spec).unwrap();
    apply_release_manifests(&cluster, &stack, port);
    istio::wait_listener(&stack.gateway, port, Duration::from_secs(30)).unwrap();
    cluster.apply(&stack.canary_yaml).unwrap();
    // Initialized, and the filter applied the controller's table: it polled the controller
    // through istiod's outbound|8080||veer-controller.veer-system.svc.cluster.local.
    assert_initialized(&cluster, &stack);
    poll_until(
        "istiod's rendering of veer's VirtualService on the gateway",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let routes = stack
                .gateway
                .admin_get("/config_dump?resource=dynamic_route_configs")?;
            if routes.contains("x-veer-route")
                && routes.contains("outbound|9898||podinfo-canary.test.svc.cluster.local")
            {
                Ok(())
            } else {
                Err("no route on x-veer-route to podinfo-canary yet".to_string())
            }
        },
    )
    .unwrap();
    assert!(istio::has_veer_filter(&stack.gateway).unwrap());
    let mut load = users(&stack);

    let started = Instant::now();
    let revision = start_run(&cluster, "podinfo:6.1.0");
    let end = wait_run_end(&cluster, "the run to succeed");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    assert_eq!(image(&cluster, "podinfo-primary"), "podinfo:6.1.0");
    let release = started.elapsed();
    load.stop();

    let tables = stack.table_log.tables();
    let weights: Vec<u32> = {
        let mut out: Vec<u32> = Vec::new();
        for t in &tables {
            if let Some(r) = t.route.as_ref().filter(|r| r.revision == revision) {
                if out.last() != Some(&r.weight) {
                    out.push(r.weight);
                }
            }
        }
        out
    };
    assert!(
        weights.contains(&2000) && weights.contains(&4000) && weights.contains(&6000),
        "weights served: {weights:?}"
    );
    let observations = load.observations();
    let flips = flip_backs(&observations, &tables);
    assert!(flips.is_empty(), "users flipped back: {flips:?}");
    // The filter's choice is carried out by istiod's routes: canary decisions reach the
    // canary's backend, primary ones the primary's.
    let (mut on_canary, mut on_primary) = (0, 0);
    for o in observations.iter().flatten().filter(|o| o.status == 200) {
        match o.variant {
            Variant::Canary => {
                assert_eq!(o.backend, "v2", "a canary decision answered by {o:?}");
                on_canary += 1;
            }
            Variant::Primary => {
                assert_eq!(o.backend, "v1", "a primary decision answered by {o:?}");
                on_primary += 1;
            }
            Variant::Unknown => {}
        }
    }
    assert!(
        on_canary > 0 && on_primary > 0,
        "{on_canary} / {on_primary}"
    );

    // veer's propagation: from the table log receiving a generation to the first request
    // the gateway decided with it (or a later one).
    let mut veer_ms: Vec<f64> = tables
        .iter()
        .filter(|t| t.at >= started)
        .filter_map(|t| {
            observations
                .iter()
                .flatten()
                .filter(|o| o.generation.is_some_and(|g| g >= t.generation))
                .map(|o| o.at)
                .min()
                .map(|first| first.saturating_duration_since(t.at).as_secs_f64() * 1000.0)
        })
        .collect();
    assert!(veer_ms.len() >= 3, "{} table changes seen", veer_ms.len());

    // istiod's push: each edit of the probe VirtualService, from kubectl apply's return to
    // the first request routed by it.
    cluster.apply(&probe_virtual_service(0)).unwrap();
    let mut client = veer_e2e::client::HttpClient::new(stack.gateway_addr);
    let mut routed = |value: u32| -> Result<(), String> {
        let v = value.to_string();
        let r = client.get("probe.example.com", "/", &[("x-probe", &v)])?;
        match (r.status, r.header("x-backend")) {
            (200, Some("v2")) => Ok(()),
            (status, who) => Err(format!("x-probe {v}: {status} from {who:?}")),
        }
    };
    poll_until(
        "the probe VirtualService",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || routed(0),
    )
    .unwrap();
    let mut push_ms = Vec::new();
    for value in 1..=20 {
        cluster.apply(&probe_virtual_service(value)).unwrap();
        let applied = Instant::now();
        poll_until(
            &format!("the edit x-probe={value} to route"),
            Duration::from_secs(10),
            Duration::from_millis(2),
            || routed(value),
        )
        .unwrap();
        push_ms.push(applied.elapsed().as_secs_f64() * 1000.0);
    }
    let (push_p50, push_max) = p50_max(&mut push_ms);
    let (veer_p50, veer_max) = p50_max(&mut veer_ms);
    println!(
        "release under istiod: {:.1}s from set image to Succeeded; weights {weights:?}; \
         {on_canary} canary / {on_primary} primary responses",
        release.as_secs_f64()
    );
    println!(
        "istiod push (VirtualService edit to routing), 20 edits: p50 {push_p50:.0} ms, max {push_max:.0} ms; \
         veer table propagation (controller to gateway decisions), {} changes: p50 {veer_p50:.0} ms, max {veer_max:.0} ms",
        veer_ms.len()
    );
    assert_eq!(istio::rejected_updates(&stack.gateway).unwrap(), Vec::new());
}

fn p50_max(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[values.len() - 1])
}
