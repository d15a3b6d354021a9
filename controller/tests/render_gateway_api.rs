#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `veer render` for `provider: gatewayapi:v1`: the HTTPRoute in place of the VirtualService
//! and DestinationRules, `spec.service` mapped as Flagger maps it, the WasmPlugin bound by
//! `targetRefs`, and an error naming the field for what an HTTPRoute cannot carry. The API
//! server's verdict on the output (the real CRDs with their CEL rules) is in
//! tests/tests/kubernetes_gateway_api.rs of the e2e crate; the JSON schemas in
//! tests/manifests.rs.

use serde_json::{json, Value};
use std::path::PathBuf;
use veer_controller::render::{render_all_documents, render_documents, RenderOptions};
use veer_controller::spec::{load_texts, CanarySpec, LoadOptions, SpecSet};

fn load(yaml: &str) -> SpecSet {
    load_texts(
        &[(PathBuf::from("canary.yaml"), yaml.to_string())],
        &LoadOptions::default(),
    )
}

/// A Gateway API Canary; `service` replaces the lines under `service:` (indented 4).
fn canary(name: &str, service: &str) -> String {
    format!(
        "apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {{name: {name}, namespace: test}}
spec:
  provider: gatewayapi:v1
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}
  service:
    port: 9898
{service}
  analysis:
    interval: 10s
    stepWeight: 10
    maxWeight: 50
"
    )
}

const GATEWAY: &str = "    hosts: [app.example.com]
    gatewayRefs:
      - name: public-gateway
        namespace: istio-ingress";

fn spec(yaml: &str) -> CanarySpec {
    let set = load(yaml);
    let errors: Vec<String> = set.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:?}");
    set.canaries[0].clone()
}

fn docs(yaml: &str) -> Vec<Value> {
    render_documents(&spec(yaml), &RenderOptions::default()).unwrap()
}

fn render_error(yaml: &str) -> String {
    render_documents(&spec(yaml), &RenderOptions::default())
        .unwrap_err()
        .to_string()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:#?}"))
}

#[test]
fn a_gateway_api_canary_gets_an_http_route_and_a_plugin_targeting_its_gateway() {
    let yaml = canary("podinfo", GATEWAY);
    let set = load(&yaml);
    let warnings: Vec<String> = set.warnings().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .all(|w| !w.contains("gatewayRefs") && !w.contains("spec.provider")),
        "gatewayRefs and the provider are used: {warnings:?}"
    );
    let docs = docs(&yaml);
    let ids: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    // As Flagger: no DestinationRules with Gateway API.
    assert_eq!(
        ids,
        [
            ("Service", "podinfo"),
            ("Service", "podinfo-primary"),
            ("Service", "podinfo-canary"),
            ("HTTPRoute", "podinfo"),
            ("WasmPlugin", "veer"),
        ]
    );
    let route = find(&docs, "HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["metadata"]["namespace"], "test");
    assert_eq!(
        route["spec"]["parentRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public-gateway", "namespace": "istio-ingress"}])
    );
    assert_eq!(route["spec"]["hostnames"], json!(["app.example.com"]));
    let backend = |name: &str| json!([{"group": "", "kind": "Service", "name": name, "port": 9898, "weight": 1}]);
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0]["name"], "canary");
    assert_eq!(
        rules[0]["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "Exact", "name": "x-veer-route", "value": "canary"}]}])
    );
    assert_eq!(rules[0]["backendRefs"], backend("podinfo-canary"));
    assert_eq!(rules[1]["name"], "mirror");
    assert_eq!(
        rules[1]["matches"][0]["headers"],
        json!([{"type": "Exact", "name": "x-veer-mirror", "value": "1"}])
    );
    assert_eq!(rules[1]["backendRefs"], backend("podinfo-primary"));
    assert_eq!(
        rules[1]["filters"],
        json!([{"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 9898}}}])
    );
    assert_eq!(rules[2]["name"], "primary");
    assert_eq!(
        rules[2]["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/"}}])
    );
    assert_eq!(rules[2]["backendRefs"], backend("podinfo-primary"));

    // The plugin lives in the Gateway's namespace and targets it (no pod selector).
    let plugin = find(&docs, "WasmPlugin");
    assert_eq!(plugin["metadata"]["namespace"], "istio-ingress");
    assert_eq!(
        plugin["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public-gateway"}])
    );
    assert!(plugin["spec"].get("selector").is_none(), "{plugin}");
    assert_eq!(plugin["spec"]["phase"], "STATS");
    assert_eq!(
        plugin["spec"]["pluginConfig"]["table"]["routes"][0]["name"],
        "test/podinfo"
    );
}

