#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Kubernetes mode end to end, on a real control plane (`scripts/kube-up.sh`: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and kwok for the pods), driven
//! with kubectl as a user drives it. The controller runs `veer controller --kubernetes`
//! under the ServiceAccount and ClusterRole that `manifests/` ship. Traffic goes through the
//! real gateway Envoy with the filter pulling the controller's table, and the analysis reads
//! real Prometheus metrics of that gateway (metric set `veer`).
//!
//! What is simulated: the Deployments' pods are kwok's (Running and Ready with no
//! container), so the gateway's two upstreams are local backends standing in for the
//! `-primary` and `-canary` Services, and the VirtualService veer creates is checked by the
//! API server (Istio's CRD validation) but not translated by istiod.
//!
//! The tests run one at a time, like the full-loop tests: each brings up its own control
//! plane and runs ~8 processes.

use std::time::{Duration, Instant};

use veer_e2e::backend::Fault;
use veer_e2e::kube::KubeCluster;
use veer_e2e::kube_release::*;
use veer_e2e::process::poll_until;

/// A new image is released: the canary scales up, the weight rises step by step in the
/// table and in `status.canaryWeight`, the controller is killed with SIGKILL mid-run and
/// resumes at the same weight with the generation still rising, the primary ends with the
/// new image, the target is back at 0, Succeeded, with Flagger's events along the way.
/// Then a ConfigMap change alone starts the next run, and its promotion updates the
/// primary's `-primary` copy.
#[test]
fn new_image_is_released_through_the_filter_and_survives_a_controller_kill() {
    let (_serial, _took, cluster) =
        begin("new_image_is_released_through_the_filter_and_survives_a_controller_kill");
    let mut stack = start_stack(&cluster, "k8s-release", &canary_yaml("podinfo", ""));
    cluster.apply(&stack.canary_yaml).unwrap();
    let initialized = assert_initialized(&cluster, &stack);
    let first_revision = initialized["lastPromotedSpec"]
        .as_str()
        .unwrap()
        .to_string();
    let load = users(&stack);

    let started = Instant::now();
    let revision = start_run(&cluster, "podinfo:6.1.0");
    assert_ne!(revision, first_revision);
    poll_until(
        "the canary to be scaled up",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || match replicas(&cluster, "podinfo") {
            0 => Err("0 replicas".to_string()),
            _ => Ok(()),
        },
    )
    .unwrap();

    // Mid-run, kill -9 the controller and start it again.
    let at_kill = wait_canary(
        &cluster,
        "podinfo",
        "the weight to reach 20",
        Duration::from_secs(60),
        |s| s["canaryWeight"].as_f64().unwrap_or(0.0) >= 20.0 && s["phase"] == "Progressing",
    );
    let weight_at_kill = at_kill["canaryWeight"].as_f64().unwrap();
    let generation_at_kill = stack.table_log.generation();
    stack.controller.kill();
    stack.controller.restart().unwrap();
    // The restarted controller serves the run's weight from the status, at a higher
    // generation, before it has run a pass.
    let resumed = poll_until(
        "the restarted controller to serve the run",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let s = stack.controller.canary(&stack.key)?;
            if s["canaryRevision"] == revision.as_str() {
                Ok(s)
            } else {
                Err(format!("{s}"))
            }
        },
    )
    .unwrap();
    assert!(
        resumed["weight"].as_f64().unwrap() >= weight_at_kill,
        "resumed at {} after killing at {weight_at_kill}",
        resumed["weight"]
    );
    poll_until(
        "the generation to rise past the one before the kill",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let g = stack.table_log.generation();
            if g > generation_at_kill {
                Ok(())
            } else {
                Err(format!(
                    "generation {g}, before the kill {generation_at_kill}"
                ))
            }
        },
    )
    .unwrap();

    let end = wait_run_end(&cluster, "the run to succeed");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    assert_eq!(end["lastPromotedSpec"], revision.as_str());
    assert_eq!(end["canaryWeight"], 0.0);
    assert_eq!(image(&cluster, "podinfo-primary"), "podinfo:6.1.0");
    wait_target_at_zero(&cluster);
    // The weights the table served for this revision rose step by step.
    let weights: Vec<u32> = {
        let mut out: Vec<u32> = Vec::new();
        for t in stack.table_log.tables() {
            if let Some(r) = t.route.filter(|r| r.revision == revision) {
                if out.last() != Some(&r.weight) {
                    out.push(r.weight);
                }
            }
        }
        out
    };
    assert!(
        weights.windows(2).take_while(|w| w[1] > w[0]).count() >= 2
            && weights.contains(&2000)
            && weights.contains(&4000)
            && weights.contains(&6000),
        "weights served: {weights:?}"
    );
    wait_events(
        &cluster,
        "podinfo",
        &[
            "Initialization done!",
            "New revision detected! Scaling up podinfo.test",
            "canary weight 20",
            "canary weight 40",
            "Copying podinfo.test template spec to podinfo-primary.test",
            "Promotion completed!",
        ],
    );
    let describe = kubectl(&cluster, &["describe", "canary", "podinfo", "-n", NS]);
    assert!(describe.contains("Synced"), "{describe}");
    println!(
        "release with a controller kill: {:.1}s from set image to Succeeded",
        started.elapsed().as_secs_f64()
    );

    // A ConfigMap change alone starts a run; on promotion the primary's copy follows.
    stack.primary.set_identity("v2");
    kubectl(
        &cluster,
        &[
            "patch",
            "configmap",
            "podinfo-config",
            "-n",
            NS,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"color":"green"}}"#,
        ],
    );
    let second = wait_canary(
        &cluster,
        "podinfo",
        "a run for the ConfigMap change",
        Duration::from_secs(30),
        |s| s["phase"] == "Progressing" && s["lastAppliedSpec"] != revision.as_str(),
    );
    assert_eq!(
        second["trackedConfigs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["configmap/podinfo-config"]
    );
    let end = wait_run_end(&cluster, "the ConfigMap run to end");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    let copy = json(
        &cluster,
        &["get", "configmap", "podinfo-config-primary", "-n", NS],
    );
    assert_eq!(copy["data"]["color"], "green");
    drop(load);
}

