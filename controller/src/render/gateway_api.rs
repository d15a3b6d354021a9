//! The Gateway API flavour of `veer render` (`provider: gatewayapi:v1`): one static
//! `HTTPRoute` in place of the VirtualService and DestinationRules, holding the same header
//! routes ([`super::header_routes`]): the filter's canary decision to `<name>-canary`, its
//! mirror decision to `<name>-primary` with a copy to the canary, everything else to
//! `<name>-primary`. `spec.service` is mapped as Flagger's Gateway API router maps it
//! (pkg/router/gateway_api.go): `gatewayRefs` → `parentRefs`, `hosts` → `hostnames`, `match`
//! → each rule's `matches`, `headers`/`rewrite`/`mirror`/`corsPolicy` → filters, `timeout`
//! and `backendTimeout` → `timeouts`. Flagger creates no DestinationRules for Gateway API.
//!
//! Where Flagger drops what an HTTPRoute cannot say (a regex rewrite, a prefix origin, an
//! Istio match on the scheme, retries, a traffic policy), veer refuses the canary with an
//! error naming the field: a silently dropped policy would change the traffic unnoticed.
//!
//! Defaults the API server would fill in (group and kind of references, the `Exact` match
//! type, the `/` prefix match, backend weight 1) are written out, so the object the cluster
//! holds equals the rendered one and a test can compare them.

use serde_json::{json, Map, Value};
use veer_core::PluginConfig;

use super::{header_routes, RenderError, ServiceNames};
use crate::spec::{parse_go_duration, CanarySpec};

/// The API group of Gateway API, also of the WasmPlugin's `targetRefs`.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// The HTTPRoute's API version (Gateway API's standard channel).
pub const HTTPROUTE_API: &str = "gateway.networking.k8s.io/v1";

/// A Gateway the canary's HTTPRoute attaches to: where its gateway WasmPlugin goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayParent {
    /// The Gateway's namespace (the canary's when `gatewayRefs` does not say).
    pub namespace: String,
    pub name: String,
}

