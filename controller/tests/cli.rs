#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The `veer` command line, run as the real binary: `explain`, `validate` and `render` on
//! files, and `status`, `rollout`, `pause`/`resume`, `promote` and `rollback` against a
//! running controller (with its bearer token).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::canary::quick_canary_yaml;
use support::process::{run_to_exit, text};
use support::veer::{canaries_dir, run_veer, write_spec, Controller, VEER};
use support::POLL;
use veer_testkit::poll_until_async;

const DEADLINE: Duration = Duration::from_secs(30);

fn seed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/seed-canary.yaml")
}

fn quick_canary(name: &str) -> String {
    quick_canary_yaml(name, "")
}

#[test]
fn explain_the_seed_prints_the_weight_steps_and_exits_zero() {
    let seed = seed();
    let output = run_veer(&["explain", seed.to_str().unwrap()], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        text(&output.stderr)
    );
    assert!(stdout.contains("test/podinfo"), "{stdout}");
    for step in ["0 → 10", "10 → 20", "20 → 30", "30 → 40", "40 → 50"] {
        assert!(
            stdout.contains(step),
            "missing weight step {step:?} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("maxWeight 50"), "{stdout}");
    // The seed's builtin metrics, with their PromQL rendered for the canary.
    assert!(stdout.contains("istio_requests_total"), "{stdout}");
    assert!(
        stdout.contains("destination_workload=~\"podinfo\""),
        "{stdout}"
    );

    // Another query set and scrape interval are taken into account.
    let output = run_veer(
        &[
            "explain",
            seed.to_str().unwrap(),
            "--metrics-set=veer",
            "--scrape-interval=30s",
        ],
        DEADLINE,
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!stdout.contains("istio_requests_total"), "{stdout}");
    assert!(stdout.contains("query set veer"), "{stdout}");
}

#[test]
fn explain_and_render_fail_clearly_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        quick_canary("app").replace("stepWeight: 10", "stepWeight: ten"),
    )
    .unwrap();
    for command in ["explain", "render"] {
        let output = run_veer(&[command, bad.to_str().unwrap()], DEADLINE);
        assert!(!output.status.success(), "{command} exited 0");
        let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(all.contains("bad.yaml"), "{command}: {all}");
        assert!(all.contains("spec.analysis.stepWeight"), "{command}: {all}");
    }
    let output = run_veer(&["explain", "/nonexistent/canary.yaml"], DEADLINE);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).starts_with("error: "),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn render_the_seed_prints_the_istio_resources() {
    let seed = seed();
    let output = run_veer(&["render", seed.to_str().unwrap()], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for kind in [
        "kind: Service",
        "kind: DestinationRule",
        "kind: VirtualService",
        "kind: WasmPlugin",
    ] {
        assert!(stdout.contains(kind), "missing {kind}:\n{stdout}");
    }
    // The same bytes as the library's render with the defaults.
    let set =
        veer_controller::spec::load_file(&seed, &veer_controller::spec::LoadOptions::default());
    let expected = veer_controller::render::render(
        &set.canaries[0],
        &veer_controller::render::RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(stdout, expected);

    let output = run_veer(
        &[
            "render",
            seed.to_str().unwrap(),
            "--filter-image=oci://example.org/veer:9.9.9",
            "--controller=ctl.ops:9000",
        ],
        DEADLINE,
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("oci://example.org/veer:9.9.9"), "{stdout}");
    assert!(
        stdout.contains("outbound|9000||ctl.ops.svc.cluster.local"),
        "{stdout}"
    );
    // The filter's own response metrics are off unless the controller reads them.
    assert!(expected.contains("responseMetrics: false"), "{expected}");
    let output = run_veer(
        &["render", seed.to_str().unwrap(), "--metrics-set=veer"],
        DEADLINE,
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("responseMetrics: true"), "{stdout}");
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The demo's Canary is a template (its webhook URL is only known when the demo runs).
/// `explain` and `render` on it fail with one line that says so and holds the command that
/// fills it in and runs them again; that command, run by `sh`, succeeds.
#[test]
fn a_template_is_named_as_such_with_the_command_that_fills_it_in() {
    let template = "manifests/local/demo/canary.yaml";
    let dir = tempfile::tempdir().unwrap();
    let filled = dir.path().join("canary.yaml");
    for (command, extra) in [
        ("explain", "--metrics-set=veer"),
        ("render", "--metrics-set=veer"),
    ] {
        let output = run_to_exit(
            Command::new(VEER)
                .args([command, template, extra])
                .current_dir(workspace()),
            DEADLINE,
        );
        assert!(!output.status.success(), "{command} accepted a template");
        let stderr = text(&output.stderr);
        let last = stderr.lines().last().unwrap_or("");
        let (sentence, rerun) = last
            .split_once(" e.g. ")
            .unwrap_or_else(|| panic!("no command in the last line:\n{stderr}"));
        assert_eq!(
            sentence,
            format!("error: {template} is a template: fill in ${{WEBHOOK_URL}} first,")
        );
        assert_eq!(
            rerun,
            format!(
                "WEBHOOK_URL=http://127.0.0.1:8080 envsubst '${{WEBHOOK_URL}}' < {template} \
                 > /tmp/canary.yaml && {VEER} {command} /tmp/canary.yaml {extra}"
            )
        );
        // Run as printed, into a file of this test's own.
        let rerun = rerun.replace("/tmp/canary.yaml", filled.to_str().unwrap());
        let output = run_to_exit(
            Command::new("sh")
                .args(["-c", &rerun])
                .current_dir(workspace()),
            DEADLINE,
        );
        assert!(
            output.status.success(),
            "{rerun}\n{}\n(envsubst is in Debian's gettext-base: apt-get install -y gettext-base)",
            text(&output.stderr)
        );
        assert!(text(&output.stdout).contains("test/podinfo"));
    }
}

/// What `veer explain` says about the VirtualService's gateways is what `veer render` does,
/// on the demo's Canary and on the same Canary without gateways or with `mesh`.
#[test]
fn explain_and_render_agree_on_the_gateways_of_the_demo_canary() {
    let template = std::fs::read_to_string(workspace().join("manifests/local/demo/canary.yaml"))
        .unwrap()
        .replace("${WEBHOOK_URL}", "http://127.0.0.1:8080");
    let gateways = "    gateways:\n      - istio-system/public-gateway\n";
    assert!(template.contains(gateways), "{template}");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("as shipped", template.clone()),
        ("without gateways", template.replace(gateways, "")),
        (
            "with mesh",
            template.replace(gateways, &format!("{gateways}      - mesh\n")),
        ),
    ];
    for (case, yaml) in cases {
        let file = dir.path().join("canary.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let file = file.to_str().unwrap();
        let explained = run_veer(&["explain", file], DEADLINE);
        assert!(
            explained.status.success(),
            "{case}: {}",
            text(&explained.stderr)
        );
        let explained = text(&explained.stdout);
        let rendered = run_veer(&["render", file], DEADLINE);
        if let Some(line) = explained.lines().find(|l| l.starts_with("  Gateways: ")) {
            assert!(
                rendered.status.success(),
                "{case}: explain says {line:?}, render fails: {}",
                text(&rendered.stderr)
            );
            let said: Vec<&str> = line["  Gateways: ".len()..]
                .trim_end_matches('.')
                .split(", ")
                .collect();
            let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text(&rendered.stdout))
                .map(|d| serde::Deserialize::deserialize(d).unwrap())
                .collect();
            let vs = docs
                .iter()
                .find(|d| d["kind"] == "VirtualService")
                .unwrap_or_else(|| panic!("{case}: no VirtualService rendered"));
            assert_eq!(vs["spec"]["gateways"], serde_json::json!(said), "{case}");
            assert_eq!(case, "as shipped");
        } else {
            let prefix = "  veer render refuses this Canary: ";
            let line = explained
                .lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| {
                    panic!("{case}: explain says nothing about the gateways:\n{explained}")
                });
            let reason = line[prefix.len()..].trim_end_matches('.');
            assert!(
                !rendered.status.success(),
                "{case}: explain says {line:?}, render succeeds"
            );
            let stderr = text(&rendered.stderr);
            assert!(
                stderr.contains(reason),
                "{case}: explain says {reason:?}, render says {stderr}"
            );
            assert_ne!(case, "as shipped");
        }
    }
}

#[test]
fn validate_reports_the_bad_file_with_its_field_path_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), "good.yaml", &quick_canary("good"));
    write_spec(
        dir.path(),
        "bad.yaml",
        &quick_canary("bad").replace("maxWeight: 30", "maxWeight: lots"),
    );
    let output = run_veer(&["validate", dir.path().to_str().unwrap()], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(!output.status.success(), "validate must fail:\n{stdout}");
    let error = stdout
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{stdout}"));
    assert!(error.contains("bad.yaml"), "{error}");
    assert!(error.contains("spec.analysis.maxWeight"), "{error}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains("good.yaml")),
        "{stdout}"
    );
    assert!(stdout.contains("ok: test/good"), "{stdout}");
    assert!(stdout.contains("1 canary valid"), "{stdout}");

    // Only the good file: exit 0. The seed's unused fields are warnings, not errors.
    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    std::fs::copy(seed(), dir.path().join("seed.yaml")).unwrap();
    let output = run_veer(&["validate", dir.path().to_str().unwrap()], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("warning: "), "{stdout}");
    assert!(stdout.contains("spec.autoscalerRef"), "{stdout}");
    assert!(stdout.contains("2 canaries valid"), "{stdout}");

    let output = run_veer(&["validate", "/nonexistent"], DEADLINE);
    assert!(!output.status.success());
    assert!(
        text(&output.stdout).contains("error: /nonexistent: no such file or directory"),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn kubernetes_mode_without_a_cluster_says_how_it_connects() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    let output = run_to_exit(
        std::process::Command::new(VEER)
            .args(["controller", "--kubernetes", "--listen", "127.0.0.1:0"])
            .env("KUBECONFIG", &missing)
            .env_remove("KUBERNETES_SERVICE_HOST"),
        DEADLINE,
    );
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot connect to Kubernetes (KUBECONFIG, or in-cluster config)"),
        "{stderr}"
    );
    // Local mode's flags are refused beside --kubernetes rather than silently ignored.
    let both = run_veer(
        &["controller", "--kubernetes", "--state", "x.json"],
        DEADLINE,
    );
    assert!(!both.status.success());
    assert!(
        text(&both.stderr).contains("cannot be used with"),
        "{}",
        text(&both.stderr)
    );
}

