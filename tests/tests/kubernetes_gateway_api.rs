#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Kubernetes mode with `provider: gatewayapi:v1`, on the real control plane
//! (`scripts/kube-up.sh`, with the pinned Gateway API standard CRDs and Istio's CRDs, CEL
//! rules included): veer creates a static HTTPRoute instead of a VirtualService, and the
//! gateway's WasmPlugin targets the Gateway.
//!
//! What is real: the API server's verdict on the HTTPRoute, the WasmPlugin and the shipped
//! Gateway (schema and CEL); the controller under its ClusterRole; the gateway Envoy with the
//! filter; Prometheus; the release from `kubectl set image` to Succeeded.
//! What is not: no istiod runs, so nothing turns the HTTPRoute into Envoy routes. The test
//! does that by hand ([`veer_e2e::gateway_api::route_config`]) from the HTTPRoute that veer's
//! own rendering produces, starts the gateway with those routes, and then checks that the
//! HTTPRoute the controller created in the cluster is exactly that one. As in
//! tests/kubernetes.rs, kwok's pods run no containers, so two local backends stand in for the
//! `-primary` and `-canary` Services.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use veer_controller::render::{render_documents, RenderOptions};
use veer_controller::spec::{load_texts, LoadOptions};
use veer_e2e::kube::KubeCluster;
use veer_e2e::kube_release::*;
use veer_e2e::process::poll_until;
use veer_e2e::stack::Stack;
use veer_e2e::users::Variant;
use veer_e2e::workspace_root;

/// What `veer render` makes of `yaml` (one Canary), as the controller renders it too.
fn rendered(yaml: &str) -> Vec<Value> {
    let set = load_texts(
        &[(PathBuf::from("canary.yaml"), yaml.to_string())],
        &LoadOptions::default(),
    );
    assert!(set.errors().next().is_none(), "{:?}", set.problems);
    render_documents(&set.canaries[0], &RenderOptions::default()).unwrap()
}

fn of_kind(docs: &[Value], kind: &str) -> Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:?}"))
        .clone()
}

/// A Canary using every part of `spec.service` that veer maps onto the HTTPRoute.
fn mapped_canary() -> String {
    gateway_api_canary_yaml("podinfo", "").replace(
        "    port: 9898\n",
        "    port: 9898
    timeout: 30s
    backendTimeout: 10s
    match:
      - uri: {prefix: /api}
        method: {exact: GET}
        headers:
          x-tenant: {regex: 'a.*'}
        queryParams:
          debug: {exact: 'on'}
    headers:
      request:
        set: {x-a: '1'}
        remove: [x-internal]
      response:
        add: {x-served-by: veer}
    rewrite: {uri: /v2, type: ReplacePrefixMatch, authority: backend.example.com}
    corsPolicy:
      allowOrigins: [{exact: 'https://app.example.com'}]
      allowMethods: [GET, POST]
      allowCredentials: true
      maxAge: 24h
    mirror:
      - backendRef: {name: podinfo-shadow, port: 9898}
",
    )
}

/// The API server takes what veer writes for Gateway API under the real CRDs and their CEL
/// rules: the shipped Gateway, its WasmPlugin with `targetRefs`, and the HTTPRoute of the
/// tests' Canary and of one with Flagger's whole `spec.service` mapping, unchanged by
/// defaulting. The CEL rules are live: a WasmPlugin with both a selector and `targetRefs`
/// is refused.
#[test]
fn the_api_server_accepts_the_http_route_and_the_gateway_plugin() {
    let (_serial, _took, cluster) =
        begin("the_api_server_accepts_the_http_route_and_the_gateway_plugin");
    let base = workspace_root().join("manifests/gateway-api");
    kubectl(&cluster, &["apply", "-k", base.to_str().unwrap()]);
    let gateway = json(
        &cluster,
        &[
            "get",
            "gateway.gateway.networking.k8s.io",
            "public-gateway",
            "-n",
            "istio-ingress",
        ],
    );
    assert_eq!(gateway["spec"]["gatewayClassName"], "istio");
    let plugin = json(
        &cluster,
        &["get", "wasmplugin", "veer", "-n", "istio-ingress"],
    );
    assert_eq!(plugin["spec"]["targetRefs"][0]["name"], "public-gateway");

    for yaml in [gateway_api_canary_yaml("podinfo", ""), mapped_canary()] {
        let docs = rendered(&yaml);
        let route = of_kind(&docs, "HTTPRoute");
        let plugin = of_kind(&docs, "WasmPlugin");
        cluster.apply(&route.to_string()).unwrap();
        cluster.apply(&plugin.to_string()).unwrap();
        let held = json(&cluster, &["get", "httproute", "podinfo", "-n", NS]);
        assert_eq!(
            held["spec"], route["spec"],
            "the API server changed the HTTPRoute"
        );
        let held = json(
            &cluster,
            &["get", "wasmplugin", "veer", "-n", "istio-ingress"],
        );
        assert_eq!(held["spec"], plugin["spec"]);
    }

    let mut both = of_kind(
        &rendered(&gateway_api_canary_yaml("podinfo", "")),
        "WasmPlugin",
    );
    both["metadata"]["name"] = "veer-both".into();
    both["spec"]["selector"] = serde_json::json!({ "matchLabels": { "istio": "ingressgateway" } });
    let refused = cluster.apply(&both.to_string()).unwrap_err();
    assert!(
        refused.contains("only one of targetRefs or selector can be set"),
        "{refused}"
    );
}

