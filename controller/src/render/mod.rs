//! `veer render`: the resources that route canaries through the veer filter. The apex,
//! `-primary` and `-canary` Services (as Flagger creates them), then, by the canary's
//! provider, either Istio's DestinationRules and a VirtualService with static header routes,
//! or (`provider: gatewayapi:v1`) a Gateway API HTTPRoute with the same static header routes
//! ([`gateway_api`]); and the gateway's WasmPlugin with the canaries' routes in its initial
//! table, bound to the ingress gateway's pods by a selector, or to the Gateway API Gateways
//! by `targetRefs`.
//!
//! The header routes come from the same `PluginConfig` that goes into the WasmPlugin, and
//! that config is checked by the filter's own `parse_plugin_config` before anything is
//! printed: the routes always match the headers the filter sets, and the output never holds
//! a config the filter would reject. Both route kinds are built from one list of routes
//! ([`header_routes`]), so they cannot drift apart.

mod gateway_api;

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use veer_core::{
    parse_plugin_config, ConfigError, ControllerEndpoint, CookieSigning, PluginConfig,
    RoutingTable, Variant, DEFAULT_MIRROR_HEADER, DEFAULT_ROUTE_HEADER, DEFAULT_TABLE_PATH,
};

use crate::spec::{route_for, CanarySpec};

pub use gateway_api::{gateway_api_parents, GatewayParent, GATEWAY_API_GROUP, HTTPROUTE_API};

/// What the filter writes into `mirrorHeader` for a request to mirror (docs/routing-table.md,
/// step 7); the VirtualService's mirror route matches exactly this.
pub use veer_core::MIRROR_HEADER_VALUE;

/// The istio.io API versions written. `networking.istio.io/v1` needs Istio 1.22 or newer.
const NETWORKING_API: &str = "networking.istio.io/v1";
const WASMPLUGIN_API: &str = "extensions.istio.io/v1alpha1";

/// Everything about the cluster that the Canary spec does not say. The defaults are the
/// values of `manifests/istio/` (controller/tests/manifests.rs checks they agree).
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Name of the gateway-wide WasmPlugin. One plugin serves every canary, so this is the
    /// same object as `manifests/istio/filter/wasmplugin.yaml`: applying updates it.
    pub plugin_name: String,
    /// Namespace of the ingress gateway pods (and so of the WasmPlugin). Gateway API
    /// canaries name their Gateways' namespaces themselves (`gatewayRefs`).
    pub gateway_namespace: String,
    /// Labels of the ingress gateway pods (Istio's gateway; a Gateway API Gateway is bound
    /// by `targetRefs` instead).
    pub gateway_selector: BTreeMap<String, String>,
    /// The filter's OCI image (`oci://...`).
    pub filter_image: String,
    /// Digest pinning the filter image; `None` leaves `sha256` unset.
    pub filter_sha256: Option<String>,
    /// Where the filter long-polls the live table.
    pub controller: ControllerEndpoint,
    /// Gateway environment variable with the cookie signing keys; `None` for unsigned cookies.
    pub cookie_keys_env: Option<String>,
    /// Pod label the generated Services select on, as Flagger's `app` default.
    pub selector_label: String,
    /// The filter's `routeHeader` and `mirrorHeader`. The VirtualService matches these same
    /// values, taken from the checked plugin configuration.
    pub route_header: String,
    pub mirror_header: String,
    /// The filter's `responseMetrics`: only the controller's `--metrics-set veer` reads them,
    /// and with Istio's own metrics they would cost host calls per response for nothing.
    pub response_metrics: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        let service = "veer-controller";
        let namespace = "veer-system";
        RenderOptions {
            plugin_name: "veer".to_string(),
            gateway_namespace: "istio-system".to_string(),
            gateway_selector: BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
            filter_image: "oci://registry.example.com/veer/veer-filter:0.1.0".to_string(),
            filter_sha256: None,
            controller: RenderOptions::controller_endpoint(service, namespace, 8080),
            cookie_keys_env: Some("VEER_COOKIE_KEYS".to_string()),
            selector_label: "app".to_string(),
            route_header: DEFAULT_ROUTE_HEADER.to_string(),
            mirror_header: DEFAULT_MIRROR_HEADER.to_string(),
            response_metrics: false,
        }
    }
}