#[test]
fn spec_service_is_mapped_as_flagger_maps_it() {
    let yaml = canary(
        "podinfo",
        &format!(
            "{GATEWAY}
    timeout: 30s
    backendTimeout: 10s
    match:
      - uri: {{prefix: /api}}
        method: {{exact: GET}}
        headers:
          x-tenant: {{regex: 'a.*'}}
        queryParams:
          debug: {{exact: 'on'}}
    headers:
      request:
        set: {{x-b: '2', x-a: '1'}}
        remove: [x-internal]
      response:
        add: {{x-served-by: veer}}
    rewrite: {{uri: /v2, type: ReplacePrefixMatch, authority: backend.example.com}}
    corsPolicy:
      allowOrigins: [{{exact: 'https://app.example.com'}}]
      allowMethods: [GET, POST]
      allowCredentials: true
      maxAge: 24h
    mirror:
      - backendRef: {{name: podinfo-shadow, port: 9898}}"
        ),
    );
    let docs = docs(&yaml);
    let rules = find(&docs, "HTTPRoute")["spec"]["rules"].clone();
    let filters = json!([
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "2"}],
            "remove": ["x-internal"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
            "add": [{"name": "x-served-by", "value": "veer"}]}},
        {"type": "URLRewrite", "urlRewrite": {
            "hostname": "backend.example.com",
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "podinfo-shadow", "port": 9898}}},
        {"type": "CORS", "cors": {
            "allowOrigins": ["https://app.example.com"],
            "allowMethods": ["GET", "POST"],
            "allowCredentials": true,
            "maxAge": 86400}},
    ]);
    for (i, rule) in rules.as_array().unwrap().iter().enumerate() {
        let m = &rule["matches"][0];
        assert_eq!(
            m["path"],
            json!({"type": "PathPrefix", "value": "/api"}),
            "rule {i}"
        );
        assert_eq!(m["method"], "GET", "rule {i}");
        assert_eq!(
            m["queryParams"],
            json!([{"type": "Exact", "name": "debug", "value": "on"}])
        );
        assert_eq!(
            m["headers"][0],
            json!({"type": "RegularExpression", "name": "x-tenant", "value": "a.*"})
        );
        assert_eq!(
            rule["timeouts"],
            json!({"request": "30s", "backendRequest": "10s"})
        );
        let own = rule["filters"].as_array().unwrap();
        assert_eq!(
            &own[..5],
            filters.as_array().unwrap().as_slice(),
            "rule {i}"
        );
    }
    // The filter's header is added to the service's match, not in place of it.
    assert_eq!(rules[0]["matches"][0]["headers"][1]["name"], "x-veer-route");
    assert_eq!(
        rules[2]["matches"][0]["headers"].as_array().unwrap().len(),
        1
    );
}

