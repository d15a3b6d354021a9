//! Real istiod in the loop (issue #18): a plain upstream Envoy bootstrapped only to the istiod
//! that `scripts/kube-up.sh --istio` starts ([`crate::kube::KubeCluster::up_istio`]), as the
//! `istio: ingressgateway` workload in `istio-system`, and the project's own manifests with
//! only the local substitutions the README names:
//!
//! - the Gateway (`manifests/examples/podinfo/gateway.yaml`) listens on a free port instead
//!   of 80: with no gateway Service, istiod binds the Gateway's port number as is;
//! - the WasmPlugin (`manifests/istio/filter/wasmplugin.yaml`) loads the filter from
//!   `file://` (an `oci://` URL needs pilot-agent, which downloads and rewrites it), and a
//!   test may change its `pluginConfig`;
//! - what reaches the local backends: a WorkloadEntry per backend, selected by the real
//!   Service (a Kubernetes Service selects WorkloadEntries of its namespace). kwok's pods run
//!   no process, and an EndpointSlice may not name a loopback address (the API server
//!   refuses `127.0.0.1`: "may not be in the loopback range"), so kube-up runs without the
//!   EndpointSlice controllers and the tests point WorkloadEntries at 127.0.0.1.
//!
//! Everything else, the routes and the filter's delivery (ECDS), is istiod's rendering.

use crate::client::HttpClient;
use crate::envoy::{filter_wasm, Envoy};
use crate::kube::KubeCluster;
use crate::process::poll_until;
use crate::workspace_root;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The gateway proxy's IP in its node id and `INSTANCE_IPS`. Not 127.0.0.1: istiod looks up
/// the proxy's workload by IP, and the backends' WorkloadEntries are at 127.0.0.1; a match
/// would give the proxy that workload's labels instead of `istio: ingressgateway`, and the
/// Gateway would select nothing (no listener).
pub const GATEWAY_IP: &str = "127.0.0.10";

/// The Istio version the gateway claims in its node metadata; istiod gates some features
/// on it. (A `go install` build of pilot-discovery reports its own version as "unknown".)
pub const PROXY_ISTIO_VERSION: &str = "1.29.0";

/// The name istiod gives the veer filter in the gateway's HCM, also its ECDS resource's
/// name: istiod translates a WasmPlugin (`istio-system/veer`) into a TrafficExtension.
pub const FILTER_NAME: &str =
    "extensions.istio.io/trafficextension/istio-system.veer~istio-translated-wasmplugin";

/// The bootstrap of a gateway that gets everything else from istiod over ADS. The stats tags
/// are those of `manifests/istio/gateway/bootstrap-configmap.yaml`, which pilot-agent would
/// merge into the bootstrap it generates (so the filter's metrics get their labels).
pub fn gateway_bootstrap(xds: SocketAddr) -> Result<String, String> {
    let bootstrap = json!({
        "node": {
            "id": format!("router~{GATEWAY_IP}~ingress-local.istio-system~istio-system.svc.cluster.local"),
            "cluster": "istio-ingressgateway.istio-system",
            "metadata": {
                "NAMESPACE": "istio-system",
                "LABELS": { "istio": "ingressgateway" },
                "CLUSTER_ID": "Kubernetes",
                "INSTANCE_IPS": GATEWAY_IP,
                "ISTIO_VERSION": PROXY_ISTIO_VERSION,
            }
        },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }]
            },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": {
            "clusters": [{
                "name": "xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                        "address": xds.ip().to_string(), "port_value": xds.port()
                    } } } }] }]
                }
            }]
        },
        "stats_config": shipped_stats_config()?,
        // Histograms reach /stats/prometheus at each flush; the tests scrape every second.
        "stats_flush_interval": "1s",
    });
    Ok(bootstrap.to_string())
}

