//! What Istio makes of a Gateway API `HTTPRoute` in the gateway's Envoy, done by hand for the
//! tests: the route's rules become the gateway listener's `route_config`, the way
//! `manifests/local/gateway.yaml` holds by hand what Istio renders from the VirtualService.
//! There is no istiod here, so this translation stands in for it; it covers what veer's
//! HTTPRoutes use (path, header, query and method matches, header modifiers, request
//! mirrors, rewrites, request timeouts, weighted Service backends) and fails on anything else
//! rather than dropping it.
//!
//! The order is Gateway API's precedence across all rules (an exact path, then the longest
//! prefix, then a method, then the most headers, then the most query parameters, then the
//! order of the rules), which Istio applies too: Envoy takes the first route that matches.
//! Backends become Istio's cluster names `outbound|PORT||NAME.NAMESPACE.svc.cluster.local`,
//! the clusters the gateway template defines.

use serde_json::{json, Map, Value};

/// The Envoy `route_config` for `route` (an HTTPRoute as JSON).
pub fn route_config(route: &Value) -> Result<Value, String> {
    let namespace = route["metadata"]["namespace"]
        .as_str()
        .ok_or("the HTTPRoute has no metadata.namespace")?;
    let spec = &route["spec"];
    let mut domains = Vec::new();
    for host in spec["hostnames"].as_array().into_iter().flatten() {
        let host = host.as_str().ok_or("a hostname is not a string")?;
        // Istio also matches the host with any port.
        domains.push(json!(host));
        domains.push(json!(format!("{host}:*")));
    }
    if domains.is_empty() {
        domains.push(json!("*"));
    }
    let mut routes = Vec::new();
    for (r, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        let action = route_action(namespace, rule).map_err(|e| format!("rules[{r}]: {e}"))?;
        let default_match = [json!({ "path": { "type": "PathPrefix", "value": "/" } })];
        let matches = match rule["matches"].as_array() {
            Some(m) if !m.is_empty() => m.as_slice(),
            _ => &default_match,
        };
        for (m, http_match) in matches.iter().enumerate() {
            let envoy_match =
                route_match(http_match).map_err(|e| format!("rules[{r}].matches[{m}]: {e}"))?;
            let mut envoy_route = action.clone();
            envoy_route.insert("match".into(), envoy_match);
            routes.push((precedence(http_match, r, m), Value::Object(envoy_route)));
        }
    }
    routes.sort_by_key(|r| r.0);
    Ok(json!({
        "name": "gateway",
        "virtual_hosts": [{
            "name": route["metadata"]["name"],
            "domains": domains,
            "routes": routes.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
        }],
    }))
}

/// Istio's cluster name for a Service backend reference.
pub fn cluster_name(namespace: &str, backend: &Value) -> Result<String, String> {
    let kind = backend["kind"].as_str().unwrap_or("Service");
    let group = backend["group"].as_str().unwrap_or("");
    if kind != "Service" || !group.is_empty() {
        return Err(format!(
            "backend {backend}: only core Services are translated"
        ));
    }
    let name = backend["name"].as_str().ok_or("a backendRef has no name")?;
    let port = backend["port"]
        .as_u64()
        .ok_or("a Service backendRef has no port")?;
    let namespace = backend["namespace"].as_str().unwrap_or(namespace);
    Ok(format!(
        "outbound|{port}||{name}.{namespace}.svc.cluster.local"
    ))
}

/// Gateway API's order between two matches, smallest first.
fn precedence(m: &Value, rule: usize, index: usize) -> (u8, isize, u8, isize, isize, usize, usize) {
    let path = &m["path"];
    let exact = u8::from(path["type"] != "Exact");
    let prefix_len = path["value"].as_str().map_or(1, str::len) as isize;
    let method = u8::from(m["method"].is_null());
    let count = |key: &str| m[key].as_array().map_or(0, Vec::len) as isize;
    (
        exact,
        -prefix_len,
        method,
        -count("headers"),
        -count("queryParams"),
        rule,
        index,
    )
}

