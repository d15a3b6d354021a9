//! Fuzz target `decision`: fuzzed request headers against a fixed, realistic table with
//! signed affinity cookies, overrides, A/B rules, a sticky key, a weight-0 route and a
//! mirror-only route.
//!
//! Properties: nothing panics; every decision keeps the contract (`check_decision`: weight 0
//! is never canary except by override, canary iff bucket < weight, mirror only for primary);
//! with signing keys, reason `cookie` only comes from a cookie correctly signed for that
//! route, as judged by an independent MAC check (`genuine_seed`). The fuzzer may forge,
//! replay another route's cookie, sign with the wrong key, strip, flip or re-encode the MAC,
//! duplicate or quote cookies; none of that may buy a seat. The key set, and with it
//! veer-core's memory of verified cookies, lives across inputs as it does in the filter.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use veer_core::{
    decide, encode_cookie_value, find_cookie, parse_table, CompiledTable, OwnedRequest, Reason,
    RequestView, SigningKeys,
};
use veer_fuzz::{bucket_of, check_decision, genuine_seed, key_a_bytes, keys, KEY_A, KEY_B};

const TABLE: &str = r#"{
  "generation": 42,
  "routes": [
    {"name": "shop/web", "hosts": ["shop.example.com", "*.shop.example.com"], "pathPrefix": "/",
     "weight": 3000, "mirrorWeight": 1000, "revision": "7f9c2ba",
     "overrides": [
       {"match": {"headers": {"x-canary": {"exact": "always"}}}, "variant": "canary"},
       {"match": {"headers": {"x-canary": {"exact": "never"}}}, "variant": "primary"}],
     "sessionAffinity": {"cookieName": "flagger-cookie", "maxAge": 86400, "sameSite": "Lax"}},
    {"name": "shop/checkout", "hosts": ["shop.example.com"], "pathPrefix": "/checkout",
     "weight": 0, "revision": "a1", "sessionAffinity": {"cookieName": "flagger-cookie"}},
    {"name": "api/podinfo", "hosts": ["api.example.com"], "pathPrefix": "/api/",
     "weight": 10000, "revision": "r2",
     "match": [
       {"headers": {"x-user-group": {"exact": "beta"}}, "cookies": {"tester": {"present": true}},
        "queryParams": {"canary": {"exact": "1"}}, "method": "GET", "uri": {"prefix": "/api/v"}},
       {"headers": {"user-agent": {"regex": ".*(Firefox|Chrome)/[0-9]+.*"}}}],
     "sessionAffinity": {"cookieName": "veer", "secure": true, "sameSite": "None", "partitioned": true},
     "stickyKey": {"header": "x-user-id"}},
    {"name": "edge/default", "hosts": ["*"], "pathPrefix": "/", "weight": 0, "mirrorWeight": 5000,
     "revision": "m", "sessionAffinity": {"cookieName": "veer"}}
  ]
}"#;

const AUTHORITIES: [&str; 6] = [
    "shop.example.com",
    "SHOP.example.com:443",
    "eu.shop.example.com.",
    "api.example.com",
    "other.example.org",
    "[::1]:8080",
];
const PATHS: [&str; 5] = [
    "/",
    "/checkout/pay",
    "/api/v1/items?canary=1",
    "/api/x",
    "/static/a.js",
];
const HEADER_NAMES: [&str; 9] = [
    "cookie",
    "x-canary",
    "x-user-group",
    "x-user-id",
    "x-request-id",
    "user-agent",
    "x-veer-route",
    "Cookie",
    "COOKIE",
];
const COOKIE_NAMES: [&str; 3] = ["flagger-cookie", "veer", "tester"];
const ROUTE_NAMES: [&str; 4] = ["shop/web", "shop/checkout", "api/podinfo", "edge/default"];

#[derive(Arbitrary, Debug)]
enum Pick<'a> {
    Known(u8),
    Fuzzed(&'a [u8]),
}

impl<'a> Pick<'a> {
    fn get(&self, known: &[&'a str]) -> Vec<u8> {
        match self {
            Pick::Known(i) => known[usize::from(*i) % known.len()].as_bytes().to_vec(),
            Pick::Fuzzed(b) => b.to_vec(),
        }
    }
}

/// One element of a `Cookie` header.
#[derive(Arbitrary, Debug)]
enum CookiePart<'a> {
    /// Minted with the real key for the named route: the only legitimate seats.
    Genuine { name: u8, route: u8, seed: [u8; 16] },
    /// A well-formed value whose MAC the client made up.
    Forged {
        name: u8,
        seed: [u8; 16],
        mac: [u8; 16],
    },
    /// Minted unsigned (valid only when signing is off).
    Unsigned { name: u8, seed: [u8; 16] },
    /// Minted with the other key.
    WrongKey { name: u8, route: u8, seed: [u8; 16] },
    /// A genuine cookie with one byte changed.
    Tampered {
        name: u8,
        route: u8,
        seed: [u8; 16],
        at: u8,
        xor: u8,
    },
    /// A genuine cookie in double quotes.
    Quoted { name: u8, route: u8, seed: [u8; 16] },
    /// Anything.
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    authority: Pick<'a>,
    path: Pick<'a>,
    path_suffix: &'a [u8],
    method: Pick<'a>,
    headers: Vec<(Pick<'a>, &'a [u8])>,
    cookies: Vec<CookiePart<'a>>,
    /// Separator between cookie parts: `; `, `;`, ` ;  `, `,`.
    separator: u8,
    entropy: u64,
}