/// A release with `provider: gatewayapi:v1`, through the gateway Envoy routed by the HTTPRoute:
/// veer creates the HTTPRoute (and no VirtualService or DestinationRule), the users the filter
/// sends to the canary reach the canary's backend through the HTTPRoute's header rule and the
/// others the primary's, the weight rises step by step, and the run is promoted.
#[test]
fn a_gateway_api_release_is_promoted_through_the_gateway_routed_by_its_http_route() {
    let (_serial, _took, cluster) =
        begin("a_gateway_api_release_is_promoted_through_the_gateway_routed_by_its_http_route");
    let yaml = gateway_api_canary_yaml("podinfo", "");
    let route = of_kind(&rendered(&yaml), "HTTPRoute");
    let mut spec = stack_spec(&cluster, "k8s-gateway-api", &yaml);
    spec.route_config = Some(veer_e2e::gateway_api::route_config(&route).unwrap());
    let stack = Stack::start(&spec).unwrap();
    cluster.apply(&stack.canary_yaml).unwrap();
    assert_workloads_initialized(&cluster, &stack);
    assert_routed_by_the_http_route(&cluster, &route);

    let load = users(&stack);
    assert_eq!(
        stack.canary.requests(),
        0,
        "weight 0 sends nobody to the canary"
    );
    let revision = start_run(&cluster, "podinfo:6.1.0");
    let end = wait_run_end(&cluster, "the run to succeed");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    assert_eq!(end["lastPromotedSpec"], revision.as_str());
    assert_eq!(image(&cluster, "podinfo-primary"), "podinfo:6.1.0");
    wait_target_at_zero(&cluster);

    // The filter decided, the HTTPRoute's rules routed: every canary decision reached the
    // canary's backend (v2), every primary decision the primary's (v1).
    let seen: Vec<_> = load.observations().into_iter().flatten().collect();
    let canary_seen = seen.iter().filter(|o| o.variant == Variant::Canary).count();
    assert!(
        canary_seen > 0 && stack.canary.requests() > 0,
        "no user reached the canary"
    );
    let answered: Vec<_> = seen.iter().filter(|o| o.status == 200).collect();
    assert!(
        answered.len() * 100 >= seen.len() * 99,
        "{} of {} answered",
        answered.len(),
        seen.len()
    );
    for o in answered {
        match o.variant {
            Variant::Canary => assert_eq!(o.backend, "v2", "{o:?}"),
            Variant::Primary => assert_eq!(o.backend, "v1", "{o:?}"),
            Variant::Unknown => panic!("a response without the filter's decision: {o:?}"),
        }
    }
    let mut weights: Vec<u32> = Vec::new();
    for t in stack.table_log.tables() {
        if let Some(r) = t.route.filter(|r| r.revision == revision) {
            if weights.last() != Some(&r.weight) {
                weights.push(r.weight);
            }
        }
    }
    assert!(
        [2000, 4000, 6000].iter().all(|w| weights.contains(w)),
        "weights served: {weights:?}"
    );
    wait_events(
        &cluster,
        "podinfo",
        &[
            "Initialization done!",
            "New revision detected!",
            "Promotion completed!",
        ],
    );
    drop(load);
}

/// The cluster holds the HTTPRoute the gateway was configured from, owned by the Canary, and
/// no Istio routing objects.
fn assert_routed_by_the_http_route(cluster: &KubeCluster, route: &Value) {
    let held = poll_until(
        "the HTTPRoute to exist",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || cluster.kubectl(&["get", "httproute", "podinfo", "-n", NS, "-o", "json"]),
    )
    .unwrap();
    let held: Value = serde_json::from_str(&held).unwrap();
    assert_eq!(held["spec"], route["spec"]);
    assert_eq!(held["metadata"]["ownerReferences"][0]["kind"], "Canary");
    for kind in ["virtualservices", "destinationrules"] {
        let names = kubectl(cluster, &["get", kind, "-n", NS, "-o", "name"]);
        assert!(names.trim().is_empty(), "{kind}: {names}");
    }
}
