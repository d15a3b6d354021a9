#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The filter when its surroundings fail, in a real Envoy 1.40 (V8):
//!
//! - the controller becomes unreachable (connections refused) and comes back: the gateway
//!   keeps routing on the last table, backs off instead of polling at full rate, and takes the
//!   newer table once the controller answers again;
//! - Envoy reloads the plugin configuration (a listener update through file-based LDS, which
//!   creates new root contexts in the same VM, as an Istio WasmPlugin edit does): the live
//!   table survives in shared data, users with cookies keep their variant through the reload
//!   and the applied generation never goes back to the one in the plugin configuration.
//!
//!   cargo build -p veer-filter --target wasm32-unknown-unknown --release
//!   cargo test -p veer-e2e --test filter_faults -- --nocapture

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use veer_e2e::backend::Backend;
use veer_e2e::client::{HttpClient, Response};
use veer_e2e::envoy::{gateway_tools, prometheus_value, Envoy, GatewaySpec};
use veer_e2e::filter::{decision, generation_seen, live_table, veer_cookie};
use veer_e2e::ports::free_port;
use veer_e2e::process::{poll_until, work_dir};
use veer_e2e::table_stub::TableStub;

const CONTROLLER_CLUSTER: &str = "outbound|8080||veer-controller.veer-system.svc.cluster.local";

fn backend_variant(r: &Response) -> &str {
    r.header("x-backend").unwrap_or("none")
}

fn wait_generation(gw: SocketAddr, want: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut client = HttpClient::new(gw);
    poll_until(
        &format!("generation {want} at the gateway"),
        timeout,
        Duration::from_millis(20),
        || match generation_seen(&mut client)? {
            g if g == want => Ok(()),
            g => Err(format!("generation {g}")),
        },
    )
    .unwrap();
    started.elapsed()
}

/// `count` users, each with the cookie the gateway gave it and the variant it got.
fn enroll(gw: SocketAddr, count: usize) -> Vec<(String, String)> {
    let mut client = HttpClient::new(gw);
    (0..count)
        .map(|_| {
            let r = client.get("app.example.com", "/", &[]).unwrap();
            assert_eq!(r.status, 200);
            let cookie = veer_cookie(&r, "flagger-cookie")
                .map(str::to_string)
                .expect("a first visit gets the affinity cookie");
            (cookie, backend_variant(&r).to_string())
        })
        .collect()
}

fn assert_no_crash(envoy: &Envoy) {
    let crashes = envoy.crash_lines();
    assert!(crashes.is_empty(), "filter crash lines: {crashes:#?}");
}

/// A TCP relay in front of the table stub standing for the network path to the controller:
/// `down` closes its port (connections are refused, open ones are cut), `up` opens the same
/// port again.
struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    stopped: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let mut relay = Relay {
            addr,
            upstream,
            stopped: Arc::new(AtomicBool::new(true)),
            open: Arc::new(Mutex::new(Vec::new())),
            acceptor: None,
        };
        relay.up();
        relay
    }

    fn up(&mut self) {
        assert!(self.acceptor.is_none(), "relay already up");
        // std sets SO_REUSEADDR on Unix: the port can be bound again right after `down`.
        let listener = TcpListener::bind(self.addr).unwrap();
        self.stopped.store(false, Ordering::SeqCst);
        let (stopped, open, upstream) = (self.stopped.clone(), self.open.clone(), self.upstream);
        self.acceptor = Some(std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ];
                open.lock().unwrap().extend([client, server]);
                for (mut from, mut to) in pipes {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        }));
    }

    fn down(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            t.join().unwrap();
        }
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.down();
    }
}

fn connect_failures(envoy: &Envoy) -> u64 {
    envoy
        .stat(&format!(
            "cluster.{CONTROLLER_CLUSTER}.upstream_cx_connect_fail"
        ))
        .unwrap()
        .unwrap_or(0)
}