/// Runs a client command against `controller` with `VEER_TOKEN` set to `token`.
fn client(controller: &Controller, args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(VEER);
    cmd.args(args)
        .arg(format!("--server={}", controller.url))
        .env_remove("VEER_TOKEN")
        .env_remove("VEER_SERVER");
    if let Some(token) = token {
        cmd.env("VEER_TOKEN", token);
    }
    let output = run_to_exit(&mut cmd, DEADLINE);
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_rollout_and_gates_against_a_running_controller() {
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    write_spec(&canaries, "app.yaml", &quick_canary("app"));
    write_spec(&canaries, "web.yaml", &quick_canary("web"));
    let token = "s3cret-token-for-writes";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let args = vec![
        format!("--canaries={}", canaries.display()),
        format!("--state={}", dir.path().join("state.json").display()),
        format!("--token-file={}", token_file.display()),
    ];
    let controller = Controller::start(&args, dir.path().join("controller.log")).await;

    let (ok, stdout, stderr) =
        tokio::task::block_in_place(|| client(&controller, &["status"], None));
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    for column in [
        "NAME", "PHASE", "WEIGHT", "FAILED", "ITER", "REVISION", "GATEWAYS",
    ] {
        assert!(lines[0].contains(column), "{stdout}");
    }
    assert!(
        lines[1].starts_with("test/app") && lines[1].contains("Initializing"),
        "{stdout}"
    );
    assert!(lines[2].starts_with("test/web"), "{stdout}");
    assert!(stdout.contains("table generation 1"), "{stdout}");

    // Writes need the token.
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        client(
            &controller,
            &["rollout", "test/app", "--revision", "v1"],
            None,
        )
    });
    assert!(!ok);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(!stderr.contains(token));
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        client(
            &controller,
            &["rollout", "test/app", "--revision", "v1"],
            Some("wrong"),
        )
    });
    assert!(!ok, "{stderr}");

    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        client(
            &controller,
            &["rollout", "test/app", "--revision", "v1"],
            Some(token),
        )
    });
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("test/app: Initialized, weight 0"),
        "{stdout}"
    );

    // Pause before the run starts: the revision waits.
    let (ok, _, stderr) =
        tokio::task::block_in_place(|| client(&controller, &["pause", "test/app"], Some(token)));
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        client(
            &controller,
            &["rollout", "test/app", "--revision", "v2"],
            Some(token),
        )
    });
    assert!(ok, "{stderr}");
    let paused = controller.canary("test/app").await;
    assert_eq!(paused["paused"], true);
    assert_eq!(
        paused["phase"], "Initialized",
        "paused: no pass starts the run: {paused}"
    );
    let (ok, stdout, _) = tokio::task::block_in_place(|| client(&controller, &["status"], None));
    assert!(ok && stdout.contains("(paused)"), "{stdout}");

    let (ok, _, stderr) =
        tokio::task::block_in_place(|| client(&controller, &["resume", "test/app"], Some(token)));
    assert!(ok, "{stderr}");
    poll_until_async("test/app at weight 10", DEADLINE, POLL, || async {
        let s = controller.canary("test/app").await;
        (s["weight"].as_u64() >= Some(10))
            .then_some(())
            .ok_or(format!("{} at {}", s["phase"], s["weight"]))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Manual promotion from Progressing.
    let (ok, stdout, stderr) =
        tokio::task::block_in_place(|| client(&controller, &["promote", "test/app"], Some(token)));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Promoting")
            || stdout.contains("Finalising")
            || stdout.contains("Succeeded"),
        "{stdout}"
    );
    poll_until_async("test/app Succeeded", DEADLINE, POLL, || async {
        let s = controller.canary("test/app").await;
        (s["phase"] == "Succeeded")
            .then_some(())
            .ok_or(format!("{}", s["phase"]))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let done = controller.canary("test/app").await;
    assert_eq!(done["primaryRevision"], "v2");
    assert_eq!(done["weight"], 0);

    // A command that does not apply is a clear error, not a silent no-op.
    let (ok, _, stderr) =
        tokio::task::block_in_place(|| client(&controller, &["rollback", "test/app"], Some(token)));
    assert!(!ok);
    assert!(
        stderr.contains("409") && stderr.contains("Succeeded"),
        "{stderr}"
    );
    let (ok, _, stderr) =
        tokio::task::block_in_place(|| client(&controller, &["promote", "test/nope"], Some(token)));
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");
    let (ok, _, stderr) =
        tokio::task::block_in_place(|| client(&controller, &["promote", "no-slash"], Some(token)));
    assert!(!ok);
    assert!(stderr.contains("NAMESPACE/NAME"), "{stderr}");

    // Rollback of a running canary.
    for revision in ["w1", "w2"] {
        let (ok, _, stderr) = tokio::task::block_in_place(|| {
            client(
                &controller,
                &["rollout", "test/web", "--revision", revision],
                Some(token),
            )
        });
        assert!(ok, "{stderr}");
    }
    poll_until_async("test/web Progressing", DEADLINE, POLL, || async {
        let s = controller.canary("test/web").await;
        (s["phase"] == "Progressing")
            .then_some(())
            .ok_or(format!("{}", s["phase"]))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (ok, stdout, stderr) =
        tokio::task::block_in_place(|| client(&controller, &["rollback", "test/web"], Some(token)));
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("test/web: Failed, weight 0"), "{stdout}");

    // A gateway that confirms the current generation has applied every canary's weight;
    // one behind has not applied the latest change.
    let http = reqwest::Client::new();
    let current = controller.table().await.unwrap()["generation"]
        .as_u64()
        .unwrap();
    for (gateway, generation) in [("gw-a", current), ("gw-b", current - 1)] {
        let response = http
            .get(format!(
                "{}/v1/table?after={generation}&waitMs=0",
                controller.url
            ))
            .header(veer_core::GATEWAY_ID_HEADER, gateway)
            .header(veer_core::GATEWAY_GENERATION_HEADER, generation.to_string())
            .send()
            .await
            .unwrap();
        assert!(matches!(response.status().as_u16(), 200 | 304));
    }
    let (ok, stdout, _) = tokio::task::block_in_place(|| client(&controller, &["status"], None));
    assert!(ok);
    let web = stdout.lines().find(|l| l.starts_with("test/web")).unwrap();
    assert!(web.contains("1/2 applied"), "{stdout}");
    assert!(stdout.contains("2 gateways polling"), "{stdout}");
    let web = controller.canary("test/web").await;
    let seen: Vec<(String, u64, bool)> = web["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let id = g["id"].as_str().unwrap().to_string();
            (
                id,
                g["generation"].as_u64().unwrap(),
                g["applied"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("gw-a".into(), current, true),
            ("gw-b".into(), current - 1, false)
        ],
        "{web}"
    );
    let list = controller.get_json("/v1/canaries").await;
    let web_in_list = list["canaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "test/web")
        .unwrap();
    assert_eq!(web_in_list["gatewaysBehind"][0]["id"], "gw-b", "{list}");

    let (ok, stdout, _) =
        tokio::task::block_in_place(|| client(&controller, &["status", "--json"], None));
    assert!(ok);
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["canaries"].as_array().unwrap().len(), 2);
    assert!(
        !controller.log_text().contains(token),
        "the token must never be logged"
    );

    // Nobody listening: a clear error.
    let mut cmd = Command::new(VEER);
    cmd.args(["status", "--server=http://127.0.0.1:9"]);
    let output = run_to_exit(&mut cmd, DEADLINE);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("cannot reach the controller"),
        "{}",
        text(&output.stderr)
    );
}

const TEMPLATE: &str = "apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: error-rate
  namespace: test
spec:
  provider:
    type: prometheus
  query: sum(rate(errors{app=\"{{ target }}\"}[{{ interval }}]))
";

/// A quick canary whose metric is the `error-rate` template.
fn canary_with_template(name: &str) -> String {
    quick_canary_yaml(
        name,
        "    metrics:\n      - name: errors\n        templateRef:\n          name: error-rate\n        thresholdRange:\n          max: 1\n",
    )
}

/// `-f` as kubectl takes it: repeated, comma-separated, files and directories, mixed with
/// plain arguments; templates resolve across all of them, and a missing one names the
/// files searched.
#[test]
fn explain_and_validate_take_several_files_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary.yaml");
    std::fs::write(&canary, canary_with_template("app")).unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("error-rate.yaml"), TEMPLATE).unwrap();
    let (c, t) = (canary.to_str().unwrap(), templates.to_str().unwrap());

    for args in [
        vec!["-f", c, "-f", t],
        vec![c, t],
        vec!["-f", &format!("{c},{t}")],
        vec![c, "--filename", t],
    ] {
        for command in ["explain", "validate"] {
            let mut all = vec![command, "--min-interval=1s"];
            all.extend(&args);
            let output = run_veer(&all, DEADLINE);
            let stdout = text(&output.stdout);
            assert!(
                output.status.success(),
                "{all:?}: {}\n{stdout}",
                text(&output.stderr)
            );
            if command == "explain" {
                assert!(
                    stdout.contains("errors: passes when value <= 1; window 1m (MetricTemplate test/error-rate)"),
                    "{all:?}: {stdout}"
                );
            } else {
                assert!(
                    stdout.contains("1 canary valid, 1 metric template, 0 errors, 0 warnings"),
                    "{all:?}: {stdout}"
                );
            }
        }
    }

    // The canary alone: the error names the template and the file searched.
    let output = run_veer(&["validate", "-f", c], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "spec.analysis.metrics[0].templateRef: no MetricTemplate test/error-rate was loaded (searched {c})"
        )),
        "{stdout}"
    );
    let output = run_veer(&["explain", "-f", c], DEADLINE);
    assert!(!output.status.success());
    assert_eq!(
        text(&output.stderr).trim(),
        "error: 1 error (listed above): no valid Canary to explain"
    );

    // No path at all is a usage error.
    let output = run_veer(&["validate"], DEADLINE);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}

/// An input holding no Canary, or only documents of an unsupported apiVersion, is an
/// error, and explain never points at errors that are not there.
#[test]
fn inputs_without_a_canary_fail_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let only_template = dir.path().join("template.yaml");
    std::fs::write(&only_template, TEMPLATE).unwrap();
    let path = only_template.to_str().unwrap();

    let output = run_veer(&["validate", path], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "error: no Canary found in {path}: no document of kind Canary"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 canaries valid, 1 metric template, 1 error"),
        "{stdout}"
    );

    let output = run_veer(&["explain", path], DEADLINE);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success());
    assert!(
        !stdout.contains("errors above") && !stderr.contains("errors above"),
        "{stdout}{stderr}"
    );
    assert_eq!(
        stderr.trim(),
        format!("error: no Canary found in {path}: no document of kind Canary")
    );

    // flagger.app/v1alpha3, as in Flagger's kustomize README: an error, not "0 errors".
    let old = dir.path().join("old.yaml");
    std::fs::write(
        &old,
        quick_canary("app").replace("flagger.app/v1beta1", "flagger.app/v1alpha3"),
    )
    .unwrap();
    let output = run_veer(&["validate", old.to_str().unwrap()], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("apiVersion: \"flagger.app/v1alpha3\" is not supported for a Canary: veer reads flagger.app/v1beta1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 canaries valid, 0 metric templates, 1 error"),
        "{stdout}"
    );
    let output = run_veer(&["explain", old.to_str().unwrap()], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("No valid Canary to explain: the errors above say why."),
        "{stdout}"
    );
}

