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
//! signed cookies on the 1,000-user mix's canned requests: veer's pure work in Envoy's V8),
//! `byhand` (on both sides: veer's job for the benchmark's one route written out by hand, see
//! `by_hand`). A word it does not know fails `on_configure`, so a typo cannot pass as a
//! cheaper probe.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use sha2::Sha256;
use std::rc::Rc;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, xxh3_64_with_seed};

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
    ByHand,
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
    /// Requests counted by `canary30`, `veer:<part>` and `byhand` (`next_request`).
    seen: std::cell::Cell<u64>,
    /// `byhand`'s bucket salt: the hash of the route's revision.
    revision_hash: u64,
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
            "byhand" => Ok(Call::ByHand),
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
    let mut plan = Plan {
        revision_hash: xxh3_64(b"7f9c2ba"),
        ..Plan::default()
    };
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

/// The request headers `by_hand` looks at, found in one pass over the host's serialization.
#[derive(Default)]
struct Wanted<'a> {
    authority: Option<&'a [u8]>,
    path: Option<&'a [u8]>,
    route: bool,
    mirror: bool,
    canary: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    cookie: Option<&'a [u8]>,
}

impl<'a> Wanted<'a> {
    /// Walks the proxy-wasm map serialization (`u32 count`, `count x (u32 name_len, u32
    /// value_len)`, then `name\0value\0` pairs) in place: no per-header allocation.
    fn scan(buf: &'a [u8]) -> Option<Wanted<'a>> {
        let u32_at = |at: usize| -> Option<usize> {
            let b: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
            usize::try_from(u32::from_le_bytes(b)).ok()
        };
        let count = u32_at(0)?;
        let mut data = 4 + count.checked_mul(8)?;
        let mut w = Wanted::default();
        for i in 0..count {
            let (name_len, value_len) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
            let name = buf.get(data..data + name_len)?;
            let value_at = data + name_len + 1;
            let value = buf.get(value_at..value_at + value_len)?;
            data = value_at + value_len + 1;
            match name {
                b":authority" => w.authority = Some(value),
                b":path" => w.path = Some(value),
                b"x-veer-route" => w.route = true,
                b"x-veer-mirror" => w.mirror = true,
                b"x-canary" => w.canary = Some(value),
                b"user-agent" => w.user_agent = Some(value),
                b"cookie" => w.cookie = w.cookie.or(Some(value)),
                _ => {}
            }
        }
        Some(w)
    }
}

/// Every request header in one host call, as veer reads them (one buffer, not a pair of
/// strings per header as the SDK's `get_map`, which probe 2d uses).
fn request_header_bytes() -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    {
        extern "C" {
            fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        }
        let mut data = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: the out-pointers are valid locals; on success the host hands over a buffer of
        // `size` bytes it allocated through the SDK's `proxy_on_memory_allocate` (a Vec).
        let status = unsafe {
            proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size)
        };
        (status == 0 && !data.is_null() && size > 0)
            .then(|| unsafe { Vec::from_raw_parts(data, size, size) })
    }
    #[cfg(not(target_arch = "wasm32"))]
    None
}

