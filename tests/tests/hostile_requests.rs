#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Hostile input against the filter in a real Envoy 1.40 (V8), each case with its exact
//! outcome (RELIABILITY.md):
//!
//! - plugin configurations the filter must refuse (those filter_envoy.rs does not already
//!   try): malformed JSON, a wrong type, weight -1, duplicate route names, an invalid cookie
//!   name, an empty, too short or missing signing key. Envoy refuses the listener and its log
//!   names the field, never the key material;
//! - request data: a 64 KiB cookie, 200 cookies, duplicate affinity cookies, broken quoting,
//!   raw non-UTF-8 header bytes, no `x-request-id` (the gateway here does not generate one),
//!   a client-chosen `x-request-id`, forged, truncated, foreign-route, removed-key and
//!   other-revision cookies, client-sent route and mirror headers. For every request: no 5xx,
//!   the backend reached is the decided variant, a request without a valid cookie is decided
//!   by fresh randomness and gets a valid signed cookie whose seed gives exactly the variant it
//!   got, nobody reaches the canary of a weight-0 route, no crash line in Envoy's log and no
//!   `veer_errors_total`.
//!
//!   cargo build -p veer-filter --target wasm32-unknown-unknown --release
//!   cargo test -p veer-e2e --test hostile_requests -- --nocapture

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use veer_core::{bucket, encode_cookie_value, fresh_seed, verify_cookie_value, Seed, SigningKeys};
use veer_e2e::backend::Backend;
use veer_e2e::client::{HttpClient, Response};
use veer_e2e::envoy::{gateway_tools, prometheus_value, Envoy, GatewaySpec};
use veer_e2e::process::work_dir;

/// base64 of "0123456789abcdef0123456789abcdef".
const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// base64 of "fedcba9876543210fedcba9876543210": a key that was rotated out.
const KEY_REMOVED: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
/// base64 of "shortkey" (8 bytes, below the 16-byte minimum).
const KEY_SHORT: &str = "c2hvcnRrZXk=";

const HALF: &str = "test/half";
const HALF_HOST: &str = "half.example.com";
const HALF_REVISION: &str = "r2";
const COOKIE: &str = "veer-cookie";

fn keys(b64: &str) -> SigningKeys {
    SigningKeys::from_base64(&[b64.to_string()]).unwrap()
}

fn config() -> serde_json::Value {
    let affinity = serde_json::json!({ "cookieName": COOKIE, "maxAge": 600 });
    serde_json::json!({
        "decisionHeader": true,
        "cookieSigning": { "keys": [KEY_A] },
        "table": { "generation": 3, "routes": [
            { "name": "test/zero", "hosts": ["zero.example.com"], "weight": 0, "revision": "r1",
              "sessionAffinity": affinity },
            { "name": HALF, "hosts": [HALF_HOST], "weight": 5000, "revision": HALF_REVISION,
              "sessionAffinity": affinity },
            { "name": "test/ab", "hosts": ["ab.example.com"], "weight": 10000,
              "match": [ { "headers": { "x-user-group": { "exact": "beta" } } } ] }
        ] }
    })
}

/// The gateway with `generate_request_id: false`, so requests reach the filter without an
/// `x-request-id` unless the client sent one.
fn start_gateway(primary: &Backend, canary: &Backend) -> Envoy {
    let spec = GatewaySpec::new(&config(), primary.addr(), canary.addr());
    let bootstrap = spec.bootstrap().unwrap();
    let patched = bootstrap.replacen(
        "stat_prefix: gateway\n",
        "stat_prefix: gateway\n          generate_request_id: false\n",
        1,
    );
    assert_ne!(patched, bootstrap, "the template's HCM was not found");
    let dir = work_dir("hostile-requests").unwrap();
    Envoy::start(&dir, &patched, 2, &[]).unwrap()
}

/// What one request got.
#[derive(Debug)]
struct Outcome {
    variant: String,
    reason: String,
    /// The seed of the affinity cookie the gateway set, if it set one.
    issued: Option<Seed>,
}

fn expected_variant(seed: &Seed) -> &'static str {
    if bucket(HALF_REVISION, seed) < 5000 {
        "canary"
    } else {
        "primary"
    }
}

