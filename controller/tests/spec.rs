#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Loading Canary specs: the seed loads unchanged, every unused or unknown field is a named
//! warning, malformed specs are errors naming file, document, path and reason, and the
//! route derived from a spec is one the filter accepts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use veer_controller::checks::prometheus::{BuiltinMetric, MetricsSet};
use veer_controller::checks::webhooks::HookType;
use veer_controller::spec::{
    load_dir, load_file, load_texts, parse_go_duration, route_for, LoadOptions, MetricSource,
    Severity, SpecSet, Strategy, WeightSteps,
};
use veer_core::{RoutingTable, StringMatch, Variant};

fn seed_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seed-canary.yaml")
}

fn seed_text() -> String {
    std::fs::read_to_string(seed_path()).unwrap()
}

fn load(text: &str) -> SpecSet {
    load_texts(
        &[(PathBuf::from("canaries/podinfo.yaml"), text.to_string())],
        &LoadOptions::default(),
    )
}

fn messages(set: &SpecSet, severity: Severity) -> Vec<String> {
    set.problems
        .iter()
        .filter(|p| p.severity == severity)
        .map(|p| p.to_string())
        .collect()
}

/// The seed's YAML with one line replaced (the line must exist).
fn seed_with(from: &str, to: &str) -> String {
    let seed = seed_text();
    assert!(seed.contains(from), "seed has no {from:?}");
    seed.replacen(from, to, 1)
}

const MINIMAL: &str = "\
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: app
  namespace: shop
spec:
  targetRef:
    name: app
  analysis:
    stepWeight: 10
";

#[test]
fn seed_loads_unchanged_with_only_honest_warnings() {
    let set = load_file(&seed_path(), &LoadOptions::default());
    assert_eq!(messages(&set, Severity::Error), Vec::<String>::new());
    assert_eq!(set.canaries.len(), 1);
    let warnings = messages(&set, Severity::Warning);
    // autoscalerRef is the only seed field veer does not act on; trafficPolicy, retries,
    // gateways and ports are used by `veer render`.
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(
            "seed-canary.yaml (doc 1): spec.autoscalerRef: accepted but not used by veer (veer does not copy the autoscaler: in Kubernetes mode the -primary Deployment gets no HPA of its own (scale it yourself), and local mode manages no workloads)"
        ),
        "{}",
        warnings[0]
    );

    let c = &set.canaries[0];
    assert_eq!(c.key(), "test/podinfo");
    assert_eq!(c.interval(), Duration::from_secs(60));
    assert_eq!(c.threshold(), 3);
    assert_eq!(c.progress_deadline(), Duration::from_secs(600));
    assert_eq!(
        c.strategy(),
        Strategy::Canary(WeightSteps::Step { step: 10, max: 50 })
    );
    assert_eq!(c.service.port, Some(9898));
    assert_eq!(c.service.gateways, vec!["istio-system/public-gateway"]);
    assert!(c.service.traffic_policy.is_some());
    assert!(c.service.retries.is_some());
    let m = &c.analysis.metrics;
    assert_eq!(m.len(), 2);
    assert_eq!(
        m[0].source,
        MetricSource::Builtin(BuiltinMetric::RequestSuccessRate)
    );
    assert_eq!(m[0].threshold_range.min, Some(99.0));
    assert_eq!(m[0].interval.text, "1m");
    assert_eq!(
        m[1].source,
        MetricSource::Builtin(BuiltinMetric::RequestDuration)
    );
    assert_eq!(m[1].threshold_range.max, Some(500.0));
    assert_eq!(m[1].interval.duration, Duration::from_secs(30));
    let pre = c.hooks(HookType::PreRollout);
    assert_eq!(pre.len(), 1);
    assert_eq!(pre[0].name, "acceptance-test");
    assert_eq!(pre[0].timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        pre[0].metadata.get("cmd").map(String::as_str),
        Some("curl -sd 'test' http://podinfo-canary:9898/token | grep token")
    );
    assert_eq!(c.hooks(HookType::Rollout)[0].name, "load-test");
    assert!(c.hooks(HookType::ConfirmRollout).is_empty());
}