/// Failing metrics roll the run back: Failed, the primary keeps the old image, the target
/// goes back to 0. Then a canary that never becomes Ready fails after
/// `progressDeadlineSeconds` (20s here).
#[test]
fn failing_metrics_and_an_unready_canary_roll_back() {
    let (_serial, _took, cluster) = begin("failing_metrics_and_an_unready_canary_roll_back");
    let stack = start_stack(&cluster, "k8s-rollback", &canary_yaml("podinfo", ""));
    cluster.apply(&stack.canary_yaml).unwrap();
    assert_initialized(&cluster, &stack);
    let _load = users(&stack);

    stack.canary.set_fault(Fault {
        status: 500,
        percent: 30,
        delay_ms: 0,
    });
    set_image(&cluster, "podinfo:6.1.0");
    let end = wait_run_end(&cluster, "the faulty run to end");
    assert_eq!(end["phase"], "Failed", "{end}");
    assert_eq!(end["canaryWeight"], 0.0);
    assert_eq!(end["conditions"][0]["status"], "False");
    assert_eq!(image(&cluster, "podinfo-primary"), "podinfo:6.0.0");
    wait_events(&cluster, "podinfo", &["failed checks threshold reached"]);
    wait_target_at_zero(&cluster);

    // A canary whose pods never become Ready (kwok's stage skips the annotation).
    stack.canary.set_fault(Fault::default());
    let started = Instant::now();
    kubectl(
        &cluster,
        &[
            "patch",
            "deployment",
            "podinfo",
            "-n",
            NS,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"template":{"metadata":{"annotations":{"veer.test/never-ready":"true"}},"spec":{"containers":[{"name":"podinfo","image":"podinfo:6.2.0"}]}}}}"#,
        ],
    );
    wait_canary(
        &cluster,
        "podinfo",
        "the run of the unready canary to start",
        Duration::from_secs(30),
        phase_is("Progressing"),
    );
    let end = wait_canary(
        &cluster,
        "podinfo",
        "the unready canary to fail",
        Duration::from_secs(90),
        |s| s["phase"] == "Failed",
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(20),
        "failed after {took:?}, before the 20s deadline"
    );
    assert_eq!(end["canaryWeight"], 0.0, "no traffic ever went to it");
    wait_events(
        &cluster,
        "podinfo",
        &[
            "progress deadline exceeded",
            "updated replicas are available",
        ],
    );
    assert_eq!(image(&cluster, "podinfo-primary"), "podinfo:6.0.0");
}