impl RenderOptions {
    /// The endpoint of a controller Service: the cluster name istiod generates for it
    /// (`outbound|PORT||FQDN`) and its FQDN as the authority.
    pub fn controller_endpoint(service: &str, namespace: &str, port: u16) -> ControllerEndpoint {
        let fqdn = format!("{service}.{namespace}.svc.cluster.local");
        ControllerEndpoint {
            cluster: format!("outbound|{port}||{fqdn}"),
            authority: Some(fqdn),
            path: DEFAULT_TABLE_PATH.to_string(),
            poll_ms: 1000,
            timeout_ms: 30_000,
        }
    }
}

/// Why a canary cannot be rendered. Each names the spec (file and document).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{source_doc}: spec.service.port is required to create the Services")]
    MissingPort { source_doc: String },
    #[error("{source_doc}: {error}")]
    Gateways {
        source_doc: String,
        error: GatewayError,
    },
    #[error("{source_doc}: spec.service.{field} must be a mapping with labels/annotations")]
    ServiceMetadata {
        source_doc: String,
        field: &'static str,
    },
    #[error("{source_doc}: the filter would reject this canary's plugin configuration: {error}")]
    FilterRejects {
        source_doc: String,
        error: ConfigError,
    },
    #[error("{source_doc}: cannot serialize the plugin configuration: {error}")]
    PluginConfigJson {
        source_doc: String,
        error: serde_json::Error,
    },
    /// A `spec.service` field an HTTPRoute cannot carry as the VirtualService would.
    #[error("{source_doc}: {field}: {message}")]
    GatewayApi {
        source_doc: String,
        field: String,
        message: String,
    },
    /// One WasmPlugin cannot both select Istio's gateway pods and target Gateways.
    #[error(
        "{istio} is routed by an Istio VirtualService and {gateway_api} by a Gateway API \
         HTTPRoute (provider gatewayapi:v1): their gateways need different WasmPlugins, so \
         render them from separate files"
    )]
    MixedProviders { istio: String, gateway_api: String },
    #[error("no canary to render")]
    NoCanary,
    #[error("filter sha256 {0:?} is not a digest: Istio wants 64 lowercase hex digits")]
    BadSha256(String),
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
}

/// Why `spec.service.gateways` cannot bind a veer VirtualService. `veer explain` says the
/// same, from [`virtual_service_gateways`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Flagger binds such a VirtualService to `mesh` alone, where no veer filter runs.
    #[error(
        "spec.service.gateways is empty: Flagger would bind the VirtualService to the mesh \
         only, but veer decides in the ingress gateway, so nothing would be split. List the \
         gateway the traffic enters through (e.g. istio-system/public-gateway)"
    )]
    Empty,
    #[error(
        "spec.service.gateways contains \"mesh\": sidecars run no veer filter, so inside the \
         mesh nothing would strip a client-sent route header and any client could pick the \
         canary. Bind the VirtualService to the ingress gateway only"
    )]
    Mesh,
}

/// The gateways the canary's VirtualService binds to: `spec.service.gateways`, which must
/// name the ingress gateway(s) running the filter, and never `mesh`.
pub fn virtual_service_gateways(spec: &CanarySpec) -> Result<&[String], GatewayError> {
    let gateways = spec.service.gateways.as_slice();
    if gateways.is_empty() {
        Err(GatewayError::Empty)
    } else if gateways.iter().any(|g| g == "mesh") {
        Err(GatewayError::Mesh)
    } else {
        Ok(gateways)
    }
}

/// The resources for one canary, as multi-document YAML.
pub fn render(spec: &CanarySpec, opts: &RenderOptions) -> Result<String, RenderError> {
    render_all(std::slice::from_ref(spec), opts)
}

/// The resources for several canaries (e.g. every Canary in one file): each canary's
/// Services, DestinationRules and VirtualService, then one WasmPlugin whose table holds all
/// their routes. Rendering them one by one would print the same WasmPlugin several times,
/// each with a single route.
pub fn render_all(specs: &[CanarySpec], opts: &RenderOptions) -> Result<String, RenderError> {
    let docs = render_all_documents(specs, opts)?;
    let keys: Vec<String> = specs
        .iter()
        .map(|s| format!("{} ({})", s.key(), s.source))
        .collect();
    let plugins: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == "WasmPlugin")
        .map(|d| {
            format!(
                "{}/{}",
                d["metadata"]["namespace"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    // The WasmPlugin is Istio's either way; the routes are Istio's or Gateway API's.
    let what = if specs.iter().any(CanarySpec::gateway_api) {
        "Gateway API and Istio"
    } else {
        "Istio"
    };
    let mut out = format!(
        "# veer render: {what} resources for {}.\n\
         # The WasmPlugin {} is gateway-wide (one per gateway, shared by every\n\
         # canary); its table only holds routes until the first poll of the controller.\n",
        keys.join(", "),
        plugins.join(", "),
    );
    for spec in specs {
        if let (Some(signing), Some(env)) = (&spec.veer.cookie_signing, &opts.cookie_keys_env) {
            out.push_str(&format!(
                "# Cookie signing keys: the gateway's {env} must come from Secret {}/{} key {}\n\
                 # (manifests/istio/gateway/ingressgateway-patch.yaml).\n",
                opts.gateway_namespace, signing.secret_name, signing.key
            ));
        }
    }
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&doc)?);
    }
    Ok(out)
}

