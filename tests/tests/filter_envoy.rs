#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The veer filter in a real Envoy 1.40 (V8): weight split, overrides, A/B rules, spoofed
//! headers, affinity cookies (attributes, signing, tampering), live table updates through a
//! long-polling controller stub (propagation to every worker, sticky users while the weight
//! rises, a controller outage), bad configurations, and the Prometheus-visible metrics.
//!
//! Needs the release .wasm and Envoy; both missing-cases fail with the command to run:
//!   cargo build -p veer-filter --target wasm32-unknown-unknown --release
//!   cargo test -p veer-e2e --test filter_envoy -- --nocapture

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use veer_core::{bucket, encode_cookie_value, fresh_seed, SigningKeys};
use veer_e2e::backend::Backend;
use veer_e2e::client::{HttpClient, Response};
use veer_e2e::envoy::{gateway_tools, prometheus_value, Envoy, GatewaySpec};
use veer_e2e::filter::{decision, generation_seen, live_table, veer_cookie};
use veer_e2e::process::{poll_until, work_dir};
use veer_e2e::table_stub::TableStub;

/// base64 of "0123456789abcdef0123456789abcdef".
const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// base64 of "fedcba9876543210fedcba9876543210".
const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
/// base64 of "an attacker's own key material!!".
const KEY_FORGER: &str = "YW4gYXR0YWNrZXIncyBvd24ga2V5IG1hdGVyaWFsISE=";

const CONTROLLER_CLUSTER: &str = "outbound|8080||veer-controller.veer-system.svc.cluster.local";

fn backends() -> (Backend, Backend) {
    (
        Backend::start("primary").unwrap(),
        Backend::start("canary").unwrap(),
    )
}

fn variant(r: &Response) -> &str {
    r.header("x-backend").unwrap_or("none")
}

fn share(n: usize, of: usize) -> f64 {
    100.0 * n as f64 / of as f64
}

fn assert_no_crash(envoy: &Envoy) {
    let crashes = envoy.crash_lines();
    assert!(
        crashes.is_empty(),
        "filter crash lines in the Envoy log: {crashes:#?}"
    );
}

/// A stat in `/stats/prometheus`: name, labels, the value it must reach.
type Stat<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// Polls until every stat shows exactly its value and returns that `/stats/prometheus` text;
/// the last mismatch is the failure message. Stats arrive late by design: each worker hands
/// its counts to Envoy on its tick (1 s with a static table), the gauges are written on the
/// tick, and histograms reach the admin output at Envoy's stats flush (5 s).
fn wait_for_stats(envoy: &Envoy, what: &str, timeout: Duration, stats: &[Stat]) -> String {
    poll_until(what, timeout, Duration::from_millis(100), || {
        let prom = envoy.prometheus()?;
        for (name, labels, want) in stats {
            let got = prometheus_value(&prom, name, labels);
            if got != Some(*want) {
                return Err(format!("{name}{labels:?} = {got:?}, want {want}"));
            }
        }
        Ok(prom)
    })
    .unwrap()
}

fn static_config() -> serde_json::Value {
    serde_json::json!({
        "decisionHeader": true,
        "cookieSigning": { "keys": [KEY_A] },
        "table": { "generation": 7, "routes": [
            { "name": "test/podinfo", "hosts": ["app.example.com"], "weight": 3000, "revision": "r1",
              "overrides": [
                { "match": { "headers": { "x-canary": { "exact": "always" } } }, "variant": "canary" },
                { "match": { "headers": { "x-canary": { "exact": "never" } } }, "variant": "primary" }
              ] },
            { "name": "test/ab", "hosts": ["ab.example.com"], "weight": 10000,
              "match": [ { "headers": { "x-user-group": { "exact": "beta" } } } ] },
            { "name": "test/zero", "hosts": ["zero.example.com"], "weight": 0 },
            { "name": "test/key", "hosts": ["key.example.com"], "weight": 5000, "revision": "r1",
              "stickyKey": { "header": "x-user-id" } },
            { "name": "test/mirror", "hosts": ["mirror.example.com"], "weight": 2000, "mirrorWeight": 10000 },
            { "name": "test/cookie", "hosts": ["cookie.example.com"], "weight": 5000, "revision": "r1",
              "sessionAffinity": { "cookieName": "veer-cookie", "maxAge": 3600, "path": "/app",
                "domain": "example.com", "secure": true, "httpOnly": true, "sameSite": "Strict",
                "partitioned": true } }
        ] }
    })
}

