#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A release on the local control plane, as the Kubernetes-mode tests drive it: the podinfo
//! app and its Canary, kubectl as a user runs it, waits on the Canary's status, its events,
//! and the controller and gateway stack around it. Every test binary of Kubernetes mode
//! (`tests/tests/kubernetes*.rs`) uses these, so a run looks the same in all of them.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kube::KubeCluster;
use crate::process::poll_until;
use crate::stack::{Stack, StackSpec};
use crate::users::{UserLoad, UserLoadSpec};

pub const NS: &str = "test";

/// Prints how long a test took (with `--nocapture`), for the record of the suite's cost.
pub struct Took(pub &'static str, pub Instant);

impl Drop for Took {
    fn drop(&mut self) {
        println!(
            "kubernetes test {} took {:.1}s",
            self.0,
            self.1.elapsed().as_secs_f64()
        );
    }
}

/// A test's start: its turn (one test at a time), its timer, and a fresh control plane
/// with the podinfo app (ConfigMap and Deployment at `podinfo:6.0.0`) applied.
pub fn begin(test: &'static str) -> (MutexGuard<'static, ()>, Took, KubeCluster) {
    let serial = one_at_a_time();
    let took = Took(test, Instant::now());
    let cluster = KubeCluster::up().unwrap();
    cluster
        .apply(&app_yaml("podinfo", "podinfo:6.0.0"))
        .unwrap();
    (serial, took, cluster)
}

pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The app: a Deployment reading a ConfigMap, as podinfo's tutorial has it, in namespace
/// `test`.
pub fn app_yaml(name: &str, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}-config
  namespace: {NS}
data:
  color: blue
---
{}"#,
        deployment_yaml(name, image)
    )
}

pub fn deployment_yaml(name: &str, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {NS}
  labels:
    app: {name}
spec:
  replicas: 2
  progressDeadlineSeconds: 600
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: {name}
          image: {image}
          ports:
            - containerPort: 9898
          envFrom:
            - configMapRef:
                name: {name}-config
"#
    )
}

/// A Flagger Canary for `name`: every 3s, 20% steps up to 60%, sticky sessions, the two
/// builtin metrics. `extra` is appended to `spec:` (indented 2).
pub fn canary_yaml(name: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: {name}
  namespace: {NS}
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {name}
  progressDeadlineSeconds: 20
  service:
    port: 9898
    hosts:
      - app.example.com
    gateways:
      - public-gateway.istio-system.svc.cluster.local
  analysis:
    interval: 3s
    threshold: 2
    maxWeight: 60
    stepWeight: 20
    sessionAffinity:
      cookieName: flagger-cookie
      maxAge: 3600
    metrics:
      - name: request-success-rate
        interval: 10s
        thresholdRange:
          min: 99
      - name: request-duration
        interval: 10s
        thresholdRange:
          max: 250
{extra}"#
    )
}

/// [`canary_yaml`] with `provider: gatewayapi:v1`: the route attaches to the Gateway API
/// Gateway `istio-ingress/public-gateway` (`gatewayRefs`) instead of Istio's gateway.
pub fn gateway_api_canary_yaml(name: &str, extra: &str) -> String {
    let istio = "    gateways:\n      - public-gateway.istio-system.svc.cluster.local\n";
    let gateway_api =
        "    gatewayRefs:\n      - name: public-gateway\n        namespace: istio-ingress\n";
    let yaml = canary_yaml(name, &format!("  provider: gatewayapi:v1\n{extra}"));
    assert!(yaml.contains(istio), "canary_yaml changed its gateways");
    yaml.replace(istio, gateway_api)
}