fn string_match(m: &Value) -> Result<Value, String> {
    let value = m["value"].as_str().ok_or("a match has no value")?;
    match m["type"].as_str().unwrap_or("Exact") {
        "Exact" => Ok(json!({ "exact": value })),
        "RegularExpression" => Ok(json!({ "safe_regex": { "regex": value } })),
        other => Err(format!("match type {other} is not translated")),
    }
}

fn route_match(m: &Value) -> Result<Value, String> {
    let mut out = Map::new();
    let path = &m["path"];
    let value = path["value"].as_str().unwrap_or("/");
    match path["type"].as_str().unwrap_or("PathPrefix") {
        "Exact" => {
            out.insert("path".into(), json!(value));
        }
        "PathPrefix" if value == "/" => {
            out.insert("prefix".into(), json!("/"));
        }
        // Gateway API prefixes match whole path segments.
        "PathPrefix" => {
            out.insert(
                "path_separated_prefix".into(),
                json!(value.trim_end_matches('/')),
            );
        }
        "RegularExpression" => {
            out.insert("safe_regex".into(), json!({ "regex": value }));
        }
        other => return Err(format!("path match type {other} is not translated")),
    }
    let mut headers = Vec::new();
    for h in m["headers"].as_array().into_iter().flatten() {
        headers.push(json!({ "name": h["name"], "string_match": string_match(h)? }));
    }
    if let Some(method) = m["method"].as_str() {
        headers.push(json!({ "name": ":method", "string_match": { "exact": method } }));
    }
    if !headers.is_empty() {
        out.insert("headers".into(), Value::Array(headers));
    }
    let mut query = Vec::new();
    for q in m["queryParams"].as_array().into_iter().flatten() {
        query.push(json!({ "name": q["name"], "string_match": string_match(q)? }));
    }
    if !query.is_empty() {
        out.insert("query_parameters".into(), Value::Array(query));
    }
    for key in m.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !["path", "headers", "queryParams", "method"].contains(&key.as_str()) {
            return Err(format!("match field {key} is not translated"));
        }
    }
    Ok(Value::Object(out))
}