/// Checks the rules every answer on the 50% route obeys and returns what it got.
fn judge(status: u16, headers: &[(String, String)], what: &str) -> Outcome {
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(status, 200, "{what}: HTTP {status}");
    let decision = header("x-veer-decision").unwrap_or_else(|| panic!("{what}: no decision"));
    let parts: Vec<&str> = decision.split(';').collect();
    assert_eq!(parts[0], HALF, "{what}: {decision}");
    assert_eq!(parts[3], "g=3", "{what}: {decision}");
    let (variant, reason) = (parts[1].to_string(), parts[2].to_string());
    assert_eq!(
        header("x-backend"),
        Some(variant.as_str()),
        "{what}: the backend reached is the decided variant"
    );
    // The route header is written only for the canary; primary is its absence.
    let route_header = if variant == "canary" { "canary" } else { "-" };
    assert_eq!(header("x-seen-route"), Some(route_header), "{what}");
    assert_eq!(
        header("x-seen-mirror"),
        Some("-"),
        "{what}: no mirror header"
    );
    let issued: Vec<&str> = headers
        .iter()
        .filter(|(k, v)| k == "set-cookie" && v.starts_with(&format!("{COOKIE}=")))
        .map(|(_, v)| v.as_str())
        .collect();
    let issued = match reason.as_str() {
        "weight" => {
            assert_eq!(
                issued.len(),
                1,
                "{what}: exactly one new cookie: {issued:?}"
            );
            let value = issued[0]
                .split(';')
                .next()
                .unwrap()
                .split_once('=')
                .unwrap()
                .1;
            let seed = verify_cookie_value(HALF, value.as_bytes(), Some(&keys(KEY_A)))
                .unwrap_or_else(|| panic!("{what}: the new cookie is not validly signed: {value}"));
            assert_eq!(
                expected_variant(&seed),
                variant,
                "{what}: the new cookie's seed decides the variant the request got"
            );
            Some(seed)
        }
        "cookie" => {
            assert!(issued.is_empty(), "{what}: a valid cookie is not re-issued");
            None
        }
        other => panic!("{what}: unexpected reason {other}"),
    };
    Outcome {
        variant,
        reason,
        issued,
    }
}

fn get(client: &mut HttpClient, host: &str, headers: &[(&str, &str)]) -> Response {
    client.get(host, "/", headers).unwrap()
}

fn judge_response(r: &Response, what: &str) -> Outcome {
    judge(r.status, &r.headers, what)
}

/// One request written byte for byte (for bytes that are not UTF-8), on its own connection.
fn raw_request(gw: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>) {
    let mut conn = TcpStream::connect(gw).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request).unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// A seed whose bucket under the 50% route is on the side `canary`.
fn seed_on(canary: bool, skip: usize) -> Seed {
    (0u64..)
        .map(|i| fresh_seed(i ^ 0x5eed))
        .filter(|s| (bucket(HALF_REVISION, s) < 5000) == canary)
        .nth(skip)
        .unwrap()
}

fn signed(route: &str, seed: &Seed, key: &str) -> String {
    format!(
        "{COOKIE}={}",
        encode_cookie_value(route, seed, Some(&keys(key)))
    )
}

