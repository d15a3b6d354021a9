#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Property tests over the parsers and the decision. Native only: proptest does not run on
//! wasm32-unknown-unknown (no clock, no filesystem for regressions). Case counts are modest
//! so they stay in the normal `cargo test` run; cargo-fuzz covers the same functions harder.
#![cfg(not(target_arch = "wasm32"))]

use proptest::prelude::*;
use veer_core::{
    bucket, decide, encode_cookie_value, find_cookie, parse_plugin_config, parse_table,
    verify_cookie_value, CompiledMatch, CompiledRule, CompiledTable, OwnedRequest, RoutingTable,
    SigningKeys, StringMatch, Variant,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn table(weight: u32, revision: &str) -> CompiledTable {
    let json = serde_json::json!({"routes": [{
        "name": "r", "hosts": ["*"], "weight": weight, "revision": revision,
        "sessionAffinity": {"cookieName": "veer"}
    }]});
    let t: RoutingTable = parse_table(json.to_string().as_bytes()).unwrap();
    CompiledTable::compile(&t).unwrap()
}

fn keys() -> SigningKeys {
    SigningKeys::from_env_value("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=").unwrap()
}

/// Almost-JSON: real config fragments cut and spliced, so the parser gets past the first byte.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let base = br#"{"routeHeader":"x-r","table":{"generation":1,"routes":[{"name":"a","hosts":["*.a.com"],"weight":5000,"match":[{"headers":{"x":{"regex":"a+"}}}],"sessionAffinity":{"cookieName":"c","maxAge":1}}]},"cookieSigning":{"keys":["AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="]}}"#;
    (
        0..base.len(),
        0..base.len(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(a, b, junk)| {
            let (a, b) = (a.min(b), a.max(b));
            let mut v = base[..a].to_vec();
            v.extend_from_slice(&junk);
            v.extend_from_slice(&base[b..]);
            v
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_and_table_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_plugin_config(&bytes);
        let _ = parse_table(&bytes);
    }

    #[test]
    fn config_parser_never_panics_on_spliced_json(bytes in jsonish()) {
        let _ = parse_plugin_config(&bytes);
        let _ = parse_table(&bytes);
    }

    #[test]
    fn cookie_parsing_never_panics(header in prop::collection::vec(any::<u8>(), 0..512), route in ".{0,20}") {
        let k = keys();
        for v in find_cookie(&header, "veer") {
            let _ = verify_cookie_value(&route, v, Some(&k));
            let _ = verify_cookie_value(&route, v, None);
        }
        let _ = verify_cookie_value(&route, &header, Some(&k));
        let _ = verify_cookie_value(&route, &header, None);
    }

    #[test]
    fn signed_cookies_round_trip_and_any_single_byte_change_is_rejected(
        seed in any::<[u8; 16]>(), route in "[a-z/]{1,20}", pos in any::<prop::sample::Index>(), flip in 1u8..=255
    ) {
        let k = keys();
        let v = encode_cookie_value(&route, &seed, Some(&k));
        prop_assert_eq!(verify_cookie_value(&route, v.as_bytes(), Some(&k)), Some(seed));
        let mut bad = v.into_bytes();
        let i = pos.index(bad.len());
        bad[i] ^= flip;
        prop_assert_eq!(verify_cookie_value(&route, &bad, Some(&k)), None);
    }

    #[test]
    fn matchers_never_panic(
        value in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        path in prop::collection::vec(any::<u8>(), 0..64),
        cookie in prop::collection::vec(any::<u8>(), 0..64),
        pattern in "[a-z%?&=.*+]{0,8}",
    ) {
        for m in [
            StringMatch { exact: Some(pattern.clone()), ..StringMatch::default() },
            StringMatch { prefix: Some(pattern.clone()), ..StringMatch::default() },
            StringMatch { suffix: Some(pattern.clone()), ..StringMatch::default() },
            StringMatch { present: Some(false), ..StringMatch::default() },
        ] {
            let _ = CompiledMatch::compile(&m, "m").unwrap().matches(value.as_deref());
        }
        if let Ok(m) = CompiledMatch::compile(&StringMatch { regex: Some(pattern.clone()), ..StringMatch::default() }, "m") {
            let _ = m.matches(value.as_deref());
        }
        let rule: veer_core::MatchRule = serde_json::from_value(serde_json::json!({
            "headers": {"x": {"prefix": "a"}}, "cookies": {"c": {"present": true}},
            "queryParams": {"q": {"suffix": "z"}}, "uri": {"regex": "/.*"}, "method": "GET"
        })).unwrap();
        let rule = CompiledRule::compile(&rule, "r").unwrap();
        let mut req = OwnedRequest::from_pairs([(&b":path"[..], path.clone()), (b":method", b"GET".to_vec()), (b"cookie", cookie)]);
        if let Some(v) = value { req = req.with_header("x", v); }
        let _ = rule.matches(&req);
        let t = table(5000, "r");
        if let Some(route) = t.find_route(&path, &path) {
            let _ = decide(route, &req, Some(&keys()), 1);
        }
    }

    /// A user's variant only ever moves primary→canary as the weight rises within a run.
    #[test]
    fn canary_is_monotone_in_the_weight(seed in any::<[u8; 16]>(), revision in ".{0,24}", w1 in 0u32..=10_000, w2 in 0u32..=10_000) {
        let (lo, hi) = (w1.min(w2), w1.max(w2));
        let cookie = format!("veer={}", encode_cookie_value("r", &seed, None));
        let req = OwnedRequest::new("GET", "h", "/").with_header("cookie", cookie);
        let at = |w| {
            let t = table(w, &revision);
            decide(t.find_route(b"h", b"/").unwrap(), &req, None, 7)
        };
        let (a, b) = (at(lo), at(hi));
        if lo > 0 {
            prop_assert_eq!(a.bucket, Some(bucket(&revision, &seed)));
        }
        if a.variant == Variant::Canary {
            prop_assert_eq!(b.variant, Variant::Canary);
        }
        let zero = at(0);
        prop_assert_eq!(zero.variant, Variant::Primary);
        prop_assert_eq!(zero.set_cookie, None);
    }

    #[test]
    fn weight_zero_is_primary_for_fresh_users(entropy in any::<u64>(), revision in ".{0,24}") {
        let t = table(0, &revision);
        let d = decide(t.find_route(b"h", b"/").unwrap(), &OwnedRequest::new("GET", "h", "/"), None, entropy);
        prop_assert_eq!(d.variant, Variant::Primary);
        prop_assert_eq!(d.set_cookie, None);
    }

    #[test]
    fn route_lookup_never_panics(authority in prop::collection::vec(any::<u8>(), 0..300), path in prop::collection::vec(any::<u8>(), 0..64)) {
        let json = br#"{"routes": [{"name": "a", "hosts": ["a.com", "*.b.com", "[::1]"], "pathPrefix": "/x"}, {"name": "b", "hosts": ["*"]}]}"#;
        let t = CompiledTable::compile(&parse_table(json).unwrap()).unwrap();
        let _ = t.find_route(&authority, &path);
    }
}

/// Patterns of the shapes the matcher answers without the regex engine, plus near misses.
fn shortcut_pattern() -> impl Strategy<Value = String> {
    let lit = "[ab;= /-]{1,4}";
    prop_oneof![
        lit.prop_map(|l| l.to_string()),
        (lit, lit).prop_map(|(a, b)| format!("{a}|{b}")),
        lit.prop_map(|l| format!(".*{l}.*")),
        lit.prop_map(|l| format!("{l}.*")),
        lit.prop_map(|l| format!(".*{l}")),
        lit.prop_map(|l| format!(".*{l}.+")),
        lit.prop_map(|l| format!("{l}|")),
        lit.prop_map(|l| format!("^{l}$")),
        lit.prop_map(|l| format!(r"\A.*{l}.*\z")),
        lit.prop_map(|l| format!(r"^.*{l}\$")),
        (lit, "[;=/ ]").prop_map(|(l, s)| format!("^(.*?{s})?({l})({s}.*)?$")),
        (lit, "[;=/ ]").prop_map(|(l, s)| format!("(?:.*{s})?{l}(?:{s}.*?)?")),
        (lit, "[;=/ ]", "[;=/ ]").prop_map(|(l, s, t)| format!("(.*{s})?({l})({t}.*)?")),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// The byte-comparison shortcuts give exactly the answers of the engine they stand in for.
    #[test]
    fn regex_shortcuts_agree_with_the_regex_engine(
        pattern in shortcut_pattern(),
        value in prop::collection::vec(prop::sample::select(b"ab;= /-\n\xff".to_vec()), 0..10),
    ) {
        let m = StringMatch { regex: Some(pattern.clone()), ..StringMatch::default() };
        let compiled = CompiledMatch::compile(&m, "m").unwrap();
        let re = regex_lite::Regex::new(&format!(r"\A(?:{pattern})\z")).unwrap();
        let want = std::str::from_utf8(&value).is_ok_and(|s| re.is_match(s));
        prop_assert_eq!(compiled.matches(Some(&value)), want, "{:?} on {:?}", pattern, value);
    }
}