/// One Envoy with a static table: split, overrides, A/B, spoofing, cookies, metrics.
#[test]
fn static_table_routes_splits_and_counts_in_envoy() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let (primary, canary) = backends();
    let dir = work_dir("filter-static").unwrap();
    let spec = GatewaySpec::new(&static_config(), primary.addr(), canary.addr());
    let envoy = Envoy::start_gateway(&dir, &spec).unwrap();
    let gw = envoy.gateway_addr().unwrap();
    let mut client = HttpClient::new(gw);

    // --- 30% weight over 4,000 cookieless requests ---
    let n = 4000;
    let started = Instant::now();
    let mut canary_hits = 0;
    for _ in 0..n {
        let r = client.get("app.example.com", "/", &[]).unwrap();
        assert_eq!(r.status, 200);
        let veer_e2e::filter::Decision {
            route,
            variant: v,
            reason,
            generation,
        } = decision(&r).expect("decision header");
        assert_eq!(
            (route.as_str(), reason.as_str(), generation),
            ("test/podinfo", "weight", 7)
        );
        assert_eq!(
            v,
            variant(&r),
            "decision header and the backend reached agree"
        );
        // The route header is written only for the canary; primary is its absence.
        let route_header = if v == "canary" { "canary" } else { "-" };
        assert_eq!(
            r.header("x-seen-route"),
            Some(route_header),
            "route header as the backend saw it"
        );
        if variant(&r) == "canary" {
            canary_hits += 1;
        }
    }
    let pct = share(canary_hits, n);
    println!(
        "split: {canary_hits}/{n} = {pct:.2}% canary at weight 30% ({:?})",
        started.elapsed()
    );
    assert!(
        (27.0..=33.0).contains(&pct),
        "canary share {pct:.2}% not within 30±3"
    );
    assert_eq!(canary.requests(), canary_hits as u64);
    assert_eq!(primary.requests(), (n - canary_hits) as u64);

    // --- overrides force each variant ---
    for (value, want) in [("always", "canary"), ("never", "primary")] {
        for _ in 0..50 {
            let r = client
                .get("app.example.com", "/", &[("x-canary", value)])
                .unwrap();
            assert_eq!(variant(&r), want, "x-canary: {value}");
            assert_eq!(decision(&r).unwrap().reason, "override");
        }
    }

    // --- A/B: only matching requests take part ---
    for _ in 0..200 {
        let r = client
            .get("ab.example.com", "/", &[("x-user-group", "beta")])
            .unwrap();
        assert_eq!(variant(&r), "canary");
        let r = client
            .get("ab.example.com", "/", &[("x-user-group", "alpha")])
            .unwrap();
        assert_eq!(variant(&r), "primary");
        assert_eq!(decision(&r).unwrap().reason, "unmatched");
        let r = client.get("ab.example.com", "/", &[]).unwrap();
        assert_eq!(variant(&r), "primary");
    }

    // --- metrics (before other hosts' traffic) in /stats/prometheus, with the exact names and labels ---
    let route = ("veer_route", "test/podinfo");
    let prom = wait_for_stats(
        &envoy,
        "the request and response counters to be handed to Envoy",
        Duration::from_secs(5),
        &[
            (
                "veer_requests_total",
                vec![route, ("veer_variant", "canary"), ("veer_reason", "weight")],
                canary_hits as f64,
            ),
            (
                "veer_requests_total",
                vec![
                    route,
                    ("veer_variant", "primary"),
                    ("veer_reason", "weight"),
                ],
                (n - canary_hits) as f64,
            ),
            (
                "veer_requests_total",
                vec![
                    route,
                    ("veer_variant", "canary"),
                    ("veer_reason", "override"),
                ],
                50.0,
            ),
            (
                "veer_requests_total",
                vec![
                    ("veer_route", "test/ab"),
                    ("veer_variant", "primary"),
                    ("veer_reason", "unmatched"),
                ],
                400.0,
            ),
            (
                "veer_responses_total",
                vec![route, ("veer_variant", "canary"), ("veer_class", "2xx")],
                (canary_hits + 50) as f64,
            ),
            (
                "veer_responses_total",
                vec![route, ("veer_variant", "canary"), ("veer_class", "5xx")],
                0.0,
            ),
        ],
    );
    assert!(
        prom.contains("# TYPE veer_request_duration_ms histogram"),
        "{prom}"
    );
    let expected = (canary_hits + 50) as f64;
    wait_for_stats(
        &envoy,
        "the duration histogram to be flushed",
        Duration::from_secs(15),
        &[
            (
                "veer_request_duration_ms_count",
                vec![route, ("veer_variant", "canary")],
                expected,
            ),
            (
                "veer_request_duration_ms_bucket",
                vec![route, ("veer_variant", "canary"), ("le", "+Inf")],
                expected,
            ),
        ],
    );
    wait_for_stats(
        &envoy,
        "veer_table_generation to read 7",
        Duration::from_secs(5),
        &[("veer_table_generation", vec![], 7.0)],
    );
    let prom = envoy.prometheus().unwrap();
    assert!(
        prometheus_value(&prom, "veer_table_age_seconds", &[]).is_some(),
        "{prom}"
    );
    assert_eq!(prometheus_value(&prom, "veer_errors_total", &[]), Some(0.0));

    // --- spoofed route/mirror headers never pick the canary ---
    // Duplicates too: every copy must go, not just the first.
    let spoof = [
        ("x-veer-route", "canary"),
        ("x-veer-mirror", "1"),
        ("x-veer-route", "canary"),
        ("x-veer-mirror", "1"),
    ];
    for _ in 0..500 {
        let r = client.get("zero.example.com", "/", &spoof).unwrap();
        assert_eq!(variant(&r), "primary", "spoofed header at weight 0");
        assert_eq!(
            r.header("x-seen-route"),
            Some("-"),
            "client route header removed, none written for primary"
        );
        assert_eq!(
            r.header("x-seen-mirror"),
            Some("-"),
            "client mirror header removed"
        );
        let r = client.get("nomatch.example.com", "/", &spoof).unwrap();
        assert_eq!(
            variant(&r),
            "primary",
            "spoofed header with no route matching"
        );
        assert_eq!(
            r.header("x-seen-route"),
            Some("-"),
            "route header stripped without a route"
        );
        assert_eq!(r.header("x-seen-mirror"), Some("-"));
        assert!(r.header("x-veer-decision").is_none());
    }
    assert_eq!(canary.mirrored(), 0, "no request was mirrored");

    // --- sticky key: a user id keeps its variant, and ids spread by the weight ---
    let mut key_canary = 0;
    for id in 0..400 {
        let user = format!("user-{id}");
        let first = client
            .get("key.example.com", "/", &[("x-user-id", &user)])
            .unwrap();
        assert_eq!(decision(&first).unwrap().reason, "key");
        for _ in 0..3 {
            let again = client
                .get("key.example.com", "/", &[("x-user-id", &user)])
                .unwrap();
            assert_eq!(variant(&again), variant(&first), "{user} moved");
        }
        if variant(&first) == "canary" {
            key_canary += 1;
        }
    }
    let key_pct = share(key_canary, 400);
    println!("sticky key: {key_canary}/400 user ids on canary at weight 50%");
    assert!((40.0..=60.0).contains(&key_pct), "{key_pct:.1}%");

    // --- mirror: every primary-bound request of the route carries the mirror header ---
    let (mut mirrored_primary, mut to_canary) = (0u64, 0u64);
    for _ in 0..300 {
        let r = client.get("mirror.example.com", "/", &[]).unwrap();
        match variant(&r) {
            "primary" => {
                assert_eq!(r.header("x-seen-mirror"), Some("1"));
                mirrored_primary += 1;
            }
            _ => {
                assert_eq!(
                    r.header("x-seen-mirror"),
                    Some("-"),
                    "canary requests are not mirrored"
                );
                to_canary += 1;
            }
        }
    }
    assert!(to_canary > 0 && mirrored_primary > 0);
    poll_until(
        "Envoy to deliver the mirrored copies",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            if canary.mirrored() == mirrored_primary {
                Ok(())
            } else {
                Err(format!(
                    "{} of {mirrored_primary} mirrored",
                    canary.mirrored()
                ))
            }
        },
    )
    .unwrap();

    // --- hostile input never crashes the filter or picks the canary by accident ---
    let huge_cookie = format!("veer-cookie=v1.{}", "A".repeat(64 * 1024));
    let long_group = "b".repeat(64 * 1024);
    let many_copies = (0..500)
        .map(|i| format!("veer-cookie=v1.x{i}.y"))
        .collect::<Vec<_>>()
        .join("; ");
    let hostile: Vec<Vec<(&str, &str)>> = vec![
        vec![("cookie", &huge_cookie)],
        vec![("cookie", &many_copies)],
        vec![(
            "cookie",
            "veer-cookie=\"v1.unterminated; =; ;;; veer-cookie",
        )],
        vec![("x-canary", "\u{00e9}t\u{00e9}")],
        vec![("x-user-group", &long_group)],
    ];
    for headers in &hostile {
        for host in ["app.example.com", "cookie.example.com", "ab.example.com"] {
            let r = client.get(host, "/app", headers).unwrap();
            assert_eq!(
                r.status,
                200,
                "{host} with {:?}",
                headers.iter().map(|h| h.0).collect::<Vec<_>>()
            );
        }
        let r = client.get("ab.example.com", "/", headers).unwrap();
        assert_eq!(variant(&r), "primary", "hostile input matched the A/B rule");
    }
    // Raw non-UTF-8 bytes in a header value (obs-text, which HTTP/1.1 allows).
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(gw).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nhost: cookie.example.com\r\ncookie: veer-cookie=\xff\xfe\x80\r\nx-user-group: \xc3\x28\r\nconnection: close\r\n\r\n").unwrap();
        let mut out = Vec::new();
        raw.read_to_end(&mut out).unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    // --- Set-Cookie attributes, added next to the upstream's own cookie ---
    let r = client
        .get("cookie.example.com", "/app?setcookie=1", &[])
        .unwrap();
    let cookies = r.headers_named("set-cookie");
    assert_eq!(
        cookies.len(),
        2,
        "upstream cookie kept, veer cookie added: {cookies:?}"
    );
    assert!(cookies.iter().any(|c| c.starts_with("backend=")));
    let full = cookies
        .iter()
        .find(|c| c.starts_with("veer-cookie="))
        .unwrap();
    let attrs: Vec<&str> = full.split("; ").skip(1).collect();
    assert_eq!(
        attrs,
        [
            "Max-Age=3600",
            "Path=/app",
            "Domain=example.com",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Partitioned"
        ],
        "Set-Cookie: {full}"
    );
    let cookie = veer_cookie(&r, "veer-cookie").unwrap().to_string();
    let first_variant = variant(&r).to_string();
    for _ in 0..20 {
        let r = client
            .get("cookie.example.com", "/app", &[("cookie", &cookie)])
            .unwrap();
        assert_eq!(variant(&r), first_variant, "cookie keeps the user in place");
        assert_eq!(decision(&r).unwrap().reason, "cookie");
        assert!(
            veer_cookie(&r, "veer-cookie").is_none(),
            "valid cookie is not re-issued"
        );
    }

    // --- signed cookies: a correctly signed canary seat is honoured, forged ones are not ---
    let right = SigningKeys::from_base64(&[KEY_A.to_string()]).unwrap();
    let wrong = SigningKeys::from_base64(&[KEY_FORGER.to_string()]).unwrap();
    let canary_seeds: Vec<_> = (0u64..)
        .map(fresh_seed)
        .filter(|s| bucket("r1", s) < 5000)
        .take(200)
        .collect();
    let honest = format!(
        "veer-cookie={}",
        encode_cookie_value("test/cookie", &canary_seeds[0], Some(&right))
    );
    let r = client
        .get("cookie.example.com", "/app", &[("cookie", &honest)])
        .unwrap();
    assert_eq!(
        (variant(&r), decision(&r).unwrap().reason.as_str()),
        ("canary", "cookie")
    );
    let mut forged_canary = 0;
    for (i, seed) in canary_seeds.iter().enumerate() {
        let value = if i % 2 == 0 {
            encode_cookie_value("test/cookie", seed, Some(&wrong))
        } else {
            encode_cookie_value("test/cookie", seed, None) // unsigned, while keys are configured
        };
        let forged = format!("veer-cookie={value}");
        let r = client
            .get("cookie.example.com", "/app", &[("cookie", &forged)])
            .unwrap();
        assert_eq!(
            decision(&r).unwrap().reason,
            "weight",
            "forged cookie must not be used"
        );
        let fresh = veer_cookie(&r, "veer-cookie").expect("forged cookie is replaced");
        assert_ne!(fresh, forged);
        if variant(&r) == "canary" {
            forged_canary += 1;
        }
    }
    let forged_pct = share(forged_canary, canary_seeds.len());
    println!("forged canary-seat cookies: {forged_canary}/200 reached canary (weight 50%)");
    assert!(
        forged_pct < 75.0,
        "forged seats were honoured: {forged_pct:.1}% canary"
    );
    // Tampering with a real cookie (one character of its MAC) also gets it replaced.
    let mut tampered = cookie.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let r = client
        .get("cookie.example.com", "/app", &[("cookie", &tampered)])
        .unwrap();
    assert_eq!(decision(&r).unwrap().reason, "weight");
    assert!(veer_cookie(&r, "veer-cookie").is_some_and(|c| c != tampered));

    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "veer_errors_total", &[]),
        Some(0.0),
        "hostile input is not an error"
    );
    assert_no_crash(&envoy);
}

