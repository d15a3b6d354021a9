//! The soak run (`make soak`, RELIABILITY.md): wrk load through the real gateway Envoy with
//! the veer filter for 10 minutes (`SOAK_SECONDS` to change) while every route's weight
//! changes every 100 ms, and the real controller running sixteen canaries at the same time.
//! It reports the 5xx answers, Envoy restarts and filter crashes (all must be zero), and the
//! resident memory of the gateway and the controller at the start and the end (neither may
//! grow).
//!
//! Where the tables come from: the gateway long-polls a table server with the controller's
//! contract (tests/src/table_stub.rs) that publishes a new generation, with every weight
//! changed, every 100 ms. The controller cannot do that: its analysis interval has a floor
//! (lowered to 1 s here with `--min-interval`) and it batches state writes (at most one per 250 ms under a slow disk), so its table
//! changes a few times per second; the full-loop tests cover the gateway on the real
//! controller. Meanwhile the controller runs sixteen canaries with 1 s passes that a driver
//! rolls out again whenever one finishes, and is long-polled like a gateway, so its memory is
//! measured under steady work.
//!
//! Needs Envoy, the release .wasm, the controller binary (`VEER_CONTROLLER`, else
//! target/release/veer, else target/debug/veer) and wrk; a missing one fails with the command
//! that provides it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use veer_e2e::backend::Backend;
use veer_e2e::client::HttpClient;
use veer_e2e::envoy::{prometheus_value, Envoy, GatewaySpec};
use veer_e2e::ports::free_port;
use veer_e2e::process::{poll_until, work_dir, ChildProcess};
use veer_e2e::table_stub::TableStub;
use veer_e2e::workspace_root;

const CANARIES: usize = 16;
const CONTROLLER_CLUSTER: &str = "outbound|8080||veer-controller.veer-system.svc.cluster.local";
/// Memory may wobble (allocator arenas, V8 heap growth steps); a leak shows as more.
const RSS_SLACK_KIB: u64 = 4 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn controller_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VEER_CONTROLLER") {
        return Ok(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    ["release/veer", "debug/veer"]
        .iter()
        .map(|p| target.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "the controller is not built. Build it with: cargo build --release -p veer-controller --bins"
                .to_string()
        })
}

fn canary_yaml(i: usize) -> String {
    format!(
        r#"apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: c{i}
  namespace: soak
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: c{i}
  service:
    port: 80
    hosts: [c{i}.example.com]
  analysis:
    interval: 1s
    threshold: 2
    maxWeight: 90
    stepWeight: 10
    sessionAffinity:
      cookieName: soak-cookie
      maxAge: 3600
"#
    )
}

/// The table the gateway gets at `generation`: every route's weight differs from the
/// previous generation's (a sweep over 0..=10000 with a different phase per route).
fn gateway_table(generation: u64) -> serde_json::Value {
    let routes: Vec<serde_json::Value> = (0..CANARIES)
        .map(|i| {
            let step = (generation + i as u64 * 7) % 21;
            let weight = if step <= 10 {
                step * 1000
            } else {
                (20 - step) * 1000 + 500
            };
            serde_json::json!({
                "name": format!("soak/c{i}"),
                "hosts": [format!("c{i}.example.com")],
                "weight": weight,
                "revision": "soak",
                "sessionAffinity": { "cookieName": "soak-cookie", "maxAge": 3600 },
            })
        })
        .collect();
    serde_json::json!({ "generation": generation, "routes": routes })
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for pid {pid}"))
}

fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let r = HttpClient::new(addr).get("localhost", path, &[])?;
    if r.status != 200 {
        return Err(format!("GET {path}: HTTP {}", r.status));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("GET {path}: {e}"))
}

