//! A probe for the benchmark's CPU section: an HTTP filter that does nothing but the host
//! calls its plugin configuration lists, so the cost of host calls themselves can be measured
//! against the empty filter (bench/empty-filter) in the same run.
//!
//! Configuration: `request=CALL,CALL,...;response=CALL,...` with CALL one of `clock`
//! (proxy_get_current_time_nanoseconds), `headers` (every header, one
//! proxy_get_header_map_pairs), `route` (replace `x-veer-route: primary`), `status` (read
//! the response's `:status`), `setcookie` (add a veer-sized `Set-Cookie` to the response),
//! `get:<name>` (one request header's value, one proxy_get_header_map_value: the alternative
//! to `headers` for a route that needs few), `counter` (one proxy_increment_metric on a counter
//! defined at configure time: what veer's per-request counter costs), `canary30` (write
//! `x-veer-route: canary` on 3 requests in 10, so they go to the canary cluster: a release's
//! writes and routing at 30%, where `route` writes `primary` and changes no cluster), `hmac` (one
//! HMAC-SHA256 over a message as long as veer's cookie MAC input, with the key's pads computed
//! once: what verifying or signing one affinity cookie costs, no host call), `veer:<part>`
//! (one request's worth of bench/decision-v8's part, e.g. `veer:2` veer-core's decision with
//! signed cookies on the 1,000-user mix's canned requests: veer's pure work in Envoy's V8). A word it does not
//! know fails `on_configure`, so a typo cannot pass as a cheaper probe.

use hmac::{Hmac, KeyInit, Mac};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use sha2::Sha256;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ProbeRoot { plan: Rc::new(Plan::default()) })
    });
}}

/// As long as the signed affinity cookie veer hands out in the benchmark, with its attributes.
const SET_COOKIE: &str = "flagger-cookie=v1.0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef0123456789a; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax";

#[derive(Debug, Clone)]
enum Call {
    Clock,
    Headers,
    Route,
    Status,
    SetCookie,
    Get(String),
    Counter,
    Canary30,
    Hmac,
    Veer(u32),
}

/// veer's cookie MAC input for the benchmark's route: domain tag (17 bytes), route-name
/// length (8), `bench/app` (9), seed (16).
const MAC_INPUT: &[u8; 50] = b"veer-affinity-v1\0\x09\0\0\0\0\0\0\0bench/app0123456789abcdef";

#[derive(Default)]
struct Plan {
    request: Vec<Call>,
    response: Vec<Call>,
    /// Defined when the plan counts (`counter`).
    counter: Option<u32>,
    /// Keyed once, cloned per call, as veer does.
    mac: Option<Hmac<Sha256>>,
    /// Requests counted by `canary30` and `veer:<part>` (`next_request`).
    seen: std::cell::Cell<u64>,
}

impl Plan {
    /// Counts one more request and returns its number (from 1).
    fn next_request(&self) -> u64 {
        let n = self.seen.get().wrapping_add(1);
        self.seen.set(n);
        n
    }
}

fn parse_calls(list: &str) -> Result<Vec<Call>, String> {
    list.split(',')
        .filter(|w| !w.is_empty())
        .map(|w| match w.trim() {
            "clock" => Ok(Call::Clock),
            "headers" => Ok(Call::Headers),
            "route" => Ok(Call::Route),
            "status" => Ok(Call::Status),
            "setcookie" => Ok(Call::SetCookie),
            "counter" => Ok(Call::Counter),
            "canary30" => Ok(Call::Canary30),
            "hmac" => Ok(Call::Hmac),
            other => {
                if let Some(name) = other.strip_prefix("get:").filter(|n| !n.is_empty()) {
                    Ok(Call::Get(name.to_string()))
                } else if let Some(Ok(part)) = other.strip_prefix("veer:").map(str::parse) {
                    Ok(Call::Veer(part))
                } else {
                    Err(format!("unknown call {other:?}"))
                }
            }
        })
        .collect()
}

