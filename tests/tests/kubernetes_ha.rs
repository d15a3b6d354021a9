#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Two controller replicas with leader election, on the real control plane
//! (`scripts/kube-up.sh`), behind the gateway's controller cluster as behind a Service
//! (round robin): a leader killed with SIGKILL, a leader paused with SIGSTOP (it cannot
//! renew; the API server stays up), and a rolling restart, each in the middle of a run.
//!
//! Each test asserts what a user relies on: the run continues at the weight it had and
//! promotes; the once-per-run webhooks fire once; the table generation the gateway applied
//! never goes back; a paused leader that resumes writes nothing.
//!
//! Lease timings are short (4s lease, 3s renew deadline, 500ms retry) so that a failover
//! takes seconds; the manifests ship Flagger's 60s/15s/5s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use veer_e2e::client::HttpClient;
use veer_e2e::controller::Controller;
use veer_e2e::envoy::prometheus_value;
use veer_e2e::kube::KubeCluster;
use veer_e2e::kube_release::*;
use veer_e2e::process::poll_until;
use veer_e2e::stack::{Stack, StackSpec};

const LEASE: &str = "veer-leader-election";
const LEASE_DURATION: Duration = Duration::from_secs(4);

/// The release Canary of the Kubernetes tests ([`canary_yaml`]) with six 10% steps every 2s,
/// a longer progress deadline and threshold (a takeover costs a few seconds), and the
/// once-per-run webhooks (pre-rollout and post-rollout) at the receiver.
fn ha_canary() -> String {
    let webhooks = "    webhooks:
      - name: pre
        type: pre-rollout
        url: ${WEBHOOK_URL}/pre
      - name: post
        type: post-rollout
        url: ${WEBHOOK_URL}/post
";
    let yaml = canary_yaml("podinfo", webhooks);
    let mut out = yaml.clone();
    for (from, to) in [
        ("progressDeadlineSeconds: 20", "progressDeadlineSeconds: 60"),
        ("interval: 3s", "interval: 2s"),
        ("threshold: 2", "threshold: 3"),
        ("stepWeight: 20", "stepWeight: 10"),
    ] {
        assert_eq!(yaml.matches(from).count(), 1, "canary_yaml changed: {from}");
        out = out.replace(from, to);
    }
    out
}

fn start_replicas(cluster: &KubeCluster, name: &str) -> Stack {
    let mut spec = StackSpec::new(name, &ha_canary());
    spec.key = format!("{NS}/podinfo");
    spec.kubeconfig = Some(cluster.veer_kubeconfig());
    spec.replicas = 2;
    spec.controller_args = vec![
        format!(
            "--leader-election-lease-duration={}s",
            LEASE_DURATION.as_secs()
        ),
        "--leader-election-renew-deadline=3s".into(),
        "--leader-election-retry-period=500ms".into(),
    ];
    Stack::start(&spec).unwrap()
}

/// The replica holding the Lease (`replica-0` or `replica-1`), if any.
fn holder(cluster: &KubeCluster) -> Option<String> {
    let lease = cluster
        .kubectl(&["get", "lease", LEASE, "-n", "veer-system", "-o", "json"])
        .ok()?;
    let lease: Value = serde_json::from_str(&lease).ok()?;
    let identity = lease["spec"]["holderIdentity"].as_str()?;
    Some(identity.split('_').next()?.to_string())
}

fn wait_holder(cluster: &KubeCluster, what: &str, pred: impl Fn(&str) -> bool) -> String {
    poll_until(
        what,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || match holder(cluster) {
            Some(h) if pred(&h) => Ok(h),
            other => Err(format!("holder {other:?}")),
        },
    )
    .unwrap()
}

fn replica<'a>(stack: &'a mut Stack, name: &str) -> &'a mut Controller {
    if stack.controller.instance() == Some(name) {
        &mut stack.controller
    } else {
        stack
            .replicas
            .iter_mut()
            .find(|r| r.instance() == Some(name))
            .unwrap_or_else(|| panic!("no replica {name}"))
    }
}

fn other(name: &str) -> &'static str {
    if name == "replica-0" {
        "replica-1"
    } else {
        "replica-0"
    }
}

fn weight(cluster: &KubeCluster) -> f64 {
    canary(cluster, "podinfo")["status"]["canaryWeight"]
        .as_f64()
        .unwrap_or(0.0)
}

/// Waits until the weight is above `above`, returning it and when it was seen.
fn wait_weight_above(cluster: &KubeCluster, above: f64, timeout: Duration) -> (f64, Instant) {
    poll_until(
        &format!("the canary weight to rise above {above}"),
        timeout,
        Duration::from_millis(20),
        || {
            let s = canary(cluster, "podinfo")["status"].clone();
            let w = s["canaryWeight"].as_f64().unwrap_or(0.0);
            if w > above && (s["phase"] == "Progressing" || s["phase"] == "Promoting") {
                Ok((w, Instant::now()))
            } else {
                Err(format!("phase {} weight {w}", s["phase"]))
            }
        },
    )
    .unwrap()
}

