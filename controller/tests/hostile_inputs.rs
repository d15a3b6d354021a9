#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Hostile controller input, through the real `veer controller` binary, each case with its
//! documented outcome (RELIABILITY.md), and always next to a healthy canary that must not
//! notice:
//!
//! - Canary YAML with a wrong type, an unknown field, a negative interval, stepWeight 0 with
//!   no stepWeights, an unknown MetricTemplate, or no YAML at all: an error naming the file,
//!   the field path and the reason (a warning for the unknown field, which is loaded);
//! - Prometheus answering NaN, an empty vector, a matrix, several series, HTML, a 500, or
//!   hanging: each is a failed check with a message saying which, then a rollback after
//!   `threshold`;
//! - webhooks that hang, redirect or answer 204 fail the check with the reason; one that
//!   answers 200 with a huge body passes (only the status counts; the body is read up to a
//!   cap).
//!
//! The Prometheus client and webhook caller are tested on their own in prometheus_real.rs and
//! webhooks_real.rs; spec.rs checks every spec message in-process.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::Path as UrlPath;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{json, Value};
use support::canary::canary_yaml;
use support::http::{HangingServer, TestServer};
use support::prometheus::{sample, vector_answer};
use support::veer::{canaries_dir, write_spec, Controller};

const QUICK: &str = "    interval: 1s\n    threshold: 1\n    maxWeight: 50\n    stepWeight: 50\n";

