#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Each rule of issue 12 ("every Canary in Flagger's own repository loads, and is read the
//! way Flagger reads it"), run on a spec modelled on the podinfo Canary of Flagger's Istio
//! tutorial: one table row per rule, each changing the spec the way Flagger's own examples
//! do and checking what veer loads, what the state machine does and what `veer explain`
//! says.

use std::path::PathBuf;
use std::time::Duration;

use veer_controller::checks::prometheus::{MetricError, ThresholdRange};
use veer_controller::checks::webhooks::HookType;
use veer_controller::cli::explain::{explain, simulate, ExplainOptions, Script};
use veer_controller::engine::{
    advance, on_revision, plan, CanaryState, PassObservations, PassPlan, PassStep, Phase,
    StepResult, Timestamp,
};
use veer_controller::spec::{
    load_paths, load_texts, CanarySpec, LoadOptions, Severity, SpecSet, Strategy,
};

/// Written in the style of Flagger's Istio tutorial: threshold 5, a 60s progress
/// deadline, the two builtin metrics and the load tester's pre-rollout and rollout hooks.
const PODINFO: &str = r#"apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
  namespace: test
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: podinfo
  progressDeadlineSeconds: 60
  service:
    port: 9898
    targetPort: 9898
    gateways:
    - public-gateway.istio-system.svc.cluster.local
    hosts:
    - app.example.com
  analysis:
    interval: 1m
    threshold: 5
    maxWeight: 50
    stepWeight: 10
    metrics:
    - name: request-success-rate
      thresholdRange:
        min: 99
      interval: 1m
    - name: request-duration
      thresholdRange:
        max: 500
      interval: 30s
    webhooks:
      - name: acceptance-test
        type: pre-rollout
        url: http://flagger-loadtester.test/
        timeout: 30s
        metadata:
          type: bash
          cmd: "curl -sd 'test' http://podinfo-canary:9898/token | grep token"
      - name: load-test
        url: http://flagger-loadtester.test/
        timeout: 5s
        metadata:
          cmd: "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"
"#;

/// A MetricTemplate as Flagger's docs write one, with a template variable.
const ERROR_RATE_TEMPLATE: &str = r#"apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: error-rate
  namespace: istio-system
spec:
  provider:
    type: prometheus
    address: http://prometheus.istio-system:9090
  query: |
    100 - sum(rate(istio_requests_total{
        destination_workload_namespace="{{ namespace }}",
        destination_workload="{{ target }}",
        response_code!~"{{ variables.codes }}"
      }[{{ interval }}]))
    / sum(rate(istio_requests_total{
        destination_workload_namespace="{{ namespace }}",
        destination_workload="{{ target }}"
      }[{{ interval }}])) * 100
"#;

/// What one rule sees: the loaded set and `veer explain`'s output.
struct Outcome {
    set: SpecSet,
    explained: String,
}

impl Outcome {
    fn canary(&self) -> &CanarySpec {
        assert!(
            self.set.errors().next().is_none(),
            "{:#?}",
            self.set.problems
        );
        &self.set.canaries[0]
    }

    fn messages(&self, severity: Severity) -> Vec<String> {
        self.set
            .problems
            .iter()
            .filter(|p| p.severity == severity)
            .map(ToString::to_string)
            .collect()
    }

    fn has(&self, severity: Severity, text: &str) -> bool {
        self.messages(severity).iter().any(|m| m.contains(text))
    }

    fn says(&self, text: &str) -> bool {
        self.explained.contains(text)
    }
}

/// The podinfo spec with `from` replaced by `to` (`from` must be in it).
fn podinfo_with(from: &str, to: &str) -> String {
    assert!(PODINFO.contains(from), "the spec has no {from:?}");
    PODINFO.replacen(from, to, 1)
}

fn load(files: &[(&str, String)], opts: LoadOptions) -> Outcome {
    let inputs: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(name, text)| (PathBuf::from(name), text.clone()))
        .collect();
    let set = load_texts(&inputs, &opts);
    let explained = explain(&set, &ExplainOptions::default());
    Outcome { set, explained }
}

fn one(text: String) -> Outcome {
    load(&[("podinfo.yaml", text)], LoadOptions::default())
}

fn lowered_floor() -> LoadOptions {
    LoadOptions {
        min_interval: Duration::from_secs(1),
    }
}

