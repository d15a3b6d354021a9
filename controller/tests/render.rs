#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `veer render` on the seed Canary and on variations of it: what it prints, and what it
//! refuses to print. Schema validation of the output is in tests/manifests.rs.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use veer_controller::render::{
    render, render_all, render_all_documents, render_documents, GatewayError, RenderError,
    RenderOptions, MIRROR_HEADER_VALUE,
};
use veer_controller::spec::{load_file, CanarySpec, LoadOptions};
use veer_core::{
    parse_plugin_config, MatchRule, StringMatch, DEFAULT_MIRROR_HEADER, DEFAULT_ROUTE_HEADER,
};

fn seed() -> CanarySpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seed-canary.yaml");
    let set = load_file(&path, &LoadOptions::default());
    let errors: Vec<_> = set.errors().collect();
    assert!(errors.is_empty(), "the seed must load: {errors:?}");
    assert_eq!(set.canaries.len(), 1);
    set.canaries[0].clone()
}

fn docs(spec: &CanarySpec, opts: &RenderOptions) -> Vec<Value> {
    render_documents(spec, opts).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {docs:#?}"))
}

#[test]
fn seed_renders_flaggers_services_destination_rules_routes_and_the_plugin() {
    let docs = docs(&seed(), &RenderOptions::default());
    let ids: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("Service", "podinfo"),
        ("Service", "podinfo-primary"),
        ("Service", "podinfo-canary"),
        ("DestinationRule", "podinfo-primary"),
        ("DestinationRule", "podinfo-canary"),
        ("VirtualService", "podinfo"),
        ("WasmPlugin", "veer"),
    ];
    assert_eq!(
        ids,
        expected
            .iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect::<Vec<_>>()
    );

    // Apex and primary select the primary pods, the canary Service the target's pods.
    for (svc, pods) in [
        ("podinfo", "podinfo-primary"),
        ("podinfo-primary", "podinfo-primary"),
        ("podinfo-canary", "podinfo"),
    ] {
        let s = find(&docs, "Service", svc);
        assert_eq!(s["metadata"]["namespace"], "test");
        assert_eq!(s["spec"]["selector"], json!({ "app": pods }), "{svc}");
        assert_eq!(
            s["spec"]["ports"],
            json!([{ "name": "http", "port": 9898, "targetPort": 9898, "protocol": "TCP" }])
        );
    }
    for dr in ["podinfo-primary", "podinfo-canary"] {
        let d = find(&docs, "DestinationRule", dr);
        assert_eq!(d["spec"]["host"], dr);
        assert_eq!(
            d["spec"]["trafficPolicy"],
            json!({ "tls": { "mode": "DISABLE" } })
        );
    }

    let vs = find(&docs, "VirtualService", "podinfo");
    assert_eq!(
        vs["spec"]["gateways"],
        json!(["istio-system/public-gateway"])
    );
    assert_eq!(vs["spec"]["hosts"], json!(["app.example.com"]));
    let http = vs["spec"]["http"].as_array().unwrap();
    assert_eq!(http.len(), 3);
    assert_eq!(
        http[0]["match"],
        json!([{ "headers": { DEFAULT_ROUTE_HEADER: { "exact": "canary" } } }])
    );
    assert_eq!(http[0]["route"][0]["destination"]["host"], "podinfo-canary");
    assert_eq!(
        http[1]["match"],
        json!([{ "headers": { DEFAULT_MIRROR_HEADER: { "exact": MIRROR_HEADER_VALUE } } }])
    );
    assert_eq!(
        http[1]["route"][0]["destination"]["host"],
        "podinfo-primary"
    );
    assert_eq!(
        http[1]["mirror"],
        json!({ "host": "podinfo-canary", "port": { "number": 9898 } })
    );
    assert!(http[2].get("match").is_none());
    assert_eq!(
        http[2]["route"][0]["destination"]["host"],
        "podinfo-primary"
    );
    // The seed's retry policy on every route.
    for route in http {
        assert_eq!(
            route["retries"],
            json!({
                "attempts": 3,
                "perTryTimeout": "1s",
                "retryOn": "gateway-error,connect-failure,refused-stream"
            })
        );
    }
}