/// The controller is unreachable for a while, then comes back.
#[test]
fn unreachable_controller_keeps_the_last_table_backs_off_and_recovers() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let primary = Backend::start("primary").unwrap();
    let canary = Backend::start("canary").unwrap();
    let stub = TableStub::start(&live_table(1, 2000)).unwrap();
    let mut relay = Relay::start(stub.addr());
    let config = serde_json::json!({
        "decisionHeader": true,
        "controller": { "cluster": CONTROLLER_CLUSTER, "pollMs": 200, "timeoutMs": 2000 },
    });
    let mut spec = GatewaySpec::new(&config, primary.addr(), canary.addr());
    spec.controller = Some(relay.addr);
    let dir = work_dir("filter-faults-outage").unwrap();
    let envoy = Envoy::start_gateway(&dir, &spec).unwrap();
    let gw = envoy.gateway_addr().unwrap();
    wait_generation(gw, 1, Duration::from_secs(10));
    stub.set_table(&live_table(2, 5000)).unwrap();
    wait_generation(gw, 2, Duration::from_secs(5));
    let users = enroll(gw, 300);

    // The path to the controller breaks; meanwhile the controller moves on to generation 3.
    relay.down();
    let down_at = Instant::now();
    let failures_at_down = connect_failures(&envoy);
    stub.set_table(&live_table(3, 8000)).unwrap();
    let mut client = HttpClient::new(gw);
    let outage = Duration::from_secs(4);
    let mut requests = 0;
    while down_at.elapsed() < outage {
        for (cookie, was) in &users {
            let r = client
                .get("app.example.com", "/", &[("cookie", cookie)])
                .unwrap();
            assert_eq!(
                r.status, 200,
                "a request failed while the controller is away"
            );
            let d = decision(&r).unwrap();
            let (variant, reason, generation) = (d.variant, d.reason, d.generation);
            assert_eq!(
                (reason.as_str(), generation),
                ("cookie", 2),
                "the last table (generation 2) is kept"
            );
            assert_eq!(&variant, was, "a user changed variant during the outage");
            assert_eq!(backend_variant(&r), variant);
            requests += 1;
        }
    }
    let attempts = connect_failures(&envoy) - failures_at_down;
    // pollMs 200 without backoff would be ~20 attempts in 4 s; with doubling from 200 ms
    // (200, 400, 800, 1600 ms...) it is 4 or 5.
    println!(
        "controller unreachable for {:?}: {requests} requests on generation 2, {attempts} connection attempts",
        down_at.elapsed()
    );
    assert!(
        (2..=7).contains(&attempts),
        "{attempts} poll attempts in {outage:?}: expected exponential backoff from 200 ms"
    );
    let log = envoy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("poll of the controller failed")
                && l.contains("keeping generation 2")),
        "the outage is logged with the kept generation"
    );
    let prom = envoy.prometheus().unwrap();
    let age = prometheus_value(&prom, "veer_table_age_seconds", &[]).unwrap();
    assert!(age >= 3.0, "table age {age} s while the controller is away");

    // The controller is reachable again: the next retry (at most the current backoff, here
    // 3.2 s, or the 10 s cap) brings generation 3.
    relay.up();
    let took = wait_generation(gw, 3, Duration::from_secs(12));
    println!("controller back: generation 3 applied after {took:?}");
    poll_until(
        "the recovery log line",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            envoy
                .log()
                .lines()
                .any(|l| l.contains("controller reachable again after"))
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .unwrap();
    // Polling is back at its normal pace: the stub answers the long polls for generation 3.
    let polls_at = stub.polls().len();
    poll_until(
        "long polls after recovery",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let recent: Vec<_> = stub.polls()[polls_at..]
                .iter()
                .filter(|p| p.after == Some(3) && p.status == 304)
                .cloned()
                .collect();
            (recent.len() >= 2)
                .then_some(())
                .ok_or(format!("{} polls after=3 answered 304", recent.len()))
        },
    )
    .unwrap();
    let prom = envoy.prometheus().unwrap();
    let age = prometheus_value(&prom, "veer_table_age_seconds", &[]).unwrap();
    assert!(age < 3.0, "table age {age} s after recovery");
    // Users moved only primary -> canary at the new weight, never back.
    for (cookie, was) in &users {
        let r = client
            .get("app.example.com", "/", &[("cookie", cookie)])
            .unwrap();
        let d = decision(&r).unwrap();
        let (variant, generation) = (d.variant, d.generation);
        assert_eq!(generation, 3);
        assert!(
            was == "primary" || variant == "canary",
            "a canary user went back to primary"
        );
    }
    assert_no_crash(&envoy);
}

// ---------------------------------------------------------------------------------------
// Plugin configuration reload through file-based LDS

/// The gateway template split in two: a bootstrap whose listener comes from a watched LDS
/// file, and that file's content for a given plugin configuration.
struct LdsGateway {
    bootstrap: String,
    lds_dir: PathBuf,
    port: u16,
}