/// `stats_config` from the shipped bootstrap ConfigMap's `custom_bootstrap.json`.
fn shipped_stats_config() -> Result<Value, String> {
    let path = workspace_root().join("manifests/istio/gateway/bootstrap-configmap.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let cm: Value =
        serde_norway::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
    let custom = cm["data"]["custom_bootstrap.json"]
        .as_str()
        .ok_or_else(|| format!("{}: no data.custom_bootstrap.json", path.display()))?;
    let custom: Value = serde_json::from_str(custom)
        .map_err(|e| format!("{}: custom_bootstrap.json: {e}", path.display()))?;
    Ok(custom["stats_config"].clone())
}

/// Starts the gateway Envoy in `dir`, bootstrapped to the cluster's istiod, with `env` (e.g.
/// `VEER_COOKIE_KEYS`, which the WasmPlugin reads from the host), and waits until it is
/// ready (its first CDS and LDS from istiod applied).
pub fn start_gateway(
    dir: &Path,
    cluster: &KubeCluster,
    env: &[(String, String)],
) -> Result<Envoy, String> {
    Envoy::start(dir, &gateway_bootstrap(cluster.istiod_xds()?)?, 2, env)
}

/// `manifests/examples/podinfo/gateway.yaml` (the `public-gateway` a VirtualService of veer
/// names), listening on `port` instead of 80.
pub fn gateway_manifest(port: u16) -> Result<String, String> {
    let path = workspace_root().join("manifests/examples/podinfo/gateway.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let from = "number: 80\n";
    if text.matches(from).count() != 1 {
        return Err(format!(
            "{} no longer has exactly one `{}`",
            path.display(),
            from.trim()
        ));
    }
    Ok(text.replace(from, &format!("number: {port}\n")))
}

/// `manifests/istio/filter/wasmplugin.yaml` with `url` the filter's release build
/// (`file://`), then `edit` applied to the whole object (to change `pluginConfig` or the
/// selector); as JSON, which kubectl applies as it would the YAML.
pub fn wasmplugin_manifest(edit: impl FnOnce(&mut Value)) -> Result<String, String> {
    let path = workspace_root().join("manifests/istio/filter/wasmplugin.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut plugin: Value =
        serde_norway::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
    if !plugin["spec"]["url"].is_string() {
        return Err(format!("{}: no spec.url", path.display()));
    }
    plugin["spec"]["url"] = json!(format!("file://{}", filter_wasm()?.display()));
    edit(&mut plugin);
    Ok(plugin.to_string())
}

/// A WorkloadEntry at `addr` (127.0.0.1) with `labels`, serving the Service port named
/// `port_name` on `addr`'s port: what makes a Service of `namespace` whose selector matches
/// `labels` reach a local process.
pub fn workload_entry(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    port_name: &str,
    addr: SocketAddr,
) -> String {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "address": addr.ip().to_string(),
            "labels": labels,
            "ports": { port_name: addr.port() },
        }
    })
    .to_string()
}

/// Waits until istiod has given the gateway the Gateway's listener (`0.0.0.0_<port>`);
/// returns the address to send requests to.
pub fn wait_listener(envoy: &Envoy, port: u16, timeout: Duration) -> Result<SocketAddr, String> {
    let name = format!("0.0.0.0_{port}");
    poll_until(
        &format!("istiod's listener {name} on the gateway"),
        timeout,
        Duration::from_millis(100),
        || envoy.listener_addr(&name),
    )?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The HTTP filters of every HCM in the gateway's active listeners, by name, in order.
pub fn http_filters(envoy: &Envoy) -> Result<Vec<String>, String> {
    let body = envoy.admin_get("/config_dump?resource=dynamic_listeners")?;
    let dump: Value = serde_json::from_str(&body).map_err(|e| format!("config_dump: {e}"))?;
    let mut names = Vec::new();
    for listener in dump["configs"].as_array().into_iter().flatten() {
        let chains = listener["active_state"]["listener"]["filter_chains"].as_array();
        for chain in chains.into_iter().flatten() {
            for filter in chain["filters"].as_array().into_iter().flatten() {
                for http in filter["typed_config"]["http_filters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(name) = http["name"].as_str() {
                        names.push(name.to_string());
                    }
                }
            }
        }
    }
    Ok(names)
}

/// Whether the gateway's listeners run the veer filter ([`FILTER_NAME`]).
pub fn has_veer_filter(envoy: &Envoy) -> Result<bool, String> {
    Ok(http_filters(envoy)?.iter().any(|n| n == FILTER_NAME))
}

/// The xDS updates the gateway rejected so far, by stat (`lds`, `cds`, `rds`, `ecds`): a
/// NACK of istiod's config shows here.
pub fn rejected_updates(envoy: &Envoy) -> Result<Vec<(String, u64)>, String> {
    let body = envoy.admin_get("/stats?filter=update_rejected")?;
    Ok(body
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            let value: u64 = value.trim().parse().ok()?;
            (value > 0).then(|| (name.to_string(), value))
        })
        .collect())
}

/// istiod's log so far.
pub fn istiod_log(cluster: &KubeCluster) -> String {
    std::fs::read_to_string(cluster.log_path("istiod")).unwrap_or_default()
}

/// A GET through the gateway; the response's status and `x-backend` (which backend answered).
pub fn get(
    gateway: SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let r = HttpClient::new(gateway).get(host, "/", headers)?;
    Ok((r.status, r.header("x-backend").unwrap_or("").to_string()))
}
