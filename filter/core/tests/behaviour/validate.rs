#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::fixtures::KEY_A;
use serde_json::{json, Value};
use veer_core::{parse_plugin_config, parse_table, ConfigError, PluginConfig};

fn base() -> Value {
    json!({
        "routeHeader": "x-veer-route",
        "decisionHeader": true,
        "cookieSigning": {"keys": [KEY_A]},
        "controller": {"cluster": "outbound|8080||veer-controller.veer-system.svc.cluster.local"},
        "table": {"generation": 1, "routes": [{
            "name": "test/podinfo",
            "hosts": ["app.example.com", "*.example.com"],
            "weight": 3000,
            "revision": "7f9c2ba",
            "overrides": [{"match": {"headers": {"x-canary": {"exact": "always"}}}, "variant": "canary"}],
            "match": [
                {"headers": {"x-user-group": {"exact": "beta"}}},
                {"headers": {"x-user": {"regex": "u[0-9]+"}}, "method": "GET"}
            ],
            "sessionAffinity": {"cookieName": "flagger-cookie", "maxAge": 86400, "sameSite": "Lax"},
            "stickyKey": {"header": "X-User-Id"}
        }, {
            "name": "test/other",
            "hosts": ["other.example.com"]
        }]}
    })
}

fn error_for(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = base();
    edit(&mut v);
    parse_plugin_config(v.to_string().as_bytes())
        .map(|_| "no error".to_string())
        .unwrap_or_else(|e| e.to_string())
}

fn route0(v: &mut Value) -> &mut Value {
    &mut v["table"]["routes"][0]
}

#[test]
fn the_full_example_parses() {
    let cfg: PluginConfig = parse_plugin_config(base().to_string().as_bytes()).unwrap();
    assert_eq!(cfg.mirror_header, "x-veer-mirror");
    let c = cfg.controller.as_ref().unwrap();
    assert_eq!(
        (c.path.as_str(), c.poll_ms, c.timeout_ms),
        ("/v1/table", 1000, 30_000)
    );
    let table = cfg.table.unwrap();
    assert_eq!(table.routes[0].path_prefix, "/");
    assert_eq!(
        table.routes[0].session_affinity.as_ref().unwrap().max_age,
        86400
    );
    assert!(parse_plugin_config(b"{}").is_ok(), "everything is optional");
}

#[test]
fn error_messages_name_route_path_and_reason() {
    assert_eq!(
        error_for(|v| route0(v)["weight"] = json!(10001)),
        r#"route "test/podinfo": table.routes[0].weight: must be between 0 and 10000 basis points, got 10001"#
    );
    assert_eq!(
        error_for(|v| route0(v)["mirrorWeight"] = json!(20000)),
        r#"route "test/podinfo": table.routes[0].mirrorWeight: must be between 0 and 10000 basis points, got 20000"#
    );
    assert_eq!(
        error_for(|v| route0(v)["match"][1]["headers"]["x-user"]["regex"] = json!("u[0-9")),
        r#"route "test/podinfo": table.routes[0].match[1].headers.x-user.regex: invalid regex: found unclosed character class"#
    );
    assert_eq!(
        error_for(|v| route0(v)["match"][1]["headers"]["x-user"]["regex"] = json!(r"\p{Greek}+")),
        r#"route "test/podinfo": table.routes[0].match[1].headers.x-user.regex: invalid regex: Unicode classes (\p{..}, \P{..}) are not supported: write explicit ranges such as [\x{370}-\x{3ff}]"#
    );
    assert_eq!(
        error_for(|v| route0(v)["match"][1]["headers"]["x-user"]["regex"] = json!("u(?i)+")),
        r#"route "test/podinfo": table.routes[0].match[1].headers.x-user.regex: invalid regex: repetition operator '+' directly follows the flag group "(?i)" and has nothing to repeat (RE2 rejects this); put the flags before the atom, e.g. (?i)a* or (?i:a)*"#
    );
    assert_eq!(
        error_for(|v| route0(v)["sessionAffinity"]["cookeName"] = json!("x")),
        "table.routes[0].sessionAffinity.cookeName: unknown field, expected one of `cookieName`, \
         `maxAge`, `path`, `domain`, `secure`, `httpOnly`, `sameSite`, `partitioned`"
    );
    assert_eq!(
        error_for(|v| v["tabel"] = json!({})),
        "tabel: unknown field, expected one of `routeHeader`, `mirrorHeader`, `decisionHeader`, \
         `responseMetrics`, `cookieSigning`, `controller`, `table`"
    );
    assert_eq!(
        error_for(|v| route0(v)["overrides"][0]["match"]["header"] = json!({})),
        "table.routes[0].overrides[0].match.header: unknown field, expected one of `headers`, \
         `cookies`, `queryParams`, `method`, `uri`"
    );
    assert_eq!(
        error_for(|v| v["table"]["routes"][1]["name"] = json!("test/podinfo")),
        r#"route "test/podinfo": table.routes[1].name: duplicate route name (also table.routes[0])"#
    );
    assert_eq!(
        error_for(|v| route0(v)["sessionAffinity"]["cookieName"] = json!("bad name")),
        r#"route "test/podinfo": table.routes[0].sessionAffinity.cookieName: "bad name" is not a valid cookie name (RFC 6265 token)"#
    );
    assert_eq!(
        error_for(|v| v["cookieSigning"]["keys"] = json!([KEY_A, "c2hvcnRrZXk="])),
        "cookieSigning.keys[1]: key must decode to at least 16 bytes, got 8"
    );
    assert_eq!(
        error_for(|v| route0(v)["sessionAffinity"]["partitioned"] = json!(true)),
        r#"route "test/podinfo": table.routes[0].sessionAffinity.partitioned: requires secure: true (CHIPS)"#
    );
}