fn invalid(spec: &CanarySpec, field: impl Into<String>, message: impl Into<String>) -> RenderError {
    RenderError::GatewayApi {
        source_doc: spec.source.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// The canary's HTTPRoute.
pub(super) fn http_route(
    spec: &CanarySpec,
    names: &ServiceNames,
    port: u16,
    cfg: &PluginConfig,
) -> Result<Value, RenderError> {
    refuse_istio_only(spec)?;
    let parent_refs = parent_refs(spec)?;
    let matches = route_matches(spec, cfg)?;
    let filters = service_filters(spec)?;
    let timeouts = timeouts(spec)?;
    let backend = |service: &str| json!({ "group": "", "kind": "Service", "name": service, "port": port, "weight": 1 });
    let rules: Vec<Value> = header_routes(cfg)
        .iter()
        .map(|r| {
            let matches: Vec<Value> = matches
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    if let Some((header, value)) = r.header {
                        let header = json!({ "type": "Exact", "name": header, "value": value });
                        match m.get_mut("headers").and_then(Value::as_array_mut) {
                            Some(headers) => headers.push(header),
                            None => {
                                m.insert("headers".into(), json!([header]));
                            }
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            let mut filters = filters.clone();
            if r.mirror {
                // The filter already chose which requests to mirror (mirrorWeight).
                let mut to = backend(&names.canary);
                if let Some(to) = to.as_object_mut() {
                    to.remove("weight");
                }
                filters.push(
                    json!({ "type": "RequestMirror", "requestMirror": { "backendRef": to } }),
                );
            }
            let mut rule = json!({
                "name": r.name,
                "matches": matches,
                "backendRefs": [backend(names.backend(r))],
            });
            if !filters.is_empty() {
                rule["filters"] = Value::Array(filters);
            }
            if let Some(t) = &timeouts {
                rule["timeouts"] = t.clone();
            }
            rule
        })
        .collect();
    let mut route_spec = json!({ "parentRefs": parent_refs, "rules": rules });
    let hostnames = hostnames(spec)?;
    if !hostnames.is_empty() {
        route_spec["hostnames"] = json!(hostnames);
    }
    Ok(json!({
        "apiVersion": HTTPROUTE_API,
        "kind": "HTTPRoute",
        "metadata": { "name": names.apex, "namespace": spec.namespace },
        "spec": route_spec,
    }))
}

/// Istio policies with no place in an HTTPRoute.
fn refuse_istio_only(spec: &CanarySpec) -> Result<(), RenderError> {
    let s = &spec.service;
    if s.retries.is_some() {
        return Err(invalid(
            spec,
            "spec.service.retries",
            "an HTTPRoute has no retries in Gateway API's standard channel (Flagger drops them \
             silently); configure retries on the Gateway's implementation, or remove the field",
        ));
    }
    if s.traffic_policy.is_some() {
        return Err(invalid(
            spec,
            "spec.service.trafficPolicy",
            "with provider gatewayapi:v1 there are no DestinationRules to carry it (Flagger \
             creates none and drops the field); write the policy in your own DestinationRule \
             or BackendTrafficPolicy, or remove the field",
        ));
    }
    Ok(())
}

/// Which Gateways the canary's HTTPRoute attaches to (`spec.service.gatewayRefs`).
pub fn gateway_api_parents(spec: &CanarySpec) -> Result<Vec<GatewayParent>, RenderError> {
    let refs = parent_refs(spec)?;
    Ok(refs
        .iter()
        .map(|r| GatewayParent {
            namespace: r["namespace"]
                .as_str()
                .unwrap_or(&spec.namespace)
                .to_string(),
            name: r["name"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}

/// `spec.service.gatewayRefs` as `parentRefs`: Gateways only, since veer decides in the
/// gateway's filter and a route attached to a Service (GAMMA, mesh traffic) passes no filter.
fn parent_refs(spec: &CanarySpec) -> Result<Vec<Value>, RenderError> {
    let refs = &spec.service.gateway_refs;
    if refs.is_empty() {
        return Err(invalid(
            spec,
            "spec.service.gatewayRefs",
            "is empty: with provider gatewayapi:v1 the HTTPRoute needs the Gateway the traffic \
             enters through, as Flagger requires (e.g. [{name: public-gateway, namespace: \
             istio-ingress}])",
        ));
    }
    let mut out = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let path = format!("spec.service.gatewayRefs[{i}]");
        let Some(r) = r.as_object() else {
            return Err(invalid(
                spec,
                path,
                "must be a mapping with name and namespace",
            ));
        };
        let mut parent = Map::new();
        parent.insert("group".into(), json!(GATEWAY_API_GROUP));
        parent.insert("kind".into(), json!("Gateway"));
        for (key, value) in r {
            let field = format!("{path}.{key}");
            match key.as_str() {
                "group" if value != GATEWAY_API_GROUP => {
                    return Err(invalid(
                        spec,
                        field,
                        format!("{value}: veer attaches to Gateways of group {GATEWAY_API_GROUP}"),
                    ))
                }
                "kind" if value != "Gateway" => {
                    return Err(invalid(
                        spec,
                        field,
                        format!(
                            "{value}: veer decides in the gateway's filter, so the HTTPRoute must \
                             attach to a Gateway; attached to a Service (mesh traffic) no filter \
                             would strip a client-sent route header"
                        ),
                    ))
                }
                "group" | "kind" => {}
                "name" | "namespace" | "sectionName" => match value.as_str() {
                    Some(text) if !text.is_empty() => {
                        parent.insert(key.clone(), value.clone());
                    }
                    _ => return Err(invalid(spec, field, "must be a non-empty string")),
                },
                "port" => {
                    parent.insert(key.clone(), value.clone());
                }
                _ => {
                    return Err(invalid(
                        spec,
                        field,
                        "unknown field of a Gateway API ParentReference (group, kind, namespace, \
                         name, sectionName, port)",
                    ))
                }
            }
        }
        if !parent.contains_key("name") {
            return Err(invalid(spec, format!("{path}.name"), "is required"));
        }
        out.push(Value::Object(parent));
    }
    Ok(out)
}

/// `spec.service.hosts` as `hostnames`, each checked against Gateway API's hostname rules so
/// the error names the field (the API server would only name the HTTPRoute). No hosts means
/// every host of the Gateway's listener, as with Flagger.
fn hostnames(spec: &CanarySpec) -> Result<Vec<String>, RenderError> {
    for (i, host) in spec.service.hosts.iter().enumerate() {
        if !is_gateway_hostname(host) {
            return Err(invalid(
                spec,
                format!("spec.service.hosts[{i}]"),
                format!(
                    "{host:?} is not a Gateway API hostname: a lowercase DNS name, optionally \
                     with a leading `*.`; no IP address, port or bare `*`"
                ),
            ));
        }
    }
    Ok(spec.service.hosts.clone())
}

fn is_gateway_hostname(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    host.len() <= 253
        && name.split('.').all(label_ok)
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// `spec.service.match` (Istio `HTTPMatchRequest`s) as `HTTPRouteMatch`es, each with a path
/// (the `/` prefix when it has none). None at all is one match of the `/` prefix.
fn route_matches(
    spec: &CanarySpec,
    cfg: &PluginConfig,
) -> Result<Vec<Map<String, Value>>, RenderError> {
    let root = || json!({ "type": "PathPrefix", "value": "/" });
    let mut out = Vec::new();
    for (i, m) in spec.service.r#match.iter().enumerate() {
        let path = format!("spec.service.match[{i}]");
        let Some(m) = m.as_object() else {
            return Err(invalid(
                spec,
                path,
                "must be a mapping (an Istio HTTPMatchRequest)",
            ));
        };
        let mut mapped = Map::new();
        mapped.insert("path".into(), root());
        for (key, value) in m {
            let field = format!("{path}.{key}");
            match key.as_str() {
                "uri" => {
                    let (kind, text) = string_match(
                        spec,
                        &field,
                        value,
                        &[
                            ("exact", "Exact"),
                            ("prefix", "PathPrefix"),
                            ("regex", "RegularExpression"),
                        ],
                    )?;
                    mapped.insert("path".into(), json!({ "type": kind, "value": text }));
                }
                "method" => {
                    let (_, text) = string_match(spec, &field, value, &[("exact", "Exact")])?;
                    mapped.insert("method".into(), json!(text));
                }
                "headers" | "queryParams" => {
                    let Some(entries) = value.as_object() else {
                        return Err(invalid(spec, field, "must be a mapping of name to match"));
                    };
                    let mut list = Vec::new();
                    for (name, v) in entries {
                        let reserved = [&cfg.route_header, &cfg.mirror_header];
                        if key == "headers" && reserved.iter().any(|h| h.eq_ignore_ascii_case(name))
                        {
                            return Err(invalid(
                                spec,
                                format!("{field}.{name}"),
                                "is the header the veer filter sets for its decision; a match \
                                 on it would be overridden",
                            ));
                        }
                        let (kind, text) = string_match(
                            spec,
                            &format!("{field}.{name}"),
                            v,
                            &[("exact", "Exact"), ("regex", "RegularExpression")],
                        )?;
                        list.push(json!({ "type": kind, "name": name, "value": text }));
                    }
                    mapped.insert(key.clone(), Value::Array(list));
                }
                // A label for Istio's logs; an HTTPRouteMatch has no name and routing is the same.
                "name" => {}
                _ => {
                    return Err(invalid(
                        spec,
                        field,
                        "an HTTPRoute cannot match on it (Gateway API matches the path, headers, \
                         query parameters and method only)",
                    ))
                }
            }
        }
        out.push(mapped);
    }
    if out.is_empty() {
        out.push(Map::from_iter([("path".to_string(), root())]));
    }
    Ok(out)
}

/// An Istio `StringMatch` as a Gateway API match type and value, for the kinds `supported`
/// (Istio's name, Gateway API's type).
fn string_match(
    spec: &CanarySpec,
    field: &str,
    value: &Value,
    supported: &[(&str, &'static str)],
) -> Result<(&'static str, String), RenderError> {
    let entries = value.as_object().filter(|o| o.len() == 1);
    let found = entries.and_then(|o| {
        let (kind, text) = o.iter().next()?;
        let (_, gateway_kind) = supported.iter().find(|(k, _)| k == kind)?;
        Some((*gateway_kind, text.as_str()?.to_string()))
    });
    found.ok_or_else(|| {
        let kinds: Vec<&str> = supported.iter().map(|(k, _)| *k).collect();
        invalid(
            spec,
            field,
            format!(
                "{value}: an HTTPRoute matches this with {} only (one of them, a string)",
                kinds.join(", ")
            ),
        )
    })
}

/// The filters of every rule: `headers`, `rewrite`, `mirror` and `corsPolicy`, as Flagger maps
/// them.
fn service_filters(spec: &CanarySpec) -> Result<Vec<Value>, RenderError> {
    let s = &spec.service;
    let mut filters = Vec::new();
    if let Some(headers) = &s.headers {
        let Some(parts) = headers.as_object() else {
            return Err(invalid(
                spec,
                "spec.service.headers",
                "must be a mapping with request and response",
            ));
        };
        for (part, ops) in parts {
            let (kind, key) = match part.as_str() {
                "request" => ("RequestHeaderModifier", "requestHeaderModifier"),
                "response" => ("ResponseHeaderModifier", "responseHeaderModifier"),
                _ => {
                    return Err(invalid(
                        spec,
                        format!("spec.service.headers.{part}"),
                        "unknown: Istio's headers have request and response",
                    ))
                }
            };
            let modifier = header_modifier(spec, &format!("spec.service.headers.{part}"), ops)?;
            filters.push(json!({ "type": kind, key: modifier }));
        }
    }
    if let Some(rewrite) = &s.rewrite {
        filters.push(json!({ "type": "URLRewrite", "urlRewrite": url_rewrite(spec, rewrite)? }));
    }
    for (i, mirror) in s.mirror.iter().enumerate() {
        let mut mirror = mirror.clone();
        let Some(to) = mirror.get_mut("backendRef").and_then(Value::as_object_mut) else {
            return Err(invalid(
                spec,
                format!("spec.service.mirror[{i}].backendRef"),
                "is required: a mapping (a Gateway API HTTPRequestMirrorFilter)",
            ));
        };
        // Written out as the API server defaults them.
        to.entry("group").or_insert_with(|| json!(""));
        to.entry("kind").or_insert_with(|| json!("Service"));
        filters.push(json!({ "type": "RequestMirror", "requestMirror": mirror }));
    }
    if let Some(cors) = &s.cors_policy {
        filters.push(json!({ "type": "CORS", "cors": cors_filter(spec, cors)? }));
    }
    Ok(filters)
}

/// Istio's `{set, add, remove}` as a Gateway API header filter (lists sorted by name, as
/// Flagger sorts them, so the object does not change between renders).
fn header_modifier(spec: &CanarySpec, path: &str, ops: &Value) -> Result<Value, RenderError> {
    let Some(ops) = ops.as_object() else {
        return Err(invalid(
            spec,
            path,
            "must be a mapping with set, add and remove",
        ));
    };
    let mut out = Map::new();
    for (op, value) in ops {
        let field = format!("{path}.{op}");
        match op.as_str() {
            "set" | "add" => {
                let entries = value.as_object().ok_or_else(|| {
                    invalid(spec, &field, "must be a mapping of header name to value")
                })?;
                let mut list = Vec::new();
                for (name, v) in entries {
                    let v = v.as_str().ok_or_else(|| {
                        invalid(spec, format!("{field}.{name}"), "must be a string")
                    })?;
                    list.push(json!({ "name": name, "value": v }));
                }
                list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                out.insert(op.clone(), Value::Array(list));
            }
            "remove" => {
                if !value
                    .as_array()
                    .is_some_and(|l| l.iter().all(Value::is_string))
                {
                    return Err(invalid(spec, field, "must be a list of header names"));
                }
                out.insert(op.clone(), value.clone());
            }
            _ => {
                return Err(invalid(
                    spec,
                    field,
                    "unknown: Istio header operations are set, add and remove",
                ))
            }
        }
    }
    Ok(Value::Object(out))
}

/// `spec.service.rewrite` (`uri`, `authority` and Flagger's `type`) as a `URLRewrite`.
fn url_rewrite(spec: &CanarySpec, rewrite: &Value) -> Result<Value, RenderError> {
    let Some(r) = rewrite.as_object() else {
        return Err(invalid(
            spec,
            "spec.service.rewrite",
            "must be a mapping with uri and authority",
        ));
    };
    let mut out = Map::new();
    let path_type = match r.get("type").map(|t| t.as_str()) {
        None | Some(Some("ReplaceFullPath")) => "ReplaceFullPath",
        Some(Some("ReplacePrefixMatch")) => "ReplacePrefixMatch",
        Some(_) => {
            return Err(invalid(
                spec,
                "spec.service.rewrite.type",
                "must be ReplaceFullPath (the default) or ReplacePrefixMatch",
            ))
        }
    };
    for (key, value) in r {
        let field = format!("spec.service.rewrite.{key}");
        let text = || {
            value
                .as_str()
                .ok_or_else(|| invalid(spec, &field, "must be a string"))
        };
        match key.as_str() {
            "type" => {}
            "authority" => {
                out.insert("hostname".into(), json!(text()?));
            }
            "uri" => {
                let value_key = if path_type == "ReplaceFullPath" {
                    "replaceFullPath"
                } else {
                    "replacePrefixMatch"
                };
                out.insert(
                    "path".into(),
                    json!({ "type": path_type, value_key: text()? }),
                );
            }
            _ => {
                return Err(invalid(
                    spec,
                    field,
                    "an HTTPRoute's URLRewrite cannot express it (it replaces the hostname, the \
                     full path or the matched prefix)",
                ))
            }
        }
    }
    Ok(Value::Object(out))
}

/// Istio's `corsPolicy` as Gateway API's CORS filter. Origins must be exact: Gateway API
/// takes origins with `*` wildcards, not Istio's prefix or regex matches.
fn cors_filter(spec: &CanarySpec, cors: &Value) -> Result<Value, RenderError> {
    let Some(c) = cors.as_object() else {
        return Err(invalid(
            spec,
            "spec.service.corsPolicy",
            "must be a mapping",
        ));
    };
    let mut out = Map::new();
    let mut origins = Vec::new();
    for (key, value) in c {
        let field = format!("spec.service.corsPolicy.{key}");
        let strings = || -> Result<Vec<Value>, RenderError> {
            match value.as_array() {
                Some(l) if l.iter().all(Value::is_string) => Ok(l.clone()),
                _ => Err(invalid(spec, &field, "must be a list of strings")),
            }
        };
        match key.as_str() {
            // Istio's deprecated list of exact origins.
            "allowOrigin" => origins.extend(strings()?),
            "allowOrigins" => {
                for (i, m) in value.as_array().into_iter().flatten().enumerate() {
                    let (_, origin) =
                        string_match(spec, &format!("{field}[{i}]"), m, &[("exact", "Exact")])?;
                    origins.push(json!(origin));
                }
            }
            "allowMethods" | "allowHeaders" | "exposeHeaders" => {
                out.insert(key.clone(), Value::Array(strings()?));
            }
            "allowCredentials" => {
                let Some(allow) = value.as_bool() else {
                    return Err(invalid(spec, field, "must be true or false"));
                };
                out.insert(key.clone(), json!(allow));
            }
            "maxAge" => {
                let seconds = value
                    .as_str()
                    .and_then(|t| parse_go_duration(t).ok())
                    .map(|d| d.as_secs())
                    .ok_or_else(|| invalid(spec, &field, "must be a duration such as 24h"))?;
                out.insert(key.clone(), json!(seconds));
            }
            _ => {
                return Err(invalid(
                    spec,
                    field,
                    "Gateway API's CORS filter cannot express it (it has allowOrigins, \
                     allowMethods, allowHeaders, exposeHeaders, allowCredentials and maxAge)",
                ))
            }
        }
    }
    if !origins.is_empty() {
        out.insert("allowOrigins".into(), Value::Array(origins));
    }
    Ok(Value::Object(out))
}

/// `timeouts.request` from `spec.service.timeout` and `timeouts.backendRequest` from
/// `spec.service.backendTimeout`, in Gateway API's duration syntax.
fn timeouts(spec: &CanarySpec) -> Result<Option<Value>, RenderError> {
    let s = &spec.service;
    let mut out = Map::new();
    for (field, key, value) in [
        ("spec.service.timeout", "request", &s.timeout),
        (
            "spec.service.backendTimeout",
            "backendRequest",
            &s.backend_timeout,
        ),
    ] {
        let Some(value) = value else { continue };
        if !is_gateway_duration(value) {
            return Err(invalid(
                spec,
                field,
                format!(
                    "{value:?} is not a Gateway API duration: up to four parts of 1 to 5 digits \
                     with h, m, s or ms, e.g. 1m30s or 1500ms"
                ),
            ));
        }
        out.insert(key.into(), json!(value));
    }
    Ok((!out.is_empty()).then_some(Value::Object(out)))
}

/// Gateway API's `Duration`: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.
fn is_gateway_duration(text: &str) -> bool {
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "h", "m", "s"].iter().find(|u| rest.starts_with(*u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
        parts += 1;
    }
    (1..=4).contains(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_durations_follow_the_pattern() {
        for ok in ["10s", "1m30s", "1500ms", "1h2m3s4ms", "99999s"] {
            assert!(is_gateway_duration(ok), "{ok}");
        }
        for bad in ["", "1.5s", "100000s", "1h2m3s4ms5s", "10", "s", "10us"] {
            assert!(!is_gateway_duration(bad), "{bad}");
        }
    }

    #[test]
    fn gateway_hostnames_follow_the_rules() {
        for ok in ["app.example.com", "*.example.com", "podinfo"] {
            assert!(is_gateway_hostname(ok), "{ok}");
        }
        for bad in [
            "*",
            "App.example.com",
            "10.0.0.1",
            "app.example.com:80",
            "-a.b",
            "a..b",
        ] {
            assert!(!is_gateway_hostname(bad), "{bad}");
        }
    }
}
