//! The demo (`make demo`, `make demo-faulty`): one canary rollout through the whole loop on
//! 127.0.0.1, shown live, judged, and written up as an HTML report with inline SVG charts.
//!
//! It reuses the full-loop tests' harness ([`crate::stack`], [`crate::users`]), so what the
//! demo shows is what the tests assert. The Canary is `manifests/local/demo/canary.yaml`,
//! read with the controller's own spec loader (for its intervals and thresholds).
//!
//! Locally there is no Kubernetes to roll the primary Deployment, so the demo plays that
//! part: when the controller enters Promoting (the primary takes the canary's revision), the
//! primary backend starts answering as v2, before the weight returns to 0 one interval later.

mod report;

use crate::controller::StatusChange;
use crate::kube::KubeCluster;
use crate::stack::{Stack, StackSpec};
use crate::users::{flip_backs, share_by_weight, UserLoad, UserLoadSpec, Variant};
use crate::workspace_root;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use veer_controller::checks::prometheus::BuiltinMetric;
use veer_controller::spec::{CanarySpec, MetricSource, Strategy, WeightSteps};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// v2 starts answering 5xx once the weight reaches [`FAULT_AT_WEIGHT`].
    pub faulty: bool,
    pub users: usize,
    pub requests_per_second: f64,
    /// Where the report goes.
    pub out_dir: PathBuf,
    /// Redraw one status block (a terminal) or print plain lines.
    pub live: bool,
    /// After the run, keep everything up for exploration until Ctrl-C.
    pub hold: bool,
    /// Kubernetes mode on a local control plane (`make demo-k8s`): the Canary and its
    /// Deployment are applied with kubectl, and the release starts with `kubectl set image`.
    pub kubernetes: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            faulty: false,
            users: 300,
            requests_per_second: 150.0,
            out_dir: workspace_root().join("out"),
            live: std::io::stdout().is_terminal(),
            hold: false,
            kubernetes: false,
        }
    }
}

/// In the faulty run, v2 breaks when its weight reaches this (percent).
pub const FAULT_AT_WEIGHT: u64 = 30;
/// Share of v2's answers that are HTTP 500 once it breaks.
pub const FAULT_PERCENT: u8 = 20;

/// How the demo ended.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The rollout ended the way it should (Succeeded with no flip-back, or with
    /// `--faulty` Failed with every user back on v1).
    pub as_expected: bool,
    pub interrupted: bool,
    pub report: Option<PathBuf>,
}

/// The demo's Canary file.
pub fn canary_path() -> PathBuf {
    workspace_root().join("manifests/local/demo/canary.yaml")
}

/// What the demo reads from the Canary.
struct CanaryFacts {
    key: String,
    interval: Duration,
    threshold: u32,
    step: u32,
    max_weight: u32,
    min_success: Option<f64>,
    max_p99: Option<f64>,
    /// The success-rate and duration windows, for the demo's own per-variant queries.
    window: String,
}

fn canary_facts(spec: &CanarySpec) -> Result<CanaryFacts, String> {
    let (step, max_weight) = match spec.strategy() {
        Strategy::Canary(WeightSteps::Step { step, max }) => (step, max),
        other => {
            return Err(format!(
                "the demo shows a weighted canary; {} has {other:?}",
                spec.key()
            ))
        }
    };
    let builtin = |b: BuiltinMetric| {
        spec.analysis
            .metrics
            .iter()
            .find(|m| matches!(m.source, MetricSource::Builtin(x) if x == b))
    };
    let success = builtin(BuiltinMetric::RequestSuccessRate);
    let duration = builtin(BuiltinMetric::RequestDuration);
    Ok(CanaryFacts {
        key: spec.key(),
        interval: spec.interval(),
        threshold: spec.threshold(),
        step,
        max_weight,
        min_success: success.and_then(|m| m.threshold_range.min),
        max_p99: duration.and_then(|m| m.threshold_range.max),
        window: success
            .or(duration)
            .map_or("1m".to_string(), |m| m.interval.text.clone()),
    })
}

/// One second of the run, for the live view and the report.
#[derive(Debug, Clone)]
struct Sample {
    t: f64,
    phase: String,
    weight: u64,
    failed_checks: u64,
    success: [Option<f64>; 2],
    p99: [Option<f64>; 2],
    rps: [f64; 2],
    request_share: f64,
    users_on_canary: usize,
    /// Users whose latest answer came from v2, on either route (after the promotion the
    /// primary runs v2 too).
    users_on_v2: usize,
    users_seen: usize,
    flip_backs: usize,
    /// What the primary runs (v2 once promoted).
    primary_identity: String,
    /// In phase Failed: the failed checks the run had reached when it was rolled back (the
    /// controller resets its count to 0 then, as Flagger does).
    rolled_back_at: Option<u64>,
}