async fn wait_phase(c: &Controller, key: &str, phase: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = c.canary(key).await;
        if s["phase"] == phase {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{key}: not {phase} within {timeout:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_canary_specs_are_named_and_the_others_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    write_spec(&canaries, "good.yaml", &canary_yaml("good", QUICK));
    let cases: &[(&str, String, &str)] = &[
        (
            "wrong-type.yaml",
            canary_yaml("wrong-type", &QUICK.replace("stepWeight: 50", "stepWeight: fifty")),
            "wrong-type.yaml (doc 1): spec.analysis.stepWeight: invalid type: string \"fifty\", expected u32",
        ),
        (
            "negative-interval.yaml",
            canary_yaml("negative-interval", &QUICK.replace("interval: 1s", "interval: -1m")),
            "negative-interval.yaml (doc 1): spec.analysis.interval: invalid duration \"-1m\"",
        ),
        (
            "zero-step.yaml",
            canary_yaml("zero-step", &QUICK.replace("stepWeight: 50", "stepWeight: 0")),
            "zero-step.yaml (doc 1): spec.analysis: no stepWeight, stepWeights or iterations: the canary would never advance",
        ),
        (
            "unknown-template.yaml",
            canary_yaml(
                "unknown-template",
                &format!(
                    "{QUICK}    metrics:\n      - name: errors\n        templateRef:\n          name: nope\n          namespace: shop\n        thresholdRange:\n          max: 1\n"
                ),
            ),
            "unknown-template.yaml (doc 1): spec.analysis.metrics[0].templateRef: no MetricTemplate shop/nope was loaded",
        ),
        (
            "not-yaml.yaml",
            "kind: [unclosed\n".to_string(),
            "not-yaml.yaml (doc 1): ",
        ),
    ];
    for (file, yaml, _) in cases {
        write_spec(&canaries, file, yaml);
    }
    // An unknown field is a warning: the canary loads.
    write_spec(
        &canaries,
        "typo.yaml",
        &canary_yaml("typo", &format!("{QUICK}    stepWieght: 5\n")),
    );
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", dir.path().join("state.json").display()),
    ];
    let c = Controller::start(&args, dir.path().join("controller.log")).await;
    let list = c.get_json("/v1/canaries").await;
    let mut keys: Vec<&str> = list["canaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["test/good", "test/typo"],
        "only valid specs are loaded"
    );
    let log = c.log_text();
    for (file, _, message) in cases {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{file} (doc")) && l.contains("ERROR"))
            .unwrap_or_else(|| panic!("{file}: no error line in:\n{log}"));
        assert!(line.contains(message), "{file}: {message:?} not in {line}");
        assert!(
            line.contains("(this document is not loaded)"),
            "{file}: {line}"
        );
    }
    let warning = log
        .lines()
        .find(|l| l.contains("typo.yaml") && l.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning for the typo:\n{log}"));
    assert!(
        warning.contains("spec.analysis.stepWieght: unknown field, ignored"),
        "{warning}"
    );

    // The healthy canaries run a whole release meanwhile.
    for key in ["test/good", "test/typo"] {
        c.revision(key, "v1").await;
        c.revision(key, "v2").await;
    }
    for key in ["test/good", "test/typo"] {
        let done = wait_phase(&c, key, "Succeeded", Duration::from_secs(30)).await;
        assert_eq!(done["primaryRevision"], "v2");
    }
    // The table serves exactly the loaded canaries.
    let table = c.table().await.unwrap();
    let mut routes: Vec<&str> = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    routes.sort();
    assert_eq!(routes, ["test/good", "test/typo"]);
}

/// What the fake Prometheus answers under `/<behaviour>/api/v1/query`.
async fn prometheus_answer(UrlPath(behaviour): UrlPath<String>) -> Response {
    let vector = |result: Value| axum::Json(vector_answer(result)).into_response();
    match behaviour.as_str() {
        "good" => vector(json!([sample("99.9")])),
        "nan" => vector(json!([sample("NaN")])),
        "empty" => vector(json!([])),
        "several" => vector(json!([
            {"metric": {"pod": "a"}, "value": [1_700_000_000.0, "99"]},
            {"metric": {"pod": "b"}, "value": [1_700_000_000.0, "98"]}
        ])),
        "matrix" => axum::Json(json!({"status": "success", "data": {"resultType": "matrix",
            "result": [{"metric": {}, "values": [[1_700_000_000.0, "99"]]}]}}))
        .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html")],
            "<!doctype html><html><title>Welcome to Grafana</title></html>",
        )
            .into_response(),
        "500" => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn hook_answer(UrlPath(behaviour): UrlPath<String>) -> Response {
    match behaviour.as_str() {
        "redirect" => (
            StatusCode::FOUND,
            [(header::LOCATION, "http://127.0.0.1:9/elsewhere")],
        )
            .into_response(),
        "204" => StatusCode::NO_CONTENT.into_response(),
        // 64 MiB: far beyond the cap on what is read of a hook's answer.
        "huge" => (StatusCode::OK, vec![b'x'; 64 * 1024 * 1024]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_prometheus_and_webhooks_fail_checks_clearly_and_others_are_unaffected() {
    let app = axum::Router::new()
        .route("/{behaviour}/api/v1/query", any(prometheus_answer))
        .route("/hook/{behaviour}", post(hook_answer));
    let fakes = TestServer::start(app).await;
    let hanging = HangingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());

    // (canary, address of its Prometheus or hook, the message its failed check must carry)
    let prometheus_cases = [
        ("prom-nan", fakes.url("/nan"), "the query returned NaN"),
        (
            "prom-empty",
            fakes.url("/empty"),
            "no values found: is traffic reaching the canary?",
        ),
        (
            "prom-matrix",
            fakes.url("/matrix"),
            "the query returned a matrix result, expected a vector or scalar",
        ),
        (
            "prom-several",
            fakes.url("/several"),
            "the query returned 2 series, expected exactly one",
        ),
        (
            "prom-html",
            fakes.url("/html"),
            "Prometheus's answer is not a query result",
        ),
        (
            "prom-500",
            fakes.url("/500"),
            "Prometheus answered HTTP 500",
        ),
        (
            "prom-hang",
            format!("http://{}", hanging.addr),
            "Prometheus did not answer within 5s",
        ),
    ];
    let mut docs = Vec::new();
    for (name, address, _) in &prometheus_cases {
        docs.push(format!(
            "apiVersion: flagger.app/v1beta1\nkind: MetricTemplate\nmetadata:\n  name: {name}\n  \
             namespace: test\nspec:\n  provider:\n    type: prometheus\n    address: {address}\n  \
             query: sum(rate(requests_total[{{{{ interval }}}}]))\n"
        ));
        docs.push(canary_yaml(
            name,
            &format!(
                "{QUICK}    metrics:\n      - name: success\n        templateRef:\n          name: {name}\n        thresholdRange:\n          min: 99\n"
            ),
        ));
    }
    let hook_cases = [
        ("hook-hang", format!("http://{}/hook", hanging.addr), "did not answer within 1s"),
        ("hook-redirect", fakes.url("/hook/redirect"), "answered HTTP 302 redirecting to \\\"http://127.0.0.1:9/elsewhere\\\" (redirects are not followed)"),
        ("hook-204", fakes.url("/hook/204"), "answered HTTP 204"),
    ];
    for (name, url, _) in &hook_cases {
        docs.push(canary_yaml(
            name,
            &format!(
                "{QUICK}    webhooks:\n      - name: load-test\n        type: rollout\n        url: {url}\n        timeout: 1s\n"
            ),
        ));
    }
    // The healthy ones: a good Prometheus, and a hook answering 200 with a huge body.
    docs.push(format!(
        "apiVersion: flagger.app/v1beta1\nkind: MetricTemplate\nmetadata:\n  name: good\n  \
         namespace: test\nspec:\n  provider:\n    type: prometheus\n    address: {}\n  \
         query: sum(rate(requests_total[{{{{ interval }}}}]))\n",
        fakes.url("/good")
    ));
    docs.push(canary_yaml(
        "good",
        &format!(
            "{QUICK}    metrics:\n      - name: success\n        templateRef:\n          name: good\n        thresholdRange:\n          min: 99\n"
        ),
    ));
    docs.push(canary_yaml(
        "hook-huge",
        &format!(
            "{QUICK}    webhooks:\n      - name: load-test\n        type: rollout\n        url: {}\n        timeout: 5s\n",
            fakes.url("/hook/huge")
        ),
    ));
    write_spec(&canaries, "all.yaml", &docs.join("---\n"));
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", dir.path().join("state.json").display()),
    ];
    let mut c = Controller::start(&args, dir.path().join("controller.log")).await;
    let failing: Vec<(&str, &str)> = prometheus_cases
        .iter()
        .map(|(n, _, m)| (*n, *m))
        .chain(hook_cases.iter().map(|(n, _, m)| (*n, *m)))
        .collect();
    let all: Vec<&str> = failing
        .iter()
        .map(|(n, _)| *n)
        .chain(["good", "hook-huge"])
        .collect();
    for name in &all {
        c.revision(&format!("test/{name}"), "v1").await;
        c.revision(&format!("test/{name}"), "v2").await;
    }

    // Watch every canary until it is done, keeping the message of its first failed check.
    let mut first_failure: BTreeMap<&str, String> = BTreeMap::new();
    let mut final_status: BTreeMap<&str, Value> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while final_status.len() < all.len() {
        c.assert_running();
        for name in &all {
            if final_status.contains_key(name) {
                continue;
            }
            let s = c.canary(&format!("test/{name}")).await;
            if s["failedChecks"].as_u64().unwrap() >= 1 && !first_failure.contains_key(name) {
                first_failure.insert(name, s["lastChecks"].to_string());
            }
            if matches!(s["phase"].as_str(), Some("Succeeded" | "Failed")) {
                final_status.insert(name, s);
            }
        }
        assert!(
            Instant::now() < deadline,
            "not done in time: {:?}",
            all.iter()
                .filter(|n| !final_status.contains_key(*n))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for (name, message) in &failing {
        let s = &final_status[name];
        assert_eq!(s["phase"], "Failed", "{name}: {s}");
        assert_eq!(s["weight"], 0, "{name}");
        assert_eq!(s["failedRevision"], "v2", "{name}");
        assert_eq!(s["primaryRevision"], "v1", "{name}");
        // The rollback pass keeps the failed pass's checks, so the final status shows them
        // too if the polling missed the moment in between.
        let checks = first_failure
            .get(name)
            .cloned()
            .unwrap_or_else(|| s["lastChecks"].to_string());
        assert!(
            checks.contains(message),
            "{name}: {message:?} not in its failed check: {checks}"
        );
        println!("{name}: {checks}");
    }
    for name in ["good", "hook-huge"] {
        let s = &final_status[name];
        assert_eq!(s["phase"], "Succeeded", "{name}: {s}");
        assert_eq!(s["primaryRevision"], "v2");
        assert!(
            !first_failure.contains_key(name),
            "{name} had a failed check"
        );
    }
    // The failures are in the log with their canary, and nothing crashed.
    let log = c.log_text();
    for (name, _) in &failing {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("test/{name}")) && l.contains("Failed")),
            "{name}: no rollback line in the log"
        );
    }
    c.assert_running();
}