/// Drives the state machine with confirm-traffic-increase always refusing and everything
/// else passing, for `passes` passes after the run starts; returns the last state.
fn run_with_refusing_gate(spec: &CanarySpec, passes: usize) -> CanaryState {
    let mut now = Timestamp::from_millis(0);
    let mut state = on_revision(spec, &CanaryState::default(), "v1", now).state;
    state = on_revision(spec, &state, "v2", now).state;
    let mut ran = 0;
    while ran <= passes {
        let p = plan(spec, &state, now);
        let PassPlan::Run { steps, .. } = &p else {
            now = now.plus(spec.interval());
            continue;
        };
        let mut obs = PassObservations::default();
        for step in steps {
            let ok = *step != PassStep::Hooks(HookType::ConfirmTrafficIncrease);
            obs.results.push(StepResult {
                step: *step,
                ok,
                checks: Vec::new(),
            });
            if !ok {
                break;
            }
        }
        state = advance(spec, &state, &p, &obs, now).state;
        ran += 1;
    }
    state
}

type Check = fn(&str);

struct Rule {
    /// The issue's item and what it checks.
    name: &'static str,
    check: Check,
}

const RULES: &[Rule] = &[
    Rule {
        name: "1. threshold is a minimum for request-success-rate",
        check: |name| {
            let o = one(podinfo_with("thresholdRange:\n        min: 99", "threshold: 99"));
            let m = &o.canary().analysis.metrics[0];
            assert_eq!(m.threshold_range, ThresholdRange { min: Some(99.0), max: None }, "{name}");
            assert!(o.has(Severity::Warning, "spec.analysis.metrics[0].threshold: deprecated; read as Flagger reads it, a minimum for request-success-rate: the same as thresholdRange: {min: 99}"), "{name}: {:#?}", o.set.problems);
            assert!(o.says("request-success-rate: passes when value >= 99 (%)"), "{name}");
        },
    },
    Rule {
        name: "1. threshold is a maximum for request-duration",
        check: |name| {
            let o = one(podinfo_with("thresholdRange:\n        max: 500", "threshold: 500"));
            let m = &o.canary().analysis.metrics[1];
            assert_eq!(m.threshold_range, ThresholdRange { min: None, max: Some(500.0) }, "{name}");
            assert!(o.has(Severity::Warning, "a maximum for request-duration (ms): the same as thresholdRange: {max: 500}"), "{name}");
        },
    },
    Rule {
        name: "1. threshold is a maximum for custom query and templateRef metrics",
        check: |name| {
            let metrics = "    - name: error-rate\n      templateRef:\n        name: error-rate\n        namespace: istio-system\n      templateVariables:\n        codes: \"5.*\"\n      threshold: 1\n    - name: latency\n      query: histogram_quantile(0.99, sum(rate(request_duration_seconds_bucket[{{ interval }}])) by (le))\n      threshold: 0.5\n    webhooks:";
            let o = load(
                &[
                    ("podinfo.yaml", podinfo_with("    webhooks:", metrics)),
                    ("template.yaml", ERROR_RATE_TEMPLATE.to_string()),
                ],
                LoadOptions::default(),
            );
            let ms = &o.canary().analysis.metrics;
            assert_eq!(ms[2].threshold_range, ThresholdRange { min: None, max: Some(1.0) }, "{name}");
            assert_eq!(ms[3].threshold_range, ThresholdRange { min: None, max: Some(0.5) }, "{name}");
            assert!(o.has(Severity::Warning, "metrics[2].threshold: deprecated; read as Flagger reads it, a maximum for a custom metric: the same as thresholdRange: {max: 1}"), "{name}");
            assert!(o.says("error-rate: passes when value <= 1; window 1m (MetricTemplate istio-system/error-rate at http://prometheus.istio-system:9090)"), "{name}");
        },
    },
    Rule {
        name: "1. thresholdRange wins over threshold, as in Flagger",
        check: |name| {
            let o = one(podinfo_with("        min: 99\n", "        min: 99\n      threshold: 50\n"));
            assert_eq!(o.canary().analysis.metrics[0].threshold_range.min, Some(99.0), "{name}");
            assert!(o.has(Severity::Warning, "metrics[0].threshold: 50 is ignored: thresholdRange is set and wins"), "{name}");
        },
    },
    Rule {
        name: "2. a template in another file resolves; a missing one names the files searched",
        check: |name| {
            let metric = "    - name: error-rate\n      templateRef:\n        name: error-rate\n        namespace: istio-system\n      templateVariables:\n        codes: \"5.*\"\n      thresholdRange:\n        max: 1\n    webhooks:";
            let canary = podinfo_with("    webhooks:", metric);
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("podinfo.yaml"), &canary).unwrap();
            let templates = dir.path().join("templates");
            std::fs::create_dir(&templates).unwrap();
            std::fs::write(templates.join("error-rate.yaml"), ERROR_RATE_TEMPLATE).unwrap();
            // A file and a directory, as `-f podinfo.yaml -f templates/`.
            let set = load_paths(&[dir.path().join("podinfo.yaml"), templates.clone()], &LoadOptions::default());
            assert!(set.errors().next().is_none(), "{name}: {:#?}", set.problems);
            assert_eq!(set.canaries[0].analysis.metrics[2].name, "error-rate");
            // Without the templates: the error names what was searched and how to fix it.
            let set = load_paths(&[dir.path().join("podinfo.yaml")], &LoadOptions::default());
            let errors: Vec<String> = set.errors().map(ToString::to_string).collect();
            assert_eq!(errors.len(), 1, "{name}: {errors:#?}");
            assert!(errors[0].contains("spec.analysis.metrics[2].templateRef: no MetricTemplate istio-system/error-rate was loaded (searched "), "{name}: {}", errors[0]);
            assert!(errors[0].contains("podinfo.yaml): pass the file that defines it too (-f)"), "{name}: {}", errors[0]);
            // In the wrong namespace: the error says where it is.
            let elsewhere = ERROR_RATE_TEMPLATE.replace("namespace: istio-system", "namespace: test");
            let o = load(&[("podinfo.yaml", canary), ("t.yaml", elsewhere)], LoadOptions::default());
            assert!(o.has(Severity::Error, "found test/error-rate in t.yaml (doc 1) (set templateRef.namespace)"), "{name}: {:#?}", o.set.problems);
        },
    },
    Rule {
        name: "3. another apiVersion is an error naming it and the supported one",
        check: |name| {
            let o = one(podinfo_with("flagger.app/v1beta1", "flagger.app/v1alpha3"));
            assert!(o.set.canaries.is_empty(), "{name}");
            assert_eq!(o.messages(Severity::Error), vec!["podinfo.yaml (doc 1): apiVersion: \"flagger.app/v1alpha3\" is not supported for a Canary: veer reads flagger.app/v1beta1 (or veer's veer.dev/v1alpha1); as Flagger's upgrade guide says, replace it with flagger.app/v1beta1 (and a Canary's spec.canaryAnalysis with spec.analysis)"], "{name}");
            assert!(o.says("No valid Canary to explain: the errors above say why."), "{name}");
            let t = ERROR_RATE_TEMPLATE.replace("flagger.app/v1beta1", "flagger.app/v1alpha1");
            let o = load(&[("podinfo.yaml", PODINFO.to_string()), ("t.yaml", t)], LoadOptions::default());
            assert!(o.has(Severity::Error, "t.yaml (doc 1): apiVersion: \"flagger.app/v1alpha1\" is not supported for a MetricTemplate: veer reads flagger.app/v1beta1"), "{name}");
        },
    },
    Rule {
        name: "3. an input with no Canary says so, never 'see the errors above'",
        check: |name| {
            let o = load(&[("templates.yaml", ERROR_RATE_TEMPLATE.to_string())], LoadOptions::default());
            assert!(o.set.problems.is_empty(), "{name}");
            assert_eq!(o.explained, "No Canary found in templates.yaml: no document of kind Canary.\n", "{name}");
            assert!(!o.says("errors above"), "{name}");
        },
    },
    Rule {
        name: "4. threshold 5 and a 60s deadline: 5 failed checks roll back, in the summary and the timeline",
        check: |name| {
            let o = one(PODINFO.to_string());
            assert!(o.says("Rollback after 5 failed checks (analysis.threshold)"), "{name}");
            assert!(o.says("Every check failing from the start: checks fail in passes 2, 3, 4, 5, 6; pass 7 rolls back at 6m"), "{name}: {}", o.explained);
            assert!(o.says("Progress deadline 1m (progressDeadlineSeconds): it bounds readiness"), "{name}");
            assert!(o.says("Local mode has no readiness to wait for, so there it does not apply."), "{name}");
            assert!(!o.says("without a weight step"), "{name}");
            let early = simulate(o.canary(), Script::FailFrom(2));
            let failing = early.iter().filter(|p| p.after.failed_checks > p.before.failed_checks).count();
            assert_eq!(failing, 5, "{name}");
            assert_eq!(early.last().unwrap().after.phase, Phase::Failed, "{name}");
        },
    },
    Rule {
        name: "4. a refusing confirm-traffic-increase gate pauses, far past the deadline, never rolls back",
        check: |name| {
            let gate = "    webhooks:\n      - name: traffic-gate\n        type: confirm-traffic-increase\n        url: http://flagger-loadtester.test/gate/check\n";
            let o = one(podinfo_with("    webhooks:\n", gate));
            let spec = o.canary();
            // 30 passes of 1m against a 60s deadline.
            let state = run_with_refusing_gate(spec, 30);
            assert_eq!((state.phase, state.weight, state.failed_checks), (Phase::Progressing, 0, 0), "{name}");
            assert!(o.says("A confirm-traffic-increase refusal pauses the run at its weight, asked again every 1m; it is not a failed check and never rolls back by itself."), "{name}");
        },
    },
    Rule {
        name: "5. provider kubernetes is Blue/Green with 10 iterations and no traffic",
        check: |name| {
            let o = one(podinfo_with("spec:\n", "spec:\n  provider: kubernetes\n"));
            let spec = o.canary();
            assert_eq!(spec.strategy(), Strategy::BlueGreen { iterations: 10, switches_traffic: false }, "{name}");
            assert!(o.has(Severity::Warning, "spec.analysis.iterations: not set: provider kubernetes has no progressive traffic, so this is a Blue/Green run of 10 iterations, as Flagger sets (stepWeight, stepWeights and maxWeight are ignored)"), "{name}");
            let passes = simulate(spec, Script::AllPass);
            assert!(passes.iter().all(|p| p.after.weight == 0 && !p.after.mirror), "{name}");
            assert_eq!(passes.last().unwrap().after.phase, Phase::Succeeded, "{name}");
            assert!(o.says("Blue/Green without traffic routing (provider kubernetes, as in Flagger): 10 passing iterations test the canary through its own Service, podinfo-canary"), "{name}");
            assert!(o.says("10 iterations done; still no traffic on the canary (provider kubernetes): one more analysis, then promotion"), "{name}: {}", o.explained);
        },
    },
    Rule {
        name: "6. an interval below 10s is raised to 10s with a warning; --min-interval lowers the floor",
        check: |name| {
            let text = podinfo_with("interval: 1m\n    threshold", "interval: 5s\n    threshold");
            let o = one(text.clone());
            assert_eq!(o.canary().interval(), Duration::from_secs(10), "{name}");
            assert!(o.has(Severity::Warning, "spec.analysis.interval: 5s is below the 10s floor: passes run every 10s (as Flagger does"), "{name}");
            assert!(o.says("One pass every 10s (analysis.interval 5s raised to the 10s floor, Flagger's)"), "{name}");
            let o = load(&[("podinfo.yaml", text)], lowered_floor());
            assert_eq!(o.canary().interval(), Duration::from_secs(5), "{name}");
            assert!(o.messages(Severity::Warning).iter().all(|w| !w.contains("interval")), "{name}");
            assert!(o.says("One pass every 5s (analysis.interval; below Flagger's 10s floor, allowed by --min-interval 1s)"), "{name}");
        },
    },
    Rule {
        name: "7. skipAnalysis: the run starts, the next pass promotes; explain names the hooks that run and those that do not",
        check: |name| {
            let o = one(podinfo_with("spec:\n", "spec:\n  skipAnalysis: true\n"));
            let passes = simulate(o.canary(), Script::AllPass);
            let phases: Vec<Phase> = passes.iter().map(|p| p.after.phase).collect();
            assert_eq!(phases, vec![Phase::Progressing, Phase::Succeeded], "{name}");
            assert!(passes[1].steps.is_empty(), "{name}: no metric or hook in the promoting pass");
            assert!(o.says("Hooks not called: pre-rollout (acceptance-test), rollout (load-test). Metrics not checked: request-success-rate, request-duration."), "{name}: {}", o.explained);
            assert!(!o.says("it has no metrics and no pre-rollout or rollout hooks"), "{name}");
            assert!(o.says("pass  2: skipAnalysis (Kubernetes mode: once the canary is ready): no metrics, no rollout hooks → the primary takes the new revision; Succeeded"), "{name}: {}", o.explained);
        },
    },
    Rule {
        name: "7. no analysis: with skipAnalysis it loads; without, an error saying how Flagger differs",
        check: |name| {
            let cut = PODINFO.find("  analysis:").unwrap();
            let bare = PODINFO[..cut].to_string();
            let o = one(bare.replace("spec:\n", "spec:\n  skipAnalysis: true\n"));
            let passes = simulate(o.canary(), Script::AllPass);
            assert_eq!(passes.last().unwrap().after.phase, Phase::Succeeded, "{name}");
            assert!(o.says("No traffic steps (no stepWeight, stepWeights or iterations, which skipAnalysis allows)"), "{name}: {}", o.explained);
            let o = one(bare);
            assert!(o.has(Severity::Error, "spec.analysis: missing: a Canary needs an analysis (interval, threshold, stepWeight or iterations, metrics). Flagger would promote every new revision unchecked, as with skipAnalysis; to mean that, set skipAnalysis: true"), "{name}: {:#?}", o.set.problems);
        },
    },
    Rule {
        name: "8. webhook retries and disableTLS are read, not warned about",
        check: |name| {
            let o = one(podinfo_with("        url: http://flagger-loadtester.test/\n        timeout: 5s\n", "        url: https://flagger-loadtester.test/\n        timeout: 5s\n        retries: 3\n        disableTLS: true\n"));
            let hook = &o.canary().hooks(HookType::Rollout)[0];
            assert_eq!((hook.retries, hook.disable_tls), (3, true), "{name}");
            assert!(o.messages(Severity::Warning).iter().all(|w| !w.contains("retries") && !w.contains("disableTLS")), "{name}: {:#?}", o.set.problems);
            assert!(o.says("rollout load-test → https://flagger-loadtester.test/ (timeout 5s, 3 retries with backoff, up to 27s in all, certificate not verified (disableTLS))"), "{name}: {}", o.explained);
            let o = one(podinfo_with("        timeout: 5s\n", "        timeout: 5s\n        retries: -1\n"));
            assert!(o.has(Severity::Error, "spec.analysis.webhooks[1].retries: must not be negative, got -1"), "{name}");
        },
    },
    Rule {
        name: "9. a slow post-rollout hook is not a per-pass delay; slow rollout hooks are",
        check: |name| {
            let post = "    webhooks:\n      - name: notify\n        type: post-rollout\n        url: http://telegram.bot:8080/\n        timeout: 5m\n";
            let o = one(podinfo_with("    webhooks:\n", post));
            assert!(!o.says("delay every pass"), "{name}: {}", o.explained);
            let o = one(podinfo_with("        timeout: 5s\n", "        timeout: 2m\n"));
            assert!(o.says("rollout hook load-test may take up to 2m in all (timeouts) but a pass comes every 1m: slow rollout hooks delay every pass."), "{name}: {}", o.explained);
        },
    },
    Rule {
        name: "kept: several series fail the check, and the message says how Flagger differs",
        check: |name| {
            let e = MetricError::SeveralSeries { count: 3, query: "rate(x[1m])".into() };
            let m = e.to_string();
            assert!(m.contains("returned 3 series, expected exactly one"), "{name}: {m}");
            assert!(m.contains("Flagger would take the last series"), "{name}: {m}");
            let o = one(PODINFO.to_string());
            assert!(o.says("no data, NaN or several series fail: Flagger also fails no data and NaN, but takes the last of several series"), "{name}");
        },
    },
];

#[test]
fn every_rule_of_issue_12_on_the_tutorial_spec() {
    // The base spec itself loads with no error and no warning.
    let base = one(PODINFO.to_string());
    assert!(base
        .set
        .problems
        .iter()
        .all(|p| p.severity == Severity::Warning));
    let failed: Vec<&str> = RULES
        .iter()
        .filter(|rule| std::panic::catch_unwind(|| (rule.check)(rule.name)).is_err())
        .map(|rule| rule.name)
        .collect();
    assert!(
        failed.is_empty(),
        "rules that failed (see above): {failed:#?}"
    );
}