/// veer's job for the benchmark's one route (bench/veerbench/cpu.py `veer_route`), written out
/// with nothing general: no table, no JSON, no matcher engine, no memory of verified cookies.
/// The headers come in one call and are scanned once in place for the seven it needs.
/// Client-sent route and mirror headers are removed when present; the route is the exact host;
/// the override is `x-canary: always`; the A/B rule is a user agent containing `Firefox` or a
/// path under `/api/`. A returning user's bucket is a hash of their cookie's value as sent (no
/// decoding); a new user gets a fresh 16-byte value from the request count, base64url-encoded,
/// and a `Set-Cookie` with the route's attributes, which `Probe` adds on the response. The
/// canary's share is veer's 30%. Its cookies are never signed: the signed floor adds one HMAC
/// per new user from probe 2k. Returns the `Set-Cookie` value for a new user.
fn by_hand(plan: &Plan) -> Option<String> {
    const COOKIE: &[u8] = b"flagger-cookie=";
    const WEIGHT_BP: u64 = 3000;
    let buf = request_header_bytes()?;
    let w = Wanted::scan(&buf)?;
    for (present, name) in [(w.route, "x-veer-route"), (w.mirror, "x-veer-mirror")] {
        if present {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
    }
    if w.authority != Some(b"app.example.com") {
        return None;
    }
    let canary = |yes: bool| {
        if yes {
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-veer-route",
                Some("canary"),
            );
        }
    };
    if w.canary == Some(b"always") {
        canary(true);
        return None;
    }
    let firefox = w
        .user_agent
        .is_some_and(|ua| memchr::memmem::find(ua, b"Firefox").is_some());
    if !firefox && !w.path.unwrap_or_default().starts_with(b"/api/") {
        return None;
    }
    let returning = w.cookie.and_then(|c| {
        let value = &c[memchr::memmem::find(c, COOKIE)? + COOKIE.len()..];
        Some(&value[..memchr::memchr(b';', value).unwrap_or(value.len())])
    });
    // A new user's value; a returning user's is hashed as sent.
    let fresh = returning.is_none().then(|| {
        let seed = xxh3_128(&plan.next_request().to_le_bytes()).to_le_bytes();
        let mut v = String::with_capacity(25);
        v.push_str("v1.");
        URL_SAFE_NO_PAD.encode_string(seed, &mut v);
        v
    });
    let value = returning
        .or(fresh.as_deref().map(str::as_bytes))
        .unwrap_or_default();
    canary(xxh3_64_with_seed(value, plan.revision_hash) % 10_000 < WEIGHT_BP);
    fresh.map(|v| format!("flagger-cookie={v}; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"))
}

fn run(plan: &Plan, calls: &[Call], headers: MapType, set_cookie: &mut Option<String>) {
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
            Call::ByHand => match headers {
                MapType::HttpRequestHeaders => *set_cookie = by_hand(plan),
                _ => {
                    if let Some(cookie) = set_cookie.take() {
                        let _ = hostcalls::add_map_value(headers, "set-cookie", &cookie);
                    }
                }
            },
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
            set_cookie: None,
        }))
    }
}

struct Probe {
    plan: Rc<Plan>,
    /// `byhand`'s cookie for a new user, from the request to its response.
    set_cookie: Option<String>,
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        run(
            &self.plan,
            &self.plan.request,
            MapType::HttpRequestHeaders,
            &mut self.set_cookie,
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        run(
            &self.plan,
            &self.plan.response,
            MapType::HttpResponseHeaders,
            &mut self.set_cookie,
        );
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand_finds_its_headers_in_the_serialization() {
        let pairs: [(&str, &str); 5] = [
            (":authority", "app.example.com"),
            (":path", "/api/x"),
            ("cookie", "a=1; flagger-cookie=v1.abc"),
            ("x-veer-route", "canary"),
            ("cookie", "second=2"),
        ];
        let mut buf = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            buf.extend((n.len() as u32).to_le_bytes());
            buf.extend((v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            buf.extend(n.bytes().chain([0]).chain(v.bytes()).chain([0]));
        }
        let w = Wanted::scan(&buf).unwrap();
        assert_eq!(w.authority, Some(&b"app.example.com"[..]));
        assert_eq!(w.path, Some(&b"/api/x"[..]));
        assert_eq!(w.cookie, Some(&b"a=1; flagger-cookie=v1.abc"[..]));
        assert!(w.route && !w.mirror && w.user_agent.is_none());
        // Lengths that point past the end are refused, not read.
        buf[8] = 200;
        assert!(Wanted::scan(&buf).is_none());
    }

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
        assert!(matches!(
            parse_plan("request=byhand;response=byhand")
                .unwrap()
                .response[..],
            [Call::ByHand]
        ));
        let plan = parse_plan("request=headers,counter,hmac,canary30").unwrap();
        assert!(matches!(
            plan.request[1..],
            [Call::Counter, Call::Hmac, Call::Canary30]
        ));
    }
}
