#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The controller's HTTP API, served for real on a local port: the long-polled table,
//! gateway confirmations, auth on writes, request limits, the canary endpoints over a
//! fake runner, `/metrics` and graceful shutdown.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::POLL;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veer_controller::serve::api::{self, CanaryControl, Command, CommandError, ServerState};
use veer_controller::serve::table_hub::TableHub;
use veer_core::Route;
use veer_testkit::poll_until_async;

const TOKEN: &str = "s3cret-token-for-tests";

/// A runner stand-in: two canaries, records commands.
#[derive(Default)]
struct FakeRunner {
    commands: Mutex<Vec<(String, String, Command)>>,
}

impl CanaryControl for FakeRunner {
    fn list(&self) -> Result<Value, CommandError> {
        Ok(
            json!([{"name": "test/podinfo", "phase": "Progressing", "weight": 10}, {"name": "test/busy"}]),
        )
    }
    fn get(&self, ns: &str, name: &str) -> Result<Option<Value>, CommandError> {
        Ok((ns == "test" && name == "podinfo")
            .then(|| json!({"name": "test/podinfo", "phase": "Progressing", "weight": 10})))
    }
    fn command(&self, ns: &str, name: &str, cmd: Command) -> Result<Value, CommandError> {
        match (ns, name) {
            ("test", "podinfo") => {
                if cmd == Command::Revision("rejected".into()) {
                    return Err(CommandError::Invalid(
                        "revision \"rejected\" is not allowed".into(),
                    ));
                }
                self.commands
                    .lock()
                    .unwrap()
                    .push((ns.into(), name.into(), cmd.clone()));
                Ok(json!({"accepted": format!("{cmd:?}")}))
            }
            ("test", "busy") => Err(CommandError::Conflict("test/busy is Promoting".into())),
            ("test", "stuck") => Err(CommandError::Unavailable(
                "cannot write state file /var/lib/veer/state.json".into(),
            )),
            _ => Err(CommandError::NotFound(format!("no canary {ns}/{name}"))),
        }
    }
    fn metrics_text(&self) -> String {
        "# TYPE veer_canary_weight gauge\nveer_canary_weight{canary=\"test/podinfo\"} 10\n# EOF\n"
            .to_string()
    }
}