fn parse_plan(text: &str) -> Result<Plan, String> {
    let mut plan = Plan::default();
    for part in text.split(';').filter(|p| !p.trim().is_empty()) {
        match part.trim().split_once('=') {
            Some(("request", calls)) => plan.request = parse_calls(calls)?,
            Some(("response", calls)) => plan.response = parse_calls(calls)?,
            _ => {
                return Err(format!(
                    "expected request=... or response=..., got {part:?}"
                ))
            }
        }
    }
    Ok(plan)
}

fn run(plan: &Plan, calls: &[Call], headers: MapType) {
    for call in calls {
        // Results are dropped: the probe measures the calls, not what they return.
        match call {
            Call::Clock => drop(hostcalls::get_current_time()),
            Call::Headers => drop(hostcalls::get_map(headers)),
            Call::Route => drop(hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-veer-route",
                Some("primary"),
            )),
            Call::Status => drop(hostcalls::get_map_value(
                MapType::HttpResponseHeaders,
                ":status",
            )),
            Call::SetCookie => drop(hostcalls::add_map_value(
                MapType::HttpResponseHeaders,
                "set-cookie",
                SET_COOKIE,
            )),
            Call::Get(name) => drop(hostcalls::get_map_value(headers, name)),
            Call::Counter => {
                if let Some(id) = plan.counter {
                    let _ = hostcalls::increment_metric(id, 1);
                }
            }
            Call::Veer(part) => {
                let n = plan.next_request() as u32;
                std::hint::black_box(veer_bench_decision_v8::one(*part, n));
            }
            Call::Canary30 => {
                if plan.next_request() % 10 < 3 {
                    let _ = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        "x-veer-route",
                        Some("canary"),
                    );
                }
            }
            Call::Hmac => {
                if let Some(mac) = &plan.mac {
                    let mut m = mac.clone();
                    m.update(MAC_INPUT);
                    // The tag must be used or the optimiser could drop the work.
                    std::hint::black_box(m.finalize().into_bytes());
                }
            }
        }
    }
}

struct ProbeRoot {
    plan: Rc<Plan>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match parse_plan(&String::from_utf8_lossy(&bytes)) {
            Ok(mut plan) => {
                let all = || plan.request.iter().chain(&plan.response);
                if all().any(|c| matches!(c, Call::Counter)) {
                    plan.counter =
                        hostcalls::define_metric(MetricType::Counter, "probe_requests_total").ok();
                }
                if all().any(|c| matches!(c, Call::Veer(_))) {
                    // The 1,000-user mix: 800 returning users, more than the memory holds.
                    veer_bench_decision_v8::setup(800);
                }
                if all().any(|c| matches!(c, Call::Hmac)) {
                    plan.mac =
                        Hmac::<Sha256>::new_from_slice(b"veer-bench-cookie-signing-key-32").ok();
                }
                self.plan = Rc::new(plan);
                true
            }
            Err(e) => {
                log::error!("probe configuration: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            plan: Rc::clone(&self.plan),
        }))
    }
}

struct Probe {
    plan: Rc<Plan>,
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        run(&self.plan, &self.plan.request, MapType::HttpRequestHeaders);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        run(
            &self.plan,
            &self.plan.response,
            MapType::HttpResponseHeaders,
        );
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_typos_are_refused() {
        let plan = parse_plan("request=headers,route;response=status").unwrap();
        assert_eq!(plan.request.len(), 2);
        assert_eq!(plan.response.len(), 1);
        assert!(parse_plan("").unwrap().request.is_empty());
        assert!(parse_plan("request=clok").is_err());
        assert!(parse_plan("reqest=clock").is_err());
        let plan = parse_plan("request=get::authority,get:cookie").unwrap();
        assert!(matches!(&plan.request[0], Call::Get(n) if n == ":authority"));
        assert!(parse_plan("request=get:").is_err());
        assert!(matches!(
            parse_plan("request=veer:2").unwrap().request[..],
            [Call::Veer(2)]
        ));
        assert!(parse_plan("request=veer:x").is_err());
        let plan = parse_plan("request=headers,counter,hmac,canary30").unwrap();
        assert!(matches!(
            plan.request[1..],
            [Call::Counter, Call::Hmac, Call::Canary30]
        ));
    }
}