fn worker_connections(envoy: &Envoy) -> (u64, u64) {
    let w = envoy.worker_connections().unwrap();
    (
        w.first().copied().unwrap_or(0),
        w.get(1).copied().unwrap_or(0),
    )
}

/// Sets `table` in the stub and returns how long until 16 fresh connections (spread over both
/// workers) all see its generation.
fn propagate(
    envoy: &Envoy,
    gw: SocketAddr,
    stub: &TableStub,
    table: &serde_json::Value,
) -> Duration {
    let generation = table["generation"].as_u64().unwrap();
    let before = worker_connections(envoy);
    let mut clients: Vec<HttpClient> = (0..16).map(|_| HttpClient::new(gw)).collect();
    for c in &mut clients {
        c.connect().unwrap();
    }
    poll_until(
        "connections to reach both workers",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            let now = worker_connections(envoy);
            if now.0 - before.0 + now.1 - before.1 >= 16 {
                Ok(now)
            } else {
                Err(format!("{now:?} vs {before:?}"))
            }
        },
    )
    .map(|after| {
        assert!(
            after.0 > before.0 && after.1 > before.1,
            "16 connections did not reach both workers: {before:?} -> {after:?}"
        )
    })
    .unwrap();
    let set_at = Instant::now();
    stub.set_table(table).unwrap();
    let mut done = vec![false; clients.len()];
    poll_until(
        &format!("generation {generation} on every connection"),
        Duration::from_secs(5),
        Duration::from_millis(5),
        || {
            for (i, c) in clients.iter_mut().enumerate() {
                if !done[i] {
                    done[i] = generation_seen(c)? == generation;
                }
            }
            if done.iter().all(|d| *d) {
                Ok(())
            } else {
                Err(format!(
                    "{} of 16 connections updated",
                    done.iter().filter(|d| **d).count()
                ))
            }
        },
    )
    .unwrap();
    set_at.elapsed()
}