pub fn kubectl(cluster: &KubeCluster, args: &[&str]) -> String {
    cluster
        .kubectl(args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

pub fn json(cluster: &KubeCluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(cluster, &all)).unwrap()
}

pub fn canary(cluster: &KubeCluster, name: &str) -> Value {
    json(cluster, &["get", "canary", name, "-n", NS])
}

pub fn deployment(cluster: &KubeCluster, name: &str) -> Option<Value> {
    cluster
        .kubectl(&["get", "deployment", name, "-n", NS, "-o", "json"])
        .ok()
        .map(|s| serde_json::from_str(&s).unwrap())
}

pub fn replicas(cluster: &KubeCluster, name: &str) -> i64 {
    deployment(cluster, name).unwrap()["spec"]["replicas"]
        .as_i64()
        .unwrap_or(1)
}

pub fn image(cluster: &KubeCluster, name: &str) -> String {
    deployment(cluster, name).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the Canary's status satisfies `pred`, returning it.
pub fn wait_canary(
    cluster: &KubeCluster,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    poll_until(what, timeout, Duration::from_millis(200), || {
        let c = canary(cluster, name);
        if pred(&c["status"]) {
            Ok(c["status"].clone())
        } else {
            Err(format!("status: {}", c["status"]))
        }
    })
    .unwrap()
}

/// `kubectl set image` on the target, as a user releases a new version.
pub fn set_image(cluster: &KubeCluster, image: &str) {
    let container = format!("podinfo={image}");
    kubectl(
        cluster,
        &["set", "image", "deployment/podinfo", &container, "-n", NS],
    );
}

/// Releases `image` on the target and waits for the run to start; returns the revision
/// under analysis (`lastAppliedSpec`).
pub fn start_run(cluster: &KubeCluster, image: &str) -> String {
    set_image(cluster, image);
    let progressing = wait_canary(
        cluster,
        "podinfo",
        "the run to start",
        Duration::from_secs(30),
        phase_is("Progressing"),
    );
    progressing["lastAppliedSpec"].as_str().unwrap().to_string()
}

/// Waits for the run to end (Succeeded or Failed) and returns the status.
pub fn wait_run_end(cluster: &KubeCluster, what: &str) -> Value {
    wait_canary(cluster, "podinfo", what, Duration::from_secs(120), |s| {
        s["phase"] == "Succeeded" || s["phase"] == "Failed"
    })
}

/// Waits until the target is scaled to zero (between runs).
pub fn wait_target_at_zero(cluster: &KubeCluster) {
    poll_until(
        "the target to be scaled to 0",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || match replicas(cluster, "podinfo") {
            0 => Ok(()),
            n => Err(format!("{n} replicas")),
        },
    )
    .unwrap();
}

pub fn phase_is(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |s: &Value| s["phase"] == phase
}

/// The messages of the Canary's events, oldest first.
pub fn events(cluster: &KubeCluster, name: &str) -> Vec<String> {
    let list = json(
        cluster,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            NS,
            "--field-selector",
            &format!("regarding.name={name},regarding.kind=Canary"),
        ],
    );
    let mut items: Vec<(String, String)> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let at = e["eventTime"]
                .as_str()
                .or(e["deprecatedFirstTimestamp"].as_str())
                .unwrap_or("")
                .to_string();
            (at, e["note"].as_str().unwrap_or("").to_string())
        })
        .collect();
    items.sort();
    items.into_iter().map(|(_, note)| note).collect()
}

/// Waits until the Canary's events include each of `texts` (substrings), and returns them.
/// Polls: the controller posts an event after the status write it reports, so a read just
/// after the phase changed can miss the newest one.
pub fn wait_events(cluster: &KubeCluster, name: &str, texts: &[&str]) -> Vec<String> {
    poll_until(
        "the Canary's events",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let seen = events(cluster, name);
            let missing: Vec<&str> = texts
                .iter()
                .copied()
                .filter(|t| !seen.iter().any(|e| e.contains(t)))
                .collect();
            if missing.is_empty() {
                Ok(seen)
            } else {
                Err(format!(
                    "no event containing {missing:?} in:\n{}",
                    seen.join("\n")
                ))
            }
        },
    )
    .unwrap()
}

/// The controller in Kubernetes mode without a gateway or Prometheus, for tests of the
/// cluster side alone (its Canaries have no metrics to query).
pub fn controller_alone(cluster: &KubeCluster, name: &str) -> crate::controller::Controller {
    controller_alone_with(cluster, name, &[])
}

