//! Simulated users: a steady, rate-limited load of N users through the gateway, each with its
//! own cookie jar (so the affinity cookie the filter sets is sent back, as a browser does),
//! recording per user what every response said: the filter's decision and table generation
//! (`x-veer-decision`), which backend answered, the status and the latency.
//!
//! From those records and the controller's served tables ([`crate::controller::TableLog`])
//! come the judgements the tests and the demo make: flip-backs (a user moved from canary back
//! to primary while the run's weight was still above 0, which the bucket model forbids) and
//! the share of users on the canary at each weight.

use crate::client::{HttpClient, Response};
use crate::controller::{route_at, ServedTable};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The filter's decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Primary,
    Canary,
    /// No decision header (no route matched, or the gateway answered by itself).
    Unknown,
}

/// One response as a user saw it.
#[derive(Debug, Clone)]
pub struct Observation {
    pub at: Instant,
    /// 0 when the request failed without a response.
    pub status: u16,
    pub variant: Variant,
    /// The table generation the filter decided with.
    pub generation: Option<u64>,
    /// The decision's reason (`cookie`, `weight`, `unmatched`, ...).
    pub reason: String,
    /// `x-backend`: the version that answered (`v1`, `v2`).
    pub backend: String,
    pub latency: Duration,
    /// The request carried the affinity cookie.
    pub had_cookie: bool,
}

/// A group of users that send one extra header on every request (A/B testers).
#[derive(Debug, Clone)]
pub struct TaggedUsers {
    /// Users whose index is a multiple of `every` are tagged.
    pub every: usize,
    pub header: (String, String),
}

#[derive(Debug, Clone)]
pub struct UserLoadSpec {
    pub users: usize,
    /// Total request rate over all users.
    pub requests_per_second: f64,
    /// Connections (one thread each); users are spread over them round-robin.
    pub workers: usize,
    pub host: String,
    pub path: String,
    /// The affinity cookie's name, to tell which requests carried it.
    pub cookie_name: String,
    pub tagged: Option<TaggedUsers>,
}

impl UserLoadSpec {
    pub fn new(users: usize, requests_per_second: f64) -> UserLoadSpec {
        UserLoadSpec {
            users,
            requests_per_second,
            workers: 6,
            host: "app.example.com".into(),
            path: "/".into(),
            cookie_name: "flagger-cookie".into(),
            tagged: None,
        }
    }

    pub fn is_tagged(&self, user: usize) -> bool {
        self.tagged
            .as_ref()
            .is_some_and(|t| user.is_multiple_of(t.every))
    }
}

struct User {
    /// Cookie name → value, from Set-Cookie.
    jar: BTreeMap<String, String>,
    log: Vec<Observation>,
}