const VARIANTS: [&str; 2] = ["primary", "canary"];

/// Runs the demo. `stop` is set by the signal handler (Ctrl-C): the demo then returns at
/// once and every process it started is killed as the stack drops.
pub fn run(options: &DemoOptions, stop: &AtomicBool) -> Result<DemoOutcome, String> {
    let yaml = std::fs::read_to_string(canary_path())
        .map_err(|e| format!("read {}: {e}", canary_path().display()))?;
    // The webhook receiver's address is known only once it runs; any URL checks the rest.
    let checked = crate::envoy::render(&yaml, &[("WEBHOOK_URL", "http://127.0.0.1:1".into())])?;
    // Read as the controller will: with the demo's --min-interval.
    let opts = veer_controller::spec::LoadOptions {
        min_interval: crate::controller::MIN_INTERVAL,
    };
    let set = veer_controller::spec::load_texts(&[(canary_path(), checked)], &opts);
    if let Some(e) = set.errors().next() {
        return Err(format!("the demo's Canary does not load: {e}"));
    }
    let spec = set
        .canaries
        .first()
        .ok_or_else(|| format!("no Canary in {}", canary_path().display()))?;
    let facts = canary_facts(spec)?;

    let mode = if options.faulty { "faulty" } else { "healthy" };
    say(&format!(
        "veer demo ({mode}): starting the gateway Envoy with the veer filter, two backends (v1, v2), \
         Prometheus, the controller and {} users",
        options.users
    ));
    if options.kubernetes && options.hold {
        return Err("--hold is for the local-mode demo; with --kubernetes, run `scripts/kube-up.sh DIR` and `veer controller --kubernetes` to explore".into());
    }
    let cluster = if options.kubernetes {
        say("  starting a local Kubernetes control plane (scripts/kube-up.sh; the first run builds it with Go)");
        let cluster = KubeCluster::up()?;
        say(&format!(
            "  Kubernetes {} at {}  (try: KUBECONFIG={} kubectl get canaries,deploy -A)",
            cluster.version(),
            cluster.server(),
            cluster.kubeconfig().display()
        ));
        cluster.apply(&target_deployment(spec, "v1"))?;
        Some(cluster)
    } else {
        None
    };
    let mut stack_spec = StackSpec::new(&format!("demo-{mode}"), &yaml);
    stack_spec.key = facts.key.clone();
    stack_spec.kubeconfig = cluster.as_ref().map(KubeCluster::veer_kubeconfig);
    let stack = Stack::start(&stack_spec)?;
    say(&format!(
        "  gateway http://{}  (try: curl -si -H 'host: app.example.com' http://{}/)",
        stack.gateway_addr, stack.gateway_addr
    ));
    say(&format!(
        "  controller {}  prometheus {}  logs {}",
        stack.controller.url(),
        stack.prometheus.url(),
        stack.dir.display()
    ));
    if stop.load(Ordering::SeqCst) {
        return Ok(interrupted());
    }
    match &cluster {
        None => stack.initialize("v1")?,
        Some(cluster) => {
            cluster.apply(&stack.canary_yaml)?;
            say("  the Canary is applied: veer creates the -primary Deployment, the Services and the VirtualService");
            stack.controller.wait_status(
                &facts.key,
                &format!("{} to be Initialized", facts.key),
                Duration::from_secs(60),
                |s| s["phase"] == "Initialized",
            )?;
            stack.wait_gateway_applied(Duration::from_secs(20))?;
        }
    }
    say("  v1 is the primary (the first revision is promoted without analysis)");
    let first_primary = stack.status()?["primaryRevision"].clone();
    let mut load_spec = UserLoadSpec::new(options.users, options.requests_per_second);
    load_spec.workers = 8;
    let load = UserLoad::start(stack.gateway_addr, load_spec)?;
    stack.wait_for_primary_traffic(Duration::from_secs(30))?;
    if stop.load(Ordering::SeqCst) {
        return Ok(interrupted());
    }

    say(&format!(
        "  rolling out v2: every {:?}, +{}% while success rate >= {}% and P99 <= {} ms, up to {}%; {} failed checks roll back{}",
        facts.interval,
        facts.step,
        facts.min_success.map_or("-".into(), |v| v.to_string()),
        facts.max_p99.map_or("-".into(), |v| v.to_string()),
        facts.max_weight,
        facts.threshold,
        if options.faulty {
            format!(" (v2 will fail {FAULT_PERCENT}% of requests from {FAULT_AT_WEIGHT}% on)")
        } else {
            String::new()
        }
    ));
    let started = Instant::now();
    match &cluster {
        None => stack.controller.rollout(&facts.key, "v2")?,
        Some(cluster) => {
            let (namespace, name) = (&spec.namespace, &spec.target_ref.name);
            cluster.kubectl(&[
                "set",
                "image",
                &format!("deployment/{name}"),
                "app=podinfo:v2",
                "-n",
                namespace,
            ])?;
        }
    }

    let mut view = LiveView::new(options.live);
    let mut samples: Vec<Sample> = Vec::new();
    let mut events: Vec<(f64, String)> = vec![(0.0, "v2 posted: the run starts".into())];
    let mut last_phase = String::new();
    let mut last_message = String::new();
    let mut fault_on = false;
    let mut primary_on_v2 = false;
    let mut cluster_view = (Instant::now(), String::new());
    // A generous bound: every step plus the threshold's worth of failures, twice over.
    let run_deadline = facts.interval
        * (2 * (facts.max_weight / facts.step.max(1) + facts.threshold + 6))
        + Duration::from_secs(60);
    let mut ended_at: Option<Instant> = None;
    let mut end_status = serde_json::Value::Null;
    let mut next_tick = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            view.finish();
            return Ok(interrupted());
        }
        let now = Instant::now();
        if now < next_tick {
            std::thread::sleep((next_tick - now).min(Duration::from_millis(100)));
            continue;
        }
        next_tick += Duration::from_secs(1);
        let t = started.elapsed().as_secs_f64();
        let status = stack
            .status()
            .unwrap_or_else(|e| serde_json::json!({ "phase": "unreachable", "message": e }));
        let phase = status["phase"].as_str().unwrap_or("?").to_string();
        let weight = status["weight"].as_u64().unwrap_or(0);
        if phase != last_phase {
            events.push((t, format!("phase {phase}")));
            last_phase = phase.clone();
        }
        let message = round_numbers(status["message"].as_str().unwrap_or(""));
        if message != last_message && !message.is_empty() {
            events.push((t, message.clone()));
            last_message = message;
        }
        if options.faulty && !fault_on && weight >= FAULT_AT_WEIGHT {
            stack.canary.set_fault(crate::backend::Fault {
                status: 500,
                percent: FAULT_PERCENT,
                delay_ms: 0,
            });
            fault_on = true;
            events.push((
                t,
                format!("v2 breaks: {FAULT_PERCENT}% of its answers are now HTTP 500"),
            ));
        }
        // The Deployment controller's part: the primary runs what the controller promoted.
        if !primary_on_v2
            && !status["primaryRevision"].is_null()
            && status["primaryRevision"] != first_primary
        {
            stack.primary.set_identity("v2");
            primary_on_v2 = true;
            events.push((t, "the primary Deployment now runs v2".into()));
        }
        let mut sample = take_sample(&stack, &load, &facts, t, &phase, &status);
        if phase == "Failed" {
            sample.rolled_back_at = failed_checks_at_rollback(&stack.status_log.changes(), started);
        }
        samples.push(sample.clone());
        let mut block = render_block(&facts, options, &sample, &events);
        if let Some(cluster) = &cluster {
            // What a user watches in another terminal, every other second.
            if cluster_view.0.elapsed() >= Duration::from_secs(2) || cluster_view.1.is_empty() {
                let namespace = &spec.namespace;
                let now = cluster
                    .kubectl(&["get", "canaries,deploy", "-n", namespace])
                    .unwrap_or_else(|e| e);
                if !options.live && now != cluster_view.1 {
                    say(&format!(
                        "$ kubectl get canaries,deploy -n {namespace}\n{now}"
                    ));
                }
                cluster_view = (Instant::now(), now);
            }
            if options.live {
                block.0.push(format!(
                    "$ kubectl get canaries,deploy -n {}",
                    spec.namespace
                ));
                block.0.extend(cluster_view.1.lines().map(str::to_string));
            }
        }
        view.draw(&block);
        if ended_at.is_none() && (phase == "Succeeded" || phase == "Failed") {
            ended_at = Some(Instant::now());
            end_status = status.clone();
        }
        // After the end, a few more seconds so every user's next request shows where they are.
        if let Some(at) = ended_at {
            let generation = stack.table_log.generation();
            let all_past = load
                .latest()
                .iter()
                .all(|o| o.as_ref().and_then(|o| o.generation).unwrap_or(0) >= generation);
            if (all_past && at.elapsed() >= Duration::from_secs(3))
                || at.elapsed() >= Duration::from_secs(30)
            {
                break;
            }
        }
        if started.elapsed() > run_deadline {
            events.push((t, format!("no end after {run_deadline:?}: giving up")));
            break;
        }
    }
    view.finish();

    // The verdict.
    let observations = load.observations();
    let tables = stack.table_log.tables();
    let flips = flip_backs(&observations, &tables);
    let shares = share_by_weight(&observations, &tables, "v2");
    let final_generation = stack.table_log.generation();
    let latest = load.latest();
    let on_final: Vec<_> = latest
        .iter()
        .flatten()
        .filter(|o| o.generation.unwrap_or(0) >= final_generation)
        .collect();
    let expected_backend = if options.faulty { "v1" } else { "v2" };
    let users_right = on_final
        .iter()
        .filter(|o| o.variant == Variant::Primary && o.backend == expected_backend)
        .count();
    let with_cookie = observations
        .iter()
        .filter(|log| log.iter().any(|o| o.had_cookie))
        .count();
    let phase = end_status["phase"].as_str().unwrap_or("none").to_string();
    let expected_phase = if options.faulty {
        "Failed"
    } else {
        "Succeeded"
    };
    let failed = observations
        .iter()
        .flatten()
        .filter(|o| o.status != 200)
        .count();
    // Failures from anything but the canary (the injected 500s) mean the loop itself failed.
    let other_errors = observations
        .iter()
        .flatten()
        .filter(|o| o.status != 200 && o.variant != Variant::Canary)
        .count();
    let total = observations.iter().map(Vec::len).sum::<usize>();
    let as_expected = phase == expected_phase
        && flips.is_empty()
        && other_errors == 0
        && users_right == options.users
        && on_final.len() == options.users;
    let took = ended_at.map(|e| e.duration_since(started));

    let mut text = String::new();
    let _ = writeln!(text, "\nveer demo ({mode}) summary");
    let rolled_back_at = samples.iter().rev().find_map(|s| s.rolled_back_at);
    let _ = writeln!(
        text,
        "  ended      {}",
        ending(&phase, took, rolled_back_at, facts.threshold, &end_status)
    );
    let _ = writeln!(
        text,
        "  users      {} simulated, {with_cookie} kept the affinity cookie",
        options.users
    );
    let _ = writeln!(
        text,
        "  requests   {}",
        failures(total, failed, other_errors, options.faulty)
    );
    let _ = writeln!(text, "  per step   share of users / requests on v2:");
    for s in shares.iter().filter(|s| s.weight_bp > 0) {
        let _ = writeln!(
            text,
            "             weight {:>3}%: {:>5.1}% of {:>3} users, {:>5.1}% of {:>5} requests",
            s.weight_bp / 100,
            s.user_share() * 100.0,
            s.users,
            s.request_share() * 100.0,
            s.requests
        );
    }
    let _ = writeln!(
        text,
        "  flip-backs {} (users moved from canary back to primary during the run)",
        flips.len()
    );
    let _ = writeln!(
        text,
        "  at the end {users_right}/{} users on the primary running {expected_backend}",
        options.users
    );
    let _ = writeln!(
        text,
        "  verdict    {}",
        if as_expected {
            format!("as expected: {expected_phase}, no flip-back, every user on {expected_backend}")
        } else {
            format!("NOT as expected (wanted {expected_phase}, 0 flip-backs, every user on {expected_backend})")
        }
    );
    let report_path = options.out_dir.join(if options.faulty {
        "demo-faulty-report.html"
    } else {
        "demo-report.html"
    });
    let html = report::report_html(
        &facts,
        options,
        &samples,
        &events,
        &shares,
        &text,
        as_expected,
    );
    std::fs::create_dir_all(&options.out_dir)
        .and_then(|()| std::fs::write(&report_path, html))
        .map_err(|e| format!("write {}: {e}", report_path.display()))?;
    let _ = writeln!(text, "  report     {}", report_path.display());
    print!("{text}");
    let _ = std::io::stdout().flush();
    if options.hold {
        hold(&stack, &facts, stop)?;
    }
    Ok(DemoOutcome {
        as_expected,
        interrupted: false,
        report: Some(report_path),
    })
}