/// After a new table the poller asks again at once instead of waiting `pollMs`: two
/// generations published back to back (a promotion does that, and so do two canaries stepping
/// in the same second) reach the gateway together. `pollMs` is 5 s here, so a poller that
/// waited it out would miss the 2 s deadline for its next poll.
#[test]
fn back_to_back_generations_do_not_wait_for_poll_ms() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let (primary, canary) = backends();
    let stub = TableStub::start(&live_table(1, 1000)).unwrap();
    let config = serde_json::json!({
        "decisionHeader": true,
        "controller": { "cluster": CONTROLLER_CLUSTER, "pollMs": 5000, "timeoutMs": 10000 },
        "table": live_table(1, 1000),
    });
    let mut spec = GatewaySpec::new(&config, primary.addr(), canary.addr());
    spec.controller = Some(stub.addr());
    let dir = work_dir("filter-back-to-back").unwrap();
    let envoy = Envoy::start_gateway(&dir, &spec).unwrap();
    let gw = envoy.gateway_addr().unwrap();

    stub.wait_for_held_poll(1, Duration::from_secs(10)).unwrap();
    let published = Instant::now();
    stub.set_table(&live_table(2, 2000)).unwrap();
    stub.wait_for_held_poll(2, Duration::from_secs(2))
        .unwrap_or_else(|e| {
            panic!("no poll for generation 3 within 2 s of generation 2 (pollMs 5000): {e}")
        });
    println!(
        "next poll held {:?} after generation 2 was published",
        published.elapsed()
    );
    let took = propagate(&envoy, gw, &stub, &live_table(3, 3000));
    println!("generation 3 on both workers after {took:?}");
    assert!(took < Duration::from_secs(1), "generation 3 took {took:?}");
    assert_eq!(stub.max_concurrent_polls(), 1, "more than one poll at once");
    assert_no_crash(&envoy);
}

