#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Webhook `retries` and `disableTLS` as Flagger's webhooks doc describes them, against a
//! real HTTPS receiver with a self-signed certificate: a failed call is tried again within
//! the same call with backoff (1s, 2s, ...), only for failures another attempt may fix;
//! `disableTLS` skips certificate verification for that hook only. The last test runs the
//! real controller on a Canary whose hook needs both.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use support::canary::{canary_yaml, QUICK_ANALYSIS};
use support::http::HangingServer;
use support::tls::TlsTestServer;
use support::veer::{canaries_dir, write_spec, Controller};
use veer_controller::checks::webhooks::{
    retry_backoff, CanaryIdentity, Hook, HookError, WebhookCaller,
};

/// When each path was called.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<(String, Instant)>>>);

impl Calls {
    fn of(&self, path: &str) -> Vec<Instant> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at)
            .collect()
    }
}

/// `/flaky/N`: 503 for the first N calls, then 200. `/bad`: always 400. `/throttle`: 429
/// with `Retry-After: 2` on the first call, then 200.
async fn answer(State(calls): State<Calls>, Path(path): Path<String>) -> Response {
    let path = format!("/{path}");
    let n = {
        let mut all = calls.0.lock().unwrap();
        all.push((path.clone(), Instant::now()));
        all.iter().filter(|(p, _)| *p == path).count()
    };
    if let Some(fails) = path.strip_prefix("/flaky/") {
        let fails: usize = fails.parse().unwrap();
        return if n <= fails {
            (StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response()
        } else {
            (StatusCode::OK, "ok").into_response()
        };
    }
    match path.as_str() {
        "/bad" => (StatusCode::BAD_REQUEST, "bad payload").into_response(),
        "/throttle" if n == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "2")],
            "slow down",
        )
            .into_response(),
        "/throttle" => StatusCode::OK.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn https_receiver() -> (TlsTestServer, Calls) {
    let calls = Calls::default();
    let app = axum::Router::new()
        .route("/{*path}", post(answer))
        .with_state(calls.clone());
    (TlsTestServer::start(app).await, calls)
}

fn hook(url: String, retries: u32, disable_tls: bool) -> Hook {
    Hook {
        name: "load-test".into(),
        url,
        timeout: Some(Duration::from_secs(5)),
        metadata: BTreeMap::new(),
        retries,
        disable_tls,
    }
}

