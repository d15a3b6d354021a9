#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Real istiod in the loop (issue #18): `pilot-discovery` built from istio.io/istio
//! (`scripts/istiod-build.sh`) runs against the local control plane (`scripts/kube-up.sh
//! --istio`), and a plain upstream Envoy bootstrapped only to it is the ingress gateway. The
//! project's manifests go in as shipped, apart from the local substitutions in
//! `veer_e2e::istio`; the gateway's listeners, routes and filter are istiod's rendering.
//!
//! Here: istiod starts and serves the shipped Gateway and WasmPlugin, and broken manifests
//! fail visibly. The tests run one at a time, as the other Kubernetes tests do.

use std::time::{Duration, Instant};

use serde_json::json;
use veer_e2e::backend::Backend;
use veer_e2e::istio;
use veer_e2e::kube::KubeCluster;
use veer_e2e::kube_release::{one_at_a_time, Took};
use veer_e2e::ports::free_port;
use veer_e2e::process::{poll_until, work_dir};

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

/// istiod becomes ready and turns the shipped Gateway, a VirtualService and the shipped
/// WasmPlugin into a listener, a route to a local backend and the veer filter (by ECDS) on
/// a plain Envoy, which accepts all of it (no NACK).
#[test]
fn istiod_serves_the_shipped_gateway_and_filter_to_a_plain_envoy() {
    let _serial = one_at_a_time();
    let _took = Took(
        "istiod_serves_the_shipped_gateway_and_filter_to_a_plain_envoy",
        Instant::now(),
    );
    let cluster = KubeCluster::up_istio().unwrap();
    let ready = istiod_ready_seconds(&cluster);
    println!("istiod /ready {ready} ms after its start");

    let port = free_port().unwrap();
    let backend = Backend::start("web-v1").unwrap();
    cluster
        .apply(&istio::gateway_manifest(port).unwrap())
        .unwrap();
    cluster
        .apply(&istio::wasmplugin_manifest(|_| {}).unwrap())
        .unwrap();
    cluster.apply(&web_app_yaml(&backend)).unwrap();

    let dir = work_dir("istiod-gateway").unwrap();
    let envoy = istio::start_gateway(&dir, &cluster, &cookie_keys()).unwrap();
    let gateway = istio::wait_listener(&envoy, port, Duration::from_secs(30)).unwrap();
    poll_until(
        "istiod's route to reach the backend",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || match istio::get(gateway, "app.example.com", &[])? {
            (200, who) if who == "web-v1" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap();
    assert!(
        istio::has_veer_filter(&envoy).unwrap(),
        "no {} among the gateway's HTTP filters: {:?}",
        istio::FILTER_NAME,
        istio::http_filters(&envoy).unwrap()
    );
    // The filter runs on the request: it sets its affinity cookie on the response only
    // when a route has a canary; with an empty table it strips a client's route header,
    // which the backend echoes as x-seen-route.
    let r = veer_e2e::client::HttpClient::new(gateway)
        .get("app.example.com", "/", &[("x-veer-route", "canary")])
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-route"), Some("-"), "the filter ran");
    assert_eq!(istio::rejected_updates(&envoy).unwrap(), Vec::new());
    let log = istio::istiod_log(&cluster);
    assert!(!log.contains("ACK ERROR"), "istiod saw a NACK:\n{log}");
}

/// A WasmPlugin whose selector matches no gateway leaves the filter out, which the gateway's
/// config dump shows; fixing the selector puts it in.
#[test]
fn a_wasmplugin_selecting_no_gateway_leaves_the_filter_out() {
    let _serial = one_at_a_time();
    let _took = Took(
        "a_wasmplugin_selecting_no_gateway_leaves_the_filter_out",
        Instant::now(),
    );
    let cluster = KubeCluster::up_istio().unwrap();
    let port = free_port().unwrap();
    let backend = Backend::start("web-v1").unwrap();
    cluster
        .apply(&istio::gateway_manifest(port).unwrap())
        .unwrap();
    cluster.apply(&web_app_yaml(&backend)).unwrap();
    // A typo'd label, as a user might make it.
    cluster
        .apply(
            &istio::wasmplugin_manifest(|p| {
                p["spec"]["selector"]["matchLabels"] = json!({"istio": "ingress-gateway"});
            })
            .unwrap(),
        )
        .unwrap();
    let dir = work_dir("istiod-no-selector").unwrap();
    let envoy = istio::start_gateway(&dir, &cluster, &cookie_keys()).unwrap();
    let gateway = istio::wait_listener(&envoy, port, Duration::from_secs(30)).unwrap();
    poll_until(
        "the route to reach the backend",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || match istio::get(gateway, "app.example.com", &[])? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap();
    let filters = istio::http_filters(&envoy).unwrap();
    assert!(
        !filters.is_empty() && !filters.iter().any(|f| f == istio::FILTER_NAME),
        "HTTP filters: {filters:?}"
    );
    // Without the filter, nothing strips a client's route header.
    let r = veer_e2e::client::HttpClient::new(gateway)
        .get("app.example.com", "/", &[("x-veer-route", "canary")])
        .unwrap();
    assert_eq!(r.header("x-seen-route"), Some("canary"));

    cluster
        .apply(&istio::wasmplugin_manifest(|_| {}).unwrap())
        .unwrap();
    poll_until(
        "the filter to arrive once the selector matches",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || match istio::has_veer_filter(&envoy)? {
            true => Ok(()),
            false => Err(format!("{:?}", istio::http_filters(&envoy)?)),
        },
    )
    .unwrap();
    assert_eq!(istio::rejected_updates(&envoy).unwrap(), Vec::new());
}

/// A pluginConfig the filter rejects (cookie keys from an environment variable the gateway
/// does not have) is delivered by istiod, refused by the filter, and the error reaches both
/// logs: Envoy's (the filter's message) and istiod's (the NACK of the ECDS update). Requests
/// then fail with 500 despite `failStrategy: FAIL_OPEN`, which covers a module that cannot
/// be fetched or a VM that crashes, not a configuration the module rejects.
#[test]
fn a_bad_plugin_config_is_rejected_through_istiod_and_logged_by_both() {
    let _serial = one_at_a_time();
    let _took = Took(
        "a_bad_plugin_config_is_rejected_through_istiod_and_logged_by_both",
        Instant::now(),
    );
    let cluster = KubeCluster::up_istio().unwrap();
    let port = free_port().unwrap();
    let backend = Backend::start("web-v1").unwrap();
    cluster
        .apply(&istio::gateway_manifest(port).unwrap())
        .unwrap();
    cluster.apply(&web_app_yaml(&backend)).unwrap();
    cluster
        .apply(&istio::wasmplugin_manifest(|_| {}).unwrap())
        .unwrap();
    let dir = work_dir("istiod-bad-config").unwrap();
    // No VEER_COOKIE_KEYS in the gateway's environment.
    let envoy = istio::start_gateway(&dir, &cluster, &[]).unwrap();
    let gateway = istio::wait_listener(&envoy, port, Duration::from_secs(30)).unwrap();

    let envoy_line = "invalid plugin configuration: cookieSigning.keysEnv: environment variable VEER_COOKIE_KEYS is not set";
    // The ECDS resource's short name, as istiod logs it.
    let resource = "istio-system.veer~istio-translated-wasmplugin";
    let istiod_line = format!("ADS:ECDS: ACK ERROR ... Unable to create Wasm plugin {resource}");
    poll_until(
        "the filter's error in Envoy's log and the NACK in istiod's",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let in_envoy = envoy.log().contains(envoy_line);
            let in_istiod = istio::istiod_log(&cluster).lines().any(|l| {
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
    let (status, _) = istio::get(gateway, "app.example.com", &[]).unwrap();
    assert_eq!(status, 500, "a rejected filter config fails requests");
    assert!(
        istio::rejected_updates(&envoy)
            .unwrap()
            .iter()
            .any(|(name, _)| name.contains("extension_config_discovery")),
        "the ECDS rejection is counted: {:?}",
        istio::rejected_updates(&envoy).unwrap()
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