struct Running {
    addr: SocketAddr,
    hub: Arc<TableHub>,
    runner: Arc<FakeRunner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    http: reqwest::Client,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn metrics_text(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// A long poll is held by the server once the hub has a waiter.
    async fn wait_until_one_poll_waits(&self) {
        let hub = self.hub.clone();
        poll_until_async(
            "the long-poll to be waiting",
            Duration::from_secs(5),
            POLL,
            || {
                let hub = hub.clone();
                async move {
                    (hub.waiting() == 1)
                        .then_some(())
                        .ok_or_else(|| "no waiter yet".to_string())
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

async fn start(token: Option<&str>) -> Running {
    let hub = Arc::new(TableHub::new(0));
    let runner = Arc::new(FakeRunner::default());
    let state = ServerState::new(
        hub.clone(),
        runner.clone(),
        Registry::default(),
        token.map(String::from),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let close_hub = hub.clone();
    let served = tokio::spawn(api::serve(listener, api::router(state), async move {
        let _ = stopped.await;
        close_hub.close();
    }));
    Running {
        addr,
        hub,
        runner,
        stop: Some(stop),
        served,
        http: reqwest::Client::new(),
    }
}

fn route(weight: u32) -> Route {
    serde_json::from_value(json!({
        "name": "test/podinfo", "hosts": ["app.example.com"], "weight": weight, "revision": "r1"
    }))
    .unwrap()
}

#[tokio::test]
async fn long_poll_answers_304_after_wait_ms_when_unchanged() {
    let s = start(None).await;
    assert_eq!(s.hub.publish(vec![route(0)]), 1);
    let started = Instant::now();
    let r = s.get("/v1/table?after=1&waitMs=300").await;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "took {took:?}"
    );
}

#[tokio::test]
async fn long_poll_answers_at_once_when_a_newer_table_exists() {
    let s = start(None).await;
    s.hub.publish(vec![route(1000)]);
    let started = Instant::now();
    let r = s.get("/v1/table?after=0&waitMs=10000").await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let table: Value = r.json().await.unwrap();
    assert_eq!(table["generation"], 1);
    assert_eq!(table["routes"][0]["name"], "test/podinfo");
    assert_eq!(table["routes"][0]["weight"], 1000);
}

#[tokio::test]
async fn nothing_is_served_before_the_first_publish() {
    let s = start(None).await;
    let r = s.get("/v1/table?after=0&waitMs=100").await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = s.get("/v1/table").await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn a_publish_wakes_a_waiting_poll_within_100ms() {
    let s = start(None).await;
    s.hub.publish(vec![route(0)]);
    let poll = {
        let http = s.http.clone();
        let url = s.url("/v1/table?after=1&waitMs=20000");
        tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (Instant::now(), r.status(), r.json::<Value>().await.unwrap())
        })
    };
    s.wait_until_one_poll_waits().await;
    let published = Instant::now();
    assert_eq!(s.hub.publish(vec![route(2000)]), 2);
    let (answered, status, table) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    let latency = answered - published;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(table["generation"], 2);
    assert_eq!(table["routes"][0]["weight"], 2000);
    assert!(
        latency < Duration::from_millis(100),
        "woke after {latency:?}"
    );
}

#[tokio::test]
async fn gateway_confirmations_are_recorded_and_exported() {
    let s = start(None).await;
    s.hub.publish(vec![route(0)]);
    s.hub.publish(vec![route(500)]);
    let r = s
        .http
        .get(s.url("/v1/table?after=1&waitMs=0"))
        .header("x-veer-gateway", "ingressgateway-7d9f~10.0.0.7")
        .header("x-veer-generation", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = s.hub.gateways();
    assert_eq!(seen["ingressgateway-7d9f~10.0.0.7"].generation, 1);

    let metrics = s.metrics_text().await;
    assert!(metrics.contains("veer_table_generation 2"), "{metrics}");
    assert!(metrics.contains("veer_table_gateways 1"), "{metrics}");
    assert!(
        metrics.contains("veer_table_gateways_behind 1"),
        "{metrics}"
    );

    // The gateway applies generation 2 and says so on its next poll.
    s.http
        .get(s.url("/v1/table?after=2&waitMs=0"))
        .header("x-veer-gateway", "ingressgateway-7d9f~10.0.0.7")
        .header("x-veer-generation", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.hub.gateways()["ingressgateway-7d9f~10.0.0.7"].generation,
        2
    );
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains("veer_table_gateways_behind 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_query_parameters_are_named() {
    let s = start(None).await;
    let r = s.get("/v1/table?after=-1").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("after=\"-1\""),
        "{body}"
    );
    let r = s.get("/v1/table?after=0&waitMs=soon").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("waitMs"), "{body}");
}

#[tokio::test]
async fn writes_need_the_token_and_reads_do_not() {
    let s = start(Some(TOKEN)).await;
    let promote = s.url("/v1/canaries/test/podinfo/promote");

    let r = s.http.post(&promote).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body = r.text().await.unwrap();
    assert!(!body.contains(TOKEN), "the token is never echoed");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());

    let r = s
        .http
        .post(&promote)
        .bearer_auth("wrong-token-for-tests!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .http
        .post(&promote)
        .header("authorization", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the Bearer scheme is required"
    );
    assert!(s.runner.commands.lock().unwrap().is_empty());

    let r = s
        .http
        .post(&promote)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.runner.commands.lock().unwrap().len(), 1);

    for path in [
        "/v1/canaries",
        "/v1/canaries/test/podinfo",
        "/metrics",
        "/healthz",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    s.hub.publish(vec![]);
    let r = s.get("/v1/table").await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_a_token_writes_are_open() {
    let s = start(None).await;
    let r = s
        .http
        .post(s.url("/v1/canaries/test/podinfo/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn huge_bodies_get_413() {
    let s = start(Some(TOKEN)).await;
    let huge = format!("{{\"revision\": \"{}\"}}", "a".repeat(100 * 1024));
    let r = s
        .http
        .post(s.url("/v1/canaries/test/podinfo/revision"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("65536"), "{body}");

    // Chunked, so no Content-Length announces the size: the limit applies while reading.
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/canaries/test/podinfo/revision HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        let chunk = "b".repeat(32 * 1024);
        // The server may stop reading once the limit is hit; a write error is fine.
        if conn
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(s.runner.commands.lock().unwrap().is_empty());
}

#[tokio::test]
async fn canary_endpoints_go_through_the_runner() {
    let s = start(Some(TOKEN)).await;
    let list: Value = s.get("/v1/canaries").await.json().await.unwrap();
    assert_eq!(list[0]["name"], "test/podinfo");
    let one: Value = s
        .get("/v1/canaries/test/podinfo")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["weight"], 10);
    let r = s.get("/v1/canaries/test/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "no canary test/nope"
    );

    let post = |path: &str, body: Option<Value>| {
        let mut req = s.http.post(s.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let r = post(
        "/v1/canaries/test/podinfo/revision",
        Some(json!({"revision": "7f9c2ba"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for action in ["promote", "rollback", "pause", "resume"] {
        let r = post(&format!("/v1/canaries/test/podinfo/{action}"), None)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{action}");
    }
    let cmds: Vec<Command> = s
        .runner
        .commands
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, c)| c.clone())
        .collect();
    assert_eq!(
        cmds,
        vec![
            Command::Revision("7f9c2ba".into()),
            Command::Promote,
            Command::Rollback,
            Command::Pause,
            Command::Resume
        ]
    );

    let cases: [(&str, Option<Value>, StatusCode, &str); 8] = [
        (
            "/v1/canaries/test/stuck/pause",
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            "state file",
        ),
        (
            "/v1/canaries/test/busy/promote",
            None,
            StatusCode::CONFLICT,
            "Promoting",
        ),
        (
            "/v1/canaries/test/ghost/promote",
            None,
            StatusCode::NOT_FOUND,
            "no canary test/ghost",
        ),
        (
            "/v1/canaries/test/podinfo/revision",
            Some(json!({"revision": "rejected"})),
            StatusCode::BAD_REQUEST,
            "not allowed",
        ),
        (
            "/v1/canaries/test/podinfo/revision",
            Some(json!({"revision": "  "})),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "/v1/canaries/test/podinfo/revision",
            Some(json!({"rev": "x"})),
            StatusCode::BAD_REQUEST,
            "unknown field `rev`",
        ),
        (
            "/v1/canaries/test/podinfo/revision",
            None,
            StatusCode::BAD_REQUEST,
            "{\"revision\"",
        ),
        (
            "/v1/canaries/test/podinfo/explode",
            None,
            StatusCode::NOT_FOUND,
            "unknown action \"explode\"",
        ),
    ];
    for (path, body, status, needle) in cases {
        let r = post(path, body.clone()).await.unwrap();
        assert_eq!(r.status(), status, "{path} {body:?}");
        let err: Value = r.json().await.unwrap();
        let msg = err["error"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{path}: {msg:?} should contain {needle:?}"
        );
    }
    assert_eq!(
        s.runner.commands.lock().unwrap().len(),
        5,
        "refused commands are not recorded"
    );
}

#[tokio::test]
async fn metrics_merge_the_runner_text_into_one_openmetrics_document() {
    let s = start(None).await;
    s.hub.publish(vec![route(0)]);
    let r = s.get("/metrics").await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE veer_table_generation gauge\n"),
        "{text}"
    );
    assert!(text.contains("veer_table_generation 1\n"), "{text}");
    assert!(
        text.contains("veer_canary_weight{canary=\"test/podinfo\"} 10\n"),
        "{text}"
    );
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let health = s.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn shutdown_ends_pending_long_polls_at_once() {
    let mut s = start(None).await;
    s.hub.publish(vec![route(0)]);
    let poll = {
        let http = s.http.clone();
        let url = s.url("/v1/table?after=1&waitMs=60000");
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) })
    };
    s.wait_until_one_poll_waits().await;
    let started = Instant::now();
    s.stop.take().unwrap().send(()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    tokio::time::timeout(Duration::from_secs(5), &mut s.served)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let s = start(Some(TOKEN)).await;
    // Headers that never finish: the connection is closed after the header timeout.
    let mut slow_headers = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    slow_headers
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A body that never arrives: 408 after the body timeout.
    let mut slow_body = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/canaries/test/podinfo/revision HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"rev"
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();

    let started = Instant::now();
    let limit = api::HEADER_READ_TIMEOUT.max(api::BODY_READ_TIMEOUT) + Duration::from_secs(5);
    let (headers_answer, body_answer) = tokio::join!(
        async {
            let mut buf = Vec::new();
            tokio::time::timeout(limit, slow_headers.read_to_end(&mut buf))
                .await
                .map(|_| buf)
        },
        async {
            let mut buf = vec![0u8; 4096];
            tokio::time::timeout(limit, slow_body.read(&mut buf))
                .await
                .map(|n| {
                    buf.truncate(n.unwrap_or(0));
                    buf
                })
        }
    );
    let headers_answer = headers_answer.expect("connection with unfinished headers closed");
    assert!(
        !String::from_utf8_lossy(&headers_answer).contains("200 OK"),
        "no answer to an unfinished request"
    );
    let body_answer =
        String::from_utf8_lossy(&body_answer.expect("slow body answered")).into_owned();
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    assert!(started.elapsed() >= api::BODY_READ_TIMEOUT.min(api::HEADER_READ_TIMEOUT));
    assert!(s.runner.commands.lock().unwrap().is_empty());
}
