#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Webhook calls against a real local HTTP server that records what it receives.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use support::http::{HangingServer, Recorder, TestServer};
use veer_controller::checks::webhooks::{
    CanaryIdentity, Hook, HookError, HookType, WebhookCaller, WebhookPayload, DEFAULT_HOOK_TIMEOUT,
};

#[derive(Clone, Debug)]
struct Received {
    path: String,
    content_type: String,
    body: String,
}

async fn record(
    State(rec): State<Recorder<Received>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    rec.push(Received {
        path: path.clone(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        body: String::from_utf8(body.to_vec()).unwrap(),
    });
    match path.as_str() {
        "/ok" => (StatusCode::OK, "approved").into_response(),
        "/created" => StatusCode::CREATED.into_response(),
        "/accepted" => StatusCode::ACCEPTED.into_response(),
        "/no-content" => StatusCode::NO_CONTENT.into_response(),
        "/redirect" => (StatusCode::FOUND, [(header::LOCATION, "/ok")]).into_response(),
        "/fail" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "load test failed: 12% errors",
        )
            .into_response(),
        "/huge" => (StatusCode::OK, vec![b'x'; 20 * 1024 * 1024]).into_response(),
        "/huge-fail" => (StatusCode::BAD_REQUEST, vec![b'y'; 20 * 1024 * 1024]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn hook_server() -> (TestServer, Recorder<Received>) {
    let rec = Recorder::<Received>::default();
    let app = axum::Router::new()
        .route("/{*path}", post(record))
        .with_state(rec.clone());
    (TestServer::start(app).await, rec)
}

fn canary() -> CanaryIdentity {
    CanaryIdentity {
        name: "podinfo".into(),
        namespace: "test".into(),
        phase: "Progressing".into(),
        checksum: "6f9c7d".into(),
    }
}

fn hook(server: &TestServer, name: &str, path: &str) -> Hook {
    hook_at(name, &server.url(path), Duration::from_secs(5))
}

/// A hook with no retries and TLS verified, as a spec without those fields gives.
fn hook_at(name: &str, url: &str, timeout: Duration) -> Hook {
    Hook {
        name: name.into(),
        url: url.into(),
        timeout: Some(timeout),
        metadata: BTreeMap::new(),
        retries: 0,
        disable_tls: false,
    }
}

#[tokio::test]
async fn payload_is_flaggers_json_with_metadata() {
    let (server, rec) = hook_server().await;
    let caller = WebhookCaller::new().unwrap();
    let metadata = BTreeMap::from([
        ("type".to_string(), "bash".to_string()),
        (
            "cmd".to_string(),
            "curl -sd 'test' http://podinfo-canary:9898/token | grep token".to_string(),
        ),
    ]);
    let payload = canary().payload(metadata);
    caller
        .call(
            &hook_at(
                "acceptance-test",
                &server.url("/ok"),
                Duration::from_secs(5),
            ),
            &payload,
        )
        .await
        .unwrap();
    let got = rec.all();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "podinfo",
            "namespace": "test",
            "phase": "Progressing",
            "checksum": "6f9c7d",
            "metadata": {
                "type": "bash",
                "cmd": "curl -sd 'test' http://podinfo-canary:9898/token | grep token"
            }
        })
    );
}

#[tokio::test]
async fn empty_metadata_is_omitted_from_the_body() {
    let (server, rec) = hook_server().await;
    let caller = WebhookCaller::new().unwrap();
    caller
        .call(
            &hook_at("gate", &server.url("/ok"), Duration::from_secs(5)),
            &canary().payload(BTreeMap::new()),
        )
        .await
        .unwrap();
    assert_eq!(
        rec.all()[0].body,
        r#"{"name":"podinfo","namespace":"test","phase":"Progressing","checksum":"6f9c7d"}"#
    );
}

#[tokio::test]
async fn only_200_201_202_pass() {
    let (server, _rec) = hook_server().await;
    let caller = WebhookCaller::new().unwrap();
    let payload = canary().payload(BTreeMap::new());
    for path in ["/ok", "/created", "/accepted"] {
        caller
            .call(
                &hook_at("gate", &server.url(path), Duration::from_secs(5)),
                &payload,
            )
            .await
            .unwrap_or_else(|e| panic!("{path} should pass: {e}"));
    }
    let err = caller
        .call(
            &hook_at("gate", &server.url("/no-content"), Duration::from_secs(5)),
            &payload,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, HookError::Status { status: 204, .. }),
        "{err:?}"
    );

    let err = caller
        .call(
            &hook_at("load-test", &server.url("/fail"), Duration::from_secs(5)),
            &payload,
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"load-test\""), "names the hook: {msg}");
    assert!(msg.contains(&server.url("/fail")), "names the URL: {msg}");
    assert!(msg.contains("HTTP 500"), "{msg}");
    assert!(
        msg.contains("load test failed: 12% errors"),
        "quotes the body: {msg}"
    );
}