/// `--hold`: everything stays up (gateway, backends, Prometheus, controller, the simulated
/// users) until Ctrl-C, with the addresses and commands to explore it. The demo goes on
/// playing the Deployment controller: a revision posted with `veer rollout` is what the
/// canary backend answers as, and the primary answers as what was promoted.
fn hold(stack: &Stack, facts: &CanaryFacts, stop: &AtomicBool) -> Result<(), String> {
    say(&hold_guide(stack, facts));
    let mut last: Option<(String, u64, String, String, u64, String)> = None;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(250));
        let Ok(status) = stack.status() else {
            continue;
        };
        let text = |field: &str| status[field].as_str().unwrap_or("").to_string();
        let now = (
            text("phase"),
            status["weight"].as_u64().unwrap_or(0),
            text("canaryRevision"),
            text("primaryRevision"),
            status["failedChecks"].as_u64().unwrap_or(0),
            round_numbers(&text("message")),
        );
        if last.as_ref() == Some(&now) {
            continue;
        }
        let (phase, weight, canary, primary, failed_checks, message) = &now;
        if !canary.is_empty() && stack.canary.identity() != *canary {
            // A new build: it answers as the new revision, without the old one's fault.
            stack.canary.set_identity(canary);
            stack.canary.set_fault(crate::backend::Fault::default());
        }
        if !primary.is_empty() && stack.primary.identity() != *primary {
            stack.primary.set_identity(primary);
        }
        if last.is_some() {
            say(&format!(
                "  {}: {phase}, canary weight {weight}%, failed checks {failed_checks}/{}, canary {canary}, primary {primary}  ({message})",
                facts.key, facts.threshold
            ));
        }
        last = Some(now);
    }
    say("stopping: every process the demo started is stopped");
    Ok(())
}