/// A running load; stops on drop.
pub struct UserLoad {
    spec: UserLoadSpec,
    users: Arc<Vec<Mutex<User>>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl UserLoad {
    pub fn start(gateway: SocketAddr, spec: UserLoadSpec) -> Result<UserLoad, String> {
        if spec.users == 0 || spec.workers == 0 || spec.requests_per_second <= 0.0 {
            return Err(format!(
                "a user load needs users, workers and a rate: {spec:?}"
            ));
        }
        let users: Arc<Vec<Mutex<User>>> = Arc::new(
            (0..spec.users)
                .map(|_| {
                    Mutex::new(User {
                        jar: BTreeMap::new(),
                        log: Vec::new(),
                    })
                })
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let workers = spec.workers.min(spec.users);
        let per_request = Duration::from_secs_f64(workers as f64 / spec.requests_per_second);
        let mut threads = Vec::new();
        for w in 0..workers {
            let (users, stop, sent, spec) = (
                Arc::clone(&users),
                Arc::clone(&stop),
                Arc::clone(&sent),
                spec.clone(),
            );
            let mine: Vec<usize> = (w..spec.users).step_by(workers).collect();
            let thread = std::thread::Builder::new()
                .name(format!("user-load-{w}"))
                .spawn(move || {
                    // Workers start spread over one period, not in lockstep.
                    let offset = per_request.mul_f64(w as f64 / workers as f64);
                    worker(
                        gateway,
                        &spec,
                        &users,
                        &mine,
                        per_request,
                        offset,
                        &stop,
                        &sent,
                    )
                })
                .map_err(|e| e.to_string())?;
            threads.push(thread);
        }
        Ok(UserLoad {
            spec,
            users,
            stop,
            sent,
            threads,
            started: Instant::now(),
        })
    }

    pub fn spec(&self) -> &UserLoadSpec {
        &self.spec
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Every user's observations (a copy).
    pub fn observations(&self) -> Vec<Vec<Observation>> {
        self.users
            .iter()
            .map(|u| u.lock().map(|u| u.log.clone()).unwrap_or_default())
            .collect()
    }

    /// Each user's latest observation.
    pub fn latest(&self) -> Vec<Option<Observation>> {
        self.users
            .iter()
            .map(|u| u.lock().ok().and_then(|u| u.log.last().cloned()))
            .collect()
    }

    /// Each user's observations from `since` on.
    pub fn observations_since(&self, since: Instant) -> Vec<Vec<Observation>> {
        self.users
            .iter()
            .map(|u| {
                u.lock()
                    .map(|u| {
                        let start = u.log.partition_point(|o| o.at < since);
                        u.log[start..].to_vec()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Waits until every user has a response decided with a table of at least `generation`.
    pub fn wait_all_past(&self, generation: u64, timeout: Duration) -> Result<(), String> {
        crate::process::poll_until(
            &format!("every user to get a response decided with generation >= {generation}"),
            timeout,
            Duration::from_millis(100),
            || {
                let behind = self
                    .latest()
                    .iter()
                    .filter(|o| o.as_ref().and_then(|o| o.generation).unwrap_or(0) < generation)
                    .count();
                if behind == 0 {
                    Ok(())
                } else {
                    Err(format!("{behind} users behind"))
                }
            },
        )
    }

    /// Stops the load and waits for the workers.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for UserLoad {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::too_many_arguments)]
fn worker(
    gateway: SocketAddr,
    spec: &UserLoadSpec,
    users: &[Mutex<User>],
    mine: &[usize],
    per_request: Duration,
    offset: Duration,
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    let mut client = HttpClient::new(gateway);
    let mut next = Instant::now() + offset;
    for &u in mine.iter().cycle() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            // Slow responses (injected latency) lower the rate; they do not queue a burst.
            next = now;
        }
        next += per_request;
        let Ok(mut user) = users[u].lock() else {
            return;
        };
        let cookie = user
            .jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        if let Some(t) = spec.tagged.as_ref().filter(|_| spec.is_tagged(u)) {
            headers.push((&t.header.0, &t.header.1));
        }
        let had_cookie = user.jar.contains_key(&spec.cookie_name);
        let started = Instant::now();
        let result = client.get(&spec.host, &spec.path, &headers);
        sent.fetch_add(1, Ordering::Relaxed);
        let observation = match result {
            Ok(r) => {
                for set in r.headers_named("set-cookie") {
                    let pair = set.split(';').next().unwrap_or("");
                    if let Some((name, value)) = pair.split_once('=') {
                        user.jar
                            .insert(name.trim().to_string(), value.trim().to_string());
                    }
                }
                observe(&r, started, had_cookie)
            }
            Err(_) => Observation {
                at: started,
                status: 0,
                variant: Variant::Unknown,
                generation: None,
                reason: String::new(),
                backend: String::new(),
                latency: started.elapsed(),
                had_cookie,
            },
        };
        user.log.push(observation);
    }
}

fn observe(r: &Response, started: Instant, had_cookie: bool) -> Observation {
    let decision: Vec<&str> = r
        .header(veer_core::DECISION_HEADER)
        .map(|d| d.split(';').collect())
        .unwrap_or_default();
    let variant = match decision.get(1) {
        Some(&"primary") => Variant::Primary,
        Some(&"canary") => Variant::Canary,
        _ => Variant::Unknown,
    };
    Observation {
        at: started,
        status: r.status,
        variant,
        generation: decision
            .get(3)
            .and_then(|g| g.strip_prefix("g="))
            .and_then(|g| g.parse().ok()),
        reason: decision.get(2).map(|s| s.to_string()).unwrap_or_default(),
        backend: r.header("x-backend").unwrap_or("").to_string(),
        latency: started.elapsed(),
        had_cookie,
    }
}

// ---------------------------------------------------------------------------------------
// Judgements

/// A user who was on the canary and later on the primary within the same run, while the
/// run's weight was still above 0.
#[derive(Debug, Clone)]
pub struct FlipBack {
    pub user: usize,
    /// Generation of the last canary decision, and of the primary one after it.
    pub from_generation: u64,
    pub to_generation: u64,
    pub weight_bp: u32,
}

/// Every flip-back in `users` (each user's observations in order), judged against the
/// tables the controller served. Moving to primary because the run ended (weight 0: rolled
/// back, promoted, restarted with a new revision) is not a flip-back.
pub fn flip_backs(users: &[Vec<Observation>], tables: &[ServedTable]) -> Vec<FlipBack> {
    let mut out = Vec::new();
    for (user, log) in users.iter().enumerate() {
        let mut on_canary: Option<(u64, String)> = None;
        for o in log {
            let Some(g) = o.generation else { continue };
            let Some(route) = route_at(tables, g) else {
                continue;
            };
            match o.variant {
                Variant::Canary => on_canary = Some((g, route.revision)),
                Variant::Primary => {
                    if let Some((from, revision)) = on_canary.take() {
                        if route.weight > 0 && route.revision == revision {
                            out.push(FlipBack {
                                user,
                                from_generation: from,
                                to_generation: g,
                                weight_bp: route.weight,
                            });
                        }
                    }
                }
                Variant::Unknown => {}
            }
        }
    }
    out
}

/// Who was on the canary while one weight was in force.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightShare {
    /// Basis points.
    pub weight_bp: u32,
    /// Users with at least one response decided at this weight, and of them those whose
    /// last such response was from the canary.
    pub users: usize,
    pub users_on_canary: usize,
    pub requests: usize,
    pub requests_on_canary: usize,
}

impl WeightShare {
    pub fn user_share(&self) -> f64 {
        self.users_on_canary as f64 / self.users.max(1) as f64
    }

    pub fn request_share(&self) -> f64 {
        self.requests_on_canary as f64 / self.requests.max(1) as f64
    }
}

/// The share of users and of requests on the canary at each distinct weight of the run
/// whose tables carry `revision`, in the order the weights were first served.
pub fn share_by_weight(
    users: &[Vec<Observation>],
    tables: &[ServedTable],
    revision: &str,
) -> Vec<WeightShare> {
    let mut order: Vec<u32> = Vec::new();
    for t in tables {
        if let Some(r) = t.route.as_ref().filter(|r| r.revision == revision) {
            if !order.contains(&r.weight) {
                order.push(r.weight);
            }
        }
    }
    order
        .into_iter()
        .map(|weight_bp| {
            let mut share = WeightShare {
                weight_bp,
                users: 0,
                users_on_canary: 0,
                requests: 0,
                requests_on_canary: 0,
            };
            for log in users {
                let mut last = None;
                for o in log {
                    let Some(route) = o.generation.and_then(|g| route_at(tables, g)) else {
                        continue;
                    };
                    if route.revision != revision || route.weight != weight_bp {
                        continue;
                    }
                    share.requests += 1;
                    if o.variant == Variant::Canary {
                        share.requests_on_canary += 1;
                    }
                    last = Some(o.variant);
                }
                if let Some(v) = last {
                    share.users += 1;
                    if v == Variant::Canary {
                        share.users_on_canary += 1;
                    }
                }
            }
            share
        })
        .collect()
}