#[test]
fn hostile_requests_never_fail_never_pick_the_canary_and_get_a_valid_cookie() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let primary = Backend::start("primary").unwrap();
    let canary = Backend::start("canary").unwrap();
    let envoy = start_gateway(&primary, &canary);
    let gw = envoy.gateway_addr().unwrap();
    let mut client = HttpClient::new(gw);

    let canary_seat = signed(HALF, &seed_on(true, 0), KEY_A);
    let primary_seat = signed(HALF, &seed_on(false, 0), KEY_A);
    // Sanity: an honest canary seat is honoured, so the forgeries below are meaningful.
    let o = judge_response(
        &get(&mut client, HALF_HOST, &[("cookie", &canary_seat)]),
        "honest",
    );
    assert_eq!(
        (o.variant.as_str(), o.reason.as_str()),
        ("canary", "cookie")
    );

    // --- size and count ---
    let huge = format!("{COOKIE}=v1.{}", "A".repeat(64 * 1024));
    let o = judge_response(
        &get(&mut client, HALF_HOST, &[("cookie", &huge)]),
        "64 KiB cookie",
    );
    assert_eq!(o.reason, "weight");
    let huge_other = format!("big={}; {primary_seat}", "x".repeat(64 * 1024 - 200));
    let o = judge_response(
        &get(&mut client, HALF_HOST, &[("cookie", &huge_other)]),
        "64 KiB header with a valid cookie at its end",
    );
    assert_eq!(
        (o.variant.as_str(), o.reason.as_str()),
        ("primary", "cookie")
    );
    let many: String = (0..200)
        .map(|i| format!("c{i}=v{i}"))
        .collect::<Vec<_>>()
        .join("; ");
    let o = judge_response(
        &get(&mut client, HALF_HOST, &[("cookie", &many)]),
        "200 cookies",
    );
    assert_eq!(o.reason, "weight");
    let many_then_valid = format!("{many}; {canary_seat}");
    let o = judge_response(
        &get(&mut client, HALF_HOST, &[("cookie", &many_then_valid)]),
        "200 cookies, then a valid one",
    );
    assert_eq!(
        (o.variant.as_str(), o.reason.as_str()),
        ("canary", "cookie")
    );
    // 200 forged copies of the affinity cookie: at most 8 are checked, none is valid.
    let forged_copies: String = (0..200)
        .map(|i| signed(HALF, &seed_on(true, i + 1), KEY_REMOVED))
        .collect::<Vec<_>>()
        .join("; ");
    let o = judge_response(
        &get(&mut client, HALF_HOST, &[("cookie", &forged_copies)]),
        "200 forged affinity cookies",
    );
    assert_eq!(o.reason, "weight");

    // --- duplicates: a forged canary seat next to a valid primary one, in both orders ---
    let forged_canary = signed(HALF, &seed_on(true, 1), KEY_REMOVED);
    for header in [
        format!("{primary_seat}; {forged_canary}"),
        format!("{forged_canary}; {primary_seat}"),
    ] {
        let o = judge_response(
            &get(&mut client, HALF_HOST, &[("cookie", &header)]),
            &header,
        );
        assert_eq!(
            (o.variant.as_str(), o.reason.as_str()),
            ("primary", "cookie")
        );
    }
    // Two Cookie header lines. RFC 6265 forbids a user agent to send them over HTTP/1, but an
    // HTTP/2 or HTTP/3 client sends its cookies as separate crumbs (RFC 9113 section 8.2.3)
    // and Envoy may hand them to the filter unjoined, so the filter reads every line as one
    // list: the forged seat in the first line is skipped and the valid seat in the second
    // keeps this user on primary. Reading only the first line would reshuffle such users.
    let o = judge_response(
        &get(
            &mut client,
            HALF_HOST,
            &[("cookie", &forged_canary), ("cookie", &primary_seat)],
        ),
        "two Cookie lines",
    );
    assert_eq!(
        (o.variant.as_str(), o.reason.as_str()),
        ("primary", "cookie")
    );

    // --- broken quoting and syntax ---
    let canary_value = canary_seat.split_once('=').unwrap().1;
    for header in [
        format!("{COOKIE}=\"v1.unterminated; =; ;;; {COOKIE}"),
        format!("{COOKIE}=\"\""),
        format!("{COOKIE}=\"{canary_value}"),
        format!("{COOKIE}={canary_value}\""),
        COOKIE.to_string(),
        ";;;===;;".to_string(),
        format!("{COOKIE}=v1..."),
    ] {
        let o = judge_response(
            &get(&mut client, HALF_HOST, &[("cookie", &header)]),
            &header,
        );
        assert_eq!(o.reason, "weight", "{header}");
    }
    // A well-formed quoted value is a real cookie (RFC 6265 allows the quotes).
    let quoted = format!("{COOKIE}=\"{canary_value}\"");
    let o = judge_response(
        &get(&mut client, HALF_HOST, &[("cookie", &quoted)]),
        &quoted,
    );
    assert_eq!(
        (o.variant.as_str(), o.reason.as_str()),
        ("canary", "cookie")
    );

    // --- forged, truncated, foreign and replayed cookies never give a canary seat ---
    let truncated = &canary_seat[..canary_seat.len() - 4];
    let tampered_seed = {
        let mut b = canary_seat.clone().into_bytes();
        let i = COOKIE.len() + 1 + 3; // the first byte of the seed
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let unsigned = format!(
        "{COOKIE}={}",
        encode_cookie_value(HALF, &seed_on(true, 2), None)
    );
    let cases = [
        ("truncated MAC", truncated.to_string()),
        ("tampered seed", tampered_seed),
        ("unsigned while keys are configured", unsigned),
        ("MAC under a removed key", forged_canary.clone()),
        (
            "cookie of another route",
            signed("test/zero", &seed_on(true, 3), KEY_A),
        ),
    ];
    for (what, header) in &cases {
        let o = judge_response(&get(&mut client, HALF_HOST, &[("cookie", header)]), what);
        assert_eq!(o.reason, "weight", "{what}");
    }
    // Forged seats reach the canary only as often as fresh users do (about half), never
    // because of the seat.
    let mut forged_canary_hits = 0;
    for i in 0..200 {
        let forged = signed(HALF, &seed_on(true, 10 + i), KEY_REMOVED);
        let o = judge_response(
            &get(&mut client, HALF_HOST, &[("cookie", &forged)]),
            "forged",
        );
        assert_eq!(o.reason, "weight");
        forged_canary_hits += usize::from(o.variant == "canary");
    }
    println!("200 forged canary seats: {forged_canary_hits} reached the canary at weight 50%");
    assert!((60..=140).contains(&forged_canary_hits));
    // Valid seats of the previous revision are reshuffled by the new revision's salt.
    let mut old_seats_on_canary = 0;
    for i in 0..200 {
        let seed = (0u64..)
            .map(|j| fresh_seed(j ^ 0xa11ce))
            .filter(|s| bucket("r1", s) < 5000)
            .nth(i)
            .unwrap();
        let o = judge_response(
            &get(
                &mut client,
                HALF_HOST,
                &[("cookie", &signed(HALF, &seed, KEY_A))],
            ),
            "a seat of revision r1",
        );
        assert_eq!(o.reason, "cookie");
        assert_eq!(o.variant, expected_variant(&seed));
        old_seats_on_canary += usize::from(o.variant == "canary");
    }
    println!("200 canary seats of revision r1 under r2: {old_seats_on_canary} on canary");
    assert!((60..=140).contains(&old_seats_on_canary));

    // --- client-sent route and mirror headers ---
    let spoof: [(&str, &str); 4] = [
        ("x-veer-route", "canary"),
        ("X-Veer-Route", "canary"),
        ("x-veer-mirror", "1"),
        ("x-veer-route", "canary"),
    ];
    for _ in 0..100 {
        let o = judge_response(
            &get(
                &mut client,
                HALF_HOST,
                &[
                    spoof[0],
                    spoof[1],
                    spoof[2],
                    spoof[3],
                    ("cookie", &primary_seat),
                ],
            ),
            "spoofed headers with a primary seat",
        );
        assert_eq!(
            (o.variant.as_str(), o.reason.as_str()),
            ("primary", "cookie")
        );
        let r = get(&mut client, "zero.example.com", &spoof);
        assert_eq!(r.header("x-backend"), Some("primary"));
        assert_eq!(r.header("x-seen-route"), Some("-"), "removed, none written");
        assert_eq!(r.header("x-seen-mirror"), Some("-"));
        let r = get(&mut client, "nomatch.example.com", &spoof);
        assert_eq!(r.header("x-backend"), Some("primary"));
        assert_eq!(
            r.header("x-seen-route"),
            Some("-"),
            "stripped without a route"
        );
        assert_eq!(r.header("x-seen-mirror"), Some("-"));
    }
    assert_eq!(canary.mirrored(), 0, "nothing was mirrored");

    // --- no x-request-id (this gateway generates none), and a client-chosen one ---
    let mut fresh_canary = 0;
    let mut same_id_canary = 0;
    let mut seeds = std::collections::HashSet::new();
    for _ in 0..1000 {
        let o = judge_response(&get(&mut client, HALF_HOST, &[]), "no x-request-id");
        fresh_canary += usize::from(o.variant == "canary");
        seeds.insert(o.issued.unwrap());
        let o = judge_response(
            &get(
                &mut client,
                HALF_HOST,
                &[("x-request-id", "chosen-by-the-client")],
            ),
            "fixed x-request-id",
        );
        same_id_canary += usize::from(o.variant == "canary");
        seeds.insert(o.issued.unwrap());
    }
    println!(
        "without x-request-id: {fresh_canary}/1000 canary; one fixed x-request-id: {same_id_canary}/1000 canary; {} distinct seeds",
        seeds.len()
    );
    assert!((450..=550).contains(&fresh_canary), "{fresh_canary}");
    assert!(
        (450..=550).contains(&same_id_canary),
        "a client-chosen x-request-id picks the variant: {same_id_canary}/1000 canary"
    );
    assert_eq!(seeds.len(), 2000, "every new user gets a seed of its own");

    // --- raw bytes that are not UTF-8 (obs-text, legal in HTTP/1.1 header values) ---
    let raw_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "non-UTF-8 cookie",
            b"cookie: veer-cookie=\xff\xfe\x80; x=\xc3\x28\r\n".to_vec(),
        ),
        (
            "non-UTF-8 other header",
            b"x-user-group: \xc3\x28\xa0\r\n".to_vec(),
        ),
        (
            "non-UTF-8 bytes around a valid cookie",
            [
                b"cookie: a=\xff\xff; ".as_slice(),
                primary_seat.as_bytes(),
                b"; b=\xfe\r\n",
            ]
            .concat(),
        ),
    ];
    for (what, extra) in &raw_cases {
        let request = [
            format!("GET / HTTP/1.1\r\nhost: {HALF_HOST}\r\n").as_bytes(),
            extra,
            b"connection: close\r\n\r\n",
        ]
        .concat();
        let (status, headers) = raw_request(gw, &request);
        let o = judge(status, &headers, what);
        if what.contains("valid cookie") {
            assert_eq!(
                (o.variant.as_str(), o.reason.as_str()),
                ("primary", "cookie")
            );
        } else {
            assert_eq!(o.reason, "weight", "{what}");
        }
        // The same bytes on the A/B route never match the rule.
        let request = [
            b"GET / HTTP/1.1\r\nhost: ab.example.com\r\n".as_slice(),
            extra,
            b"connection: close\r\n\r\n",
        ]
        .concat();
        let (status, headers) = raw_request(gw, &request);
        assert_eq!(status, 200, "{what} on the A/B route");
        let backend = headers
            .iter()
            .find(|(k, _)| k == "x-backend")
            .map(|(_, v)| v.as_str());
        assert_eq!(backend, Some("primary"), "{what}: matched the A/B rule");
    }

    // --- nothing above reached the canary of the weight-0 route, nothing crashed ---
    for header in [
        huge.as_str(),
        many.as_str(),
        forged_copies.as_str(),
        canary_seat.as_str(),
    ] {
        let r = get(&mut client, "zero.example.com", &[("cookie", header)]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-backend"),
            Some("primary"),
            "weight 0 is primary for everyone"
        );
    }
    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "veer_errors_total", &[]),
        Some(0.0),
        "hostile input is ignored, not an error"
    );
    assert_eq!(
        envoy
            .stat("http.gateway.downstream_rq_5xx")
            .unwrap()
            .unwrap_or(0),
        0,
        "no 5xx"
    );
    let crashes = envoy.crash_lines();
    assert!(crashes.is_empty(), "crash lines: {crashes:#?}");
    // The signing key (inline in this configuration) reaches neither the log nor the metrics.
    let log = envoy.log();
    for secret in [KEY_A, "0123456789abcdef"] {
        assert!(!log.contains(secret), "the signing key is in Envoy's log");
        assert!(!prom.contains(secret), "the signing key is in the metrics");
    }
}

