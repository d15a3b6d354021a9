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
    let port = support::free_port().unwrap();
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

/// How large a body the counting receiver offers: far more than any bound below.
const HUGE_BODY: usize = 20 * 1024 * 1024;
/// The receiver's send buffer, set explicitly so the kernel does not grow it (autotuning
/// could otherwise park megabytes of the body in the receiver's own socket).
const RECEIVER_SNDBUF: libc::c_int = 32 * 1024;

/// A one-request HTTP receiver on a plain socket: it answers `status_line` with a
/// `HUGE_BODY`-byte body written in 16 KiB pieces, and returns how many body bytes the kernel
/// took from it before the client went away, with its send buffer's real size.
fn counting_receiver(
    status_line: &'static str,
) -> (String, std::thread::JoinHandle<(usize, usize)>) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let fd = stream.as_raw_fd();
        let mut sndbuf = RECEIVER_SNDBUF;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: fd is this stream's open socket; the option values are live c_ints.
        unsafe {
            let set = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&sndbuf as *const libc::c_int).cast(),
                len,
            );
            assert_eq!(set, 0, "setsockopt SO_SNDBUF");
            let got = libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut sndbuf as *mut libc::c_int).cast(),
                &mut len,
            );
            assert_eq!(got, 0, "getsockopt SO_SNDBUF");
        }
        // A client that stopped reading but kept the connection would block the writes: the
        // timeout ends the count then (the bound is checked all the same).
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The request: its head, then Content-Length bytes of payload.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the client closed before sending its request");
            request.extend_from_slice(&buf[..n]);
            if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while request.len() < head_end + length {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the client closed inside its request body");
            request.extend_from_slice(&buf[..n]);
        }
        write!(
            stream,
            "HTTP/1.1 {status_line}\r\ncontent-type: text/plain\r\ncontent-length: {HUGE_BODY}\r\n\r\n"
        )
        .unwrap();
        let piece = [b'x'; 16 * 1024];
        let mut sent = 0;
        while sent < HUGE_BODY {
            match stream.write(&piece[..piece.len().min(HUGE_BODY - sent)]) {
                Ok(0) | Err(_) => break, // the client is gone (EPIPE, ECONNRESET) or stalled
                Ok(n) => sent += n,
            }
        }
        (sent, usize::try_from(sndbuf).unwrap())
    });
    (url, handle)
}

/// The body is read only up to the cap, measured on the wire: the receiver counts the bytes
/// it could hand to its kernel before the client closed. A client that read everything and
/// truncated afterwards would take all 20 MiB.
#[tokio::test]
async fn huge_bodies_are_read_only_up_to_the_cap() {
    use veer_controller::checks::webhooks::MAX_HOOK_RESPONSE_BYTES;
    let caller = WebhookCaller::new().unwrap();
    let payload = canary().payload(BTreeMap::new());
    // What may leave the receiver's process without the client reading past the cap: the
    // cap; the client's own read-ahead (hyper reads the socket in pieces of up to its
    // buffer's limit, 8 KiB + 400 KiB); the client's socket receive buffer, which starts at
    // tcp_rmem's default and which the kernel grows only while the application drains it
    // (it stops at the cap), so at most twice that; and the receiver's send buffer as the
    // kernel reports it. Measured here: 288,256 bytes against a bound of 811,008 (64 KiB
    // + 408 KiB + 2 x 128 KiB + 64 KiB), where a client that read it all would take 20 MiB.
    let rmem_default: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hyper_read_ahead = 8 * 1024 + 400 * 1024;
    for (status_line, passes) in [("200 OK", true), ("400 Bad Request", false)] {
        let (url, receiver) = counting_receiver(status_line);
        let answer = caller
            .call(&hook_at("big", &url, Duration::from_secs(5)), &payload)
            .await;
        assert_eq!(answer.is_ok(), passes, "{status_line}: {answer:?}");
        let (sent, sndbuf) = tokio::task::spawn_blocking(move || receiver.join().unwrap())
            .await
            .unwrap();
        let bound = MAX_HOOK_RESPONSE_BYTES + hyper_read_ahead + 2 * rmem_default + sndbuf;
        eprintln!(
            "{status_line}: the receiver sent {sent} body bytes before the client went away \
             (bound {bound}: cap {MAX_HOOK_RESPONSE_BYTES} + read-ahead {hyper_read_ahead} + \
             2 x rmem {rmem_default} + sndbuf {sndbuf})"
        );
        assert!(
            sent >= MAX_HOOK_RESPONSE_BYTES,
            "{status_line}: the client stopped before the cap ({sent} bytes)"
        );
        assert!(
            sent <= bound && bound < HUGE_BODY / 10,
            "{status_line}: {sent} bytes left the receiver; the client reads at most {bound}"
        );
    }
    // The error of a failing hook quotes only an excerpt of the body.
    let (server, _rec) = hook_server().await;
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
