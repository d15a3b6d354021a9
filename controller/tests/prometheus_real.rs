#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The metric checks against a real Prometheus scraping a real exporter, plus the ways a
//! Prometheus can fail (down, hanging, answering HTML).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::http::{HangingServer, TestServer};
use support::prometheus::{Exporter, Prometheus};
use support::POLL;
use veer_controller::checks::prometheus::{
    builtin_query, BuiltinMetric, MetricError, MetricsSet, PrometheusClient, QueryVars,
    ThresholdRange,
};
use veer_testkit::poll_until_async;

/// Per-second rates of one route/variant and where its latencies fall.
struct Traffic {
    route: &'static str,
    variant: &'static str,
    ok_per_s: f64,
    errors_per_s: f64,
    /// Cumulative share of observations at or below each bucket bound (ms).
    buckets: &'static [(f64, f64)],
}

const FAST: &[(f64, f64)] = &[
    (5.0, 0.5),
    (10.0, 0.9),
    (25.0, 1.0),
    (50.0, 1.0),
    (1000.0, 1.0),
];
const SLOW: &[(f64, f64)] = &[
    (5.0, 0.0),
    (10.0, 0.0),
    (25.0, 0.0),
    (50.0, 0.0),
    (1000.0, 1.0),
];

const TRAFFIC: &[Traffic] = &[
    // Passing canary; its primary fails a lot, which a canary query must not see.
    Traffic {
        route: "test/podinfo",
        variant: "canary",
        ok_per_s: 100.0,
        errors_per_s: 0.0,
        buckets: FAST,
    },
    Traffic {
        route: "test/podinfo",
        variant: "primary",
        ok_per_s: 50.0,
        errors_per_s: 50.0,
        buckets: SLOW,
    },
    // Failing canary: 10% 5xx and slow.
    Traffic {
        route: "test/failing",
        variant: "canary",
        ok_per_s: 90.0,
        errors_per_s: 10.0,
        buckets: SLOW,
    },
    // Series exist but never move: rate 0/0 is NaN.
    Traffic {
        route: "test/idle",
        variant: "canary",
        ok_per_s: 0.0,
        errors_per_s: 0.0,
        buckets: FAST,
    },
];