/// Writes the LDS file Envoy watches: a new file moved into place, as Envoy's file watch
/// expects.
fn write_lds(path: &std::path::Path, version: u32, listener: &serde_json::Value) {
    let mut listener = listener.clone();
    listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener".into();
    let doc = serde_json::json!({ "version_info": version.to_string(), "resources": [listener] });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Publishes `generation` and returns how long each pinned connection (one per worker) took
/// to decide with it.
fn publish_and_time(
    stub: &TableStub,
    clients: &mut [(usize, HttpClient)],
    generation: u64,
    deadline: Duration,
) -> Vec<Duration> {
    let published = Instant::now();
    stub.set_table(&live_table(generation, (100 * generation as u32) % 10_000))
        .unwrap();
    let mut seen: Vec<Option<Duration>> = vec![None; clients.len()];
    poll_until(
        &format!("generation {generation} on every worker"),
        deadline,
        Duration::from_millis(1),
        || {
            for (i, (_, c)) in clients.iter_mut().enumerate() {
                if seen[i].is_none() && generation_seen(c)? == generation {
                    seen[i] = Some(published.elapsed());
                }
            }
            if seen.iter().all(Option::is_some) {
                Ok(())
            } else {
                Err(format!("seen {seen:?}"))
            }
        },
    )
    .unwrap();
    seen.into_iter().flatten().collect()
}

/// One keep-alive connection on each of `workers` Envoy workers, with the worker's index
/// (from Envoy's per-worker `downstream_cx_total`, read before and after each connection's
/// first request).
fn connection_per_worker(
    envoy: &Envoy,
    gw: SocketAddr,
    workers: usize,
) -> Vec<(usize, HttpClient)> {
    let mut out: Vec<(usize, HttpClient)> = Vec::new();
    for _ in 0..200 {
        if out.len() == workers {
            return out;
        }
        let before = envoy.worker_connections().unwrap();
        let mut client = HttpClient::new(gw);
        client.get("app.example.com", "/", &[]).unwrap();
        let after = envoy.worker_connections().unwrap();
        let accepted: Vec<usize> = (0..after.len())
            .filter(|&w| after[w] > before.get(w).copied().unwrap_or(0))
            .collect();
        if let [w] = accepted[..] {
            if out.iter().all(|(seen, _)| *seen != w) {
                out.push((w, client));
            }
        }
    }
    panic!(
        "200 connections reached only workers {:?} of {workers}",
        out.iter().map(|(w, _)| *w).collect::<Vec<_>>()
    );
}

/// A new table reaches every worker by a notice on its queue, not by its tick. Envoy runs
/// `--concurrency 4`; one connection is pinned to each worker. `pollMs` is 60 s and the poll is
/// held up to 60 s, so neither the poll pacing nor a timeout can be why a table arrives; the
/// filter's tick (the safety net) is 1 s. Each of 8 publishes, the first after start included,
/// must show on every worker within 300 ms. Without notices a worker would wait for its tick, uniformly 0-1000 ms after the
/// publish, so 3 non-polling workers x 8 publishes all under 300 ms by chance is 0.3^24 (3e-13).
#[test]
fn pushed_tables_reach_every_worker_well_before_the_safety_net_tick() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let (primary, canary) = backends();
    let stub = TableStub::start(&live_table(1, 1000)).unwrap();
    let config = serde_json::json!({
        "decisionHeader": true,
        "controller": { "cluster": CONTROLLER_CLUSTER, "pollMs": 60000, "timeoutMs": 60000 },
        "table": live_table(1, 1000),
    });
    let workers = 4;
    let mut spec = GatewaySpec::new(&config, primary.addr(), canary.addr());
    spec.controller = Some(stub.addr());
    spec.concurrency = workers as u32;
    let dir = work_dir("filter-push-to-workers").unwrap();
    let envoy = Envoy::start_gateway(&dir, &spec).unwrap();
    let gw = envoy.gateway_addr().unwrap();
    let mut clients = connection_per_worker(&envoy, gw, workers);

    let mut worst = Duration::ZERO;
    for generation in 2..=9u64 {
        stub.wait_for_held_poll(generation - 1, Duration::from_secs(10))
            .unwrap();
        let per_worker = publish_and_time(&stub, &mut clients, generation, Duration::from_secs(5));
        let slowest = per_worker.iter().max().copied().unwrap();
        println!("generation {generation}: workers {per_worker:?}");
        assert!(
            slowest < Duration::from_millis(300),
            "generation {generation} reached a worker only after {slowest:?} (the tick is 1 s): \
             {per_worker:?}"
        );
        worst = worst.max(slowest);
    }
    println!("worst of 8 publishes, every worker: {worst:?}");
    assert_eq!(stub.max_concurrent_polls(), 1, "more than one poller");
    assert_eq!(prom_errors(&envoy), 0.0, "no host call failed");
    assert_no_crash(&envoy);
}

