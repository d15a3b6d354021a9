//! veer-core's per-request work with no host around it, built for wasm32 like the filter
//! (same release profile) and timed in V8 by `run.mjs` under Node. The gateway benchmark
//! resolves about ±1 µs; this resolves the parts inside it: the route lookup, the decision
//! with unsigned and signed cookies (remembered or not) and one new cookie's signature. The
//! traffic is the gateway benchmark's route and request shape.
//!
//! Exports: `setup(users)` builds the table, the keys and the requests (1,000, or one per user
//! when there are more users), 1 in 5 without a cookie, the others each from user `i mod
//! users`; `requests()` says how many; `run(part, reps)` does `part` for every request `reps`
//! times and returns a checksum (so the work cannot be optimised away). Parts are numbered
//! as `PARTS` in run.mjs.

use std::cell::RefCell;
use veer_core::{
    decide, encode_cookie_value, parse_table, CompiledTable, OwnedRequest, RequestView,
    SigningKeys, Variant,
};

const TABLE: &[u8] = br#"{"generation":1,"routes":[{"name":"bench/app","hosts":["app.example.com"],
  "weight":3000,"revision":"7f9c2ba",
  "overrides":[{"match":{"headers":{"x-canary":{"exact":"always"}}},"variant":"canary"}],
  "match":[{"headers":{"user-agent":{"regex":".*Firefox.*"}}},{"uri":{"prefix":"/api/"}}],
  "sessionAffinity":{"cookieName":"flagger-cookie","maxAge":86400,"sameSite":"Lax"}}]}"#;
/// bench/veerbench/cpu.py's key, base64.
const KEY: &str = "dmVlci1iZW5jaC1jb29raWUtc2lnbmluZy1rZXktMzI=";
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";
const REQUESTS: usize = 1000;

struct World {
    table: CompiledTable,
    keys: SigningKeys,
    signed: Vec<OwnedRequest>,
    unsigned: Vec<OwnedRequest>,
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fn requests(users: u32, keys: Option<&SigningKeys>) -> Vec<OwnedRequest> {
    (0..REQUESTS.max(users as usize))
        .map(|i| {
            let req = OwnedRequest::new(
                "GET",
                "app.example.com",
                &format!("/api/items?page={}", i % 10),
            )
            .with_header("user-agent", USER_AGENT)
            .with_header("accept", "application/json")
            .with_header("x-request-id", format!("4f3a2b1c-1111-2222-3333-{i:012}"));
            if i % 5 == 0 {
                return req;
            }
            let user = u32::try_from(i).unwrap_or(0) % users.max(1);
            let mut seed = [7u8; 16];
            seed[..4].copy_from_slice(&user.to_le_bytes());
            let cookie = encode_cookie_value("bench/app", &seed, keys);
            req.with_header(
                "cookie",
                format!("session=s{i}; theme=dark; flagger-cookie={cookie}"),
            )
        })
        .collect()
}

/// Builds the world; 1 on success, 0 if the table or key is refused.
#[no_mangle]
pub extern "C" fn setup(users: u32) -> u32 {
    let Ok(table) = parse_table(TABLE).and_then(|t| CompiledTable::compile(&t)) else {
        return 0;
    };
    let Ok(keys) = SigningKeys::from_base64(&[KEY.to_string()]) else {
        return 0;
    };
    let world = World {
        table,
        signed: requests(users, Some(&keys)),
        unsigned: requests(users, None),
        keys,
    };
    WORLD.with(|w| *w.borrow_mut() = Some(world));
    1
}

/// How many requests `setup` built.
#[no_mangle]
pub extern "C" fn requests_built() -> u32 {
    WORLD.with(|w| {
        w.borrow()
            .as_ref()
            .map_or(0, |w| u32::try_from(w.signed.len()).unwrap_or(0))
    })
}

/// Does `part` for each request, `reps` times; returns a checksum.
#[no_mangle]
pub extern "C" fn run(part: u32, reps: u32) -> u32 {
    WORLD.with(|w| {
        let w = w.borrow();
        let Some(w) = w.as_ref() else { return 0 };
        let n = u32::try_from(w.signed.len()).unwrap_or(0);
        let mut sum = 0u32;
        for rep in 0..reps {
            for i in 0..n {
                sum = sum.wrapping_add(w.one(part, i, rep));
            }
        }
        sum
    })
}

/// Does `part` for request `index` (modulo the requests built); returns a checksum. What the
/// gateway probe `veer:<part>` (bench/probe-filter) calls once per HTTP request, to time the
/// same work inside Envoy's V8.
pub fn one(part: u32, index: u32) -> u32 {
    WORLD.with(|w| w.borrow().as_ref().map_or(0, |w| w.one(part, index, 0)))
}

impl World {
    fn one(&self, part: u32, index: u32, rep: u32) -> u32 {
        let reqs = if part == 1 {
            &self.unsigned
        } else {
            &self.signed
        };
        let Some(req) = reqs.get(index as usize % reqs.len().max(1)) else {
            return 0;
        };
        let Some(route) = self.table.find_route(req.authority(), req.path()) else {
            return 0;
        };
        let entropy = u64::from(rep) << 32 | u64::from(index);
        match part {
            0 => u32::try_from(route.index()).unwrap_or(0),
            1 | 2 => {
                let keys = (part == 2).then_some(&self.keys);
                let d = decide(route, req, keys, entropy);
                u32::from(d.variant == Variant::Canary)
                    + d.set_cookie
                        .map_or(0, |c| u32::try_from(c.len()).unwrap_or(0))
            }
            3 => {
                let seed = (u128::from(entropy) * 0x9e37_79b9_7f4a_7c15).to_le_bytes();
                u32::try_from(encode_cookie_value("bench/app", &seed, Some(&self.keys)).len())
                    .unwrap_or(0)
            }
            _ => 0,
        }
    }
}