/// Every value of the gateway's applied table generation, sampled every 20ms, so a test
/// can assert it never went back.
struct GenerationSampler {
    seen: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GenerationSampler {
    fn start(stack: &Stack) -> GenerationSampler {
        let admin = stack.gateway.admin_addr();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut client = HttpClient::new(admin);
            while !st.load(Ordering::SeqCst) {
                if let Ok(r) = client.get("localhost", "/stats/prometheus", &[]) {
                    if let Some(g) = prometheus_value(&r.body_text(), "veer_table_generation", &[])
                    {
                        let mut seen = s.lock().unwrap();
                        if seen.last() != Some(&(g as u64)) {
                            seen.push(g as u64);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        GenerationSampler {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and asserts the generations only rose.
    fn assert_never_back(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        let seen = self.seen.lock().unwrap().clone();
        assert!(seen.len() >= 3, "too few generations sampled: {seen:?}");
        assert!(
            seen.windows(2).all(|w| w[1] > w[0]),
            "the gateway's table generation went back: {seen:?}"
        );
        seen
    }
}

/// The Canary applied and Initialized, sticky users through the gateway, then the new
/// image and the run Progressing; returns the users and the leader's name.
fn initialize_and_release(
    cluster: &KubeCluster,
    stack: &Stack,
) -> (veer_e2e::users::UserLoad, String) {
    cluster.apply(&stack.canary_yaml).unwrap();
    wait_canary(
        cluster,
        "podinfo",
        "the Canary to be Initialized",
        Duration::from_secs(60),
        phase_is("Initialized"),
    );
    let leader = wait_holder(cluster, "a leader", |_| true);
    let load = users(stack);
    set_image(cluster, "podinfo:6.1.0");
    wait_canary(
        cluster,
        "podinfo",
        "the run to start",
        Duration::from_secs(30),
        phase_is("Progressing"),
    );
    (load, leader)
}

fn assert_once_per_run_hooks(stack: &Stack) {
    assert_eq!(stack.webhooks.calls_to("pre").len(), 1, "pre-rollout calls");
    assert_eq!(
        stack.webhooks.calls_to("post").len(),
        1,
        "post-rollout calls"
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Five leader kills in one run: each time the other replica takes over within the lease
/// duration (plus its retry period and one pass), the run continues from the weight it had,
/// and it promotes. Prints the failover times (kill to the next weight step).
#[test]
fn a_killed_leader_is_replaced_and_the_run_continues() {
    let (_serial, _took, cluster) = begin("a_killed_leader_is_replaced_and_the_run_continues");
    let mut stack = start_replicas(&cluster, "k8s-ha-kill");
    let sampler = GenerationSampler::start(&stack);
    let (load, mut leader) = initialize_and_release(&cluster, &stack);
    let (mut w, _) = wait_weight_above(&cluster, 0.0, Duration::from_secs(30));
    let mut failovers = Vec::new();
    // Weights 10 to 50: each kill comes just after a step, so the next step needs the new
    // leader; the sixth step (60) and the promotion follow the last takeover.
    for _ in 0..5 {
        let killed = Instant::now();
        replica(&mut stack, &leader).kill();
        let successor = wait_holder(&cluster, "the other replica to take the Lease", |h| {
            h == other(&leader)
        });
        let took_over = killed.elapsed();
        // Same weight after the takeover: the new leader restored it from the status.
        assert_eq!(weight(&cluster), w, "the weight after the takeover");
        let (next, stepped) = wait_weight_above(&cluster, w, Duration::from_secs(30));
        assert_eq!(next, w + 10.0, "the step after {w}");
        let failover = stepped.duration_since(killed);
        println!(
            "failover at weight {w}: Lease taken after {:.2}s, next step after {:.2}s",
            took_over.as_secs_f64(),
            failover.as_secs_f64()
        );
        assert!(
            took_over < LEASE_DURATION + Duration::from_secs(2),
            "the Lease was taken {took_over:?} after the kill (lease duration {LEASE_DURATION:?})"
        );
        failovers.push(failover.as_secs_f64());
        replica(&mut stack, &leader).restart().unwrap();
        leader = successor;
        w = next;
    }
    let end = wait_run_end(&cluster, "the run to end");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    assert_eq!(image(&cluster, "podinfo-primary"), "podinfo:6.1.0");
    assert_once_per_run_hooks(&stack);
    drop(load);
    let generations = sampler.assert_never_back();
    failovers.sort_by(f64::total_cmp);
    println!(
        "failover (leader kill to the next weight step), {} runs: min {:.2}s, median {:.2}s, max {:.2}s; gateway generations {generations:?}",
        failovers.len(),
        failovers[0],
        percentile(&failovers, 0.5),
        failovers[failovers.len() - 1]
    );
}

/// A leader paused with SIGSTOP cannot renew; the follower takes over and moves the run
/// on. The paused leader is resumed while its successor is killed, so that nobody else
/// writes: it must notice it lost the Lease, write nothing (the Canary's resourceVersion
/// and the webhook receiver stay as they were) and exit.
#[test]
fn a_paused_leader_resumes_writes_nothing_and_exits() {
    let (_serial, _took, cluster) = begin("a_paused_leader_resumes_writes_nothing_and_exits");
    let mut stack = start_replicas(&cluster, "k8s-ha-pause");
    let sampler = GenerationSampler::start(&stack);
    let (load, paused) = initialize_and_release(&cluster, &stack);
    let (w, _) = wait_weight_above(&cluster, 0.0, Duration::from_secs(30));
    replica(&mut stack, &paused).signal("STOP").unwrap();
    let successor = wait_holder(&cluster, "the follower to take the Lease", |h| {
        h == other(&paused)
    });
    // The successor moves the run on: it writes.
    wait_weight_above(&cluster, w, Duration::from_secs(30));
    replica(&mut stack, &successor).kill();
    replica(&mut stack, &successor)
        .wait_exit(Duration::from_secs(10))
        .unwrap();
    // Whatever the killed successor had sent has landed once two reads 500ms apart agree.
    let resource_version = || canary(&cluster, "podinfo")["metadata"]["resourceVersion"].clone();
    let mut last = (resource_version(), Instant::now());
    let settled = poll_until(
        "the Canary to stop changing after the successor's kill",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let now = resource_version();
            if now != last.0 {
                last = (now, Instant::now());
                Err("changed".to_string())
            } else if last.1.elapsed() >= Duration::from_millis(500) {
                Ok(now)
            } else {
                Err("not yet 500ms".to_string())
            }
        },
    )
    .unwrap();
    let webhooks_before = stack.webhooks.calls().len();
    let log_before = replica(&mut stack, &paused).log().len();

    replica(&mut stack, &paused).signal("CONT").unwrap();
    let exit = replica(&mut stack, &paused)
        .wait_exit(Duration::from_secs(20))
        .unwrap();
    assert!(
        !exit.contains("exit status: 0"),
        "the old leader exits with an error: {exit}"
    );
    let log = replica(&mut stack, &paused).log();
    let after = &log[log_before..];
    assert!(
        after.contains(LEASE) && after.contains("exiting"),
        "the resumed leader says it lost the Lease and exits:\n{after}"
    );
    assert_eq!(
        resource_version(),
        settled,
        "the resumed leader wrote the Canary"
    );
    assert_eq!(
        stack.webhooks.calls().len(),
        webhooks_before,
        "the resumed leader called a webhook"
    );

    // Both come back; the run finishes under whichever leads.
    replica(&mut stack, &paused).restart().unwrap();
    replica(&mut stack, &successor).restart().unwrap();
    let end = wait_run_end(&cluster, "the run to end");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    assert_once_per_run_hooks(&stack);
    drop(load);
    sampler.assert_never_back();
}

/// A rolling update of the controller, simulated as Kubernetes runs one: each replica in
/// turn gets SIGTERM (a leader hands the Lease back) and a new one starts, follower first.
/// The run completes and the gateway's generation never goes back.
#[test]
fn a_rolling_restart_of_the_controller_completes_the_run() {
    let (_serial, _took, cluster) = begin("a_rolling_restart_of_the_controller_completes_the_run");
    let mut stack = start_replicas(&cluster, "k8s-ha-rolling");
    let sampler = GenerationSampler::start(&stack);
    let (load, leader) = initialize_and_release(&cluster, &stack);
    let (w, _) = wait_weight_above(&cluster, 0.0, Duration::from_secs(30));
    for name in [other(&leader), leader.as_str()] {
        let stopping = Instant::now();
        replica(&mut stack, name).signal("TERM").unwrap();
        let exit = replica(&mut stack, name)
            .wait_exit(Duration::from_secs(30))
            .unwrap();
        assert!(
            exit.contains("exit status: 0"),
            "{name} stops cleanly: {exit}"
        );
        if name == leader {
            // Handed back: the follower takes it at its next retry, not after 4s.
            let successor = wait_holder(
                &cluster,
                "the follower to take the handed-back Lease",
                |h| h == other(name),
            );
            println!(
                "handover after SIGTERM to the leader: {:.2}s to {successor}",
                stopping.elapsed().as_secs_f64()
            );
            assert!(
                stopping.elapsed() < LEASE_DURATION,
                "the Lease was not handed back"
            );
        }
        replica(&mut stack, name).restart().unwrap();
    }
    let (after, _) = wait_weight_above(&cluster, w, Duration::from_secs(30));
    assert!(after > w);
    let end = wait_run_end(&cluster, "the run to end");
    assert_eq!(end["phase"], "Succeeded", "{end}");
    assert_once_per_run_hooks(&stack);
    drop(load);
    sampler.assert_never_back();
}