/// What `--hold` prints: where each part listens and what to try.
fn hold_guide(stack: &Stack, facts: &CanaryFacts) -> String {
    let gateway = format!("http://{}", stack.gateway_addr);
    let controller = stack.controller.url();
    let prometheus = stack.prometheus.url();
    let admin = format!("http://{}", stack.gateway.admin_addr());
    let root = workspace_root();
    let shown = |p: &std::path::Path| {
        p.strip_prefix(&root)
            .map_or_else(|_| p.display().to_string(), |r| r.display().to_string())
    };
    let veer = crate::controller::controller_binary()
        .map_or_else(|_| "target/debug/veer".to_string(), |p| shown(&p));
    let host = "app.example.com";
    let expr = "sum by (veer_variant) (rate(veer_requests_total[10s]))";
    let mut g = String::new();
    let _ = writeln!(
        g,
        "\nThe stack stays up until Ctrl-C; the simulated users keep sending requests."
    );
    let _ = writeln!(
        g,
        "  gateway     {gateway}  (Host {host}; Envoy admin {admin})"
    );
    let _ = writeln!(g, "  controller  {controller}");
    let _ = writeln!(g, "  prometheus  {prometheus}");
    let _ = writeln!(g, "  logs        {}", shown(&stack.dir));
    let _ = writeln!(g, "Try:");
    let _ = writeln!(g, "  curl -si -H 'host: {host}' {gateway}/");
    let _ = writeln!(g, "      x-backend says which version answered, x-veer-decision the filter's route;variant;reason;generation");
    let _ = writeln!(
        g,
        "  {veer} status --server {controller}          (add -w to follow it)"
    );
    let _ = writeln!(g, "  curl -s {controller}/v1/canaries/{}", facts.key);
    let _ = writeln!(
        g,
        "  curl -s {controller}/v1/table              the routing table the gateway long-polls"
    );
    let _ = writeln!(
        g,
        "  curl -s '{admin}/stats?filter=veer_'     the filter's stats in Envoy"
    );
    let _ = writeln!(
        g,
        "  in a browser: {prometheus}/graph?g0.expr={}&g0.tab=0",
        url_encode(expr)
    );
    let _ = writeln!(g, "Start another run; the demo plays the Deployment (the canary answers as the new revision):");
    let _ = write!(
        g,
        "  {veer} rollout {} --revision v3 --server {controller}",
        facts.key
    );
    g
}