/// The resources for one canary as JSON values, in apply order: Services,
/// DestinationRules and VirtualService (or the HTTPRoute), WasmPlugin(s).
pub fn render_documents(
    spec: &CanarySpec,
    opts: &RenderOptions,
) -> Result<Vec<Value>, RenderError> {
    render_all_documents(std::slice::from_ref(spec), opts)
}

/// [`render_all`] as JSON values.
pub fn render_all_documents(
    specs: &[CanarySpec],
    opts: &RenderOptions,
) -> Result<Vec<Value>, RenderError> {
    let plugin_config = plugin_config(specs, opts)?;
    let istio = specs.iter().find(|s| !s.gateway_api());
    let gateway_api = specs.iter().find(|s| s.gateway_api());
    if let (Some(istio), Some(gateway_api)) = (istio, gateway_api) {
        return Err(RenderError::MixedProviders {
            istio: format!("{} ({})", istio.key(), istio.source),
            gateway_api: format!("{} ({})", gateway_api.key(), gateway_api.source),
        });
    }
    let mut docs = Vec::new();
    let mut parents = Vec::new();
    for spec in specs {
        let source_doc = spec.source.to_string();
        let port = spec.service.port.ok_or_else(|| RenderError::MissingPort {
            source_doc: source_doc.clone(),
        })?;
        let names = ServiceNames::of(spec);
        if spec.gateway_api() {
            let route = gateway_api::http_route(spec, &names, port, &plugin_config)?;
            docs.extend(services(spec, opts, &names, port)?);
            docs.push(route);
            parents.extend(gateway_api_parents(spec)?);
            continue;
        }
        let gateways = virtual_service_gateways(spec)
            .map_err(|error| RenderError::Gateways { source_doc, error })?;
        docs.extend(services(spec, opts, &names, port)?);
        for host in [&names.primary, &names.canary] {
            docs.push(destination_rule(spec, host));
        }
        docs.push(virtual_service(
            spec,
            &names,
            port,
            gateways,
            &plugin_config,
        ));
    }
    let config_json =
        serde_json::to_value(&plugin_config).map_err(|error| RenderError::PluginConfigJson {
            source_doc: sources(specs),
            error,
        })?;
    if gateway_api.is_some() {
        // A WasmPlugin targets Gateways of its own namespace only: one per namespace.
        let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for p in &parents {
            let names = by_namespace.entry(&p.namespace).or_default();
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
        for (namespace, gateways) in by_namespace {
            let target_refs: Vec<Value> = gateways
                .iter()
                .map(|name| json!({ "group": GATEWAY_API_GROUP, "kind": "Gateway", "name": name }))
                .collect();
            docs.push(wasm_plugin(
                opts,
                config_json.clone(),
                namespace,
                json!({ "targetRefs": target_refs }),
            ));
        }
    } else {
        docs.push(wasm_plugin(
            opts,
            config_json,
            &opts.gateway_namespace,
            json!({ "selector": { "matchLabels": opts.gateway_selector } }),
        ));
    }
    Ok(docs)
}

fn sources(specs: &[CanarySpec]) -> String {
    let all: Vec<String> = specs.iter().map(|s| s.source.to_string()).collect();
    all.join(", ")
}

/// The filter configuration for these canaries at weight 0, checked by the filter's parser
/// (which also rejects two canaries with the same route name).
pub fn plugin_config(
    specs: &[CanarySpec],
    opts: &RenderOptions,
) -> Result<PluginConfig, RenderError> {
    if specs.is_empty() {
        return Err(RenderError::NoCanary);
    }
    if let Some(digest) = &opts.filter_sha256 {
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if digest.len() != 64 || !digest.chars().all(hex) {
            return Err(RenderError::BadSha256(digest.clone()));
        }
    }
    let config = PluginConfig {
        route_header: opts.route_header.clone(),
        mirror_header: opts.mirror_header.clone(),
        response_metrics: opts.response_metrics,
        cookie_signing: opts.cookie_keys_env.as_ref().map(|env| CookieSigning {
            keys: Vec::new(),
            keys_env: Some(env.clone()),
        }),
        controller: Some(opts.controller.clone()),
        // Weight 0: everyone on primary until the controller's first table arrives.
        table: Some(RoutingTable {
            generation: 0,
            routes: specs.iter().map(|s| route_for(s, 0, 0, "")).collect(),
        }),
        ..PluginConfig::default()
    };
    let bytes = serde_json::to_vec(&config).map_err(|error| RenderError::PluginConfigJson {
        source_doc: sources(specs),
        error,
    })?;
    parse_plugin_config(&bytes).map_err(|error| RenderError::FilterRejects {
        source_doc: sources(specs),
        error,
    })
}

/// Flagger's naming: the apex Service is `service.name` (else the target's name); the pods
/// are the target's (canary) and `<target>-primary`.
pub(crate) struct ServiceNames {
    pub(crate) apex: String,
    pub(crate) primary: String,
    pub(crate) canary: String,
    primary_pods: String,
    canary_pods: String,
}

impl ServiceNames {
    fn of(spec: &CanarySpec) -> ServiceNames {
        let apex = spec.service_name().to_string();
        let target = &spec.target_ref.name;
        ServiceNames {
            primary: format!("{apex}-primary"),
            canary: format!("{apex}-canary"),
            apex,
            primary_pods: format!("{target}-primary"),
            canary_pods: target.clone(),
        }
    }
}

fn services(
    spec: &CanarySpec,
    opts: &RenderOptions,
    names: &ServiceNames,
    port: u16,
) -> Result<Vec<Value>, RenderError> {
    let s = &spec.service;
    let mut port_entry = json!({
        "name": s.port_name.as_deref().unwrap_or("http"),
        "port": port,
        "targetPort": s.target_port.clone().unwrap_or(json!(port)),
        "protocol": "TCP",
    });
    if let Some(proto) = &s.app_protocol {
        port_entry["appProtocol"] = json!(proto);
    }
    let variants = [
        (&names.apex, &names.primary_pods, &s.apex, "apex"),
        (&names.primary, &names.primary_pods, &s.primary, "primary"),
        (&names.canary, &names.canary_pods, &s.canary, "canary"),
    ];
    let mut out = Vec::new();
    for (name, pods, extra, field) in variants {
        let mut metadata = json!({
            "name": name,
            "namespace": spec.namespace,
            "labels": { opts.selector_label.clone(): name },
        });
        merge_service_metadata(spec, &mut metadata, extra.as_ref(), field)?;
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "type": "ClusterIP",
                "selector": { opts.selector_label.clone(): pods },
                "ports": [port_entry.clone()],
            },
        }));
    }
    Ok(out)
}