fn rollout(veer: &Path, api: SocketAddr, key: &str, revision: &str) -> Result<(), String> {
    let out = Command::new(veer)
        .args(["rollout", key, "--revision", revision])
        .args(["--server", &format!("http://{api}")])
        .output()
        .map_err(|e| format!("run veer rollout: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "veer rollout {key} {revision}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn wrk_script(dir: &Path) -> Result<PathBuf, String> {
    let hosts: Vec<String> = (0..CANARIES)
        .map(|i| format!("\"c{i}.example.com\""))
        .collect();
    let script = format!(
        "-- Generated by the soak run: spreads requests over the canaries' hosts.\n\
         local hosts = {{{}}}\nlocal n = 0\n\
         request = function()\n  n = n + 1\n  wrk.headers[\"Host\"] = hosts[(n % #hosts) + 1]\n  \
         return wrk.format(\"GET\", \"/\")\nend\n",
        hosts.join(", ")
    );
    let path = dir.join("hosts.lua");
    std::fs::write(&path, script).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

struct Sample {
    at: Duration,
    gateway_rss: u64,
    controller_rss: u64,
    /// Applied by the gateway.
    generation: u64,
    /// Served by the controller.
    controller_generation: u64,
}

fn run() -> Result<bool, String> {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|s| s.parse().map_err(|e| format!("SOAK_SECONDS={s:?}: {e}")))
        .transpose()?
        .unwrap_or(600);
    let veer = controller_binary()?;
    let wrk = Command::new("wrk")
        .arg("--version")
        .output()
        .map_err(|e| format!("wrk is missing ({e}): apt-get install -y wrk"))?;
    drop(wrk);
    let dir = work_dir("soak")?;
    println!("soak: {seconds} s, files in {}", dir.display());

    // The controller with its canaries.
    let canaries = dir.join("canaries");
    std::fs::create_dir_all(&canaries).map_err(|e| e.to_string())?;
    for i in 0..CANARIES {
        std::fs::write(canaries.join(format!("c{i}.yaml")), canary_yaml(i))
            .map_err(|e| e.to_string())?;
    }
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()?)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut cmd = Command::new(&veer);
    cmd.arg("controller")
        .arg(format!("--canaries={}", canaries.display()))
        .arg(format!("--state={}", dir.join("state.json").display()))
        .arg(format!("--listen={api}"))
        .arg("--min-interval=1s")
        .env("RUST_LOG", "info");
    let mut controller = ChildProcess::spawn("controller", cmd, &dir.join("controller.log"))?;
    poll_until(
        "the controller to load its canaries",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            if let Some(s) = controller.try_exit() {
                return Err(format!("controller exited: {s}"));
            }
            let list = get_json(api, "/v1/canaries")?;
            let n = list
                .as_array()
                .or_else(|| list["canaries"].as_array())
                .map_or(0, Vec::len);
            (n == CANARIES)
                .then_some(())
                .ok_or(format!("{n} canaries loaded"))
        },
    )?;

    // The gateway polls the table server.
    let primary = Backend::start("primary")?;
    let canary = Backend::start("canary")?;
    let stub = Arc::new(TableStub::start(&gateway_table(1))?);
    let config = serde_json::json!({
        "controller": { "cluster": CONTROLLER_CLUSTER, "pollMs": 200, "timeoutMs": 10000 },
    });
    let mut spec = GatewaySpec::new(&config, primary.addr(), canary.addr());
    spec.controller = Some(stub.addr());
    spec.node_id = "soak-gateway".into();
    let envoy = Envoy::start_gateway(&dir, &spec)?;
    let gw = envoy.gateway_addr()?;
    let envoy_pid = envoy.pid();

    // First revisions become the primaries; then runs start 100 ms apart.
    let mut next_revision = [1u64; CANARIES];
    for (i, rev) in next_revision.iter_mut().enumerate() {
        rollout(&veer, api, &format!("soak/c{i}"), "r0")?;
        rollout(&veer, api, &format!("soak/c{i}"), &format!("r{rev}"))?;
        *rev += 1;
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every 100 ms a new generation with every weight changed; and a gateway-like long poll
    // on the controller.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(1));
    let publisher = {
        let (stop, published, stub) = (stop.clone(), published.clone(), stub.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                next += Duration::from_millis(100);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                let g = published.load(Ordering::SeqCst) + 1;
                if stub.set_table(&gateway_table(g)).is_ok() {
                    published.store(g, Ordering::SeqCst);
                }
            }
        })
    };
    let controller_polls = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, polls) = (stop.clone(), controller_polls.clone());
        std::thread::spawn(move || {
            let mut client = HttpClient::new(api);
            let mut after = 0;
            while !stop.load(Ordering::SeqCst) {
                let path = format!("/v1/table?after={after}&waitMs=2000");
                let generation = after.to_string();
                let headers = [
                    ("x-veer-gateway", "soak-simulated-gateway"),
                    ("x-veer-generation", generation.as_str()),
                ];
                match client.get("localhost", &path, &headers) {
                    Ok(r) if r.status == 200 => {
                        after = serde_json::from_slice::<serde_json::Value>(&r.body)
                            .ok()
                            .and_then(|t| t["generation"].as_u64())
                            .unwrap_or(after);
                        polls.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {
                        polls.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
    };

    // Warm up (V8 tiers up, pools fill) before the first memory sample.
    let script = wrk_script(&dir)?;
    let url = format!("http://{gw}/");
    let warm = Command::new("wrk")
        .args(["-t1", "-c4", "-d15s", "-s"])
        .arg(&script)
        .arg(&url)
        .output()
        .map_err(|e| format!("wrk: {e}"))?;
    if !warm.status.success() {
        return Err(format!(
            "warm-up wrk failed: {}",
            String::from_utf8_lossy(&warm.stderr)
        ));
    }
    let stat = |name: &str| -> Result<u64, String> { Ok(envoy.stat(name)?.unwrap_or(0)) };
    let rq_5xx_before = stat("http.gateway.downstream_rq_5xx")?;
    let rq_before = stat("http.gateway.downstream_rq_completed")?;
    let uptime_before = stat("server.uptime")?;
    let errors_before =
        prometheus_value(&envoy.prometheus()?, "veer_errors_total", &[]).unwrap_or(0.0);
    let gateway_generation = || -> Result<u64, String> {
        Ok(
            prometheus_value(&envoy.prometheus()?, "veer_table_generation", &[]).unwrap_or(0.0)
                as u64,
        )
    };
    let controller_generation_before = get_json(api, "/v1/table")?["generation"]
        .as_u64()
        .unwrap_or(0);
    let gateway_generation_before = gateway_generation()?;

    let mut wrk = Command::new("wrk");
    wrk.args([
        "-t1",
        "-c8",
        &format!("-d{seconds}s"),
        "--timeout",
        "5s",
        "-s",
    ])
    .arg(&script)
    .arg(&url);
    let mut wrk = ChildProcess::spawn("wrk", wrk, &dir.join("wrk.log"))?;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut last_sample = None::<Instant>;
    let mut rollouts = 0u64;
    let mut driver_errors = Vec::new();
    loop {
        if let Some(status) = wrk.try_exit() {
            if !status.success() {
                return Err(format!("wrk failed ({status}): {}", wrk.log()));
            }
            break;
        }
        if let Some(status) = controller.try_exit() {
            return Err(format!(
                "the controller exited during the soak ({status}):\n{}",
                controller.log_tail(30)
            ));
        }
        // Finished canaries start again, so the weights keep moving.
        match get_json(api, "/v1/canaries") {
            Ok(list) => {
                let items = list
                    .as_array()
                    .cloned()
                    .or_else(|| list["canaries"].as_array().cloned())
                    .unwrap_or_default();
                for c in items {
                    let done = matches!(c["phase"].as_str(), Some("Succeeded" | "Failed"));
                    let key = c["key"].as_str().unwrap_or_default().to_string();
                    let Some(i) = key
                        .strip_prefix("soak/c")
                        .and_then(|n| n.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    if done && i < CANARIES {
                        match rollout(&veer, api, &key, &format!("r{}", next_revision[i])) {
                            Ok(()) => rollouts += 1,
                            Err(e) => driver_errors.push(e),
                        }
                        next_revision[i] += 1;
                    }
                }
            }
            Err(e) => driver_errors.push(e),
        }
        if last_sample.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            let s = Sample {
                at: started.elapsed(),
                gateway_rss: rss_kib(envoy_pid)?,
                controller_rss: rss_kib(controller.pid())?,
                generation: gateway_generation()?,
                controller_generation: get_json(api, "/v1/table")?["generation"]
                    .as_u64()
                    .unwrap_or(0),
            };
            println!(
                "t={:>4}s gateway RSS {} KiB (generation {}), controller RSS {} KiB (generation {})",
                s.at.as_secs(),
                s.gateway_rss,
                s.generation,
                s.controller_rss,
                s.controller_generation
            );
            let _ = std::io::stdout().flush();
            samples.push(s);
            last_sample = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed();
    let end = Sample {
        at: elapsed,
        gateway_rss: rss_kib(envoy_pid)?,
        controller_rss: rss_kib(controller.pid())?,
        generation: gateway_generation()?,
        controller_generation: get_json(api, "/v1/table")?["generation"]
            .as_u64()
            .unwrap_or(0),
    };
    stop.store(true, Ordering::SeqCst);
    let _ = publisher.join();
    let _ = poller.join();
    let wrk_out = wrk.log();
    let rq_5xx = stat("http.gateway.downstream_rq_5xx")? - rq_5xx_before;
    let rq = stat("http.gateway.downstream_rq_completed")? - rq_before;
    let uptime_after = stat("server.uptime")?;
    let errors = prometheus_value(&envoy.prometheus()?, "veer_errors_total", &[]).unwrap_or(0.0)
        - errors_before;
    let crashes = envoy.crash_lines();
    let non_2xx = wrk_out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |n| n.trim().parse::<u64>().unwrap_or(u64::MAX));
    let socket_errors = wrk_out
        .lines()
        .find(|l| l.contains("Socket errors"))
        .unwrap_or("Socket errors: none")
        .trim()
        .to_string();
    let changes = end.generation.saturating_sub(gateway_generation_before);
    let controller_changes = end
        .controller_generation
        .saturating_sub(controller_generation_before);
    let change_every_ms = if changes > 0 {
        elapsed.as_millis() as f64 / changes as f64
    } else {
        f64::INFINITY
    };
    let start = samples.first().ok_or("no memory sample was taken")?;
    let envoy_alive = std::fs::metadata(format!("/proc/{envoy_pid}")).is_ok();
    let envoy_restarted = !envoy_alive || uptime_after < uptime_before;

    let report = format!(
        "soak report ({:.0} s of load)\n\
         requests through the gateway: {rq} ({:.0}/s)\n\
         5xx answered by the gateway: {rq_5xx}; wrk non-2xx/3xx: {non_2xx}; {socket_errors}\n\
         filter errors (veer_errors_total delta): {errors}\n\
         filter crash lines in the Envoy log: {}\n\
         Envoy restarts: {} (pid {envoy_pid} alive: {envoy_alive}, uptime {uptime_before} s -> {uptime_after} s)\n\
         table generations applied by the gateway: {changes} (one every {change_every_ms:.0} ms, every weight changed in each)\n\
         controller: {controller_changes} table generations, {rollouts} rollouts started by the driver, {} long polls answered\n\
         gateway RSS: {} KiB at start, {} KiB at end\n\
         controller RSS: {} KiB at start, {} KiB at end\n\
         driver errors: {}\n\
         samples (s, gateway KiB, controller KiB, gateway generation, controller generation): {}\n\
         --- wrk ---\n{wrk_out}\n--- driver errors (first 5) ---\n{}",
        elapsed.as_secs_f64(),
        rq as f64 / elapsed.as_secs_f64(),
        crashes.len(),
        u8::from(envoy_restarted),
        controller_polls.load(Ordering::SeqCst),
        start.gateway_rss,
        end.gateway_rss,
        start.controller_rss,
        end.controller_rss,
        driver_errors.len(),
        samples
            .iter()
            .map(|s| format!(
                "({}, {}, {}, {}, {})",
                s.at.as_secs(),
                s.gateway_rss,
                s.controller_rss,
                s.generation,
                s.controller_generation
            ))
            .collect::<Vec<_>>()
            .join(" "),
        driver_errors[..driver_errors.len().min(5)].join("\n"),
    );
    println!("{report}");
    let report_path = dir.join("report.txt");
    std::fs::write(&report_path, &report).map_err(|e| e.to_string())?;
    println!("report written to {}", report_path.display());

    let grows = |a: u64, b: u64| b > a + RSS_SLACK_KIB.max(a / 10);
    let mut failures = Vec::new();
    if rq_5xx > 0 || non_2xx > 0 {
        failures.push(format!("{rq_5xx} 5xx, {non_2xx} non-2xx answers"));
    }
    if !crashes.is_empty() {
        failures.push(format!("filter crash lines: {crashes:?}"));
    }
    if envoy_restarted {
        failures.push("Envoy restarted".into());
    }
    if grows(start.gateway_rss, end.gateway_rss) {
        failures.push("gateway RSS grew".into());
    }
    if grows(start.controller_rss, end.controller_rss) {
        failures.push("controller RSS grew".into());
    }
    if change_every_ms > 150.0 {
        failures.push(format!(
            "the table changed only every {change_every_ms:.0} ms"
        ));
    }
    if !driver_errors.is_empty() {
        failures.push(format!(
            "driver errors: {:?}",
            &driver_errors[..driver_errors.len().min(5)]
        ));
    }
    if failures.is_empty() {
        println!("SOAK PASSED");
        Ok(true)
    } else {
        println!("SOAK FAILED: {}", failures.join("; "));
        Ok(false)
    }
}