struct Fixture {
    table: CompiledTable,
    keys: SigningKeys,
    other: SigningKeys,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let parsed = match parse_table(TABLE.as_bytes()) {
            Ok(t) => t,
            Err(e) => panic!("fixture table rejected: {e}"),
        };
        let table = match CompiledTable::compile(&parsed) {
            Ok(t) => t,
            Err(e) => panic!("fixture table does not compile: {e}"),
        };
        Fixture {
            table,
            keys: keys(KEY_A),
            other: keys(KEY_B),
        }
    })
}

fn pick<'s>(list: &[&'s str], i: u8) -> &'s str {
    list[usize::from(i) % list.len()]
}

fuzz_target!(|input: Input| {
    let f = fixture();
    let authority = input.authority.get(&AUTHORITIES);
    let mut path = input.path.get(&PATHS);
    path.extend_from_slice(input.path_suffix);
    let method = input.method.get(&["GET", "POST", "get"]);

    // The cookie header, and the (route, seed) pairs the harness legitimately signed.
    let sep: &[u8] = [&b"; "[..], b";", b" ;  ", b","][usize::from(input.separator % 4)];
    let mut cookie = Vec::new();
    for (i, part) in input.cookies.iter().take(24).enumerate() {
        if i > 0 {
            cookie.extend_from_slice(sep);
        }
        let pair = |name: u8, value: &str| format!("{}={value}", pick(&COOKIE_NAMES, name));
        let bytes = match part {
            CookiePart::Genuine { name, route, seed } => {
                let r = pick(&ROUTE_NAMES, *route);
                pair(*name, &encode_cookie_value(r, seed, Some(&f.keys))).into_bytes()
            }
            CookiePart::Forged { name, seed, mac } => {
                let seed_part = encode_cookie_value("", seed, None);
                let mac_part = encode_cookie_value("", mac, None);
                pair(*name, &format!("{seed_part}.{}", &mac_part[3..])).into_bytes()
            }
            CookiePart::Unsigned { name, seed } => {
                pair(*name, &encode_cookie_value("", seed, None)).into_bytes()
            }
            CookiePart::WrongKey { name, route, seed } => {
                let r = pick(&ROUTE_NAMES, *route);
                pair(*name, &encode_cookie_value(r, seed, Some(&f.other))).into_bytes()
            }
            CookiePart::Tampered {
                name,
                route,
                seed,
                at,
                xor,
            } => {
                let r = pick(&ROUTE_NAMES, *route);
                let mut v = encode_cookie_value(r, seed, Some(&f.keys)).into_bytes();
                let at = usize::from(*at) % v.len();
                v[at] ^= xor.max(&1);
                let mut p = pick(&COOKIE_NAMES, *name).as_bytes().to_vec();
                p.push(b'=');
                p.extend_from_slice(&v);
                p
            }
            CookiePart::Quoted { name, route, seed } => {
                let r = pick(&ROUTE_NAMES, *route);
                pair(
                    *name,
                    &format!("\"{}\"", encode_cookie_value(r, seed, Some(&f.keys))),
                )
                .into_bytes()
            }
            CookiePart::Raw(b) => b.to_vec(),
        };
        cookie.extend_from_slice(&bytes);
    }

    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b":method".to_vec(), method),
        (b":authority".to_vec(), authority.clone()),
        (b":path".to_vec(), path.clone()),
    ];
    if !input.cookies.is_empty() {
        pairs.push((b"cookie".to_vec(), cookie));
    }
    for (name, value) in input.headers.iter().take(16) {
        pairs.push((name.get(&HEADER_NAMES), value.to_vec()));
    }
    let req = OwnedRequest::from_pairs(pairs);

    let Some(route) = f.table.find_route(&authority, &path) else {
        return;
    };
    assert!(path.starts_with(route.route().path_prefix.as_bytes()));

    let signed = decide(route, &req, Some(&f.keys), input.entropy);
    check_decision(route, &signed);
    if signed.reason == Reason::Cookie {
        // Judged by an independent MAC check, not by the list of cookies this input minted:
        // the filter remembers verified values across requests, and libFuzzer may learn a
        // genuine value from a comparison and replay it, which is legitimate.
        let b = signed.bucket;
        let header = req.header("cookie").unwrap_or_default();
        let name = route
            .route()
            .session_affinity
            .as_ref()
            .map(|a| a.cookie_name.as_str());
        let key = key_a_bytes();
        let earned = find_cookie(header, name.unwrap_or_default())
            .filter_map(|v| genuine_seed(&key, route.name(), v))
            .any(|s| Some(bucket_of(route, &s)) == b);
        assert!(
            earned,
            "reason cookie on {:?} without a genuinely signed cookie for it: {req:?}",
            route.name()
        );
    }
    // The same request with signing off: unsigned and forged values now count, but the
    // contract's weight rules still hold.
    let unsigned = decide(route, &req, None, input.entropy);
    check_decision(route, &unsigned);
    // The decision is a function of the request, the keys and the entropy.
    assert_eq!(decide(route, &req, Some(&f.keys), input.entropy), signed);
});