/// An invalid Canary gets a condition and a Warning event naming the field, and a valid
/// Canary in the same namespace still completes its run. A target that is not a
/// Deployment and a `-primary` owned by someone else are refused with who owns it.
#[test]
fn an_invalid_canary_is_reported_and_does_not_stop_the_others() {
    let (_serial, _took, cluster) =
        begin("an_invalid_canary_is_reported_and_does_not_stop_the_others");
    let mut stack = start_stack(&cluster, "k8s-invalid", &canary_yaml("podinfo", ""));
    // stepWeight above 100 passes the CRD's schema but not veer's checks.
    let invalid = canary_yaml("broken", "").replace("stepWeight: 20", "stepWeight: 120");
    cluster.apply(&invalid).unwrap();
    // A target whose `-primary` already exists, made by hand.
    cluster.apply(&app_yaml("taken", "taken:1")).unwrap();
    cluster
        .apply(&deployment_yaml("taken-primary", "taken:1"))
        .unwrap();
    cluster.apply(&canary_yaml("taken", "")).unwrap();
    cluster.apply(&stack.canary_yaml).unwrap();

    let broken = wait_canary(
        &cluster,
        "broken",
        "the invalid Canary's condition",
        Duration::from_secs(30),
        |s| s["conditions"][0]["reason"] == "ReconcileError",
    );
    let message = broken["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("spec.analysis.stepWeight"), "{message}");
    wait_events(&cluster, "broken", &["spec.analysis.stepWeight"]);
    let taken = wait_canary(
        &cluster,
        "taken",
        "the refusal to adopt taken-primary",
        Duration::from_secs(30),
        |s| s["conditions"][0]["reason"] == "ReconcileError",
    );
    let message = taken["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("deployment test/taken-primary exists and is controlled by no controller"),
        "{message}"
    );
    // veer did not touch it.
    let hand_made = deployment(&cluster, "taken-primary").unwrap();
    assert!(hand_made["metadata"]["ownerReferences"].is_null());

    assert_initialized(&cluster, &stack);
    let _load = users(&stack);
    set_image(&cluster, "podinfo:6.1.0");
    let end = wait_run_end(&cluster, "the valid Canary's run to end");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    assert!(stack.controller.is_running(), "the controller kept running");
}

/// The controller runs as the shipped ServiceAccount: with one verb taken out of the
/// shipped ClusterRole (patch on canaries/status), it fails with an error that names the
/// refused request, and nothing is written; with the verb back, it initializes.
#[test]
fn a_verb_missing_from_the_cluster_role_fails_with_a_clear_error() {
    let _serial = one_at_a_time();
    let _took = Took(
        "a_verb_missing_from_the_cluster_role_fails_with_a_clear_error",
        Instant::now(),
    );
    let cluster = KubeCluster::up().unwrap();
    let role_file = veer_e2e::workspace_root().join("manifests/kubernetes/rbac.yaml");
    let role = std::fs::read_to_string(&role_file).unwrap();
    let rule = "resources: [\"canaries/status\"]\n    verbs: [\"get\", \"patch\"]";
    assert!(
        role.contains(rule),
        "the shipped role changed shape: {role}"
    );
    cluster
        .apply(&role.replace(
            rule,
            "resources: [\"canaries/status\"]\n    verbs: [\"get\"]",
        ))
        .unwrap();
    cluster
        .apply(&app_yaml("podinfo", "podinfo:6.0.0"))
        .unwrap();
    let stack = start_stack(&cluster, "k8s-rbac", &canary_yaml("podinfo", ""));
    cluster.apply(&stack.canary_yaml).unwrap();
    poll_until(
        "the controller to report the refused status write",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let log = stack.controller.log();
            if log.contains("cannot patch resource \\\"canaries/status\\\"")
                || log.contains("cannot patch resource \"canaries/status\"")
            {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .unwrap();
    let log = stack.controller.log();
    assert!(
        log.contains("system:serviceaccount:veer-system:veer-controller"),
        "the error names the account: {log}"
    );
    assert!(canary(&cluster, "podinfo")["status"]["phase"].is_null());

    cluster.apply(&role).unwrap();
    wait_canary(
        &cluster,
        "podinfo",
        "the Canary to be Initialized once the verb is back",
        Duration::from_secs(60),
        phase_is("Initialized"),
    );
}

/// A hundred Canaries in one namespace all initialize (primaries, Services,
/// VirtualServices, targets scaled to 0); the controller's resident memory with them is
/// printed for the record (not asserted: memory targets belong in benchmarks).
#[test]
fn a_hundred_canaries_initialize() {
    let _serial = one_at_a_time();
    let _took = Took("a_hundred_canaries_initialize", Instant::now());
    let cluster = KubeCluster::up().unwrap();
    let count = 100;
    let mut yaml = app_yaml("app-0", "app:1");
    yaml.push_str("---\n");
    yaml.push_str(&canary_yaml("app-0", ""));
    for i in 1..count {
        let name = format!("app-{i}");
        yaml.push_str("---\n");
        yaml.push_str(
            &app_yaml(&name, "app:1")
                .split_once("---\n")
                .unwrap()
                .1
                .replace("replicas: 2", "replicas: 1"),
        );
        yaml.push_str("---\n");
        yaml.push_str(&canary_yaml(&name, "").replace(
            "      - app.example.com",
            &format!("      - {name}.example.com"),
        ));
    }
    cluster.apply(&yaml).unwrap();
    let controller = controller_alone(&cluster, "k8s-hundred");
    let started = Instant::now();
    poll_until(
        "every Canary to be Initialized",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || {
            let list = json(&cluster, &["get", "canaries", "-n", NS]);
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let done = items
                .iter()
                .filter(|c| c["status"]["phase"] == "Initialized")
                .count();
            if done == count {
                Ok(())
            } else {
                Err(format!("{done} of {count} Initialized"))
            }
        },
    )
    .unwrap();
    let took = started.elapsed();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", controller.pid().unwrap())).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    println!(
        "{count} Canaries initialized in {:.1}s; controller {rss}",
        took.as_secs_f64()
    );
    let served = controller
        .canary(&format!("{NS}/app-{}", count - 1))
        .unwrap();
    assert_eq!(served["phase"], "Initialized");
}

/// The cluster a Flagger user migrates from: Flagger's own Canary CRD instead of veer's
/// (it prunes `status.veerState`). A release still runs, and a controller restarted
/// mid-run resumes from Flagger's status fields alone. Flagger's CRD is reference material
/// beside developers' and CI's checkouts (`../shared/crds/`), not part of the repository.
#[test]
fn a_release_runs_under_flaggers_own_crd() {
    let flagger_crds = veer_e2e::workspace_root().join("../shared/crds/flagger-crds.yaml");
    if !flagger_crds.is_file() {
        eprintln!(
            "{} is not here; this cluster shape is not tried",
            flagger_crds.display()
        );
        return;
    }
    let _serial = one_at_a_time();
    let _took = Took("a_release_runs_under_flaggers_own_crd", Instant::now());
    let crds = flagger_crds.to_string_lossy().to_string();
    let cluster = KubeCluster::up_with(&[("VEER_FLAGGER_CRDS", &crds)]).unwrap();
    let crd = json(&cluster, &["get", "crd", "canaries.flagger.app"]);
    assert!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
        "not Flagger's CRD: {}",
        crd["metadata"]
    );
    cluster
        .apply(&app_yaml("podinfo", "podinfo:6.0.0"))
        .unwrap();
    // No metrics: the run's steps are gated by readiness and the engine alone.
    let canary = canary_yaml("podinfo", "")
        .split("    metrics:")
        .next()
        .unwrap()
        .replace("interval: 3s", "interval: 2s")
        .to_string();
    cluster.apply(&canary).unwrap();
    let mut controller = controller_alone(&cluster, "k8s-flagger-crd");
    let initialized = wait_canary(
        &cluster,
        "podinfo",
        "the Canary to be Initialized",
        Duration::from_secs(60),
        phase_is("Initialized"),
    );
    assert!(
        initialized["veerState"].is_null(),
        "Flagger's CRD keeps no veerState"
    );
    set_image(&cluster, "podinfo:6.1.0");
    let at_kill = wait_canary(
        &cluster,
        "podinfo",
        "the weight to reach 20",
        Duration::from_secs(60),
        |s| s["canaryWeight"].as_f64().unwrap_or(0.0) >= 20.0 && s["phase"] == "Progressing",
    );
    controller.kill();
    controller.restart().unwrap();
    let resumed = poll_until(
        "the restarted controller to serve the run",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let s = controller.canary(&format!("{NS}/podinfo"))?;
            if s["phase"] == "Progressing" {
                Ok(s)
            } else {
                Err(format!("{s}"))
            }
        },
    )
    .unwrap();
    assert!(resumed["weight"].as_f64().unwrap() >= at_kill["canaryWeight"].as_f64().unwrap());
    let end = wait_run_end(&cluster, "the run to end");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    assert_eq!(image(&cluster, "podinfo-primary"), "podinfo:6.1.0");
}