/// Plugin configurations the filter refuses; filter_envoy.rs tries weight 10001, a bad regex,
/// an unknown field and a missing keysEnv variable.
#[test]
fn more_bad_plugin_configs_are_rejected_naming_the_field_not_the_key() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let table =
        |routes: serde_json::Value| serde_json::json!({ "generation": 1, "routes": routes });
    let route = serde_json::json!({ "name": "test/a", "hosts": ["a.example.com"], "weight": 100 });
    // (name, plugin configuration, what the rejection line must name, gateway environment)
    type Case = (
        &'static str,
        String,
        Vec<&'static str>,
        Vec<(String, String)>,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed-json",
            r#"{"table": {"routes": [}"#.to_string(),
            vec!["table.routes[0]", "expected value"],
            vec![],
        ),
        (
            "wrong-type",
            r#"{"decisionHeader": "yes"}"#.to_string(),
            vec!["decisionHeader", "invalid type"],
            vec![],
        ),
        (
            "weight-negative",
            serde_json::json!({ "table": table(serde_json::json!([
                { "name": "test/a", "hosts": ["a.example.com"], "weight": -1 }
            ])) })
            .to_string(),
            vec!["table.routes[0].weight", "-1"],
            vec![],
        ),
        (
            "duplicate-names",
            serde_json::json!({ "table": table(serde_json::json!([
                route, { "name": "test/a", "hosts": ["b.example.com"] }
            ])) })
            .to_string(),
            vec!["table.routes[1].name", "duplicate route name"],
            vec![],
        ),
        (
            "cookie-name",
            serde_json::json!({ "table": table(serde_json::json!([
                { "name": "test/a", "hosts": ["a.example.com"],
                  "sessionAffinity": { "cookieName": "bad name" } }
            ])) })
            .to_string(),
            vec![
                "table.routes[0].sessionAffinity.cookieName",
                "not a valid cookie name",
            ],
            vec![],
        ),
        (
            "empty-key",
            serde_json::json!({ "cookieSigning": { "keys": [""] } }).to_string(),
            vec!["cookieSigning.keys[0]: key must decode to at least 16 bytes, got 0"],
            vec![],
        ),
        (
            "short-key",
            serde_json::json!({ "cookieSigning": { "keys": [KEY_A, KEY_SHORT] } }).to_string(),
            vec!["cookieSigning.keys[1]: key must decode to at least 16 bytes, got 8"],
            vec![],
        ),
        (
            "no-keys",
            serde_json::json!({ "cookieSigning": { "keys": [] } }).to_string(),
            vec!["cookieSigning: needs keys or keysEnv"],
            vec![],
        ),
        (
            "short-key-from-env",
            serde_json::json!({ "cookieSigning": { "keysEnv": "VEER_COOKIE_KEYS" } }).to_string(),
            vec!["cookieSigning.keysEnv[1]: key must decode to at least 16 bytes, got 8"],
            vec![(
                "VEER_COOKIE_KEYS".to_string(),
                format!("{KEY_A},{KEY_SHORT}"),
            )],
        ),
    ];
    let unused: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, config, wants, env)| {
            std::thread::spawn(move || {
                let dir = work_dir(&format!("hostile-config-{name}")).unwrap();
                let mut spec = GatewaySpec::new(&serde_json::Value::Null, unused, unused);
                spec.plugin_config = config;
                spec.env = env;
                let (status, log) = Envoy::start_expecting_failure(&dir, &spec)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(!status.success(), "{name}: Envoy exited successfully");
                let line = log
                    .lines()
                    .find(|l| l.contains("invalid plugin configuration"))
                    .unwrap_or_else(|| panic!("{name}: no rejection line in the log:\n{log}"));
                for want in wants {
                    assert!(line.contains(want), "{name}: {want:?} not in {line:?}");
                }
                for secret in [KEY_A, KEY_SHORT, "MDEyMzQ1Njc4OWFiY2Rl", "shortkey"] {
                    assert!(!log.contains(secret), "{name}: key material in the log");
                }
                println!("{name}: {}", line.split("wasm log").nth(1).unwrap_or(line));
            })
        })
        .collect();
    let mut failed = Vec::new();
    for h in handles {
        if let Err(e) = h.join() {
            failed.push(
                e.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panic".into()),
            );
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Fresh seeds come from the host's randomness: two gateways started the same way hand out
/// different cookies to the same sequence of requests, so a client cannot predict (or, by
/// replaying a request sequence, choose) the seat a fresh visit gets.
#[test]
fn fresh_seeds_differ_between_gateway_starts() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let primary = Backend::start("primary").unwrap();
    let canary = Backend::start("canary").unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let envoy = start_gateway(&primary, &canary);
        let mut client = HttpClient::new(envoy.gateway_addr().unwrap());
        let seeds: Vec<Seed> = (0..20)
            .map(|i| {
                let r = get(&mut client, HALF_HOST, &[]);
                judge_response(&r, &format!("fresh visit {i}"))
                    .issued
                    .unwrap()
            })
            .collect();
        runs.push(seeds);
    }
    let same = runs[0].iter().zip(&runs[1]).filter(|(a, b)| a == b).count();
    assert_eq!(
        same, 0,
        "{same} of 20 fresh seeds repeat across gateway starts: the seed source is predictable"
    );
}