fn payload() -> veer_controller::checks::webhooks::WebhookPayload {
    CanaryIdentity {
        name: "podinfo".into(),
        namespace: "test".into(),
        phase: "Progressing".into(),
        checksum: "abc".into(),
    }
    .payload(BTreeMap::new())
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn backoff_doubles_from_one_second_up_to_thirty() {
    let waits: Vec<u64> = (0..8).map(|r| retry_backoff(r).as_secs()).collect();
    assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(retry_backoff(u32::MAX), Duration::from_secs(30));
}

#[tokio::test]
async fn a_failing_call_is_retried_within_the_same_call_with_backoff() {
    let (server, calls) = https_receiver().await;
    let caller = WebhookCaller::new().unwrap();
    // Fails twice, then answers 200: two retries are enough, in one call.
    caller
        .call(&hook(server.url("/flaky/2"), 2, true), &payload())
        .await
        .unwrap();
    let times = calls.of("/flaky/2");
    assert_eq!(times.len(), 3);
    let gaps = gaps(&times);
    assert!(gaps[0] >= Duration::from_secs(1), "first backoff {gaps:?}");
    assert!(gaps[1] >= Duration::from_secs(2), "second backoff {gaps:?}");

    // One retry is not enough for three failures: the error says how many attempts.
    let err = caller
        .call(&hook(server.url("/flaky/3"), 1, true), &payload())
        .await
        .unwrap_err();
    assert_eq!(calls.of("/flaky/3").len(), 2);
    match &err {
        HookError::GaveUp { attempts: 2, last } => {
            assert!(
                matches!(**last, HookError::Status { status: 503, .. }),
                "{last:?}"
            )
        }
        other => panic!("expected GaveUp after 2 attempts, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 503") && msg.contains("warming up"),
        "{msg}"
    );
    assert!(msg.ends_with("(gave up after 2 attempts)"), "{msg}");

    // Without retries (the default), one attempt only.
    caller
        .call(&hook(server.url("/flaky/1"), 0, true), &payload())
        .await
        .unwrap_err();
    assert_eq!(calls.of("/flaky/1").len(), 1);
}

#[tokio::test]
async fn only_failures_another_attempt_may_fix_are_retried() {
    let (server, calls) = https_receiver().await;
    let caller = WebhookCaller::new().unwrap();
    // A 4xx is the hook's verdict: not retried.
    let started = Instant::now();
    let err = caller
        .call(&hook(server.url("/bad"), 3, true), &payload())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HookError::Status { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(calls.of("/bad").len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no backoff wait"
    );

    // 429 with Retry-After: the server's wait is used instead of the 1s backoff.
    caller
        .call(&hook(server.url("/throttle"), 1, true), &payload())
        .await
        .unwrap();
    let times = calls.of("/throttle");
    assert_eq!(times.len(), 2);
    assert!(
        gaps(&times)[0] >= Duration::from_secs(2),
        "{:?}",
        gaps(&times)
    );
}

#[tokio::test]
async fn each_attempt_has_the_whole_timeout() {
    let hanging = HangingServer::start().await;
    let caller = WebhookCaller::new().unwrap();
    let mut slow = hook(format!("http://{}/", hanging.addr), 1, false);
    slow.timeout = Some(Duration::from_millis(300));
    let started = Instant::now();
    let err = caller.call(&slow, &payload()).await.unwrap_err();
    let took = started.elapsed();
    match &err {
        HookError::GaveUp { attempts: 2, last } => {
            assert!(matches!(**last, HookError::Timeout { .. }), "{last:?}")
        }
        other => panic!("expected GaveUp after 2 attempts, got {other:?}"),
    }
    // 300ms, the 1s backoff, 300ms.
    assert!(took >= Duration::from_millis(1600), "took {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(slow.worst_case(), Duration::from_millis(1600));
}

#[tokio::test]
async fn disable_tls_skips_verification_for_that_hook_only() {
    let (server, calls) = https_receiver().await;
    let caller = WebhookCaller::new().unwrap();
    let verified = hook(server.url("/flaky/0"), 3, false);
    let not_verified = hook(server.url("/flaky/0"), 0, true);

    // The self-signed certificate does not verify: a final failure (no retry, no backoff)
    // that says which field skips verification. The receiver saw no request.
    let started = Instant::now();
    let err = caller.call(&verified, &payload()).await.unwrap_err();
    assert!(matches!(err, HookError::Certificate { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("certificate does not verify"), "{msg}");
    assert!(msg.contains("set disableTLS: true"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(1), "not retried");
    assert!(calls.of("/flaky/0").is_empty());

    // disableTLS on this hook: the same server answers.
    caller.call(&not_verified, &payload()).await.unwrap();
    assert_eq!(calls.of("/flaky/0").len(), 1);

    // ... and only on this hook: the same caller still verifies the other one.
    let err = caller.call(&verified, &payload()).await.unwrap_err();
    assert!(matches!(err, HookError::Certificate { .. }), "{err:?}");
    assert_eq!(calls.of("/flaky/0").len(), 1);
}

/// The fields from a Canary's YAML through the real controller: a pre-rollout hook on a
/// self-signed HTTPS receiver that fails its first call. With `disableTLS` and `retries: 1`
/// the pass succeeds within the one call: no failed check, and the weight moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_calls_hooks_with_their_retries_and_disable_tls() {
    let (server, calls) = https_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    let analysis = format!(
        "{QUICK_ANALYSIS}    webhooks:\n      - name: smoke\n        type: pre-rollout\n        url: {}\n        retries: 1\n        disableTLS: true\n",
        server.url("/flaky/1")
    );
    write_spec(&canaries, "app.yaml", &canary_yaml("app", &analysis));
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", dir.path().join("state.json").display()),
    ];
    let c = Controller::start(&args, dir.path().join("controller.log")).await;
    c.revision("test/app", "v1").await;
    c.revision("test/app", "v2").await;
    let status = veer_testkit::poll_until_async(
        "the canary to take its first step",
        Duration::from_secs(30),
        support::POLL,
        || async {
            let s = c.canary("test/app").await;
            if s["weight"].as_u64().unwrap_or(0) >= 10 {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status["failedChecks"], 0, "{status}");
    assert_eq!(calls.of("/flaky/1").len(), 2, "one call, two attempts");
    let log = c.log_text();
    assert!(
        !log.contains("disableTLS"),
        "no warning about the field: {log}"
    );
}
