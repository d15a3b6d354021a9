#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The local control plane itself (`scripts/kube-up.sh`, `veer_e2e::kube::KubeCluster`):
//! the pinned version, pods that become Ready through kwok, ownerReference garbage
//! collection, the never-ready annotation, the controller's RBAC through its own token, the
//! Istio CRDs' validation, and that nothing survives `kube-down.sh`.
//!
//! One cluster for all the checks: on 2 cores a start costs several seconds of both.
//!
//! Needs Go for the first build of the binaries (`scripts/kube-build.sh`, cached in
//! ~/.cache/veer); a missing Go fails the test with how to install it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use veer_e2e::kube::KubeCluster;
use veer_e2e::workspace_root;

const NS: &str = "kube-up-test";
const WAIT: Duration = Duration::from_secs(60);

fn json(cluster: &KubeCluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = cluster
        .kubectl(&all)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")));
    serde_json::from_str(&out).unwrap()
}

fn deployment(name: &str, annotations: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {NS}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations: {{{annotations}}}
    spec:
      containers:
      - name: app
        image: ghcr.io/stefanprodan/podinfo:6.0.0
"#
    )
}

/// The `Ready` condition of the one pod of Deployment `app` and the pod's phase.
fn pod_state(cluster: &KubeCluster, app: &str) -> Result<(String, String), String> {
    let pods = json(
        cluster,
        &["get", "pods", "-n", NS, "-l", &format!("app={app}")],
    );
    let pod = match pods["items"].as_array().map(Vec::as_slice) {
        Some([pod]) => pod.clone(),
        other => return Err(format!("want one pod of {app}, have {other:?}")),
    };
    let ready = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let phase = pod["status"]["phase"].as_str().unwrap_or("").to_string();
    Ok((ready, phase))
}

/// `kubectl auth can-i` for veer's ServiceAccount, asked by cluster-admin impersonating it.
fn can_veer(cluster: &KubeCluster, verb: &str, resource: &str) -> bool {
    let args = [
        "auth",
        "can-i",
        "--as=system:serviceaccount:veer-system:veer-controller",
        verb,
        resource,
        "-n",
        "default",
    ];
    match cluster.kubectl(&args) {
        Ok(out) if out.trim() == "yes" => true,
        // can-i answers "no" with exit status 1.
        Err(e) if e.contains("stdout: no") => false,
        other => panic!("kubectl {}: {other:?}", args.join(" ")),
    }
}

fn virtual_service(name: &str, http: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: {NS}
spec:
  hosts: [podinfo]
  http:
{http}"#
    )
}

