#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The controller API's security, through the real `veer controller` binary:
//!
//! - with a bearer token configured (file or environment variable), every write answers 401
//!   without it or with a wrong one and changes nothing; reads (`/v1/table`, `/v1/canaries`,
//!   `/metrics`, `/healthz`) need no token;
//! - the token never appears in the log (veer_controller at debug level), in an answer or
//!   in `/metrics`;
//! - cookie signing keys never appear in the table, `/v1/canaries`, `/metrics`, the log or
//!   `veer render`'s output, even with the key variable in the controller's environment: the
//!   controller only ever handles the Secret's name;
//! - request limits: a body over 64 KiB gets 413 and changes nothing; a hundred connections
//!   that never finish their headers block nobody and are cut off after the header timeout.
//!
//! server.rs tests the same rules in-process (including slow clients); this file checks the
//! shipped binary wires them up.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::process::text;
use support::veer::{run_veer, write_spec, Controller};

const TOKEN: &str = "tok-7f3a9c1e5b2d4f60a8e1c3b5";
/// A cookie signing key as an operator would put it in a Secret (base64 of 32 bytes).
const COOKIE_KEY: &str = "c2VjcmV0LWNvb2tpZS1rZXktbWF0ZXJpYWwtMzJieXRlcw==";
const KEY: &str = "shop/app";

fn spec() -> &'static str {
    r#"apiVersion: veer.dev/v1alpha1
kind: Canary
metadata:
  name: app
  namespace: shop
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: app
  service:
    port: 80
    hosts: [app.example.com]
    gateways: [istio-system/public-gateway]
  analysis:
    interval: 1s
    threshold: 1
    maxWeight: 50
    stepWeight: 10
    sessionAffinity:
      cookieName: shop-cookie
      maxAge: 3600
  veer:
    cookieSigning:
      secretName: veer-cookie-keys
"#
}

/// The token and a cookie key in the environment every controller of this file inherits.
/// Set once, first thing in each test, before any of them spawns a process (std serialises
/// `set_var` with `Command::spawn`'s read of the environment).
fn environment() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("VEER_API_TOKEN", TOKEN);
        std::env::set_var("VEER_COOKIE_KEYS", COOKIE_KEY);
    });
}

async fn started(token_arg: &str, dir: &std::path::Path) -> Controller {
    environment();
    let canaries = dir.join("canaries");
    std::fs::create_dir_all(&canaries).unwrap();
    write_spec(&canaries, "app.yaml", spec());
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", dir.join("state.json").display()),
        token_arg.to_string(),
    ];
    Controller::start(&args, dir.join("controller.log")).await
}