/// A plugin reconfiguration (a new listener config over LDS, as istiod pushes a changed
/// WasmPlugin) makes new root contexts on every worker. They register their own queues and
/// list themselves on their first tick, 10 ms after `on_configure`, so notices keep reaching
/// every worker: from the first publish after the change on, each shows on every worker's new
/// connections within 300 ms (the tick is 1 s), and nothing counts an error although the old
/// root contexts (one of them still the poller) keep their entries until they are done.
#[test]
fn notices_survive_a_plugin_reconfiguration() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let (primary, canary) = backends();
    let stub = TableStub::start(&live_table(1, 100)).unwrap();
    let config = |poll_ms: u64| {
        serde_json::json!({
            "decisionHeader": true,
            "controller": { "cluster": CONTROLLER_CLUSTER, "pollMs": poll_ms, "timeoutMs": 60000 },
            "table": live_table(1, 100),
        })
    };
    let workers = 2;
    let mut spec = GatewaySpec::new(&config(60000), primary.addr(), canary.addr());
    spec.controller = Some(stub.addr());
    let dir = work_dir("filter-push-reconfigure").unwrap();
    let lds = dir.join("lds.json");
    let mut bootstrap: serde_json::Value =
        serde_norway::from_str(&spec.bootstrap().unwrap()).unwrap();
    let mut listener = bootstrap["static_resources"]["listeners"][0].clone();
    bootstrap["static_resources"]
        .as_object_mut()
        .unwrap()
        .remove("listeners");
    bootstrap["dynamic_resources"] = serde_json::json!({
        "lds_config": { "path_config_source": { "path": lds.display().to_string() },
                        "resource_api_version": "V3" }
    });
    write_lds(&lds, 1, &listener);
    let envoy = Envoy::start(&dir, &bootstrap.to_string(), workers as u32, &[]).unwrap();
    let gw = envoy.gateway_addr().unwrap();
    let mut clients = connection_per_worker(&envoy, gw, workers);
    stub.wait_for_held_poll(1, Duration::from_secs(10)).unwrap();
    publish_and_time(&stub, &mut clients, 2, Duration::from_secs(5));

    // The reconfiguration: only pollMs changes, which is enough for a new plugin.
    let wasm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["config"]["configuration"]["value"];
    *wasm = config(59000).to_string().into();
    write_lds(&lds, 2, &listener);
    poll_until(
        "the listener to be updated in place",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || match envoy.stat("listener_manager.listener_in_place_updated")? {
            Some(n) if n >= 1 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap();
    // New connections get the new filter chain, so the new root contexts decide them.
    drop(clients);
    let mut clients = connection_per_worker(&envoy, gw, workers);
    for generation in 3..=8u64 {
        stub.wait_for_held_poll(generation - 1, Duration::from_secs(10))
            .unwrap();
        let per_worker = publish_and_time(&stub, &mut clients, generation, Duration::from_secs(5));
        println!("generation {generation}: workers {per_worker:?}");
        let slowest = per_worker.iter().max().copied().unwrap();
        assert!(
            slowest < Duration::from_millis(300),
            "after the reconfiguration, generation {generation} reached a worker only after \
             {slowest:?} (the tick is 1 s): {per_worker:?}"
        );
    }
    assert_eq!(prom_errors(&envoy), 0.0, "no host call failed");
    assert_no_crash(&envoy);
}

/// `responseMetrics: false` (what the Istio manifests ship, next to Istio's own telemetry):
/// requests are still counted by variant and reason, responses are neither counted nor timed,
/// and their stats are not even defined, so no series of zeros suggests otherwise.
#[test]
fn response_metrics_off_counts_requests_only() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let (primary, canary) = backends();
    let config = serde_json::json!({
        "responseMetrics": false,
        "decisionHeader": true,
        "table": live_table(3, 5000),
    });
    let spec = GatewaySpec::new(&config, primary.addr(), canary.addr());
    let dir = work_dir("filter-response-metrics-off").unwrap();
    let envoy = Envoy::start_gateway(&dir, &spec).unwrap();
    let mut client = HttpClient::new(envoy.gateway_addr().unwrap());
    let n = 300;
    let mut canary_hits = 0;
    for _ in 0..n {
        let r = client.get("app.example.com", "/", &[]).unwrap();
        assert!(
            veer_cookie(&r, "flagger-cookie").is_some(),
            "Set-Cookie still added"
        );
        assert_eq!(
            decision(&r).unwrap().generation,
            3,
            "decision header still added"
        );
        if variant(&r) == "canary" {
            canary_hits += 1;
        }
    }
    let route = ("veer_route", "test/podinfo");
    let weight_count = |variant, want: usize| -> Stat {
        (
            "veer_requests_total",
            vec![route, ("veer_variant", variant), ("veer_reason", "weight")],
            want as f64,
        )
    };
    let prom = wait_for_stats(
        &envoy,
        "the request counters to be handed to Envoy",
        Duration::from_secs(5),
        &[
            weight_count("canary", canary_hits),
            weight_count("primary", n - canary_hits),
        ],
    );
    assert!(!prom.contains("veer_responses_total"), "{prom}");
    assert!(!prom.contains("veer_request_duration_ms"), "{prom}");
    assert_eq!(prometheus_value(&prom, "veer_errors_total", &[]), Some(0.0));
    assert_no_crash(&envoy);
}