impl LdsGateway {
    fn new(dir: &Path, spec: &GatewaySpec) -> LdsGateway {
        let rendered = spec.bootstrap().unwrap();
        let (head, rest) = rendered
            .split_once("static_resources:\n  listeners:\n")
            .expect("the template has static listeners");
        let (_, clusters) = rest
            .split_once("\n  clusters:\n")
            .expect("the template has clusters");
        let lds_dir = dir.join("lds");
        std::fs::create_dir_all(&lds_dir).unwrap();
        let bootstrap = format!(
            "{head}dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    \
             path_config_source:\n      path: {}\n      watched_directory: {{ path: {} }}\n\
             static_resources:\n  clusters:\n{clusters}",
            lds_dir.join("lds.yaml").display(),
            lds_dir.display()
        );
        LdsGateway {
            bootstrap,
            lds_dir,
            // A fixed port: the listener update must keep the address.
            port: free_port().unwrap(),
        }
    }

    /// Writes the LDS file for `spec`'s plugin configuration, atomically (rename).
    fn publish(&self, spec: &GatewaySpec) {
        let rendered = spec.bootstrap().unwrap();
        let listeners = rendered
            .split_once("static_resources:\n  listeners:\n")
            .unwrap()
            .1
            .split_once("\n  clusters:\n")
            .unwrap()
            .0;
        let listener = listeners
            .replacen(
                "  - name: gateway\n",
                "  - \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n    name: gateway\n",
                1,
            )
            .replacen(
                "port_value: 0 }",
                &format!("port_value: {} }}", self.port),
                1,
            );
        assert!(listener.contains(&format!("port_value: {}", self.port)));
        let tmp = self.lds_dir.join(".lds.yaml.tmp");
        std::fs::write(&tmp, format!("resources:\n{listener}\n")).unwrap();
        std::fs::rename(&tmp, self.lds_dir.join("lds.yaml")).unwrap();
    }
}

/// What one probe got: (variant, reason, generation, HTTP status).
type Probe = (String, String, u64, u16);

/// A user probing the gateway on a fresh connection per request (fresh connections take the
/// newest filter chain at once), recording what every request got.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Probe>>>,
}

impl Prober {
    fn start(gw: SocketAddr, cookie: String) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let mut client = HttpClient::new(gw);
                let r = client
                    .get("app.example.com", "/", &[("cookie", &cookie)])
                    .unwrap();
                let (variant, reason, generation) = decision(&r)
                    .map_or(("none".into(), "none".into(), 0), |d| {
                        (d.variant, d.reason, d.generation)
                    });
                seen.push((variant, reason, generation, r.status));
            }
            seen
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Probe> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn lds_updates(envoy: &Envoy) -> u64 {
    envoy
        .stat("listener_manager.lds.update_success")
        .unwrap()
        .unwrap_or(0)
}

fn applied_lines(envoy: &Envoy, generation: u64) -> usize {
    let needle = format!("applied table generation {generation} ");
    envoy.log().lines().filter(|l| l.contains(&needle)).count()
}