/// The filter's stats as Prometheus sees them (the names the filter contract fixes),
/// with counters that grow linearly from the exporter's start.
fn render(start: Instant) -> String {
    let t = start.elapsed().as_secs_f64() + 1.0;
    let mut out = String::new();
    out.push_str("# TYPE veer_responses_total counter\n");
    for tr in TRAFFIC {
        for (class, per_s) in [("2xx", tr.ok_per_s), ("5xx", tr.errors_per_s)] {
            writeln!(
                out,
                "veer_responses_total{{veer_route=\"{}\",veer_variant=\"{}\",veer_class=\"{class}\"}} {}",
                tr.route,
                tr.variant,
                (per_s * t).floor()
            )
            .unwrap();
        }
    }
    out.push_str("# TYPE veer_request_duration_ms histogram\n");
    for tr in TRAFFIC {
        let count = ((tr.ok_per_s + tr.errors_per_s) * t).floor();
        let labels = format!(
            "veer_route=\"{}\",veer_variant=\"{}\"",
            tr.route, tr.variant
        );
        for (le, share) in tr.buckets {
            writeln!(
                out,
                "veer_request_duration_ms_bucket{{{labels},le=\"{le}\"}} {}",
                (count * share).floor()
            )
            .unwrap();
        }
        writeln!(
            out,
            "veer_request_duration_ms_bucket{{{labels},le=\"+Inf\"}} {count}"
        )
        .unwrap();
        writeln!(
            out,
            "veer_request_duration_ms_sum{{{labels}}} {}",
            count * 20.0
        )
        .unwrap();
        writeln!(out, "veer_request_duration_ms_count{{{labels}}} {count}").unwrap();
    }
    // Istio's standard metrics for the same picture: the canary workload `podinfo` at 99%,
    // its primary and the source-side reports failing (neither may count).
    out.push_str("# TYPE istio_requests_total counter\n");
    for (reporter, workload, code, per_s) in [
        ("destination", "podinfo", "200", 99.0),
        ("destination", "podinfo", "503", 1.0),
        ("destination", "podinfo-primary", "503", 50.0),
        ("source", "podinfo", "503", 50.0),
    ] {
        writeln!(
            out,
            "istio_requests_total{{reporter=\"{reporter}\",destination_workload_namespace=\"test\",\
             destination_workload=\"{workload}\",response_code=\"{code}\"}} {}",
            (per_s * t).floor()
        )
        .unwrap();
    }
    out.push_str("# TYPE istio_request_duration_milliseconds histogram\n");
    for (reporter, workload, buckets) in [
        ("destination", "podinfo", FAST),
        ("destination", "podinfo-primary", SLOW),
        ("source", "podinfo", SLOW),
    ] {
        let count = (100.0 * t).floor();
        let labels = format!(
            "reporter=\"{reporter}\",destination_workload_namespace=\"test\",destination_workload=\"{workload}\""
        );
        for (le, share) in buckets {
            writeln!(
                out,
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {}",
                (count * share).floor()
            )
            .unwrap();
        }
        writeln!(
            out,
            "istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        )
        .unwrap();
        writeln!(
            out,
            "istio_request_duration_milliseconds_count{{{labels}}} {count}"
        )
        .unwrap();
    }
    out
}

fn vars(namespace: &str, name: &str) -> QueryVars {
    QueryVars {
        name: name.into(),
        namespace: namespace.into(),
        target: name.into(),
        service: name.into(),
        ingress: name.into(),
        route: name.into(),
        interval: "10s".into(),
        variables: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_veer_and_istio_queries_against_real_prometheus() {
    let start = Instant::now();
    let exporter = Exporter::start(Arc::new(move || render(start))).await;
    let prometheus = Prometheus::start(&[exporter.addr]).await;
    let client = PrometheusClient::new(&prometheus.url).unwrap();

    let success = builtin_query(
        MetricsSet::Veer,
        BuiltinMetric::RequestSuccessRate,
        &vars("test", "podinfo"),
    );
    // Ready once the exporter is scraped and the 10s rate window holds two samples.
    let rate = poll_until_async(
        "the canary success rate in Prometheus",
        Duration::from_secs(40),
        POLL,
        || {
            let client = client.clone();
            let q = success.clone();
            async move { client.query_value(&q).await.map_err(|e| e.to_string()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let min99 = ThresholdRange {
        min: Some(99.0),
        max: None,
    };
    assert!((rate - 100.0).abs() < 1e-9, "canary has no 5xx, got {rate}");
    assert!(min99.contains(rate));

    let duration = builtin_query(
        MetricsSet::Veer,
        BuiltinMetric::RequestDuration,
        &vars("test", "podinfo"),
    );
    let p99 = poll_until_async("the canary p99", Duration::from_secs(20), POLL, || {
        let client = client.clone();
        let q = duration.clone();
        async move { client.query_value(&q).await.map_err(|e| e.to_string()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let max500 = ThresholdRange {
        min: None,
        max: Some(500.0),
    };
    assert!(
        (10.0..=25.0).contains(&p99),
        "p99 of the fast canary, got {p99}"
    );
    assert!(max500.contains(p99));

    // The failing canary: 10% 5xx is 90%, below min 99; its p99 is in the 50..1000 bucket.
    let failing_rate = client
        .query_value(&builtin_query(
            MetricsSet::Veer,
            BuiltinMetric::RequestSuccessRate,
            &vars("test", "failing"),
        ))
        .await
        .unwrap();
    assert!((failing_rate - 90.0).abs() < 1.0, "got {failing_rate}");
    assert!(!min99.contains(failing_rate));
    let failing_p99 = client
        .query_value(&builtin_query(
            MetricsSet::Veer,
            BuiltinMetric::RequestDuration,
            &vars("test", "failing"),
        ))
        .await
        .unwrap();
    assert!(
        failing_p99 > 500.0 && !max500.contains(failing_p99),
        "got {failing_p99}"
    );

    // No series at all for this canary: empty result, with the message that says why.
    let none = client
        .query_value(&builtin_query(
            MetricsSet::Veer,
            BuiltinMetric::RequestSuccessRate,
            &vars("test", "absent"),
        ))
        .await
        .unwrap_err();
    assert!(matches!(none, MetricError::NoValues { .. }), "{none:?}");
    assert!(
        none.to_string()
            .contains("no values found: is traffic reaching the canary?"),
        "{none}"
    );

    // Series exist but carry no traffic: 0/0.
    let idle = client
        .query_value(&builtin_query(
            MetricsSet::Veer,
            BuiltinMetric::RequestSuccessRate,
            &vars("test", "idle"),
        ))
        .await
        .unwrap_err();
    assert!(matches!(idle, MetricError::NaN { .. }), "{idle:?}");

    // An unaggregated custom query: several series, named in the error.
    let several_query = r#"rate(veer_responses_total{veer_route="test/podinfo"}[10s])"#;
    let several = client.query_value(several_query).await.unwrap_err();
    match &several {
        MetricError::SeveralSeries { count, query } => {
            assert_eq!(*count, 4);
            assert!(query.contains("veer_route=\"test/podinfo\""), "{query}");
        }
        other => panic!("expected SeveralSeries, got {other:?}"),
    }

    // Prometheus's own answers: a syntax error, a range vector, a scalar, a string.
    let bad = client
        .query_value("sum(rate(veer_responses_total[10s])")
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, MetricError::PrometheusError { error_type, .. } if error_type == "bad_data"),
        "{bad:?}"
    );
    let matrix = client
        .query_value("veer_responses_total[10s]")
        .await
        .unwrap_err();
    assert!(
        matches!(&matrix, MetricError::UnsupportedResultType { result_type, .. } if result_type == "matrix"),
        "{matrix:?}"
    );
    assert_eq!(
        client.query_value("scalar(vector(42))").await.unwrap(),
        42.0
    );
    let string = client.query_value("\"hello\"").await.unwrap_err();
    assert!(
        matches!(&string, MetricError::UnsupportedResultType { result_type, .. } if result_type == "string"),
        "{string:?}"
    );
    // The istio set (the seed's PromQL) over Istio's metric names.
    let istio_rate = client
        .query_value(&builtin_query(
            MetricsSet::Istio,
            BuiltinMetric::RequestSuccessRate,
            &vars("test", "podinfo"),
        ))
        .await
        .unwrap();
    assert!(
        (istio_rate - 99.0).abs() < 0.5,
        "istio success rate {istio_rate}"
    );
    let istio_p99 = client
        .query_value(&builtin_query(
            MetricsSet::Istio,
            BuiltinMetric::RequestDuration,
            &vars("test", "podinfo"),
        ))
        .await
        .unwrap();
    assert!((10.0..=25.0).contains(&istio_p99), "istio p99 {istio_p99}");
    drop(prometheus);
}

#[tokio::test]
async fn prometheus_down_is_a_transport_error() {
    // A port that was just free: nothing listens, so the connection is refused.
    let port = support::free_port().unwrap();
    let client = PrometheusClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let err = client.query_value("vector(1)").await.unwrap_err();
    assert!(matches!(err, MetricError::Transport { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
}

#[tokio::test]
async fn hanging_prometheus_times_out() {
    let hanging = HangingServer::start().await;
    let timeout = Duration::from_millis(500);
    let client = PrometheusClient::new(&format!("http://{}", hanging.addr))
        .unwrap()
        .with_timeout(timeout);
    let started = Instant::now();
    let err = client.query_value("vector(1)").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, MetricError::Timeout { after } if after == timeout),
        "{err:?}"
    );
    assert!(
        took >= timeout && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert!(err.to_string().contains("500ms"), "{err}");
}

#[tokio::test]
async fn default_timeout_is_five_seconds() {
    let hanging = HangingServer::start().await;
    let client = PrometheusClient::new(&format!("http://{}", hanging.addr)).unwrap();
    assert_eq!(client.timeout(), Duration::from_secs(5));
    let started = Instant::now();
    let err = client.query_value("vector(1)").await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, MetricError::Timeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "took {took:?}"
    );
}

#[tokio::test]
async fn html_and_server_errors_are_reported_with_an_excerpt() {
    use axum::http::{header, StatusCode};
    let html = "<!doctype html><html><body>Welcome to Grafana</body></html>";
    let app = axum::Router::new()
        .route(
            "/ok-html/api/v1/query",
            axum::routing::post(
                move || async move { ([(header::CONTENT_TYPE, "text/html")], html) },
            ),
        )
        .route(
            "/broken/api/v1/query",
            axum::routing::post(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><h1>500 Internal Server Error</h1></html>",
                )
            }),
        );
    let server = TestServer::start(app).await;

    let err = PrometheusClient::new(&server.url("/ok-html"))
        .unwrap()
        .query_value("vector(1)")
        .await
        .unwrap_err();
    match &err {
        MetricError::Parse { body, .. } => assert!(body.contains("Welcome to Grafana"), "{body}"),
        other => panic!("expected Parse, got {other:?}"),
    }

    let err = PrometheusClient::new(&server.url("/broken"))
        .unwrap()
        .query_value("vector(1)")
        .await
        .unwrap_err();
    match &err {
        MetricError::Http { status, body } => {
            assert_eq!(*status, 500);
            assert!(body.contains("500 Internal Server Error"), "{body}");
        }
        other => panic!("expected Http, got {other:?}"),
    }
    assert!(err.to_string().contains("HTTP 500"), "{err}");
}

/// A plain Envoy with Istio's stats tags and Istio-named clusters, as in the mesh and in
/// manifests/local/gateway.yaml: the `envoy` query set must read what it really exports.
fn envoy_config(admin_port: u16, listener_port: u16, upstream: std::net::SocketAddr) -> String {
    let cluster = |name: &str| {
        format!(
            r#"  - name: "{name}"
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{name}"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}]
"#,
            port = upstream.port()
        )
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
stats_config:
  use_all_default_tags: false
  stats_tags:
  - tag_name: cluster_name
    regex: '^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)'
  - tag_name: response_code
    regex: '_rq(_(\d{{3}}))$'
  - tag_name: response_code_class
    regex: '_rq(_(\dxx))$'
static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/primary" }}
                route: {{ cluster: "outbound|9898||podinfo-primary.test.svc.cluster.local" }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: "outbound|9898||podinfo-canary.test.svc.cluster.local" }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{primary}{canary}"#,
        primary = cluster("outbound|9898||podinfo-primary.test.svc.cluster.local"),
        canary = cluster("outbound|9898||podinfo-canary.test.svc.cluster.local"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_envoy_queries_against_real_envoy_stats() {
    use axum::http::StatusCode;
    // The upstream: /ok takes ~30 ms, /fail and /primary answer 503 at once.
    let upstream = TestServer::start(
        axum::Router::new()
            .route(
                "/ok",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    "ok"
                }),
            )
            .route(
                "/fail",
                axum::routing::get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
            )
            .route(
                "/primary",
                axum::routing::get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
            ),
    )
    .await;
    let admin_port = support::free_port().unwrap();
    let listener_port = support::free_port().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let envoy = support::envoy::Envoy::start(
        &envoy_config(admin_port, listener_port, upstream.addr),
        admin,
    )
    .await;
    let prometheus = Prometheus::start_jobs(&[(admin, "/stats/prometheus")]).await;

    // Traffic through Envoy for the whole test: per 20 canary requests one 503; the primary
    // fails every time, which the canary queries must not see.
    // The slowest /ok answer the client saw bounds every upstream time Envoy recorded for it
    // (Envoy's upstream time ends before the client has the answer).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slowest_ok_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traffic = {
        let stop = stop.clone();
        let slowest_ok_ms = slowest_ok_ms.clone();
        let base = format!("http://127.0.0.1:{listener_port}");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = match sent % 20 {
                    0 => "/fail",
                    1 => "/primary",
                    _ => "/ok",
                };
                let started = std::time::Instant::now();
                let _ = http.get(format!("{base}{path}")).send().await;
                if path == "/ok" {
                    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    slowest_ok_ms
                        .fetch_max(ms.saturating_add(1), std::sync::atomic::Ordering::Relaxed);
                }
                sent += 1;
            }
        })
    };

    let client = PrometheusClient::new(&prometheus.url).unwrap();
    let v = vars("test", "podinfo");
    let success = builtin_query(MetricsSet::Envoy, BuiltinMetric::RequestSuccessRate, &v);
    let duration = builtin_query(MetricsSet::Envoy, BuiltinMetric::RequestDuration, &v);
    // Counters are live in /stats/prometheus, histograms only after Envoy's stats flush
    // (every 5s). Ready when the p99 has data and the 10s window holds ten scrapes of
    // canary traffic, so the ratio is measured over a full window.
    let samples_in_window = r#"count_over_time(envoy_cluster_upstream_rq{cluster_name="outbound|9898||podinfo-canary.test.svc.cluster.local", response_code_class="2xx"}[10s])"#;
    poll_until_async(
        "a full window of Envoy canary stats",
        Duration::from_secs(60),
        POLL,
        || {
            let client = client.clone();
            let d = duration.clone();
            async move {
                let samples = client
                    .query_value(samples_in_window)
                    .await
                    .map_err(|e| e.to_string())?;
                client.query_value(&d).await.map_err(|e| e.to_string())?;
                (samples >= 10.0)
                    .then_some(())
                    .ok_or_else(|| format!("{samples} samples"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rate = client.query_value(&success).await.unwrap();
    let p99 = client.query_value(&duration).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();

    // 1 in 19 canary requests fails: 94.7%.
    assert!(
        (92.0..=97.5).contains(&rate),
        "canary success rate {rate}; envoy log:\n{}",
        envoy.log_text()
    );
    // Envoy's upstream_rq_time buckets are ..., 25, 50, 100, 250, ...: 30 ms requests put the
    // p99 above 25, and no higher than the edge of the bucket that holds the slowest /ok
    // answer the client saw (50 on a quiet machine; a loaded one delays some answers past it,
    // and the p99 of a correct query moves with them). A query in seconds, of the wrong
    // histogram or quantile, falls outside.
    let slowest = slowest_ok_ms.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let edge = [25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0]
        .into_iter()
        .find(|&edge| edge >= slowest)
        .unwrap_or(f64::INFINITY);
    assert!(
        p99 > 25.0 && p99 <= edge,
        "canary p99 {p99}; the slowest /ok answer took {slowest} ms (bucket edge {edge})"
    );
    assert!(!ThresholdRange {
        min: Some(99.0),
        max: None
    }
    .contains(rate));
}