#[tokio::test]
async fn redirects_fail_and_are_not_followed() {
    let (server, rec) = hook_server().await;
    let caller = WebhookCaller::new().unwrap();
    let err = caller
        .call(
            &hook_at("gate", &server.url("/redirect"), Duration::from_secs(5)),
            &canary().payload(BTreeMap::new()),
        )
        .await
        .unwrap_err();
    match &err {
        HookError::Status {
            status, location, ..
        } => {
            assert_eq!(*status, 302);
            assert_eq!(location.as_deref(), Some("/ok"));
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert!(
        err.to_string().contains("redirects are not followed"),
        "{err}"
    );
    let paths: Vec<String> = rec.all().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec!["/redirect"],
        "the redirect target must not be called"
    );
}

#[tokio::test]
async fn a_hanging_hook_times_out() {
    let hanging = HangingServer::start().await;
    let caller = WebhookCaller::new().unwrap();
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let err = caller
        .call(
            &hook_at("slow", &format!("http://{}/", hanging.addr), timeout),
            &canary().payload(BTreeMap::new()),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, HookError::Timeout { after, .. } if after == timeout),
        "{err:?}"
    );
    assert!(
        took >= timeout && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert!(err.to_string().contains("\"slow\""), "{err}");
    assert_eq!(DEFAULT_HOOK_TIMEOUT, Duration::from_secs(10));
}

#[tokio::test]
async fn an_unreachable_hook_is_a_transport_error() {
    let port = support::free_port();
    let caller = WebhookCaller::new().unwrap();
    let err = caller
        .call(
            &hook_at(
                "gone",
                &format!("http://127.0.0.1:{port}/"),
                Duration::from_secs(5),
            ),
            &canary().payload(BTreeMap::new()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HookError::Transport { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    let err = caller
        .call(
            &hook_at("typo", "htp:/nowhere", Duration::from_secs(5)),
            &canary().payload(BTreeMap::new()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HookError::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn huge_bodies_are_read_only_up_to_the_cap() {
    let (server, _rec) = hook_server().await;
    let caller = WebhookCaller::new().unwrap();
    let payload = canary().payload(BTreeMap::new());
    caller
        .call(
            &hook_at("big", &server.url("/huge"), Duration::from_secs(5)),
            &payload,
        )
        .await
        .unwrap();
    let err = caller
        .call(
            &hook_at("big", &server.url("/huge-fail"), Duration::from_secs(5)),
            &payload,
        )
        .await
        .unwrap_err();
    match &err {
        HookError::Status {
            status: 400, body, ..
        } => {
            assert!(
                body.len() < 1024,
                "the error quotes an excerpt, got {} bytes",
                body.len()
            );
            assert!(body.starts_with("yyyy") && body.ends_with("..."), "{body}");
        }
        other => panic!("expected Status 400, got {other:?}"),
    }
}

#[tokio::test]
async fn hooks_run_in_order_and_stop_at_the_first_failure() {
    let (server, rec) = hook_server().await;
    let caller = WebhookCaller::new().unwrap();
    let mut first = hook(&server, "first", "/ok");
    first.metadata.insert("step".into(), "1".into());
    let hooks = vec![
        first,
        hook(&server, "second", "/accepted"),
        hook(&server, "third", "/fail"),
        hook(&server, "fourth", "/ok"),
    ];
    let failure = caller
        .run_in_order(HookType::Rollout, &hooks, &canary())
        .await
        .unwrap_err();
    assert_eq!(failure.index, 2);
    assert_eq!(failure.error.hook(), "third");
    let msg = failure.to_string();
    assert!(
        msg.contains("rollout webhook 3 of 4 failed, the rest were not called"),
        "{msg}"
    );
    assert!(msg.contains("\"third\""), "{msg}");
    let paths: Vec<String> = rec.all().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec!["/ok", "/accepted", "/fail"],
        "fourth must not be called"
    );
    let first_body: serde_json::Value = serde_json::from_str(&rec.all()[0].body).unwrap();
    assert_eq!(
        first_body["metadata"]["step"], "1",
        "each hook sends its own metadata"
    );
    let second_body: serde_json::Value = serde_json::from_str(&rec.all()[1].body).unwrap();
    assert!(second_body.get("metadata").is_none());

    let passing = vec![hook(&server, "a", "/ok"), hook(&server, "b", "/created")];
    caller
        .run_in_order(HookType::PreRollout, &passing, &canary())
        .await
        .unwrap();
    caller
        .run_in_order(HookType::PreRollout, &[], &canary())
        .await
        .unwrap();
}

#[tokio::test]
async fn event_hooks_get_message_type_and_millisecond_timestamp() {
    let (server, rec) = hook_server().await;
    let caller = WebhookCaller::new().unwrap();
    let mut event_hook = hook(&server, "events", "/ok");
    event_hook
        .metadata
        .insert("channel".into(), "#deploys".into());
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    caller
        .send_event(
            &event_hook,
            &canary(),
            "Advance podinfo.test canary weight 10",
            "Normal",
        )
        .await
        .unwrap();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let body: WebhookPayload = serde_json::from_str(&rec.all()[0].body).unwrap();
    assert_eq!(
        body.metadata["eventMessage"],
        "Advance podinfo.test canary weight 10"
    );
    assert_eq!(body.metadata["eventType"], "Normal");
    assert_eq!(body.metadata["channel"], "#deploys");
    let ts: u128 = body.metadata["timestamp"].parse().unwrap();
    assert!(
        (before..=after).contains(&ts),
        "{before} <= {ts} <= {after}"
    );
}