/// `--namespace a --namespace b`: the Canaries of both namespaces are run, those of a third
/// are not touched. (Each namespace has its own watch and store: one store fed by two
/// watches would lose one namespace's objects whenever the other's watch lists.)
#[test]
fn a_controller_scoped_to_two_namespaces_runs_both_and_no_other() {
    let _serial = one_at_a_time();
    let _took = Took(
        "a_controller_scoped_to_two_namespaces_runs_both_and_no_other",
        Instant::now(),
    );
    let cluster = KubeCluster::up().unwrap();
    let in_namespace = |yaml: &str, ns: &str| {
        yaml.replace(&format!("namespace: {NS}"), &format!("namespace: {ns}"))
            .replace(
                &format!("kind: Namespace\nmetadata:\n  name: {NS}"),
                &format!("kind: Namespace\nmetadata:\n  name: {ns}"),
            )
    };
    for ns in ["team-a", "team-b", "team-c"] {
        cluster
            .apply(&in_namespace(&app_yaml("podinfo", "podinfo:6.0.0"), ns))
            .unwrap();
        cluster
            .apply(&in_namespace(&canary_yaml("podinfo", ""), ns))
            .unwrap();
    }
    let _controller = controller_alone_with(
        &cluster,
        "k8s-two-namespaces",
        &["--namespace", "team-a", "--namespace", "team-b"],
    );
    for ns in ["team-a", "team-b"] {
        poll_until(
            &format!("the Canary in {ns} to be Initialized"),
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let c = cluster
                    .kubectl(&["get", "canary", "podinfo", "-n", ns, "-o", "json"])
                    .map_err(|e| e.to_string())?;
                let c: serde_json::Value = serde_json::from_str(&c).unwrap();
                if c["status"]["phase"] == "Initialized" {
                    Ok(())
                } else {
                    Err(format!("status {}", c["status"]))
                }
            },
        )
        .unwrap();
        cluster
            .kubectl(&["get", "deployment", "podinfo-primary", "-n", ns])
            .unwrap();
    }
    // Out of scope: no status, no primary (both namespaces above were already done, so the
    // controller has had its chance at this one).
    let c: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl(&["get", "canary", "podinfo", "-n", "team-c", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    assert!(c["status"].is_null(), "team-c was touched: {}", c["status"]);
    assert!(cluster
        .kubectl(&["get", "deployment", "podinfo-primary", "-n", "team-c"])
        .is_err());
}