#[test]
fn plugin_table_holds_the_seeds_route_at_weight_zero() {
    let docs = docs(&seed(), &RenderOptions::default());
    let wasm = find(&docs, "WasmPlugin", "veer");
    assert_eq!(wasm["metadata"]["namespace"], "istio-system");
    assert_eq!(
        wasm["spec"]["selector"]["matchLabels"],
        json!({ "istio": "ingressgateway" })
    );
    let cfg = parse_plugin_config(wasm["spec"]["pluginConfig"].to_string().as_bytes()).unwrap();
    let table = cfg.table.unwrap();
    assert_eq!(table.routes.len(), 1);
    let route = &table.routes[0];
    assert_eq!(route.name, "test/podinfo");
    assert_eq!(route.hosts, vec!["app.example.com".to_string()]);
    assert_eq!(route.path_prefix, "/");
    assert_eq!((route.weight, route.mirror_weight), (0, 0));
    assert_eq!(
        cfg.controller.unwrap().cluster,
        "outbound|8080||veer-controller.veer-system.svc.cluster.local"
    );
    assert_eq!(
        cfg.cookie_signing.unwrap().keys_env.as_deref(),
        Some("VEER_COOKIE_KEYS")
    );
    assert_eq!(
        wasm["spec"]["vmConfig"]["env"],
        json!([{ "name": "VEER_COOKIE_KEYS", "valueFrom": "HOST" }])
    );
}

/// The VirtualService follows the headers the plugin is configured with, whatever they are.
#[test]
fn custom_header_names_reach_both_the_plugin_and_the_routes() {
    let opts = RenderOptions {
        route_header: "x-acme-variant".to_string(),
        mirror_header: "x-acme-shadow".to_string(),
        ..RenderOptions::default()
    };
    let docs = docs(&seed(), &opts);
    let wasm = find(&docs, "WasmPlugin", "veer");
    assert_eq!(
        wasm["spec"]["pluginConfig"]["routeHeader"],
        "x-acme-variant"
    );
    assert_eq!(
        wasm["spec"]["pluginConfig"]["mirrorHeader"],
        "x-acme-shadow"
    );
    let http = &find(&docs, "VirtualService", "podinfo")["spec"]["http"];
    assert!(http[0]["match"][0]["headers"]["x-acme-variant"].is_object());
    assert!(http[1]["match"][0]["headers"]["x-acme-shadow"].is_object());
}

#[test]
fn yaml_output_is_the_documents_with_a_header() {
    let spec = seed();
    let opts = RenderOptions::default();
    let text = render(&spec, &opts).unwrap();
    assert!(
        text.starts_with("# veer render: Istio resources for test/podinfo ("),
        "{text}"
    );
    let parsed: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    assert_eq!(parsed, render_documents(&spec, &opts).unwrap());
}

#[test]
fn sha256_pin_and_image_are_written_when_given() {
    let digest = "a".repeat(64);
    let opts = RenderOptions {
        filter_image: "oci://ghcr.io/example/veer-filter:1.2.3".to_string(),
        filter_sha256: Some(digest.clone()),
        ..RenderOptions::default()
    };
    let docs = docs(&seed(), &opts);
    let wasm = find(&docs, "WasmPlugin", "veer");
    assert_eq!(
        wasm["spec"]["url"],
        "oci://ghcr.io/example/veer-filter:1.2.3"
    );
    assert_eq!(wasm["spec"]["sha256"], digest);
    let bad = RenderOptions {
        filter_sha256: Some("sha256:ABC".to_string()),
        ..RenderOptions::default()
    };
    let err = render(&seed(), &bad).unwrap_err();
    assert!(matches!(err, RenderError::BadSha256(_)), "{err}");
    let unpinned = docs_default_wasm();
    assert!(unpinned["spec"].get("sha256").is_none());
}

fn docs_default_wasm() -> Value {
    find(
        &docs(&seed(), &RenderOptions::default()),
        "WasmPlugin",
        "veer",
    )
    .clone()
}

#[test]
fn service_policies_and_metadata_are_copied_like_flagger() {
    let mut spec = seed();
    spec.service.name = Some("web".to_string());
    spec.service.port_name = Some("http-web".to_string());
    spec.service.target_port = Some(json!("http"));
    spec.service.timeout = Some("5s".to_string());
    spec.service.cors_policy = Some(json!({ "allowOrigins": [{ "exact": "https://a.example" }] }));
    spec.service.apex = Some(json!({ "labels": { "tier": "edge" }, "annotations": { "a": "b" } }));
    let docs = docs(&spec, &RenderOptions::default());
    let apex = find(&docs, "Service", "web");
    assert_eq!(
        apex["metadata"]["labels"],
        json!({ "app": "web", "tier": "edge" })
    );
    assert_eq!(apex["metadata"]["annotations"], json!({ "a": "b" }));
    // Service names follow service.name; pods still follow the target's name.
    assert_eq!(
        apex["spec"]["selector"],
        json!({ "app": "podinfo-primary" })
    );
    assert_eq!(
        find(&docs, "Service", "web-canary")["spec"]["selector"],
        json!({ "app": "podinfo" })
    );
    assert_eq!(apex["spec"]["ports"][0]["name"], "http-web");
    assert_eq!(apex["spec"]["ports"][0]["targetPort"], "http");
    let vs = find(&docs, "VirtualService", "web");
    for route in vs["spec"]["http"].as_array().unwrap() {
        assert_eq!(route["timeout"], "5s");
        assert_eq!(
            route["corsPolicy"]["allowOrigins"][0]["exact"],
            "https://a.example"
        );
    }
    assert_eq!(
        vs["spec"]["http"][0]["route"][0]["destination"]["host"],
        "web-canary"
    );
}