async fn raw(c: &Controller, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let http = reqwest::Client::new();
    let mut r = http
        .request(method.parse().unwrap(), format!("{}{path}", c.url))
        .header("content-type", "application/json");
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    if method == "POST" {
        r = r.body(json!({"revision": "v9"}).to_string());
    }
    let response = r.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn check_token_rules(c: &Controller) {
    let writes = ["revision", "promote", "rollback", "pause", "resume"];
    let before = c.canary(KEY).await;
    for action in writes {
        let path = format!("/v1/canaries/{KEY}/{action}");
        for auth in [
            None,
            Some("Bearer wrong-token".to_string()),
            Some(TOKEN.to_string()),
            Some(format!("Basic {TOKEN}")),
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        ] {
            let (status, body) = raw(c, "POST", &path, auth.as_deref()).await;
            assert_eq!(status, 401, "{action} with {auth:?}: {body}");
            assert!(!body.contains(TOKEN), "the token is echoed: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert!(v["error"].is_string(), "{body}");
        }
    }
    let after = c.canary(KEY).await;
    assert_eq!(
        (
            &before["phase"],
            &before["canaryRevision"],
            &before["paused"]
        ),
        (&after["phase"], &after["canaryRevision"], &after["paused"]),
        "refused writes changed nothing"
    );
    // Reads are open.
    for path in [
        "/v1/table",
        "/v1/canaries",
        &format!("/v1/canaries/{KEY}"),
        "/metrics",
        "/healthz",
    ] {
        let (status, body) = raw(c, "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(TOKEN), "{path} shows the token");
    }
    // With the token, writes work.
    let (status, body) = c
        .post(
            &format!("/v1/canaries/{KEY}/revision"),
            json!({"revision": "v1"}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "Initialized");
    // Too big a body: 413 before the token matters, and nothing changes.
    let http = reqwest::Client::new();
    let huge = json!({"revision": "x".repeat(70 * 1024)}).to_string();
    let r = http
        .post(format!("{}/v1/canaries/{KEY}/revision", c.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(c.canary(KEY).await["canaryRevision"], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_a_file_guards_writes_and_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let c = started(
        &format!("--token-file={}", token_file.display()),
        dir.path(),
    )
    .await;
    check_token_rules(&c).await;
    let log = c.log_text();
    assert!(log.contains("veer controller running"), "{log}");
    assert!(!log.contains(TOKEN), "the token is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_the_environment_guards_writes_and_keys_never_leak() {
    let dir = tempfile::tempdir().unwrap();
    let c = started("--token-env=VEER_API_TOKEN", dir.path()).await;
    check_token_rules(&c).await;
    c.post(
        &format!("/v1/canaries/{KEY}/revision"),
        json!({"revision": "v2"}),
        Some(TOKEN),
    )
    .await;
    // Let the run publish a few tables with the signed-cookie route.
    veer_testkit::poll_until_async(
        "weight 20",
        Duration::from_secs(20),
        support::POLL,
        || async {
            let s = c.canary(KEY).await;
            (s["weight"].as_u64().unwrap() >= 20)
                .then_some(())
                .ok_or(format!("{s}"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let key_bytes_b64 = &COOKIE_KEY[..20];
    for path in ["/v1/table", "/v1/canaries", "/metrics"] {
        let (_, body) = raw(&c, "GET", path, None).await;
        assert!(
            !body.contains(key_bytes_b64) && !body.contains("secret-cookie-key"),
            "{path} shows the cookie key"
        );
        assert!(!body.contains(TOKEN), "{path} shows the token");
    }
    let table = c.table().await.unwrap();
    assert!(table["routes"][0].get("cookieSigning").is_none(), "{table}");
    let log = c.log_text();
    assert!(!log.contains(TOKEN), "the token is in the log");
    assert!(!log.contains(key_bytes_b64), "the cookie key is in the log");

    // `veer render` wires the Secret by name; no key material in its output.
    let out = run_veer(
        &[
            "render",
            dir.path().join("canaries/app.yaml").to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let rendered = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(rendered.contains("veer-cookie-keys"), "{rendered}");
    assert!(rendered.contains("keysEnv"), "{rendered}");
    assert!(!rendered.contains(key_bytes_b64), "render printed the key");
}

/// Slowloris against the real binary: a hundred connections that never finish their headers
/// do not stop others from being served, and are cut off after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_neither_block_others_nor_stay_connected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let c = started(
        &format!("--token-file={}", token_file.display()),
        dir.path(),
    )
    .await;
    let addr = c.url.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /v1/canaries HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let started_at = std::time::Instant::now();
    let (status, _) = raw(&c, "GET", "/v1/canaries", None).await;
    assert_eq!(status, 200);
    assert!(
        started_at.elapsed() < Duration::from_secs(2),
        "a normal request waited {:?} behind slow clients",
        started_at.elapsed()
    );
    // Every slow connection is closed by the server (EOF) within the header timeout + margin.
    let limit = Duration::from_secs(10 + 5);
    let closed = tokio::time::timeout(limit, async {
        for s in &mut slow {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            assert!(
                !String::from_utf8_lossy(&buf).contains("200 OK"),
                "an unfinished request was answered"
            );
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "slow connections still open after {limit:?}"
    );
}
