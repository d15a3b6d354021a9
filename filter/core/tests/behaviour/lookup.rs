#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::fixtures::compile;
use veer_core::CompiledTable;

fn table() -> CompiledTable {
    compile(
        r#"{"generation": 3, "routes": [
        {"name": "exact",      "hosts": ["app.example.com", "[::1]"]},
        {"name": "exact-api",  "hosts": ["app.example.com"], "pathPrefix": "/api/"},
        {"name": "exact-apiv2","hosts": ["App.Example.com"], "pathPrefix": "/api/v2/"},
        {"name": "wild",       "hosts": ["*.example.com"]},
        {"name": "wild-deep",  "hosts": ["*.eu.example.com"]},
        {"name": "any",        "hosts": ["*"], "pathPrefix": "/shop"}
    ]}"#,
    )
}

fn route(t: &CompiledTable, authority: &str, path: &str) -> Option<String> {
    t.find_route(authority.as_bytes(), path.as_bytes())
        .map(|r| r.name().to_string())
}

#[test]
fn exact_host_beats_wildcard_beats_any() {
    let t = table();
    assert_eq!(t.generation(), 3);
    assert_eq!(route(&t, "app.example.com", "/").as_deref(), Some("exact"));
    assert_eq!(route(&t, "web.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(
        route(&t, "a.b.example.com", "/").as_deref(),
        Some("wild"),
        "wildcards cover any depth"
    );
    assert_eq!(
        route(&t, "x.eu.example.com", "/").as_deref(),
        Some("wild-deep"),
        "longest wildcard"
    );
    assert_eq!(route(&t, "eu.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(
        route(&t, "example.com", "/shop/cart").as_deref(),
        Some("any"),
        "*.example.com is not example.com"
    );
    assert_eq!(route(&t, "other.org", "/shop").as_deref(), Some("any"));
    assert_eq!(route(&t, "other.org", "/").as_deref(), None);
    assert_eq!(route(&t, "", "/shop").as_deref(), Some("any"));
}

#[test]
fn ports_case_and_ipv6() {
    let t = table();
    assert_eq!(
        route(&t, "APP.Example.COM:8443", "/").as_deref(),
        Some("exact")
    );
    assert_eq!(
        route(&t, "app.example.com.", "/").as_deref(),
        Some("exact"),
        "trailing dot"
    );
    assert_eq!(
        route(&t, "Web.Example.com:80", "/").as_deref(),
        Some("wild")
    );
    assert_eq!(route(&t, "[::1]:8080", "/").as_deref(), Some("exact"));
    assert_eq!(route(&t, "[::1]", "/").as_deref(), Some("exact"));
    assert_eq!(route(&t, "[::2]:8080", "/").as_deref(), None);
    let long = format!("{}.example.com", "a".repeat(300));
    assert_eq!(
        route(&t, &long, "/shop").as_deref(),
        Some("any"),
        "over-long hosts only match *"
    );
    assert_eq!(
        route(&t, "\u{ff}.example.com", "/").as_deref(),
        Some("wild")
    );
}

#[test]
fn longest_path_prefix_wins_and_query_is_ignored() {
    let t = table();
    assert_eq!(
        route(&t, "app.example.com", "/api/v2/users").as_deref(),
        Some("exact-apiv2")
    );
    assert_eq!(
        route(&t, "app.example.com", "/api/v1/users").as_deref(),
        Some("exact-api")
    );
    assert_eq!(
        route(&t, "app.example.com", "/api").as_deref(),
        Some("exact")
    );
    assert_eq!(
        route(&t, "app.example.com", "/x?next=/api/v2/").as_deref(),
        Some("exact")
    );
    assert_eq!(
        route(&t, "app.example.com", "/api/v2?x=1").as_deref(),
        Some("exact-api")
    );
}

#[test]
fn a_chosen_host_does_not_fall_back_to_wildcards() {
    let t = compile(
        r#"{"routes": [
        {"name": "api", "hosts": ["app.example.com"], "pathPrefix": "/api/"},
        {"name": "all", "hosts": ["*.example.com", "*"]}]}"#,
    );
    assert_eq!(route(&t, "app.example.com", "/web").as_deref(), None);
    assert_eq!(route(&t, "web.example.com", "/web").as_deref(), Some("all"));
    assert_eq!(route(&t, "other.org", "/web").as_deref(), Some("all"));
}

#[test]
fn route_exposes_name_stat_token_and_route() {
    let t = compile(r#"{"routes": [{"name": "team.a/podinfo v2", "hosts": ["*"], "weight": 12}]}"#);
    let r = t.find_route(b"x", b"/").unwrap();
    assert_eq!(r.name(), "team.a/podinfo v2");
    assert_eq!(r.stat_token(), "team_a/podinfo_v2");
    assert_eq!(r.route().weight, 12);
    assert_eq!(
        veer_core::stat_route_token("ns/name-1_x.y:z"),
        "ns/name-1_x_y_z"
    );
}

#[test]
fn every_route_knows_its_index() {
    let t = table();
    for (i, r) in t.routes().iter().enumerate() {
        assert_eq!(r.index(), i);
        let found = t.find_route(
            r.route().hosts[0].trim_start_matches("*.").as_bytes(),
            r.route().path_prefix.as_bytes(),
        );
        if let Some(found) = found {
            assert!(std::ptr::eq(found, &t.routes()[found.index()]));
        }
    }
}