/// `spec.service.{apex,primary,canary}.{labels,annotations}` onto a Service, as Flagger does.
fn merge_service_metadata(
    spec: &CanarySpec,
    metadata: &mut Value,
    extra: Option<&Value>,
    field: &'static str,
) -> Result<(), RenderError> {
    let Some(extra) = extra else { return Ok(()) };
    let bad = || RenderError::ServiceMetadata {
        source_doc: spec.source.to_string(),
        field,
    };
    let extra = extra.as_object().ok_or_else(bad)?;
    for key in ["labels", "annotations"] {
        let Some(entries) = extra.get(key) else {
            continue;
        };
        let entries = entries.as_object().ok_or_else(bad)?;
        let target = metadata
            .as_object_mut()
            .ok_or_else(bad)?
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(target) = target.as_object_mut() {
            for (k, v) in entries {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn destination_rule(spec: &CanarySpec, host: &str) -> Value {
    let mut dr_spec = json!({ "host": host });
    if let Some(policy) = &spec.service.traffic_policy {
        dr_spec["trafficPolicy"] = policy.clone();
    }
    json!({
        "apiVersion": NETWORKING_API,
        "kind": "DestinationRule",
        "metadata": { "name": host, "namespace": spec.namespace },
        "spec": dr_spec,
    })
}

/// One of the static routes that both the VirtualService and the HTTPRoute hold.
pub(crate) struct HeaderRoute<'a> {
    pub name: &'static str,
    /// The header the filter sets and its value; `None` for the catch-all.
    pub header: Option<(&'a str, &'static str)>,
    /// The Service it goes to: the canary's, else the primary's.
    pub to_canary: bool,
    /// Also copies each request to the canary.
    pub mirror: bool,
}

/// Three static routes, first match wins: the filter's canary decision, the filter's mirror
/// decision (primary plus a copy to the canary), and everything else to primary, which is
/// also where requests go when the filter is absent (FAIL_OPEN).
pub(crate) fn header_routes(cfg: &PluginConfig) -> [HeaderRoute<'_>; 3] {
    [
        HeaderRoute {
            name: "canary",
            header: Some((&cfg.route_header, Variant::Canary.as_str())),
            to_canary: true,
            mirror: false,
        },
        HeaderRoute {
            name: "mirror",
            header: Some((&cfg.mirror_header, MIRROR_HEADER_VALUE)),
            to_canary: false,
            mirror: true,
        },
        HeaderRoute {
            name: "primary",
            header: None,
            to_canary: false,
            mirror: false,
        },
    ]
}

impl ServiceNames {
    /// The Service a route goes to.
    pub(crate) fn backend(&self, route: &HeaderRoute<'_>) -> &str {
        if route.to_canary {
            &self.canary
        } else {
            &self.primary
        }
    }
}

/// The [`header_routes`] as VirtualService routes.
fn virtual_service(
    spec: &CanarySpec,
    names: &ServiceNames,
    port: u16,
    gateways: &[String],
    cfg: &PluginConfig,
) -> Value {
    let destination = |host: &str| json!({ "host": host, "port": { "number": port } });
    let mut routes: Vec<Value> = header_routes(cfg)
        .iter()
        .map(|r| {
            let mut route = json!({
                "name": r.name,
                "route": [{ "destination": destination(names.backend(r)) }],
            });
            if let Some((header, value)) = r.header {
                route["match"] = json!([{ "headers": { header: { "exact": value } } }]);
            }
            if r.mirror {
                route["mirror"] = destination(&names.canary);
                // The filter already chose which requests to mirror (mirrorWeight).
                route["mirrorPercentage"] = json!({ "value": 100 });
            }
            route
        })
        .collect();
    // Flagger copies these service-level policies onto every route it writes.
    let s = &spec.service;
    let policies = [
        ("retries", s.retries.clone()),
        ("timeout", s.timeout.clone().map(Value::String)),
        ("headers", s.headers.clone()),
        ("corsPolicy", s.cors_policy.clone()),
        ("rewrite", s.rewrite.clone()),
    ];
    for route in &mut routes {
        for (key, value) in &policies {
            if let Some(v) = value {
                route[*key] = v.clone();
            }
        }
    }
    let hosts = route_for(spec, 0, 0, "").hosts;
    json!({
        "apiVersion": NETWORKING_API,
        "kind": "VirtualService",
        "metadata": { "name": names.apex, "namespace": spec.namespace },
        "spec": {
            "gateways": gateways,
            "hosts": hosts,
            "http": routes,
        },
    })
}

/// The gateway's WasmPlugin in `namespace`, bound to the gateway by `attach`: Istio's
/// `selector` of the gateway pods, or `targetRefs` to Gateway API Gateways (a WasmPlugin
/// may have only one of them).
fn wasm_plugin(
    opts: &RenderOptions,
    plugin_config: Value,
    namespace: &str,
    attach: Value,
) -> Value {
    let mut spec = attach;
    let common = json!({
        "type": "HTTP",
        // Before the router, after authn/authz: manifests/istio/filter/wasmplugin.yaml.
        "phase": "STATS",
        "priority": -100,
        // A broken filter sends everyone to primary instead of failing every request.
        "failStrategy": "FAIL_OPEN",
        "url": opts.filter_image,
        "imagePullPolicy": "IfNotPresent",
        "pluginConfig": plugin_config,
    });
    if let (Some(spec), Value::Object(common)) = (spec.as_object_mut(), common) {
        spec.extend(common);
    }
    if let Some(digest) = &opts.filter_sha256 {
        spec["sha256"] = json!(digest);
    }
    if let Some(env) = &opts.cookie_keys_env {
        spec["vmConfig"] = json!({ "env": [{ "name": env, "valueFrom": "HOST" }] });
    }
    json!({
        "apiVersion": WASMPLUGIN_API,
        "kind": "WasmPlugin",
        "metadata": {
            "name": opts.plugin_name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "veer-filter",
                "app.kubernetes.io/part-of": "veer",
            },
        },
        "spec": spec,
    })
}