#[test]
fn seed_route_is_valid_for_the_filter() {
    let set = load_file(&seed_path(), &LoadOptions::default());
    let c = &set.canaries[0];
    for weight in [0, 1000, 5000, 10_000] {
        let route = route_for(c, weight, 0, "7f9c2ba");
        assert_eq!(route.name, "test/podinfo");
        assert_eq!(route.hosts, vec!["app.example.com"]);
        assert_eq!(route.path_prefix, "/");
        assert_eq!(route.weight, weight);
        assert_eq!(route.revision, "7f9c2ba");
        assert!(route.r#match.is_empty());
        assert!(route.session_affinity.is_none());
        let table = RoutingTable {
            generation: 1,
            routes: vec![route],
        };
        veer_core::validate_table(&table).unwrap();
    }
}

#[test]
fn hosts_default_to_service_name_then_target_name() {
    let set = load(MINIMAL);
    assert_eq!(route_for(&set.canaries[0], 0, 0, "r").hosts, vec!["app"]);
    let named = MINIMAL.replace(
        "  analysis:",
        "  service:\n    name: web\n    port: 80\n  analysis:",
    );
    let set = load(&named);
    assert_eq!(route_for(&set.canaries[0], 0, 0, "r").hosts, vec!["web"]);
}

#[test]
fn malformed_type_names_file_doc_path_and_reason() {
    let text = seed_with("stepWeight: 10", "stepWeight: ten");
    let set = load(&text);
    assert!(set.canaries.is_empty());
    assert_eq!(
        messages(&set, Severity::Error),
        vec![
            "canaries/podinfo.yaml (doc 1): spec.analysis.stepWeight: invalid type: string \"ten\", expected u32"
        ]
    );
}

#[test]
fn negative_value_is_an_error_with_its_path() {
    let set = load(&seed_with("threshold: 3", "threshold: -3"));
    let errors = messages(&set, Severity::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "canaries/podinfo.yaml (doc 1): spec.analysis.threshold: invalid value: integer `-3`"
        ),
        "{}",
        errors[0]
    );
    let set = load(&seed_with(
        "progressDeadlineSeconds: 600",
        "progressDeadlineSeconds: -5",
    ));
    assert_eq!(
        messages(&set, Severity::Error),
        vec![
            "canaries/podinfo.yaml (doc 1): spec.progressDeadlineSeconds: must be positive, got -5"
        ]
    );
}

#[test]
fn unknown_field_is_a_warning_naming_it() {
    let set = load(&seed_with(
        "    stepWeight: 10",
        "    stepWeight: 10\n    stepWieght: 5",
    ));
    assert_eq!(set.canaries.len(), 1);
    let warnings = messages(&set, Severity::Warning);
    assert!(
        warnings.contains(
            &"canaries/podinfo.yaml (doc 1): spec.analysis.stepWieght: unknown field, ignored (Flagger would ignore it silently; is it a typo?)".to_string()
        ),
        "{warnings:#?}"
    );
    // Nested in a list: the index is in the path.
    let set = load(&seed_with(
        "        interval: 30s",
        "        interval: 30s\n        thresold: 1",
    ));
    let warnings = messages(&set, Severity::Warning);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spec.analysis.metrics[1].thresold: unknown field")),
        "{warnings:#?}"
    );
}

#[test]
fn unused_flagger_fields_are_named_warnings() {
    let text = seed_with(
        "  analysis:\n",
        "  revertOnDeletion: true\n  analysis:\n    alerts:\n      - name: slack\n        severity: info\n    primaryReadyThreshold: 100\n",
    );
    let set = load(&text);
    assert_eq!(set.canaries.len(), 1);
    let warnings = messages(&set, Severity::Warning).join("\n");
    for path in [
        "spec.autoscalerRef: accepted but not used by veer",
        "spec.analysis.alerts: accepted but not used by veer (veer has no alert providers",
        "spec.analysis.primaryReadyThreshold: accepted but not used by veer",
    ] {
        assert!(warnings.contains(path), "missing {path:?} in\n{warnings}");
    }
    // Kubernetes mode honours it (Flagger's finalizer).
    assert!(!warnings.contains("revertOnDeletion"), "{warnings}");
    assert!(set.canaries[0].revert_on_deletion);
}

#[test]
fn one_bad_file_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-good.yaml"), seed_text()).unwrap();
    std::fs::write(
        dir.path().join("b-bad.yml"),
        seed_with("stepWeight: 10", "stepWeight: ten")
            .replace("name: podinfo\n  namespace", "name: other\n  namespace"),
    )
    .unwrap();
    std::fs::write(dir.path().join("c-broken.yaml"), "kind: [unclosed\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    let set = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(set.canaries.len(), 1);
    assert_eq!(set.canaries[0].key(), "test/podinfo");
    let errors = messages(&set, Severity::Error);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("b-bad.yml (doc 1): spec.analysis.stepWeight: invalid type"));
    assert!(
        errors[1].contains("c-broken.yaml (doc 1): "),
        "{}",
        errors[1]
    );
}