/// Envoy re-creates the plugin (new root contexts) when its configuration changes; the live
/// table must survive and routing must not flap back to the configuration's table.
#[test]
fn plugin_config_reload_keeps_the_live_table_and_users_in_place() {
    gateway_tools().unwrap_or_else(|e| panic!("{e}"));
    let primary = Backend::start("primary").unwrap();
    let canary = Backend::start("canary").unwrap();
    let stub = TableStub::start(&live_table(5, 5000)).unwrap();
    // As `veer render` writes it: the route at weight 0 and generation 0 in the plugin
    // configuration; the live weight comes from the controller.
    let config = |poll_ms: u64| {
        serde_json::json!({
            "decisionHeader": true,
            "controller": { "cluster": CONTROLLER_CLUSTER, "pollMs": poll_ms, "timeoutMs": 10000 },
            "table": live_table(0, 0),
        })
    };
    let mut spec = GatewaySpec::new(&config(200), primary.addr(), canary.addr());
    spec.controller = Some(stub.addr());
    let dir = work_dir("filter-faults-reload").unwrap();
    // The listener's port is picked free before Envoy binds it; on a busy machine another
    // process can take it in between, so a bind failure picks a new port (three tries).
    let mut attempt = 0;
    let (lds, envoy, gw) = loop {
        attempt += 1;
        let lds = LdsGateway::new(&dir, &spec);
        lds.publish(&spec);
        let envoy = Envoy::start(&dir, &lds.bootstrap, 2, &[]).unwrap();
        match poll_until(
            "the LDS listener",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || envoy.gateway_addr(),
        ) {
            Ok(gw) => break (lds, envoy, gw),
            Err(e) if attempt < 3 && envoy.log().contains("Address already in use") => {
                eprintln!(
                    "port {} was taken before Envoy bound it; retrying: {e}",
                    lds.port
                );
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(gw.port(), lds.port);
    wait_generation(gw, 5, Duration::from_secs(10));
    // The log file is flushed every 100 ms.
    let applied_before = poll_until(
        "the applied-table log line",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || match applied_lines(&envoy, 5) {
            0 => Err("no line yet".to_string()),
            n => Ok(n),
        },
    )
    .unwrap();

    let users = enroll(gw, 200);
    let canary_users: Vec<&(String, String)> =
        users.iter().filter(|(_, v)| v == "canary").collect();
    let primary_users: Vec<&(String, String)> =
        users.iter().filter(|(_, v)| v == "primary").collect();
    assert!(canary_users.len() > 50 && primary_users.len() > 50);

    // (variant, reason, generation) answers that were not the live table's, per reload.
    let mut flaps = Vec::new();
    for round in 0..3 {
        let probers: Vec<Prober> = canary_users
            .iter()
            .take(2)
            .chain(primary_users.iter().take(1))
            .map(|(cookie, _)| Prober::start(gw, cookie.clone()))
            .collect();
        let updates = lds_updates(&envoy);
        // A different configuration makes a new plugin: only the poll pace changes.
        spec.plugin_config = config(200 + 50 * (round + 1)).to_string();
        lds.publish(&spec);
        poll_until(
            "Envoy to apply the LDS update",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                (lds_updates(&envoy) > updates)
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            },
        )
        .unwrap();
        // An observation window, not a synchronisation: the probers keep going well past
        // the new root contexts' first tick (10 ms after on_configure).
        std::thread::sleep(Duration::from_millis(1500));
        let results: Vec<_> = probers.into_iter().map(Prober::finish).collect();
        for (i, seen) in results.iter().enumerate() {
            let want = if i < 2 { "canary" } else { "primary" };
            assert!(
                seen.len() > 20,
                "prober {i} sent only {} requests",
                seen.len()
            );
            assert!(
                seen.iter().all(|p| p.3 == 200),
                "a request failed during the reload"
            );
            let wrong: Vec<_> = seen
                .iter()
                .filter(|(v, r, g, _)| v != want || r != "cookie" || *g < 5)
                .collect();
            if !wrong.is_empty() {
                flaps.push(format!(
                    "reload {}: a {want} user got {} of {} answers from another table, e.g. {:?}",
                    round + 1,
                    wrong.len(),
                    seen.len(),
                    &wrong[..wrong.len().min(3)]
                ));
            }
        }
        println!(
            "reload {}: {} probes",
            round + 1,
            results.iter().map(Vec::len).sum::<usize>()
        );
    }
    // The reloads really made new root contexts: each adopted generation 5 from shared data.
    let applied_after = applied_lines(&envoy, 5);
    assert!(
        applied_after > applied_before,
        "no new root context applied the shared table ({applied_before} -> {applied_after} log lines)"
    );
    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "veer_table_generation", &[]),
        Some(5.0),
        "the applied generation is not reset by the reload"
    );
    // Polling goes on after the reloads: a new table still arrives.
    stub.set_table(&live_table(6, 6000)).unwrap();
    wait_generation(gw, 6, Duration::from_secs(5));
    for (cookie, was) in &users {
        let r = HttpClient::new(gw)
            .get("app.example.com", "/", &[("cookie", cookie)])
            .unwrap();
        let variant = decision(&r).unwrap().variant;
        assert!(was == "primary" || variant == "canary");
    }
    assert_no_crash(&envoy);
    // A new root context must adopt the shared live table in on_configure; if it waited for
    // its first tick, requests in between would route on the configuration's own table
    // (generation 0, weight 0) and canary users would flap to primary.
    assert!(
        flaps.is_empty(),
        "routing flapped during plugin reloads (variant, reason, generation, status):\n{}",
        flaps.join("\n")
    );
}