/// A change to the base document.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn more_rules() {
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|v| route0(v)["weight"] = json!("3000")),
         r#"table.routes[0].weight: invalid type: string "3000", expected u32"#),
        (Box::new(|v| route0(v)["weight"] = json!(-1)),
         "table.routes[0].weight: invalid value: integer `-1`, expected u32"),
        (Box::new(|v| { route0(v).as_object_mut().unwrap().remove("hosts"); }),
         "table.routes[0]: missing field `hosts`"),
        (Box::new(|v| route0(v)["hosts"] = json!([])),
         r#"route "test/podinfo": table.routes[0].hosts: must list at least one host"#),
        (Box::new(|v| route0(v)["hosts"][1] = json!("app.example.com:8080")),
         r#"route "test/podinfo": table.routes[0].hosts[1]: "app.example.com:8080" must not carry a port (hosts match any port)"#),
        (Box::new(|v| route0(v)["hosts"][1] = json!("a.*.com")),
         r#"route "test/podinfo": table.routes[0].hosts[1]: "a.*.com" may only use '*' alone or as a leading '*.'"#),
        (Box::new(|v| route0(v)["hosts"][1] = json!("bad host")),
         r#"route "test/podinfo": table.routes[0].hosts[1]: "bad host" is not a valid host name"#),
        (Box::new(|v| v["table"]["routes"][1]["hosts"] = json!(["APP.example.com"])),
         r#"route "test/other": table.routes[1].hosts[0]: host "APP.example.com" with pathPrefix "/" is already claimed by route "test/podinfo" (table.routes[0])"#),
        (Box::new(|v| route0(v)["name"] = json!(" ")),
         "table.routes[0].name: must not be empty"),
        (Box::new(|v| route0(v)["name"] = json!("a;b")),
         r#"route "a;b": table.routes[0].name: must be printable ASCII without ';'"#),
        (Box::new(|v| route0(v)["name"] = json!("caf\u{e9}")),
         "route \"caf\u{e9}\": table.routes[0].name: must be printable ASCII without ';'"),
        (Box::new(|v| route0(v)["pathPrefix"] = json!("api")),
         r#"route "test/podinfo": table.routes[0].pathPrefix: "api" must start with '/' (no query string)"#),
        (Box::new(|v| route0(v)["match"][0]["headers"]["x-user-group"] = json!({"exact": "a", "prefix": "b"})),
         r#"route "test/podinfo": table.routes[0].match[0].headers.x-user-group: needs exactly one of exact, prefix, suffix, regex, present; got exact, prefix"#),
        (Box::new(|v| route0(v)["match"][0]["headers"]["x-user-group"] = json!({"regex": "(a{1000}){1000}"})),
         r#"route "test/podinfo": table.routes[0].match[0].headers.x-user-group.regex: invalid regex: compiled regex exceeded size limit (1048576 bytes)"#),
        (Box::new(|v| route0(v)["match"][0]["headers"]["x-user-group"] = json!({})),
         r#"route "test/podinfo": table.routes[0].match[0].headers.x-user-group: needs exactly one of exact, prefix, suffix, regex, present; got none"#),
        (Box::new(|v| route0(v)["match"][0]["headers"] = json!({"bad header": {"present": true}})),
         r#"route "test/podinfo": table.routes[0].match[0].headers["bad header"]: "bad header" is not a valid header name"#),
        (Box::new(|v| route0(v)["overrides"][0]["variant"] = json!("blue")),
         "table.routes[0].overrides[0].variant: unknown variant `blue`, expected `primary` or `canary`"),
        (Box::new(|v| route0(v)["sessionAffinity"]["maxAge"] = json!(-5)),
         r#"route "test/podinfo": table.routes[0].sessionAffinity.maxAge: must be >= 0, got -5"#),
        (Box::new(|v| route0(v)["sessionAffinity"]["domain"] = json!("a.com; x=y")),
         r#"route "test/podinfo": table.routes[0].sessionAffinity.domain: "a.com; x=y" must be non-empty with no ';', spaces or control characters"#),
        (Box::new(|v| route0(v)["sessionAffinity"]["path"] = json!("/\n")),
         r#"route "test/podinfo": table.routes[0].sessionAffinity.path: "/\n" must start with '/' and contain no ';' or control characters"#),
        (Box::new(|v| route0(v)["sessionAffinity"]["sameSite"] = json!("None")),
         r#"route "test/podinfo": table.routes[0].sessionAffinity.sameSite: SameSite=None requires secure: true"#),
        (Box::new(|v| route0(v)["stickyKey"]["header"] = json!("x user")),
         r#"route "test/podinfo": table.routes[0].stickyKey.header: "x user" is not a valid header name"#),
        (Box::new(|v| v["routeHeader"] = json!("X-Veer-Route")),
         r#"routeHeader: "X-Veer-Route" must be lowercase (Envoy header names are lowercase)"#),
        (Box::new(|v| v["mirrorHeader"] = json!("x-veer-route")),
         r#"mirrorHeader: must differ from routeHeader (both are "x-veer-route")"#),
        (Box::new(|v| v["mirrorHeader"] = json!("")),
         r#"mirrorHeader: "" is not a valid header name"#),
        (Box::new(|v| v["cookieSigning"]["keys"] = json!(["not base64!"])),
         "cookieSigning.keys[0]: is not valid base64"),
        (Box::new(|v| v["cookieSigning"] = json!({"keys": [KEY_A], "keysEnv": "K"})),
         "cookieSigning: set either keys or keysEnv, not both"),
        (Box::new(|v| v["cookieSigning"] = json!({})),
         "cookieSigning: needs keys or keysEnv"),
        (Box::new(|v| v["cookieSigning"] = json!({"keysEnv": "1KEYS"})),
         r#"cookieSigning.keysEnv: "1KEYS" is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"#),
        (Box::new(|v| v["controller"]["cluster"] = json!("")),
         "controller.cluster: must not be empty"),
        (Box::new(|v| v["controller"]["pollMs"] = json!(0)),
         "controller.pollMs: must be greater than 0"),
        (Box::new(|v| v["controller"]["timeoutMs"] = json!(0)),
         "controller.timeoutMs: must be greater than 0"),
        (Box::new(|v| v["controller"]["path"] = json!("v1/table")),
         r#"controller.path: "v1/table" must start with '/' and carry no query string"#),
    ];
    let wrong: Vec<String> = cases
        .into_iter()
        .filter_map(|(edit, want)| {
            // serde's type errors end with the JSON position, which depends on the
            // serialized base document; the rest of the message is what is asserted here.
            let got = error_for(edit);
            let got = got
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string();
            (got != want).then(|| format!("\n  want {want}\n   got {got}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.concat());
}

#[test]
fn json_syntax_errors_say_where() {
    let e = parse_plugin_config(br#"{"table": {"routes": [}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "table.routes[0]: expected value at line 1 column 23"
    );
    let e = parse_plugin_config(b" ").unwrap_err();
    assert_eq!(e.to_string(), "empty document, expected a JSON object");
    let e = parse_plugin_config(b"{} x").unwrap_err();
    assert_eq!(e.to_string(), "trailing characters at line 1 column 4");
    let e = parse_plugin_config(b"[]").unwrap_err();
    assert_eq!(e.to_string(), "expected a JSON object");
    let e = parse_table(b"null").unwrap_err();
    assert_eq!(e.to_string(), "expected a JSON object");
    let e = parse_plugin_config(br#"{"decisionHeader": "yes"}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"decisionHeader: invalid type: string "yes", expected a boolean at line 1 column 24"#
    );
}

#[test]
fn tables_from_the_controller_ignore_unknown_fields_but_are_validated() {
    let t = parse_table(
        br#"{"generation": 9, "futureField": 1, "routes": [{"name": "a", "hosts": ["*"],
            "newThing": {"x": 1}, "sessionAffinity": {"cookieName": "c", "sameSiteV2": "x"},
            "match": [{"headers": {"h": {"exact": "v", "ignoreCase": true}}, "grpc": true}]}]}"#,
    )
    .unwrap();
    assert_eq!((t.generation, t.routes.len()), (9, 1));
    let e: ConfigError =
        parse_table(br#"{"routes": [{"name": "a", "hosts": ["*"], "weight": 10001}]}"#)
            .unwrap_err();
    assert_eq!(e.route.as_deref(), Some("a"));
    assert_eq!(e.path, "routes[0].weight");
    assert_eq!(
        e.to_string(),
        r#"route "a": routes[0].weight: must be between 0 and 10000 basis points, got 10001"#
    );
}

#[test]
fn signing_keys_from_config_and_environment() {
    let mut v = base();
    v["cookieSigning"] = json!({"keysEnv": "VEER_COOKIE_KEYS"});
    let cfg = parse_plugin_config(v.to_string().as_bytes()).unwrap();
    let keys = veer_core::signing_keys(&cfg, |name| {
        assert_eq!(name, "VEER_COOKIE_KEYS");
        Some(format!("{KEY_A},{KEY_A}"))
    })
    .unwrap()
    .unwrap();
    assert_eq!(keys.len(), 2);
    let e = veer_core::signing_keys(&cfg, |_| None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cookieSigning.keysEnv: environment variable VEER_COOKIE_KEYS is not set"
    );
    let cfg = parse_plugin_config(b"{}").unwrap();
    assert!(veer_core::signing_keys(&cfg, |_| None).unwrap().is_none());
}

#[test]
fn serde_errors_name_the_path_of_the_value() {
    let path_and_reason = |doc: &str| {
        let e = parse_plugin_config(doc.as_bytes()).unwrap_err().to_string();
        e.split(" at line ").next().unwrap().to_string()
    };
    assert_eq!(
        path_and_reason(r#"{"table": {"routes": [{"name": "a", "hosts": ["x", 5]}]}}"#),
        "table.routes[0].hosts[1]: invalid type: integer `5`, expected a string"
    );
    assert_eq!(
        path_and_reason(
            r#"{"table": {"routes": [{"name": "a", "hosts": ["x"], "sessionAffinity": {"cookieName": "c"}, "weight": "x"}]}}"#
        ),
        r#"table.routes[0].weight: invalid type: string "x", expected u32"#
    );
    assert_eq!(
        path_and_reason(r#"{"table": {"routes": [{"name": "a", "hosts": ["x"]}, {"name": "b"}]}}"#),
        "table.routes[1]: missing field `hosts`"
    );
    assert_eq!(
        path_and_reason(
            r#"{"table": {"routes": [{"name": "a", "hosts": ["x"], "match": [{}, {"headers": {"a\"b,[{": {"exact": 1}}}]}]}}"#
        ),
        r#"table.routes[0].match[1].headers["a\"b,[{"].exact: invalid type: integer `1`, expected a string"#
    );
    assert_eq!(
        path_and_reason(
            "{\n  \"controller\": {\n    \"cluster\": \"c\",\n    \"pollMs\": true\n  }\n}"
        ),
        "controller.pollMs: invalid type: boolean `true`, expected u64"
    );
    assert_eq!(
        path_and_reason(
            r#"{"table": {"routes": [{"name": "a", "hosts": ["x"], "weight": 12.5}]}}"#
        ),
        "table.routes[0].weight: invalid type: floating point `12.5`, expected u32"
    );
    assert_eq!(
        path_and_reason(r#"{"table": {"generation": 18446744073709551616, "routes": []}}"#),
        "table.generation: invalid type: floating point `1.8446744073709552e+19`, expected u64"
    );
    assert_eq!(
        path_and_reason(
            r#"{"table": {"routes": [{"name": "a", "hosts": ["x"], "weight": 4294967296}]}}"#
        ),
        "table.routes[0].weight: invalid value: integer `4294967296`, expected u32"
    );
}

#[test]
fn unknown_fields_are_found_at_every_depth_and_only_in_plugin_config() {
    let err = |doc: &str| parse_plugin_config(doc.as_bytes()).unwrap_err().to_string();
    let route = r#""name": "a", "hosts": ["x"]"#;
    assert_eq!(
        err(&format!(
            r#"{{"table": {{"routes": [{{{route}}}, {{{route}, "stickyKey": {{"header": "h", "heder": 1}}}}]}}}}"#
        )),
        "table.routes[1].stickyKey.heder: unknown field, expected `header`"
    );
    assert_eq!(
        err(&format!(
            r#"{{"table": {{"routes": [{{{route}, "match": [{{"headers": {{"x-a": {{"exact": "1", "regx": "b"}}}}}}]}}]}}}}"#
        )),
        "table.routes[0].match[0].headers.x-a.regx: unknown field, expected one of `exact`, \
         `prefix`, `suffix`, `regex`, `present`"
    );
    assert_eq!(
        err(r#"{"controller": {"cluster": "c", "timeout": 5}}"#),
        "controller.timeout: unknown field, expected one of `cluster`, `authority`, `path`, \
         `pollMs`, `timeoutMs`"
    );
    // Escaped keys are compared decoded; values of any kind are skipped over.
    assert!(parse_plugin_config(
        br#"{"\u0074able": {"generation": 1e0, "routes": []}, "decisionHeader": true, "controller": null}"#
    )
    .is_err_and(|e| e.to_string().contains("generation")));
    assert!(parse_plugin_config(
        br#"{"\u0074able": {"generation": 1, "routes": [{"name": "a\"]}", "hosts": ["x"], "revision": "{[\\"}]}, "decisionHeader": true, "controller": null}"#
    )
    .is_ok());
    // The controller's table: the same unknown fields are ignored.
    let table = format!(
        r#"{{"generation": 2, "future": {{"x": [1]}}, "routes": [{{{route}, "stickyKey": {{"header": "h", "heder": 1}}}}]}}"#
    );
    assert_eq!(parse_table(table.as_bytes()).unwrap().generation, 2);
}

/// `find_route` never looks up a host longer than 255 bytes, so a route listing one could
/// never match it. DNS names stop at 253 bytes; bracketed IPv6 literals were only checked
/// for their characters.
#[test]
fn hosts_longer_than_any_lookup_are_rejected() {
    let ipv6 = |len: usize| format!("[{}]", "0:".repeat(len).get(..len - 2).unwrap());
    let long = ipv6(256);
    assert_eq!(long.len(), 256);
    assert_eq!(
        error_for(|v| route0(v)["hosts"][1] = json!(long)),
        r#"route "test/podinfo": table.routes[0].hosts[1]: "[0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0:0"... is 256 bytes long; a host may be at most 255 bytes (DNS names 253, bracketed IPv6 literals 47), longer ones are never looked up"#
    );
    let longest = ipv6(255);
    assert_eq!(longest.len(), 255);
    assert_eq!(
        error_for(|v| route0(v)["hosts"][1] = json!(longest)),
        "no error"
    );
    assert_eq!(
        error_for(|v| route0(v)["hosts"][1] = json!("[::ffff:192.0.2.1]")),
        "no error"
    );
    // A wildcard over a 253-byte name is 255 bytes: still looked up.
    let name = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    assert_eq!(name.len(), 253);
    assert_eq!(
        error_for(|v| route0(v)["hosts"][1] = json!(format!("*.{name}"))),
        "no error"
    );
    let too_long = format!("{name}e");
    assert!(
        error_for(|v| route0(v)["hosts"][1] = json!(too_long))
            .ends_with(r#"is not a valid host name"#),
        "a 254-byte DNS name is refused by the name rules"
    );
    // The table served by the controller is held to the same rule.
    let table = json!({"generation": 1, "routes": [{"name": "r", "hosts": [ipv6(300)]}]});
    let err = parse_table(table.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.path, "routes[0].hosts[0]");
    assert!(err.reason.contains("is 300 bytes long"), "{err}");
}