/// Percent-encoding for a URL query value.
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn interrupted() -> DemoOutcome {
    DemoOutcome {
        as_expected: false,
        interrupted: true,
        report: None,
    }
}

/// The failed checks the run had reached when it was rolled back: the count in the last
/// status before phase Failed (the controller then resets it to 0, as Flagger does).
fn failed_checks_at_rollback(changes: &[StatusChange], since: Instant) -> Option<u64> {
    let run: Vec<&StatusChange> = changes.iter().filter(|c| c.at >= since).collect();
    let failed_at = run.iter().position(|c| c.phase == "Failed")?;
    run[..failed_at].last().map(|c| c.failed_checks)
}

/// How the run ended, in one line: the phase and time, why a rollback happened, and where
/// the traffic is now.
fn ending(
    phase: &str,
    took: Option<Duration>,
    rolled_back_at: Option<u64>,
    threshold: u32,
    status: &serde_json::Value,
) -> String {
    let mut line = match took {
        Some(d) => format!("{phase} after {:.1}s", d.as_secs_f64()),
        None => format!("no end: last phase {phase}"),
    };
    if let Some(n) = rolled_back_at {
        let _ = write!(line, ", rolled back at {n}/{threshold} failed checks");
    }
    let revision = |field: &str| status[field].as_str().unwrap_or("-").to_string();
    let _ = write!(
        line,
        "; canary weight {}%, the primary runs {}",
        status["weight"].as_u64().unwrap_or(0),
        revision("primaryRevision")
    );
    if let Some(message) = status["message"].as_str().filter(|m| !m.is_empty()) {
        let _ = write!(line, " (\"{}\")", round_numbers(message));
    }
    line
}