/// Every construct an HTTPRoute cannot carry is refused with the field that holds it.
#[test]
fn what_an_http_route_cannot_carry_is_an_error_naming_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    retries: {attempts: 3}",
            "spec.service.retries",
            "no retries",
        ),
        (
            "    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}",
            "spec.service.trafficPolicy",
            "no DestinationRules",
        ),
        (
            "    match: [{uri: {suffix: .png}}]",
            "spec.service.match[0].uri",
            "exact, prefix, regex",
        ),
        (
            "    match: [{scheme: {exact: https}}]",
            "spec.service.match[0].scheme",
            "cannot match on it",
        ),
        (
            "    match: [{method: {regex: 'GET|HEAD'}}]",
            "spec.service.match[0].method",
            "exact only",
        ),
        (
            "    match: [{headers: {x-veer-route: {exact: canary}}}]",
            "spec.service.match[0].headers.x-veer-route",
            "the veer filter sets",
        ),
        (
            "    rewrite: {uriRegexRewrite: {match: '^/a', rewrite: /b}}",
            "spec.service.rewrite.uriRegexRewrite",
            "cannot express it",
        ),
        (
            "    corsPolicy: {allowOrigins: [{prefix: 'https://'}]}",
            "spec.service.corsPolicy.allowOrigins[0]",
            "exact only",
        ),
        (
            "    timeout: 1.5s",
            "spec.service.timeout",
            "not a Gateway API duration",
        ),
    ];
    for (extra, field, why) in cases {
        let err = render_error(&canary("podinfo", &format!("{GATEWAY}\n{extra}")));
        assert!(
            err.contains("canary.yaml (doc 1)")
                && err.contains(&format!("{field}:"))
                && err.contains(why),
            "{extra}: {err}"
        );
    }
    let no_gateway = render_error(&canary("podinfo", "    hosts: [app.example.com]"));
    assert!(
        no_gateway.contains("spec.service.gatewayRefs: is empty"),
        "{no_gateway}"
    );
    let mesh = render_error(&canary(
        "podinfo",
        "    gatewayRefs: [{name: podinfo, kind: Service, group: ''}]",
    ));
    assert!(mesh.contains("spec.service.gatewayRefs[0]."), "{mesh}");
    let bare = render_error(&canary(
        "podinfo",
        "    hosts: ['*']\n    gatewayRefs: [{name: gw}]",
    ));
    assert!(
        bare.contains("spec.service.hosts[0]: \"*\" is not a Gateway API hostname"),
        "{bare}"
    );
}

/// One WasmPlugin cannot both select Istio's gateway pods and target Gateways, so an Istio
/// and a Gateway API canary do not render together; several Gateway API canaries share
/// one plugin per Gateway namespace.
#[test]
fn canaries_share_one_plugin_per_gateway_namespace_and_providers_do_not_mix() {
    let a = spec(&canary("a", GATEWAY));
    let b = spec(&canary(
        "b",
        "    gatewayRefs: [{name: internal}, {name: public-gateway, namespace: istio-ingress}]",
    ));
    let docs = render_all_documents(&[a.clone(), b], &RenderOptions::default()).unwrap();
    let plugins: Vec<(&str, Value)> = docs
        .iter()
        .filter(|d| d["kind"] == "WasmPlugin")
        .map(|d| {
            (
                d["metadata"]["namespace"].as_str().unwrap(),
                d["spec"]["targetRefs"].clone(),
            )
        })
        .collect();
    let target =
        |name: &str| json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name});
    assert_eq!(
        plugins,
        [
            ("istio-ingress", json!([target("public-gateway")])),
            ("test", json!([target("internal")])),
        ]
    );
    let mut istio = a.clone();
    istio.provider = Some("istio".into());
    istio.name = "c".into();
    istio.service.hosts = vec!["other.example.com".into()];
    let err = render_all_documents(&[a, istio], &RenderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test/a") && err.contains("test/c") && err.contains("separate files"),
        "{err}"
    );
}

/// On an Istio canary the Gateway API fields are accepted but not used, each said once.
#[test]
fn gateway_api_fields_on_an_istio_canary_are_warnings() {
    let yaml = canary(
        "podinfo",
        &format!("{GATEWAY}\n    gateways: [istio-system/public]\n    backendTimeout: 5s"),
    )
    .replace("provider: gatewayapi:v1", "provider: istio");
    let set = load(&yaml);
    let warnings: Vec<String> = set.warnings().map(ToString::to_string).collect();
    for field in ["spec.service.gatewayRefs", "spec.service.backendTimeout"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(field) && w.contains("accepted but not used")),
            "{field}: {warnings:?}"
        );
    }
    let docs = render_documents(&set.canaries[0], &RenderOptions::default()).unwrap();
    assert!(docs.iter().any(|d| d["kind"] == "VirtualService"));
    assert!(docs.iter().all(|d| d["kind"] != "HTTPRoute"));
}