/// Everything of a rule's Envoy route but its match.
fn route_action(namespace: &str, rule: &Value) -> Result<Map<String, Value>, String> {
    let backends = rule["backendRefs"].as_array().cloned().unwrap_or_default();
    let mut action = match backends.as_slice() {
        [] => return Err("no backendRefs (Istio answers 500; not translated)".into()),
        [one] => json!({ "cluster": cluster_name(namespace, one)? }),
        many => {
            let mut clusters = Vec::new();
            for b in many {
                let weight = b["weight"].as_u64().unwrap_or(1);
                if weight > 0 {
                    clusters.push(json!({ "name": cluster_name(namespace, b)?, "weight": weight }));
                }
            }
            json!({ "weighted_clusters": { "clusters": clusters } })
        }
    };
    let mut out = Map::new();
    if let Some(request) = rule["timeouts"]["request"].as_str() {
        action["timeout"] = json!(envoy_duration(request)?);
    }
    for filter in rule["filters"].as_array().into_iter().flatten() {
        match filter["type"].as_str().unwrap_or_default() {
            "RequestMirror" => {
                let to = cluster_name(namespace, &filter["requestMirror"]["backendRef"])?;
                let mirrors = action
                    .as_object_mut()
                    .ok_or("internal: the action is not an object")?
                    .entry("request_mirror_policies")
                    .or_insert_with(|| json!([]));
                if let Some(list) = mirrors.as_array_mut() {
                    list.push(json!({ "cluster": to }));
                }
            }
            kind @ ("RequestHeaderModifier" | "ResponseHeaderModifier") => {
                let (key, side) = if kind == "RequestHeaderModifier" {
                    ("requestHeaderModifier", "request")
                } else {
                    ("responseHeaderModifier", "response")
                };
                let modifier = &filter[key];
                let mut add = Vec::new();
                for (op, append) in [
                    ("set", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    ("add", "APPEND_IF_EXISTS_OR_ADD"),
                ] {
                    for h in modifier[op].as_array().into_iter().flatten() {
                        add.push(json!({ "header": { "key": h["name"], "value": h["value"] }, "append_action": append }));
                    }
                }
                out.insert(format!("{side}_headers_to_add"), Value::Array(add));
                if let Some(remove) = modifier["remove"].as_array() {
                    out.insert(
                        format!("{side}_headers_to_remove"),
                        Value::Array(remove.clone()),
                    );
                }
            }
            "URLRewrite" => {
                let rewrite = &filter["urlRewrite"];
                if let Some(host) = rewrite["hostname"].as_str() {
                    action["host_rewrite_literal"] = json!(host);
                }
                let path = &rewrite["path"];
                match path["type"].as_str() {
                    None => {}
                    Some("ReplacePrefixMatch") => {
                        action["prefix_rewrite"] = path["replacePrefixMatch"].clone()
                    }
                    Some("ReplaceFullPath") => {
                        action["regex_rewrite"] = json!({
                            "pattern": { "regex": ".*" },
                            "substitution": path["replaceFullPath"],
                        })
                    }
                    Some(other) => {
                        return Err(format!("URLRewrite path type {other} is not translated"))
                    }
                }
            }
            other => return Err(format!("filter {other} is not translated")),
        }
    }
    out.insert("route".into(), action);
    Ok(out)
}

/// A Gateway API duration (`1m30s`, `1500ms`) as a protobuf JSON duration (`90s`).
fn envoy_duration(text: &str) -> Result<String, String> {
    let mut millis: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration {text:?}"))?;
        rest = &rest[digits..];
        let (unit, scale) = [("ms", 1), ("h", 3_600_000), ("m", 60_000), ("s", 1000)]
            .into_iter()
            .find(|(u, _)| rest.starts_with(u))
            .ok_or_else(|| format!("bad duration {text:?}"))?;
        millis += n * scale;
        rest = &rest[unit.len()..];
    }
    Ok(format!("{}.{:03}s", millis / 1000, millis % 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rules_come_before_the_catch_all_and_backends_are_istio_clusters() {
        let route = json!({
            "metadata": { "name": "podinfo", "namespace": "test" },
            "spec": {
                "hostnames": ["app.example.com"],
                "rules": [
                    { "matches": [{ "path": { "type": "PathPrefix", "value": "/" } }],
                      "backendRefs": [{ "name": "podinfo-primary", "port": 9898 }] },
                    { "matches": [{ "path": { "type": "PathPrefix", "value": "/" },
                                    "headers": [{ "type": "Exact", "name": "x-veer-route", "value": "canary" }] }],
                      "backendRefs": [{ "name": "podinfo-canary", "port": 9898 }],
                      "timeouts": { "request": "1m30s" } },
                ],
            },
        });
        let config = route_config(&route).unwrap();
        let host = &config["virtual_hosts"][0];
        assert_eq!(
            host["domains"],
            json!(["app.example.com", "app.example.com:*"])
        );
        let routes = host["routes"].as_array().unwrap();
        assert_eq!(
            routes[0]["route"]["cluster"],
            "outbound|9898||podinfo-canary.test.svc.cluster.local"
        );
        assert_eq!(routes[0]["route"]["timeout"], "90.000s");
        assert_eq!(
            routes[0]["match"]["headers"][0]["string_match"]["exact"],
            "canary"
        );
        assert_eq!(
            routes[1]["route"]["cluster"],
            "outbound|9898||podinfo-primary.test.svc.cluster.local"
        );
        let mut unknown = route.clone();
        unknown["spec"]["rules"][0]["filters"] = json!([{ "type": "ExtensionRef" }]);
        assert!(route_config(&unknown).unwrap_err().contains("ExtensionRef"));
    }
}