/// Processes whose command line mentions `dir` (kube-up puts DIR in every one's).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
            continue;
        }
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // A zombie has exited; only its reaper has yet to collect it.
        if stat
            .rsplit(')')
            .next()
            .map(str::trim_start)
            .unwrap_or("")
            .starts_with('Z')
        {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

#[test]
fn control_plane_runs_pods_collects_garbage_enforces_rbac_and_crds_and_stops_cleanly() {
    let mut cluster = KubeCluster::up().unwrap();
    let dir = cluster.dir().to_path_buf();

    // The pinned version, from the server and from kubectl.
    let pinned = cluster.version().to_string();
    let version = json(&cluster, &["version"]);
    assert_eq!(version["serverVersion"]["gitVersion"], pinned.as_str());
    assert_eq!(version["clientVersion"]["gitVersion"], pinned.as_str());
    let versions_env =
        fs::read_to_string(workspace_root().join("scripts/kube/versions.env")).unwrap();
    assert!(versions_env.contains(&format!("KUBE_VERSION={pinned}\n")));

    // A Deployment's pod becomes Ready (controller manager, scheduler, kwok), and a pod
    // annotated never-ready runs but stays unready while that happens.
    cluster.create_namespace(NS).unwrap();
    cluster.apply(&deployment("ready", "")).unwrap();
    cluster
        .apply(&deployment("unready", r#"veer.test/never-ready: "true""#))
        .unwrap();
    cluster
        .wait_for(
            "pod of Deployment ready to be Ready",
            WAIT,
            || match pod_state(&cluster, "ready")? {
                (r, p) if r == "True" && p == "Running" => Ok(()),
                other => Err(format!("(Ready, phase) = {other:?}")),
            },
        )
        .unwrap();
    cluster
        .wait_for(
            "pod of Deployment unready to run",
            WAIT,
            || match pod_state(&cluster, "unready")? {
                (_, p) if p == "Running" => Ok(()),
                other => Err(format!("(Ready, phase) = {other:?}")),
            },
        )
        .unwrap();
    let available = |name: &str| {
        json(&cluster, &["get", "deployment", name, "-n", NS])["status"]["availableReplicas"]
            .as_i64()
            .unwrap_or(0)
    };
    cluster
        .wait_for(
            "Deployment ready to be available",
            WAIT,
            || match available("ready") {
                1 => Ok(()),
                n => Err(format!("availableReplicas {n}")),
            },
        )
        .unwrap();
    // kwok has handled both pods by now (the unready one is Running), so a Ready=False here
    // is the stage's answer, not a pod that has not been reached yet.
    assert_eq!(
        pod_state(&cluster, "unready").unwrap(),
        ("False".to_string(), "Running".to_string())
    );
    assert_eq!(available("unready"), 0);

    // ownerReference garbage collection: deleting the owner deletes its child.
    cluster
        .apply(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owner\n  namespace: {NS}\n"
        ))
        .unwrap();
    let uid = json(&cluster, &["get", "configmap", "owner", "-n", NS])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    cluster
        .apply(&format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: child
  namespace: {NS}
  ownerReferences:
  - apiVersion: v1
    kind: ConfigMap
    name: owner
    uid: {uid}
"#
        ))
        .unwrap();
    cluster
        .kubectl(&["delete", "configmap", "owner", "-n", NS])
        .unwrap();
    cluster
        .wait_for(
            "the garbage collector to delete the child",
            WAIT,
            || match cluster.kubectl(&["get", "configmap", "child", "-n", NS]) {
                Err(e) if e.contains("NotFound") => Ok(()),
                other => Err(format!("child still there: {other:?}")),
            },
        )
        .unwrap();

    // The controller's ClusterRole: what it needs, and not more.
    assert!(can_veer(&cluster, "patch", "canaries/status"));
    assert!(can_veer(&cluster, "patch", "deployments"));
    assert!(!can_veer(&cluster, "delete", "deployments"));
    assert!(!can_veer(&cluster, "delete", "canaries"));
    // The same through veer's own kubeconfig (its TokenRequest token).
    let whoami = cluster
        .kubectl_as_veer(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .unwrap();
    assert_eq!(whoami, "system:serviceaccount:veer-system:veer-controller");
    cluster
        .kubectl_as_veer(&["get", "canaries", "-n", "default"])
        .unwrap();
    let denied = cluster
        .kubectl_as_veer(&["delete", "deployment", "ready", "-n", NS])
        .unwrap_err();
    assert!(denied.contains("Forbidden"), "{denied}");

    // The Istio CRDs validate: a well-formed VirtualService is accepted, a wrong type and a
    // CEL rule (timeout >= 1ms) are rejected by the API server.
    let route = "  - route:\n    - destination: {host: podinfo-primary}\n";
    cluster.apply(&virtual_service("good", route)).unwrap();
    let bad_type = cluster
        .apply(&virtual_service(
            "bad-weight",
            "  - route:\n    - destination: {host: podinfo-primary}\n      weight: heavy\n",
        ))
        .unwrap_err();
    assert!(
        bad_type.contains("weight in body must be of type integer"),
        "{bad_type}"
    );
    let bad_rule = cluster
        .apply(&virtual_service(
            "bad-timeout",
            &format!("{route}    timeout: 0s\n"),
        ))
        .unwrap_err();
    assert!(
        bad_rule.contains("spec.http[0].timeout: Invalid value: \"0s\""),
        "{bad_rule}"
    );
    assert!(cluster
        .kubectl(&["get", "virtualservice", "bad-timeout", "-n", NS])
        .is_err());

    // The Gateway API CRDs are the pinned release's standard channel, CEL rules included: a
    // filter repeated in one rule is rejected by the API server itself. veer may write
    // HTTPRoutes (provider gatewayapi:v1).
    let crd = cluster
        .kubectl(&[
            "get",
            "crd",
            "httproutes.gateway.networking.k8s.io",
            "-o",
            "json",
        ])
        .unwrap();
    let crd: serde_json::Value = serde_json::from_str(&crd).unwrap();
    let pinned = fs::read_to_string(workspace_root().join("scripts/kube/versions.env")).unwrap();
    let bundle = crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
        .as_str()
        .unwrap();
    assert!(
        pinned.contains(&format!("GATEWAY_API_VERSION={bundle}\n")),
        "installed Gateway API {bundle}, pinned: {pinned}"
    );
    assert_eq!(
        crd["metadata"]["annotations"]["gateway.networking.k8s.io/channel"],
        "standard"
    );
    assert!(crd.to_string().contains("x-kubernetes-validations"));
    assert!(can_veer(
        &cluster,
        "create",
        "httproutes.gateway.networking.k8s.io"
    ));
    assert!(!can_veer(
        &cluster,
        "delete",
        "httproutes.gateway.networking.k8s.io"
    ));
    let modifier =
        "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}]}}";
    let repeated = cluster
        .apply(&format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: repeated, namespace: {NS}}}
spec:
  parentRefs: [{{name: public-gateway}}]
  rules:
    - filters: [{modifier}, {modifier}]
      backendRefs: [{{name: podinfo-primary, port: 9898}}]
"
        ))
        .unwrap_err();
    assert!(
        repeated.contains("RequestHeaderModifier filter cannot be repeated"),
        "{repeated}"
    );

    // Stopping: every process kube-up started goes, and kube-down.sh is idempotent.
    let pids = cluster.pids().unwrap();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    for component in veer_e2e::kube::COMPONENTS {
        assert!(names.contains(&component), "{names:?}");
    }
    assert!(!processes_mentioning(&dir).is_empty());
    cluster.down().unwrap();
    let again = Command::new("bash")
        .arg(workspace_root().join("scripts/kube-down.sh"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    drop(cluster);
    let left = processes_mentioning(&dir);
    assert!(left.is_empty(), "still running: {left:#?}");
    for (name, pid) in pids {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()),
            "{name} ({pid}) survived"
        );
    }
}