/// The requests and the ones that failed, said plainly. Only the canary may fail, and only
/// in the faulty run.
fn failures(total: usize, failed: usize, not_canary: usize, faulty: bool) -> String {
    let from_canary = failed - not_canary;
    match (failed, not_canary) {
        (0, _) => format!("{total}, every one answered HTTP 200"),
        (_, 0) => format!(
            "{total}; {failed} failed, every one of them on the canary v2{}",
            if faulty {
                " (the injected HTTP 500s)"
            } else {
                ""
            }
        ),
        _ => format!(
            "{total}; {failed} failed: {from_canary} on the canary v2 and {not_canary} elsewhere \
             (gateway or primary), which must not happen"
        ),
    }
}

/// `text` with every decimal number of more than two decimals rounded to two, as the live
/// view shows values: the controller's messages carry the raw float it read
/// (`value 88.9158575593177 is outside ...`).
fn round_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_number =
            chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_ascii_alphanumeric());
        if !starts_number {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let mut decimals = 0;
        if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
                decimals += 1;
            }
        }
        let number: String = chars[start..i].iter().collect();
        match number.parse::<f64>() {
            Ok(v) if decimals > 2 => {
                let _ = write!(out, "{v:.2}");
            }
            _ => out.push_str(&number),
        }
    }
    out
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn take_sample(
    stack: &Stack,
    load: &UserLoad,
    facts: &CanaryFacts,
    t: f64,
    phase: &str,
    status: &serde_json::Value,
) -> Sample {
    let route = veer_core::stat_route_token(&facts.key);
    let w = &facts.window;
    let mut success = [None, None];
    let mut p99 = [None, None];
    let mut rps = [0.0, 0.0];
    for (i, variant) in VARIANTS.iter().enumerate() {
        let sel = format!(r#"veer_route="{route}", veer_variant="{variant}""#);
        success[i] = stack
            .prometheus
            .query(&format!(
                r#"sum(rate(veer_responses_total{{{sel}, veer_class!="5xx"}}[{w}])) / sum(rate(veer_responses_total{{{sel}}}[{w}])) * 100"#
            ))
            .ok()
            .flatten();
        p99[i] = stack
            .prometheus
            .query(&format!(
                r#"histogram_quantile(0.99, sum by (le) (rate(veer_request_duration_ms_bucket{{{sel}}}[{w}])))"#
            ))
            .ok()
            .flatten();
        rps[i] = stack
            .prometheus
            .query(&format!(r#"sum(rate(veer_responses_total{{{sel}}}[5s]))"#))
            .ok()
            .flatten()
            .unwrap_or(0.0);
    }
    let recent = load.observations_since(Instant::now() - Duration::from_secs(2));
    let (mut n, mut on_canary) = (0usize, 0usize);
    for o in recent.iter().flatten() {
        n += 1;
        if o.variant == Variant::Canary {
            on_canary += 1;
        }
    }
    let latest = load.latest();
    let users_seen = latest.iter().flatten().count();
    let users_on_canary = latest
        .iter()
        .flatten()
        .filter(|o| o.variant == Variant::Canary)
        .count();
    let users_on_v2 = latest
        .iter()
        .flatten()
        .filter(|o| o.backend == "v2")
        .count();
    let flips = flip_backs(&load.observations(), &stack.table_log.tables()).len();
    Sample {
        t,
        phase: phase.to_string(),
        weight: status["weight"].as_u64().unwrap_or(0),
        failed_checks: status["failedChecks"].as_u64().unwrap_or(0),
        success,
        p99,
        rps,
        request_share: on_canary as f64 / n.max(1) as f64,
        users_on_canary,
        users_on_v2,
        users_seen,
        flip_backs: flips,
        primary_identity: stack.primary.identity(),
        rolled_back_at: None,
    }
}

// ---------------------------------------------------------------------------------------
// The live view

struct LiveView {
    live: bool,
    drawn_lines: usize,
    last_plain: Option<(String, u64, u64, Instant)>,
}

impl LiveView {
    fn new(live: bool) -> LiveView {
        LiveView {
            live,
            drawn_lines: 0,
            last_plain: None,
        }
    }

    fn draw(&mut self, block: &(Vec<String>, String)) {
        let (lines, plain) = block;
        let mut out = std::io::stdout().lock();
        if self.live {
            if self.drawn_lines > 0 {
                // Up to the block's first line, then clear to the end of the screen.
                let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn_lines);
            }
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            self.drawn_lines = lines.len();
        } else {
            // Not a terminal: one line per change, and one every 5 seconds.
            let key = plain
                .split(" | ")
                .skip(1)
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            let now = Instant::now();
            let print = match &self.last_plain {
                None => true,
                Some((k, _, _, at)) => {
                    *k != key || now.duration_since(*at) >= Duration::from_secs(5)
                }
            };
            if self.last_plain.is_none() {
                let _ = writeln!(out, "{PLAIN_HEADER}");
            }
            if print {
                let _ = writeln!(out, "{plain}");
                self.last_plain = Some((key, 0, 0, now));
            }
        }
        let _ = out.flush();
    }

    fn finish(&mut self) {
        self.drawn_lines = 0;
    }
}

/// The plain view's column legend, printed once above its lines.
const PLAIN_HEADER: &str = "time | phase | canary weight | failed checks | success rate primary/canary | P99 primary/canary | on the canary: requests (last 2s), users | flip-backs";

/// `failed checks 1/3`; after a rollback, the count that caused it next to the reset one.
fn failed_checks_line(s: &Sample, threshold: u32) -> String {
    match s.rolled_back_at {
        Some(n) => format!(
            "failed checks {}/{threshold} (rolled back at {n}/{threshold}; the count resets on rollback, as in Flagger)",
            s.failed_checks
        ),
        None => format!("failed checks {}/{threshold}", s.failed_checks),
    }
}

fn bar(weight: u64, max: u32, width: usize) -> String {
    let filled = (weight as usize * width).div_ceil(100).min(width);
    let max_at = (max as usize * width / 100).min(width);
    (0..width)
        .map(|i| {
            if i < filled {
                '█'
            } else if i + 1 == max_at {
                '┆'
            } else {
                '░'
            }
        })
        .collect()
}

fn pct(v: Option<f64>) -> String {
    v.map_or("    -  ".into(), |v| format!("{v:>6.2}%"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("    -   ".into(), |v| format!("{v:>6.1}ms"))
}

fn mark(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "ok",
        Some(false) => "FAIL",
        None => "  ",
    }
}

fn render_block(
    facts: &CanaryFacts,
    options: &DemoOptions,
    s: &Sample,
    events: &[(f64, String)],
) -> (Vec<String>, String) {
    let min = facts.min_success;
    let max = facts.max_p99;
    let success_ok = |v: Option<f64>| v.and_then(|v| min.map(|m| v >= m));
    let p99_ok = |v: Option<f64>| v.and_then(|v| max.map(|m| v <= m));
    let mut lines = vec![
        format!(
            "── veer demo{} · {} · t+{:.0}s ─────────────────────────────",
            if options.faulty { " (faulty v2)" } else { "" },
            facts.key,
            s.t
        ),
        format!(
            "phase {:<12} weight {} {:>3}% (max {}%, +{}% every {:?})",
            s.phase,
            bar(s.weight, facts.max_weight, 25),
            s.weight,
            facts.max_weight,
            facts.step,
            facts.interval
        ),
        failed_checks_line(s, facts.threshold),
        format!(
            "                success rate (>= {}%)   P99 (<= {} ms)   req/s",
            min.map_or("-".into(), |v| v.to_string()),
            max.map_or("-".into(), |v| v.to_string())
        ),
    ];
    let primary = format!("primary {:<2}", s.primary_identity);
    for (i, name) in [primary.as_str(), "canary  v2"].iter().enumerate() {
        lines.push(format!(
            "  {name}    {} {:<4}            {} {:<4}   {:>5.0}",
            pct(s.success[i]),
            mark(success_ok(s.success[i])),
            ms(s.p99[i]),
            mark(p99_ok(s.p99[i])),
            s.rps[i]
        ));
    }
    lines.push(format!(
        "on the canary: {:>5.1}% of requests (last 2s), {:>5.1}% of users ({}/{})",
        s.request_share * 100.0,
        s.users_on_canary as f64 * 100.0 / s.users_seen.max(1) as f64,
        s.users_on_canary,
        s.users_seen
    ));
    lines.push(format!(
        "users who flipped back canary -> primary: {}{}",
        s.flip_backs,
        if s.flip_backs == 0 {
            ""
        } else {
            "   <-- must be 0"
        }
    ));
    lines.push("recent:".into());
    for (t, e) in events.iter().rev().take(5).rev() {
        let short: String = e.chars().take(110).collect();
        let more = if short.len() < e.len() { "…" } else { "" };
        lines.push(format!("  t+{t:>3.0}s {short}{more}"));
    }
    let plain = format!(
        "t+{:>3.0}s | {} | weight {}% | {} | success {}/{} | p99 {}/{} | canary {:.1}% req, {}/{} users | flip-backs {}",
        s.t,
        s.phase,
        s.weight,
        failed_checks_line(s, facts.threshold),
        pct(s.success[0]).trim(),
        pct(s.success[1]).trim(),
        ms(s.p99[0]).trim(),
        ms(s.p99[1]).trim(),
        s.request_share * 100.0,
        s.users_on_canary,
        s.users_seen,
        s.flip_backs
    );
    (lines, plain)
}

/// The Canary's target Deployment, as a user applies it before the Canary: its pods are
/// kwok's (no container runs), so the gateway's two upstreams stay the demo's backends.
fn target_deployment(spec: &veer_controller::spec::CanarySpec, version: &str) -> String {
    let (namespace, name) = (&spec.namespace, &spec.target_ref.name);
    format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: {namespace}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: 2
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: app
          image: podinfo:{version}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_decimals_are_rounded_and_nothing_else_changes() {
        assert_eq!(
            round_numbers(
                "Halt test/podinfo advancement (1/3 failed checks): metric request-success-rate: value 88.9158575593177 is outside the threshold range (value >= 99)"
            ),
            "Halt test/podinfo advancement (1/3 failed checks): metric request-success-rate: value 88.92 is outside the threshold range (value >= 99)"
        );
        assert_eq!(
            round_numbers("p99 612.5 ms, v2, 0.999999, x1.23456"),
            "p99 612.5 ms, v2, 1.00, x1.23456"
        );
    }

    #[test]
    fn the_rollback_count_is_the_last_before_failed() {
        let at = Instant::now();
        let change = |phase: &str, failed_checks: u64| StatusChange {
            at,
            phase: phase.into(),
            weight: 30,
            failed_checks,
            iterations: 0,
            canary_revision: Some("v2".into()),
            primary_revision: Some("v1".into()),
            status: serde_json::Value::Null,
        };
        let changes = [
            change("Progressing", 1),
            change("Progressing", 2),
            change("Progressing", 3),
            change("Failed", 0),
        ];
        assert_eq!(failed_checks_at_rollback(&changes, at), Some(3));
        assert_eq!(failed_checks_at_rollback(&changes[..3], at), None);
    }

    #[test]
    fn failures_are_said_plainly() {
        assert_eq!(
            failures(5000, 0, 0, false),
            "5000, every one answered HTTP 200"
        );
        assert_eq!(
            failures(5018, 160, 0, true),
            "5018; 160 failed, every one of them on the canary v2 (the injected HTTP 500s)"
        );
        assert!(failures(5018, 160, 2, true).contains("158 on the canary v2 and 2 elsewhere"));
    }
}
