//! The controller's one HTTP listener: the long-polled routing table for gateways
//! (`GET /v1/table`), the canary API the CLI uses, `/metrics` and `/healthz`.
//!
//! Reads need no credentials (the table never holds secrets); writes need
//! `Authorization: Bearer <token>` when a token is configured. Slow or oversized clients
//! are cut off: headers must arrive within [`HEADER_READ_TIMEOUT`], a request body within
//! [`BODY_READ_TIMEOUT`] and at most [`MAX_BODY_BYTES`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use veer_core::{GATEWAY_GENERATION_HEADER, GATEWAY_ID_HEADER};

use crate::serve::table_hub::TableHub;

/// The largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request headers before the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body (408 beyond).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A manual operation on one canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start a run for this revision (local mode's trigger).
    Revision(String),
    Promote,
    Rollback,
    Pause,
    Resume,
}

/// Why a canary command was refused; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No such canary (404).
    #[error("{0}")]
    NotFound(String),
    /// The canary's state does not allow it now (409).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// The controller cannot apply it now, e.g. the state file cannot be written (503).
    #[error("{0}")]
    Unavailable(String),
}

impl CommandError {
    fn status(&self) -> StatusCode {
        match self {
            CommandError::NotFound(_) => StatusCode::NOT_FOUND,
            CommandError::Conflict(_) => StatusCode::CONFLICT,
            CommandError::Invalid(_) => StatusCode::BAD_REQUEST,
            CommandError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What the server needs from the canary runner. Calls are short and synchronous: the
/// runner answers from its in-memory state and queues commands for its analysis loop.
pub trait CanaryControl: Send + Sync + 'static {
    /// All canaries, as the JSON `GET /v1/canaries` returns; `Err` when this replica
    /// cannot answer (a follower: the leader runs the canaries).
    fn list(&self) -> Result<serde_json::Value, CommandError>;
    /// One canary, or `None` if there is none by that name.
    fn get(&self, namespace: &str, name: &str) -> Result<Option<serde_json::Value>, CommandError>;
    /// Applies a manual command; the JSON is the answer body.
    fn command(
        &self,
        namespace: &str,
        name: &str,
        cmd: Command,
    ) -> Result<serde_json::Value, CommandError>;
    /// Extra metric families for `/metrics`, in OpenMetrics text without the final
    /// `# EOF` (metrics registered in the shared [`Registry`] need not appear here).
    fn metrics_text(&self) -> String;
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct ServerState {
    hub: Arc<TableHub>,
    control: Arc<dyn CanaryControl>,
    registry: Arc<Registry>,
    write_token: Option<Arc<str>>,
}

impl ServerState {
    /// `registry` is the process's one metrics registry: the runner registers its metrics
    /// into it first; this adds the table generation and gateway gauges. `write_token`
    /// `None` leaves writes open (for local use only).
    pub fn new(
        hub: Arc<TableHub>,
        control: Arc<dyn CanaryControl>,
        mut registry: Registry,
        write_token: Option<String>,
    ) -> ServerState {
        registry.register_collector(Box::new(TableMetrics { hub: hub.clone() }));
        ServerState {
            hub,
            control,
            registry: Arc::new(registry),
            write_token: write_token.map(Arc::from),
        }
    }

    pub fn hub(&self) -> &Arc<TableHub> {
        &self.hub
    }
}

/// Reads the hub at scrape time, so the gauges cannot disagree with what is served.
#[derive(Debug)]
struct TableMetrics {
    hub: Arc<TableHub>,
}

impl Collector for TableMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let generation = i64::try_from(self.hub.generation()).unwrap_or(i64::MAX);
        let gauge = ConstGauge::new(generation);
        gauge.encode(encoder.encode_descriptor(
            "veer_table_generation",
            "Generation of the routing table the controller serves",
            None,
            gauge.metric_type(),
        )?)?;
        let gateways = self.hub.gateways();
        let count = ConstGauge::new(i64::try_from(gateways.len()).unwrap_or(i64::MAX));
        count.encode(encoder.encode_descriptor(
            "veer_table_gateways",
            "Gateways that fetched the table and are remembered",
            None,
            count.metric_type(),
        )?)?;
        let current = self.hub.generation();
        let behind = gateways
            .values()
            .filter(|seen| seen.generation < current)
            .count();
        let behind = ConstGauge::new(i64::try_from(behind).unwrap_or(i64::MAX));
        behind.encode(encoder.encode_descriptor(
            "veer_table_gateways_behind",
            "Remembered gateways whose last confirmed generation is older than the served one",
            None,
            behind.metric_type(),
        )?)?;
        let waiting = ConstGauge::new(i64::try_from(self.hub.waiting()).unwrap_or(i64::MAX));
        waiting.encode(encoder.encode_descriptor(
            "veer_table_long_polls",
            "Table long-polls currently held open",
            None,
            waiting.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The API's routes over `state`.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/v1/table", get(get_table))
        .route("/v1/canaries", get(list_canaries))
        .route("/v1/canaries/{ns}/{name}", get(get_canary))
        .route("/v1/canaries/{ns}/{name}/{action}", post(post_command))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests
/// finish. Pending long-polls end at once only if the hub is closed
/// ([`TableHub::close`]), so do that in `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection errors (e.g. the peer reset before accept, or
                    // too many open files) must not end the server.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// An API error: the status and the `{"error": "..."}` body every failure answers with.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn api_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    api_error(status, message).into_response()
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parses an optional unsigned query parameter, naming it when it is malformed.
fn query_u64(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    query
        .get(name)
        .map(|raw| {
            raw.parse::<u64>().map_err(|_| {
                api_error(
                    StatusCode::BAD_REQUEST,
                    format!("query parameter {name}={raw:?} is not a non-negative integer"),
                )
            })
        })
        .transpose()
}

async fn get_table(
    State(state): State<ServerState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (after, wait_ms) = match (query_u64(&query, "after"), query_u64(&query, "waitMs")) {
        (Ok(after), Ok(wait_ms)) => (after, wait_ms.unwrap_or(0)),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    if let Some(gateway) = header_str(&headers, GATEWAY_ID_HEADER) {
        let applied = header_str(&headers, GATEWAY_GENERATION_HEADER)
            .and_then(|g| g.parse::<u64>().ok())
            .or(after);
        if let Some(applied) = applied {
            if !state.hub.record_gateway(gateway, applied) {
                tracing::debug!("ignored a malformed {GATEWAY_ID_HEADER} header");
            }
        }
    }
    // Without `after` the caller wants whatever is current (CLI, debugging).
    let after_generation = after.unwrap_or(0);
    let wait = if after.is_some() {
        Duration::from_millis(wait_ms)
    } else {
        Duration::ZERO
    };
    match state.hub.wait_newer(after_generation, wait).await {
        // The JSON was encoded once, when this generation was published; every gateway
        // fetching it shares those bytes.
        Some(published) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            published.json().clone(),
        )
            .into_response(),
        None => StatusCode::NOT_MODIFIED.into_response(),
    }
}

async fn list_canaries(State(state): State<ServerState>) -> Response {
    match state.control.list() {
        Ok(list) => Json(list).into_response(),
        Err(e) => error_response(e.status(), e.to_string()),
    }
}

async fn get_canary(
    State(state): State<ServerState>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match state.control.get(&ns, &name) {
        Ok(Some(canary)) => Json(canary).into_response(),
        Ok(None) => error_response(StatusCode::NOT_FOUND, format!("no canary {ns}/{name}")),
        Err(e) => error_response(e.status(), e.to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionBody {
    revision: String,
}

async fn post_command(
    State(state): State<ServerState>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let body = match read_body(&headers, body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let cmd = match action.as_str() {
        "revision" => match serde_json::from_slice::<RevisionBody>(&body) {
            Ok(RevisionBody { revision }) if revision.trim().is_empty() => {
                return error_response(StatusCode::BAD_REQUEST, "\"revision\" is empty")
            }
            Ok(RevisionBody { revision }) => Command::Revision(revision),
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("body must be {{\"revision\": \"...\"}}: {e}"),
                )
            }
        },
        "promote" => Command::Promote,
        "rollback" => Command::Rollback,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        other => {
            return error_response(
                StatusCode::NOT_FOUND,
                format!(
                "unknown action {other:?}: expected revision, promote, rollback, pause or resume"
            ),
            )
        }
    };
    match state.control.command(&ns, &name, cmd) {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => error_response(e.status(), e.to_string()),
    }
}

/// Checks the bearer token of a write. The token is never logged or echoed.
fn authorize(state: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.write_token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(token) if constant_time_eq(token, expected.as_bytes()) => Ok(()),
        _ => Err(api_error(
            StatusCode::UNAUTHORIZED,
            "this write needs \"Authorization: Bearer <token>\" with the controller's token",
        )),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Reads a request body within [`MAX_BODY_BYTES`] and [`BODY_READ_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared =
        header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|l| l.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    let collected =
        tokio::time::timeout(BODY_READ_TIMEOUT, http_body_util::BodyExt::collect(limited)).await;
    match collected {
        Err(_) => Err(api_error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {}",
                humantime::format_duration(BODY_READ_TIMEOUT)
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

async fn get_metrics(State(state): State<ServerState>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut text, &state.registry) {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        );
    }
    let extra = state.control.metrics_text();
    let extra = extra.trim_end();
    let extra = extra.strip_suffix("# EOF").unwrap_or(extra).trim_end();
    if !extra.is_empty() {
        text.push_str(extra);
        text.push('\n');
    }
    text.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use veer_core::{Route, RoutingTable};

    struct NoCanaries;

    impl CanaryControl for NoCanaries {
        fn list(&self) -> Result<serde_json::Value, CommandError> {
            Ok(json!([]))
        }
        fn get(&self, _: &str, _: &str) -> Result<Option<serde_json::Value>, CommandError> {
            Ok(None)
        }
        fn command(
            &self,
            ns: &str,
            name: &str,
            _: Command,
        ) -> Result<serde_json::Value, CommandError> {
            Err(CommandError::NotFound(format!("no canary {ns}/{name}")))
        }
        fn metrics_text(&self) -> String {
            String::new()
        }
    }

    fn route(name: &str, weight: u32) -> Route {
        serde_json::from_value(
            json!({"name": name, "hosts": [format!("{name}.example")], "weight": weight}),
        )
        .unwrap()
    }

    /// The bytes served are the current generation's table, for every generation: the JSON
    /// kept next to the table must never lag behind it or belong to another generation.
    #[tokio::test]
    async fn the_table_is_served_as_the_json_of_the_current_generation() {
        let hub = Arc::new(TableHub::new(0));
        let state = ServerState::new(hub.clone(), Arc::new(NoCanaries), Registry::default(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let close_hub = hub.clone();
        let served = tokio::spawn(serve(listener, router(state), async move {
            let _ = stopped.await;
            close_hub.close();
        }));
        let http = reqwest::Client::new();
        for (step, weight) in [0, 10, 500, 1000].into_iter().enumerate() {
            let mut routes = vec![route("a/one", weight), route("b/two", 1000 - weight)];
            routes.truncate(1 + step % 2);
            let generation = hub.publish(routes.clone());
            let after = generation - 1;
            for query in [format!("?after={after}&waitMs=5000"), String::new()] {
                let response = http
                    .get(format!("http://{addr}/v1/table{query}"))
                    .header(GATEWAY_ID_HEADER, "gw-1")
                    .header(GATEWAY_GENERATION_HEADER, after.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.headers()["content-type"], "application/json");
                assert_eq!(response.headers()["cache-control"], "no-store");
                let body = response.bytes().await.unwrap();
                let table: RoutingTable = serde_json::from_slice(&body).unwrap();
                assert_eq!(
                    table,
                    RoutingTable {
                        generation,
                        routes: routes.clone()
                    }
                );
                assert_eq!(table, hub.current());
            }
            assert_eq!(hub.gateways()["gw-1"].generation, after);
        }
        let unchanged = http
            .get(format!(
                "http://{addr}/v1/table?after={}&waitMs=50",
                hub.generation()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