/// As [`controller_alone`], with more arguments (e.g. `--namespace`).
pub fn controller_alone_with(
    cluster: &KubeCluster,
    name: &str,
    args: &[&str],
) -> crate::controller::Controller {
    let dir = crate::process::work_dir(name).unwrap();
    let listen = ([127, 0, 0, 1], crate::ports::free_port().unwrap()).into();
    crate::controller::Controller::start(
        &dir,
        crate::controller::ControllerSpec {
            canaries_dir: dir.clone(),
            state_file: dir.join("unused"),
            kubeconfig: Some(cluster.veer_kubeconfig()),
            prometheus_url: "http://127.0.0.1:9".into(),
            listen,
            metrics_set: "veer".into(),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            instance: None,
        },
    )
    .unwrap()
}

pub fn start_stack(cluster: &KubeCluster, name: &str, canary: &str) -> Stack {
    Stack::start(&stack_spec(cluster, name, canary)).unwrap()
}

/// The stack of a Kubernetes-mode test: the controller on the cluster, Canary `test/podinfo`.
pub fn stack_spec(cluster: &KubeCluster, name: &str, canary: &str) -> StackSpec {
    let mut spec = StackSpec::new(name, canary);
    spec.key = format!("{NS}/podinfo");
    spec.kubeconfig = Some(cluster.veer_kubeconfig());
    spec
}

pub fn users(stack: &Stack) -> UserLoad {
    let load = UserLoad::start(stack.gateway_addr, UserLoadSpec::new(200, 100.0)).unwrap();
    stack
        .wait_for_primary_traffic(Duration::from_secs(30))
        .unwrap();
    load
}

/// Initialization: the primary, the Services and the VirtualService exist (accepted under
/// Istio's real CRD validation), the target is at 0, the phase is Initialized.
pub fn assert_initialized(cluster: &KubeCluster, stack: &Stack) -> Value {
    let status = assert_workloads_initialized(cluster, stack);
    let vs = json(cluster, &["get", "virtualservice", "podinfo", "-n", NS]);
    assert_eq!(
        vs["spec"]["http"][0]["match"][0]["headers"]["x-veer-route"]["exact"],
        "canary"
    );
    assert_eq!(
        vs["spec"]["http"][0]["route"][0]["destination"]["host"],
        "podinfo-canary"
    );
    status
}

/// Initialization apart from the routing objects: the primary and the Services exist, the
/// target is at 0, the phase is Initialized and the gateway applied the table.
pub fn assert_workloads_initialized(cluster: &KubeCluster, stack: &Stack) -> Value {
    let status = wait_canary(
        cluster,
        "podinfo",
        "the Canary to be Initialized",
        Duration::from_secs(60),
        phase_is("Initialized"),
    );
    let primary = deployment(cluster, "podinfo-primary").expect("podinfo-primary exists");
    assert_eq!(
        primary["spec"]["selector"]["matchLabels"],
        serde_json::json!({"app": "podinfo-primary"})
    );
    assert_eq!(
        primary["spec"]["template"]["metadata"]["labels"]["app"],
        "podinfo-primary"
    );
    assert_eq!(primary["metadata"]["ownerReferences"][0]["kind"], "Canary");
    // The ConfigMap the app reads is copied for the primary, and the primary reads the copy.
    assert_eq!(
        primary["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        "podinfo-config-primary"
    );
    kubectl(
        cluster,
        &["get", "configmap", "podinfo-config-primary", "-n", NS],
    );
    for svc in ["podinfo", "podinfo-primary", "podinfo-canary"] {
        let s = json(cluster, &["get", "service", svc, "-n", NS]);
        let want = if svc == "podinfo-canary" {
            "podinfo"
        } else {
            "podinfo-primary"
        };
        assert_eq!(s["spec"]["selector"]["app"], want, "{svc}");
    }
    wait_target_at_zero(cluster);
    assert_eq!(status["conditions"][0]["type"], "Promoted");
    assert_eq!(status["conditions"][0]["status"], "True");
    // `kubectl get canaries` shows the run through Flagger's printer columns.
    let table = kubectl(cluster, &["get", "canaries", "-n", NS]);
    assert!(
        table.contains("STATUS") && table.contains("WEIGHT") && table.contains("Initialized"),
        "{table}"
    );
    stack.wait_gateway_applied(Duration::from_secs(20)).unwrap();
    status
}