#[test]
fn no_port_is_an_error_naming_the_file() {
    let mut spec = seed();
    spec.service.port = None;
    let err = render(&spec, &RenderOptions::default()).unwrap_err();
    assert!(matches!(err, RenderError::MissingPort { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("seed-canary.yaml") && msg.contains("spec.service.port"),
        "{msg}"
    );
}

#[test]
fn gateways_must_be_the_ingress_gateway_only() {
    let mut spec = seed();
    spec.service.gateways = vec![];
    let err = render(&spec, &RenderOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            RenderError::Gateways {
                error: GatewayError::Empty,
                ..
            }
        ),
        "{err}"
    );

    spec.service.gateways = vec!["istio-system/public-gateway".into(), "mesh".into()];
    let err = render(&spec, &RenderOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            RenderError::Gateways {
                error: GatewayError::Mesh,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("mesh"));
}

/// The output never holds a plugin config that the filter would reject.
#[test]
fn a_config_the_filter_rejects_is_not_rendered() {
    let mut spec = seed();
    spec.analysis.r#match = vec![MatchRule {
        headers: BTreeMap::from([(
            "x-user".to_string(),
            StringMatch {
                regex: Some("(unclosed".to_string()),
                ..StringMatch::default()
            },
        )]),
        ..MatchRule::default()
    }];
    let err = render(&spec, &RenderOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RenderError::FilterRejects { .. }), "{msg}");
    assert!(
        msg.contains("test/podinfo") && msg.contains("x-user"),
        "{msg}"
    );

    let same = RenderOptions {
        mirror_header: DEFAULT_ROUTE_HEADER.to_string(),
        ..RenderOptions::default()
    };
    let err = render(&seed(), &same).unwrap_err();
    assert!(err.to_string().contains("mirrorHeader"), "{err}");
}

#[test]
fn service_metadata_that_is_not_a_mapping_is_an_error() {
    let mut spec = seed();
    spec.service.canary = Some(json!(["labels"]));
    let err = render(&spec, &RenderOptions::default()).unwrap_err();
    assert!(err.to_string().contains("spec.service.canary"), "{err}");
}

#[test]
fn several_canaries_share_one_wasmplugin_with_all_their_routes() {
    let first = seed();
    let mut second = seed();
    second.name = "checkout".to_string();
    second.namespace = "shop".to_string();
    second.target_ref.name = "checkout".to_string();
    second.service.hosts = vec!["shop.example.com".to_string()];
    let docs = render_all_documents(&[first, second], &RenderOptions::default()).unwrap();
    let plugins: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "WasmPlugin").collect();
    assert_eq!(plugins.len(), 1, "one gateway-wide plugin");
    assert_eq!(docs.last().unwrap()["kind"], "WasmPlugin", "applied last");
    let routes = &plugins[0]["spec"]["pluginConfig"]["table"]["routes"];
    assert_eq!(routes[0]["name"], "test/podinfo");
    assert_eq!(routes[1]["name"], "shop/checkout");
    assert_eq!(routes[1]["hosts"], json!(["shop.example.com"]));
    let vs = find(&docs, "VirtualService", "checkout");
    assert_eq!(vs["metadata"]["namespace"], "shop");
    assert_eq!(vs["spec"]["hosts"], json!(["shop.example.com"]));
    assert_eq!(docs.len(), 6 + 6 + 1);
    let text = render_all(&[seed()], &RenderOptions::default()).unwrap();
    assert_eq!(text, render(&seed(), &RenderOptions::default()).unwrap());
}

#[test]
fn the_same_canary_twice_is_rejected_by_the_filters_rules() {
    let err = render_all(&[seed(), seed()], &RenderOptions::default()).unwrap_err();
    assert!(matches!(err, RenderError::FilterRejects { .. }), "{err}");
    assert!(err.to_string().contains("test/podinfo"), "{err}");
    let err = render_all(&[], &RenderOptions::default()).unwrap_err();
    assert!(matches!(err, RenderError::NoCanary), "{err}");
}