/// `--min-interval`: Flagger's 10s floor by default, for the controller as for explain and
/// validate; lowered for tests and demos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interval_floor_is_flaggers_unless_lowered() {
    let dir = tempfile::tempdir().unwrap();
    let canaries = canaries_dir(dir.path());
    write_spec(&canaries, "app.yaml", &quick_canary("app"));
    let file = canaries.join("app.yaml");
    let path = file.to_str().unwrap();

    let output = run_veer(&["validate", path], DEADLINE);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "a warning only: {stdout}");
    assert!(
        stdout.contains("spec.analysis.interval: 1s is below the 10s floor: passes run every 10s"),
        "{stdout}"
    );
    let output = run_veer(&["validate", "--min-interval=1s", path], DEADLINE);
    assert!(
        !text(&output.stdout).contains("floor"),
        "{}",
        text(&output.stdout)
    );
    let output = run_veer(&["explain", path], DEADLINE);
    assert!(
        text(&output.stdout).contains(
            "One pass every 10s (analysis.interval 1s raised to the 10s floor, Flagger's)"
        ),
        "{}",
        text(&output.stdout)
    );
    let output = run_veer(&["explain", "--min-interval=10ms", path], DEADLINE);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("10ms is below 100ms"),
        "{}",
        text(&output.stderr)
    );

    // The controller: the API shows the interval it runs.
    for (flag, interval) in [("--min-interval=10s", "10s"), ("--min-interval=1s", "1s")] {
        let run = dir.path().join(interval);
        std::fs::create_dir(&run).unwrap();
        let args = vec![
            format!("--canaries={}", canaries.display()),
            format!("--state={}", run.join("state.json").display()),
            flag.to_string(),
        ];
        let c = Controller::start(&args, run.join("controller.log")).await;
        assert_eq!(c.canary("test/app").await["interval"], interval, "{flag}");
    }
}