/// One Envoy polling a controller stub: propagation, sticky users, single poller, a bad
/// table from the controller, then the controller dies.
#[test]
fn live_table_propagates_keeps_users_sticky_and_survives_controller_loss() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let (primary, canary) = backends();
    let mut stub = TableStub::start(&live_table(1, 1000)).unwrap();
    let config = serde_json::json!({
        "decisionHeader": true,
        "cookieSigning": { "keysEnv": "VEER_COOKIE_KEYS" },
        "controller": { "cluster": CONTROLLER_CLUSTER, "pollMs": 200, "timeoutMs": 10000 },
        "table": live_table(1, 1000),
    });
    let mut spec = GatewaySpec::new(&config, primary.addr(), canary.addr());
    spec.controller = Some(stub.addr());
    spec.node_id = "gateway-live-test".into();
    // Key rotation order: B signs, A still verifies.
    spec.env
        .push(("VEER_COOKIE_KEYS".into(), format!("{KEY_B}, {KEY_A}")));
    let dir = work_dir("filter-live").unwrap();
    let envoy = Envoy::start_gateway(&dir, &spec).unwrap();
    let gw = envoy.gateway_addr().unwrap();

    // 1,000 users get their cookie at 10%. (With 300, the binomial spread of the user share at
    // 50% is ±2.9 points (1σ) and a ±5-point check would fail about one run in twelve.)
    let users = 1000;
    let mut pool: Vec<HttpClient> = (0..8).map(|_| HttpClient::new(gw)).collect();
    let mut jar: Vec<String> = Vec::with_capacity(users);
    let mut on_canary = vec![false; users];
    let signer_b = SigningKeys::from_base64(&[KEY_B.to_string()]).unwrap();
    let only_a = SigningKeys::from_base64(&[KEY_A.to_string()]).unwrap();
    for u in 0..users {
        let r = pool[u % 8].get("app.example.com", "/", &[]).unwrap();
        let cookie = veer_cookie(&r, "flagger-cookie").expect("first visit sets the cookie");
        let value = cookie.split_once('=').unwrap().1;
        assert!(
            veer_core::verify_cookie_value("test/podinfo", value.as_bytes(), Some(&signer_b))
                .is_some()
                && veer_core::verify_cookie_value("test/podinfo", value.as_bytes(), Some(&only_a))
                    .is_none(),
            "cookie must be signed by the first key from VEER_COOKIE_KEYS"
        );
        on_canary[u] = variant(&r) == "canary";
        jar.push(cookie.to_string());
    }

    // Rotation: a cookie signed with the second (older) key still verifies.
    let old_key = SigningKeys::from_base64(&[KEY_A.to_string()]).unwrap();
    let old_cookie = format!(
        "flagger-cookie={}",
        encode_cookie_value("test/podinfo", &fresh_seed(7), Some(&old_key))
    );
    let r = pool[0]
        .get("app.example.com", "/", &[("cookie", &old_cookie)])
        .unwrap();
    assert_eq!(
        decision(&r).unwrap().reason,
        "cookie",
        "a cookie signed by a verifying key is honoured"
    );
    assert!(veer_cookie(&r, "flagger-cookie").is_none());

    let mut latencies = Vec::new();
    for (step, weight) in [10u32, 20, 30, 40, 50].into_iter().enumerate() {
        let generation = step as u64 + 1;
        if generation > 1 {
            let took = propagate(&envoy, gw, &stub, &live_table(generation, weight * 100));
            println!("generation {generation} (weight {weight}%) on both workers after {took:?}");
            latencies.push(took);
        }
        for replay in 0..2 {
            for u in 0..users {
                let r = pool[u % 8]
                    .get("app.example.com", "/", &[("cookie", &jar[u])])
                    .unwrap();
                let d = decision(&r).unwrap();
                let (v, reason, g) = (d.variant, d.reason, d.generation);
                assert_eq!(
                    (reason.as_str(), g),
                    ("cookie", generation),
                    "user {u} replay {replay}"
                );
                assert!(veer_cookie(&r, "flagger-cookie").is_none());
                let now_canary = variant(&r) == "canary";
                assert_eq!(v, variant(&r));
                assert!(
                    !on_canary[u] || now_canary,
                    "user {u} flipped canary -> primary at weight {weight}%"
                );
                on_canary[u] = now_canary;
            }
        }
        let pct = share(on_canary.iter().filter(|c| **c).count(), users);
        println!("weight {weight}%: {pct:.1}% of {users} users on canary");
        assert!(
            (pct - f64::from(weight)).abs() <= 5.0,
            "user share {pct:.1}% vs weight {weight}%"
        );
    }
    let worst = latencies.iter().max().copied().unwrap();
    println!("propagation to both workers: {latencies:?} (worst {worst:?})");
    assert!(
        worst < Duration::from_secs(1),
        "table change took {worst:?}"
    );

    // Exactly one poller, identifying the gateway.
    let polls = stub.polls();
    assert!(!polls.is_empty());
    assert_eq!(
        stub.max_concurrent_polls(),
        1,
        "more than one worker polled at once"
    );
    for p in &polls {
        assert_eq!(p.gateway.as_deref(), Some("gateway-live-test"));
        assert_eq!(p.wait_ms, Some(10000));
        assert_eq!(
            p.generation_header.as_deref(),
            p.after.map(|a| a.to_string()).as_deref()
        );
        assert_eq!(
            p.authority.as_deref(),
            Some("veer-controller.veer-system.svc.cluster.local")
        );
    }

    // A table the controller serves but that fails validation is not applied.
    let errors_before = prom_errors(&envoy);
    stub.set_table(&live_table(6, 10001)).unwrap();
    poll_until(
        "the bad table to be counted as an error",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let e = prom_errors(&envoy);
            if e > errors_before {
                Ok(())
            } else {
                Err(format!("errors {e}"))
            }
        },
    )
    .unwrap();
    let mut client = HttpClient::new(gw);
    assert_eq!(
        generation_seen(&mut client).unwrap(),
        5,
        "invalid generation 6 was applied"
    );
    poll_until(
        "the rejection in the log",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let log = envoy.log();
            let line = log
                .lines()
                .find(|l| l.contains("table rejected"))
                .ok_or("no rejection line")?;
            if line.contains("routes[0].weight") {
                Ok(())
            } else {
                Err(format!("field not named: {line}"))
            }
        },
    )
    .unwrap();
    stub.set_table(&live_table(7, 5000)).unwrap();
    poll_until(
        "generation 7",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || match generation_seen(&mut client)? {
            7 => Ok(()),
            g => Err(format!("still {g}")),
        },
    )
    .unwrap();

    // The controller dies: routing continues on generation 7, no 5xx.
    stub.stop();
    let errors_at_stop = prom_errors(&envoy);
    poll_until(
        "the filter to notice the controller is gone",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let e = prom_errors(&envoy);
            if e > errors_at_stop {
                Ok(())
            } else {
                Err(format!("errors {e}"))
            }
        },
    )
    .unwrap();
    let mut canary_hits = 0;
    let n = 1000;
    for _ in 0..n {
        let r = client.get("app.example.com", "/", &[]).unwrap();
        assert_eq!(r.status, 200, "request failed while the controller is down");
        assert_eq!(decision(&r).unwrap().generation, 7);
        if variant(&r) == "canary" {
            canary_hits += 1;
        }
    }
    let pct = share(canary_hits, n);
    println!("controller down: {pct:.1}% canary over {n} requests on the last table (weight 50%)");
    assert!((45.0..=55.0).contains(&pct));
    poll_until(
        "table age to grow while the controller is down",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let prom = envoy.prometheus()?;
            match prometheus_value(&prom, "veer_table_age_seconds", &[]) {
                Some(a) if a >= 2.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .unwrap();
    assert_no_crash(&envoy);
}

fn prom_errors(envoy: &Envoy) -> f64 {
    let prom = envoy.prometheus().unwrap();
    prometheus_value(&prom, "veer_errors_total", &[]).unwrap_or(0.0)
}

/// Bad plugin configurations stop Envoy from loading the listener, and the log names the field.
#[test]
fn bad_plugin_configs_are_rejected_with_the_field_named() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let route = |extra: serde_json::Value| {
        let mut r = serde_json::json!({ "name": "test/podinfo", "hosts": ["*"], "weight": 1000 });
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        serde_json::json!({ "table": { "generation": 1, "routes": [r] } })
    };
    let cases = vec![
        (
            "weight",
            route(serde_json::json!({ "weight": 10001 })),
            vec!["table.routes[0].weight", "test/podinfo"],
        ),
        (
            "regex",
            route(
                serde_json::json!({ "match": [{ "headers": { "x-user": { "regex": "([a-z" } } }] }),
            ),
            vec!["table.routes[0].match[0].headers.x-user.regex"],
        ),
        (
            "unknown",
            route(serde_json::json!({ "hostz": ["x"] })),
            vec!["table.routes[0].hostz", "unknown field"],
        ),
        (
            "keys-env",
            serde_json::json!({ "cookieSigning": { "keysEnv": "VEER_KEYS_NOT_SET" } }),
            vec!["cookieSigning.keysEnv", "VEER_KEYS_NOT_SET"],
        ),
    ];
    let unused: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, config, wants)| {
            std::thread::spawn(move || {
                let dir = work_dir(&format!("filter-bad-{name}")).unwrap();
                let spec = GatewaySpec::new(&config, unused, unused);
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
                println!("{name}: {}", line.split("wasm log").nth(1).unwrap_or(line));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Two veer plugins in one Envoy share one `vm_id` (as Istio runs every WasmPlugin of a proxy),
/// each with its own controller. Shared-data keys are prefixed by plugin name, so each plugin
/// applies its own controller's table and each has exactly one poller.
#[test]
fn two_plugins_sharing_a_vm_keep_their_tables_apart() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let (primary, canary) = backends();
    let table = |generation: u64, weight: u32| {
        serde_json::json!({ "generation": generation, "routes": [
            { "name": "test/podinfo", "hosts": ["*"], "weight": weight }
        ] })
    };
    let stub_a = TableStub::start(&table(10, 0)).unwrap();
    let stub_b = TableStub::start(&table(20, 10000)).unwrap();
    let config = |cluster: &str| {
        serde_json::json!({
            "decisionHeader": true,
            "controller": { "cluster": cluster, "pollMs": 200, "timeoutMs": 5000 },
            "table": table(1, 5000),
        })
    };
    let cluster_b = "outbound|8080||veer-controller-b.veer-system.svc.cluster.local";
    let mut spec = GatewaySpec::new(&config(CONTROLLER_CLUSTER), primary.addr(), canary.addr());
    spec.controller = Some(stub_a.addr());
    let mut bootstrap: serde_json::Value =
        serde_norway::from_str(&spec.bootstrap().unwrap()).unwrap();

    // Second listener "gateway-b": the same filter, plugin name "veer-b", same vm_id.
    let resources = &mut bootstrap["static_resources"];
    let mut listener_b = resources["listeners"][0].clone();
    listener_b["name"] = "gateway-b".into();
    let wasm = &mut listener_b["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["config"];
    assert_eq!(wasm["vm_config"]["vm_id"], "veer");
    wasm["name"] = "veer-b".into();
    wasm["configuration"]["value"] = config(cluster_b).to_string().into();
    resources["listeners"]
        .as_array_mut()
        .unwrap()
        .push(listener_b);
    let clusters = resources["clusters"].as_array_mut().unwrap();
    let mut controller_b = clusters
        .iter()
        .find(|c| c["name"] == CONTROLLER_CLUSTER)
        .unwrap()
        .clone();
    controller_b["name"] = cluster_b.into();
    controller_b["load_assignment"]["cluster_name"] = cluster_b.into();
    controller_b["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"] = stub_b.addr().port().into();
    clusters.push(controller_b);

    let dir = work_dir("filter-two-plugins").unwrap();
    let envoy = Envoy::start(&dir, &bootstrap.to_string(), 2, &[]).unwrap();
    let (gw_a, gw_b) = (
        envoy.listener_addr("gateway").unwrap(),
        envoy.listener_addr("gateway-b").unwrap(),
    );
    for (addr, generation, want) in [(gw_a, 10, "primary"), (gw_b, 20, "canary")] {
        let mut clients: Vec<HttpClient> = (0..8).map(|_| HttpClient::new(addr)).collect();
        poll_until(
            &format!("generation {generation} on {addr}"),
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                for c in &mut clients {
                    let g = generation_seen(c)?;
                    if g != generation {
                        return Err(format!("saw {g}"));
                    }
                }
                Ok(())
            },
        )
        .unwrap();
        for c in &mut clients {
            for _ in 0..20 {
                let r = c.get("app.example.com", "/", &[]).unwrap();
                assert_eq!(
                    (variant(&r), decision(&r).unwrap().generation),
                    (want, generation)
                );
            }
        }
    }
    for (name, stub) in [("a", &stub_a), ("b", &stub_b)] {
        assert!(
            !stub.polls().is_empty(),
            "plugin {name} never polled its controller"
        );
        assert_eq!(
            stub.max_concurrent_polls(),
            1,
            "plugin {name} had more than one poller"
        );
    }
    assert_no_crash(&envoy);
}