#[test]
fn missing_directory_is_an_error_naming_it() {
    let e = load_dir(Path::new("/nonexistent/canaries"), &LoadOptions::default()).unwrap_err();
    assert!(e
        .to_string()
        .starts_with("cannot read canary directory /nonexistent/canaries:"));
}

#[test]
fn multi_document_files_with_templates_and_other_kinds() {
    let text = format!(
        "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: public-gateway
spec: {{}}
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: not-found-percentage
  namespace: istio-system
spec:
  provider:
    type: prometheus
    address: http://prometheus.istio-system:9090
  query: |
    100 - sum(rate(istio_requests_total{{destination_workload=\"{{{{ target }}}}\",response_code!=\"404\"}}[{{{{ interval }}}}]))
---
{MINIMAL}    metrics:
      - name: \"404s percentage\"
        templateRef:
          name: not-found-percentage
          namespace: istio-system
        thresholdRange:
          max: 5
        templateVariables:
          x: y
---
"
    );
    let set = load(&text);
    assert_eq!(messages(&set, Severity::Error), Vec::<String>::new());
    assert_eq!(messages(&set, Severity::Warning), Vec::<String>::new());
    assert_eq!(set.templates.len(), 1);
    let c = &set.canaries[0];
    assert_eq!(c.source.doc, 3);
    let m = &c.analysis.metrics[0];
    match &m.source {
        MetricSource::Template {
            name,
            namespace,
            address,
            query,
        } => {
            assert_eq!(
                (name.as_str(), namespace.as_str()),
                ("not-found-percentage", "istio-system")
            );
            assert_eq!(
                address.as_deref(),
                Some("http://prometheus.istio-system:9090")
            );
            assert!(query.contains("{{ interval }}"));
        }
        other => panic!("{other:?}"),
    }
    // Template metrics get the 1m default interval too.
    assert_eq!(m.interval.text, "1m");
    assert_eq!(
        c.query_vars(m).variables.get("x").map(String::as_str),
        Some("y")
    );
}

#[test]
fn template_ref_must_exist_and_be_prometheus() {
    let with_ref = format!(
        "{MINIMAL}    metrics:
      - name: custom
        templateRef:
          name: nope
        thresholdRange:
          max: 5
"
    );
    let set = load(&with_ref);
    assert_eq!(
        messages(&set, Severity::Error),
        vec!["canaries/podinfo.yaml (doc 1): spec.analysis.metrics[0].templateRef: no MetricTemplate shop/nope was loaded (searched canaries/podinfo.yaml): pass the file that defines it too (-f), or put it in the same directory"]
    );
    let datadog = format!(
        "apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: nope
  namespace: shop
spec:
  provider:
    type: datadog
  query: avg:trace.http.request.errors
---
{with_ref}"
    );
    let set = load(&datadog);
    assert_eq!(
        messages(&set, Severity::Error),
        vec!["canaries/podinfo.yaml (doc 2): spec.analysis.metrics[0].templateRef: MetricTemplate shop/nope uses provider \"datadog\"; veer queries Prometheus only"]
    );
}

#[test]
fn semantic_errors_name_their_fields() {
    let cases: &[(&str, &str, &str)] = &[
        ("interval: 1m", "interval: 1x", "spec.analysis.interval: invalid duration \"1x\": unknown unit"),
        ("interval: 1m", "interval: 90", "spec.analysis.interval: invalid duration \"90\": missing unit"),
        ("maxWeight: 50", "maxWeight: 150", "spec.analysis.maxWeight: 150 is above 100 (weights are percent)"),
        ("stepWeight: 10", "stepWeight: 0", "spec.analysis: no stepWeight, stepWeights or iterations: the canary would never advance"),
        ("        thresholdRange:\n          min: 99", "        query: up", "spec.analysis.metrics[0].thresholdRange: missing: a metric needs thresholdRange.min and/or thresholdRange.max"),
        ("        url: http://flagger-loadtester.test/\n        timeout: 5s", "        timeout: 5s", "spec.analysis.webhooks[1].url: missing: webhook \"load-test\" needs a url"),
        ("type: rollout", "type: during-rollout", "spec.analysis.webhooks[1].type: unknown webhook type \"during-rollout\""),
        ("timeout: 30s", "timeout: soon", "spec.analysis.webhooks[0].timeout: invalid duration \"soon\""),
        ("  - name: request-duration", "  - name: latency", "spec.analysis.metrics[1].name: \"latency\" is not a builtin metric"),
        ("        thresholdRange:\n          max: 500", "        query: sum(up{job=\"{{ variables.job }}\"})\n        thresholdRange:\n          max: 500", "spec.analysis.metrics[1].query: unknown template variable \"variables.job\""),
    ];
    for (from, to, expected) in cases {
        let set = load(&seed_with(from, to));
        let errors = messages(&set, Severity::Error);
        assert!(set.canaries.is_empty(), "{to:?} should drop the canary");
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{to:?}: expected {expected:?} in {errors:#?}"
        );
    }
}

#[test]
fn step_weights_must_rise_and_max_weight_is_ignored_with_them() {
    let text = MINIMAL.replace("stepWeight: 10", "stepWeights: [1, 5, 5]");
    let set = load(&text);
    assert!(messages(&set, Severity::Error)[0]
        .contains("spec.analysis.stepWeights[2]: 5 does not rise above the previous step 5"));
    let text = MINIMAL.replace(
        "stepWeight: 10",
        "stepWeights: [1, 10, 80]\n    maxWeight: 50",
    );
    let set = load(&text);
    assert_eq!(
        set.canaries[0].strategy(),
        Strategy::Canary(WeightSteps::List(vec![1, 10, 80]))
    );
    assert!(messages(&set, Severity::Warning)[0]
        .contains("spec.analysis.maxWeight: ignored with stepWeights: the last entry is the max"));
}

#[test]
fn ab_match_maps_one_to_one_and_cookie_regex_stays_a_header_rule() {
    let text = format!(
        "{MINIMAL}    iterations: 10
    match:
      - headers:
          x-canary:
            exact: insider
      - headers:
          cookie:
            regex: \"^(.*?;)?(canary=always)(;.*)?$\"
        queryParams:
          beta:
            prefix: \"1\"
        uri:
          prefix: /api/
        method:
          exact: GET
    sessionAffinity:
      cookieName: flagger-cookie
      primaryCookieName: primary-cookie
      maxAge: 21600
      secure: true
      sameSite: Strict
"
    )
    .replace("    stepWeight: 10\n", "");
    let set = load(&text);
    assert_eq!(messages(&set, Severity::Error), Vec::<String>::new());
    let c = &set.canaries[0];
    assert_eq!(c.strategy(), Strategy::ABTesting { iterations: 10 });
    let route = route_for(c, 10_000, 0, "r2");
    assert_eq!(route.r#match.len(), 2);
    assert_eq!(
        route.r#match[0].headers["x-canary"],
        StringMatch {
            exact: Some("insider".into()),
            ..Default::default()
        }
    );
    let second = &route.r#match[1];
    assert_eq!(
        second.headers["cookie"].regex.as_deref(),
        Some("^(.*?;)?(canary=always)(;.*)?$")
    );
    assert!(second.cookies.is_empty());
    assert_eq!(second.query_params["beta"].prefix.as_deref(), Some("1"));
    assert_eq!(
        second.uri.as_ref().unwrap().prefix.as_deref(),
        Some("/api/")
    );
    assert_eq!(second.method.as_deref(), Some("GET"));
    let sa = route.session_affinity.as_ref().unwrap();
    assert_eq!(sa.cookie_name, "flagger-cookie");
    assert_eq!(sa.max_age, 21600);
    assert!(sa.secure);
    assert_eq!(sa.same_site, Some(veer_core::SameSite::Strict));
    veer_core::validate_table(&RoutingTable {
        generation: 1,
        routes: vec![route],
    })
    .unwrap();
    let warnings = messages(&set, Severity::Warning).join("\n");
    assert!(warnings.contains(
        "spec.analysis.sessionAffinity.primaryCookieName: accepted but not used by veer (not needed: the sticky bucket already keeps primary users on primary"
    ), "{warnings}");
}

#[test]
fn bad_regex_is_caught_by_the_filter_validation() {
    let text = format!(
        "{MINIMAL}    match:
      - headers:
          x-user:
            regex: \"(unclosed\"
"
    );
    let set = load(&text);
    let errors = messages(&set, Severity::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spec: the routing-table route would be invalid:"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("x-user"), "{}", errors[0]);
}

#[test]
fn veer_extensions_need_the_veer_api_version() {
    let ext = "  veer:
    metricsSet: veer
    stickyKey:
      header: x-user-id
    pathPrefix: /shop
    cookieSigning:
      secretName: veer-cookie-keys
    overrides:
      - match:
          headers:
            x-canary:
              exact: always
        variant: canary
";
    let flagger = format!("{MINIMAL}{ext}");
    let set = load(&flagger);
    assert_eq!(set.canaries[0].veer, Default::default());
    assert!(messages(&set, Severity::Warning)[0]
        .contains("spec.veer: accepted but not used by veer (veer's extensions are read only with apiVersion veer.dev/v1alpha1)"));

    let veer = flagger.replace("flagger.app/v1beta1", "veer.dev/v1alpha1");
    let set = load(&veer);
    assert_eq!(messages(&set, Severity::Warning), Vec::<String>::new());
    let c = &set.canaries[0];
    assert_eq!(c.metrics_set(MetricsSet::Istio), MetricsSet::Veer);
    assert_eq!(c.veer.cookie_signing.as_ref().unwrap().key, "keys");
    let route = route_for(c, 500, 0, "r");
    assert_eq!(route.path_prefix, "/shop");
    assert_eq!(route.sticky_key.as_ref().unwrap().header, "x-user-id");
    assert_eq!(route.overrides[0].variant, Variant::Canary);
    veer_core::validate_table(&RoutingTable {
        generation: 1,
        routes: vec![route],
    })
    .unwrap();

    let bad_set = load(&veer.replace("metricsSet: veer", "metricsSet: datadog"));
    assert!(messages(&bad_set, Severity::Error)[0]
        .contains("spec.veer.metricsSet: unknown metrics set \"datadog\""));
}

#[test]
fn duplicate_canaries_keep_the_first() {
    let text = format!("{MINIMAL}---\n{MINIMAL}");
    let set = load(&text);
    assert_eq!(set.canaries.len(), 1);
    assert_eq!(set.canaries[0].source.doc, 1);
    assert!(messages(&set, Severity::Error)[0].contains("(doc 2): metadata.name: canary shop/app is already defined in canaries/podinfo.yaml (doc 1)"));
}

#[test]
fn interval_floor_and_defaults() {
    // Flagger's floor: 10s, with a warning naming the flag that lowers it.
    let short = MINIMAL.replace("  analysis:\n", "  analysis:\n    interval: 2s\n");
    let set = load(&short);
    assert_eq!(set.canaries[0].interval(), Duration::from_secs(10));
    assert_eq!(
        messages(&set, Severity::Warning),
        vec!["canaries/podinfo.yaml (doc 1): spec.analysis.interval: 2s is below the 10s floor: passes run every 10s (as Flagger does; `--min-interval` lowers the floor for demos and tests)"]
    );
    // A lowered floor: 2s runs as written, silently; 200ms is raised to the new floor.
    let lowered = LoadOptions {
        min_interval: Duration::from_secs(1),
    };
    let set = load_texts(&[(PathBuf::from("c.yaml"), short)], &lowered);
    assert_eq!(set.canaries[0].interval(), Duration::from_secs(2));
    assert!(set.problems.is_empty(), "{:?}", set.problems);
    let tiny = MINIMAL.replace("  analysis:\n", "  analysis:\n    interval: 200ms\n");
    let set = load_texts(&[(PathBuf::from("c.yaml"), tiny)], &lowered);
    assert_eq!(set.canaries[0].interval(), Duration::from_secs(1));
    assert!(messages(&set, Severity::Warning)[0].contains(
        "200ms is below the 1s floor: passes run every 1s (the floor set by --min-interval 1s)"
    ));
    let set = load(MINIMAL);
    let c = &set.canaries[0];
    assert_eq!(c.interval(), Duration::from_secs(60));
    assert_eq!(c.threshold(), 1);
    assert_eq!(c.mirror_weight(), 100);
    assert_eq!(
        c.strategy(),
        Strategy::Canary(WeightSteps::Step { step: 10, max: 100 })
    );
}

#[test]
fn go_durations() {
    let ok = [
        ("1m", 60_000),
        ("30s", 30_000),
        ("1m30s", 90_000),
        ("1.5h", 5_400_000),
        ("500ms", 500),
        ("1h2m3s4ms", 3_723_004),
        ("0", 0),
    ];
    for (text, ms) in ok {
        assert_eq!(
            parse_go_duration(text).unwrap(),
            Duration::from_millis(ms),
            "{text}"
        );
    }
    for bad in ["", "10", "-1m", "1d", "m", "1m30"] {
        assert!(parse_go_duration(bad).is_err(), "{bad:?} should fail");
    }
}
