//! The affinity cookie: its value format, its MAC, finding it in a `Cookie` header and
//! writing the `Set-Cookie` header.
//!
//! Value format: `v1.<seed>` unsigned, `v1.<seed>.<mac>` signed, both parts unpadded
//! base64url. The seed is 16 bytes; the MAC is HMAC-SHA256 over a domain tag, the route name
//! (length-prefixed) and the seed, truncated to 16 bytes. Binding the route name means a
//! cookie minted for one route is not valid for another; leaving the revision out means a
//! cookie survives a new run (the bucket reshuffles through the revision instead).
//!
//! Without signing keys, a signed-format cookie is still accepted for its seed, so turning
//! signing off does not reshuffle users. With keys, unsigned cookies are rejected.

use crate::bucket::Seed;
use crate::keys::{HmacSha256, SigningKeys};
use crate::request::RequestView;
use crate::table::{SameSite, SessionAffinity};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use std::fmt::Write;

const VERSION_PREFIX: &[u8] = b"v1.";
const MAC_LEN: usize = 16;
/// Unpadded base64 length of 16 bytes.
const B64_16_LEN: usize = 22;
const MAC_DOMAIN: &[u8] = b"veer-affinity-v1\0";
const _: () =
    assert!(crate::keys::SIGNED_VALUE_LEN == VERSION_PREFIX.len() + B64_16_LEN + 1 + B64_16_LEN);

/// The cookie value carrying `seed` for `route`, signed with the first key when `keys` is
/// given.
pub fn encode_cookie_value(route: &str, seed: &Seed, keys: Option<&SigningKeys>) -> String {
    let mut out = String::with_capacity(VERSION_PREFIX.len() + 2 * B64_16_LEN + 1);
    out.push_str("v1.");
    URL_SAFE_NO_PAD.encode_string(seed, &mut out);
    if let Some(signer) = keys.and_then(SigningKeys::signer) {
        let tag = mac(signer, route, seed);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&tag[..MAC_LEN], &mut out);
    }
    out
}

/// The seed in `value` if it is a well-formed cookie for `route` and, with `keys`, carries
/// a MAC by one of them. `None` for anything else; never panics. Values these keys verified
/// before are recognised from memory without recomputing the MAC (see `keys`).
pub fn verify_cookie_value(route: &str, value: &[u8], keys: Option<&SigningKeys>) -> Option<Seed> {
    if let Some(known) = keys.and_then(|k| k.recall(route, value)) {
        return Some(known);
    }
    let rest = value.strip_prefix(VERSION_PREFIX)?;
    let (seed_b64, mac_b64) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
        None => (rest, None),
    };
    let seed: Seed = decode_16(seed_b64)?;
    match (keys, mac_b64) {
        (None, None) => Some(seed),
        // Signing was turned off: keep the user's seed rather than reshuffle them.
        (None, Some(m)) => decode_16(m).map(|_| seed),
        (Some(_), None) => None,
        (Some(keys), Some(m)) => {
            let tag: [u8; MAC_LEN] = decode_16(m)?;
            let valid = keys.verifiers().any(|k| verify(k, route, &seed, &tag));
            if valid {
                keys.remember(route, value, seed);
            }
            valid.then_some(seed)
        }
    }
}

fn decode_16(b64: &[u8]) -> Option<[u8; 16]> {
    if b64.len() != B64_16_LEN {
        return None;
    }
    // The engine's size estimate for 22 characters is 18 bytes; strict decoding (no
    // trailing bits) keeps the encoding canonical.
    let mut buf = [0u8; 18];
    let n = URL_SAFE_NO_PAD.decode_slice(b64, &mut buf).ok()?;
    if n != 16 {
        return None;
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&buf[..16]);
    Some(out)
}

fn keyed_input(k: &HmacSha256, route: &str, seed: &Seed) -> HmacSha256 {
    let mut m = k.clone();
    m.update(MAC_DOMAIN);
    m.update(&(route.len() as u64).to_le_bytes());
    m.update(route.as_bytes());
    m.update(seed);
    m
}

fn mac(k: &HmacSha256, route: &str, seed: &Seed) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&keyed_input(k, route, seed).finalize().into_bytes());
    out
}

fn verify(k: &HmacSha256, route: &str, seed: &Seed, tag: &[u8; MAC_LEN]) -> bool {
    // Constant-time comparison of the leftmost 16 bytes.
    keyed_input(k, route, seed)
        .verify_truncated_left(tag)
        .is_ok()
}

/// Every value of cookie `name` in a `Cookie` header, in order. Tolerant of what browsers
/// and clients really send: missing spaces, stray `;`, pairs without `=`, values in double
/// quotes (stripped), non-UTF-8 bytes. Lazy: it stops scanning when the caller stops.
/// A `name` that is not a cookie name (contains `=`, `;` or is empty) finds nothing.
pub fn find_cookie<'a>(
    cookie_header: &'a [u8],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let name = name.as_bytes();
    let usable = !name.is_empty() && !name.iter().any(|&b| b == b'=' || b == b';');
    let mut rest: &[u8] = if usable { cookie_header } else { &[] };
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            let pair = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or_default();
            // Cheap rejection first: most pairs are other cookies.
            let Some(after_name) = trim_ows(pair).strip_prefix(name) else {
                continue;
            };
            let Some(value) = trim_ows(after_name).strip_prefix(b"=") else {
                continue;
            };
            let v = trim_ows(value);
            return Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            });
        }
        None
    })
}

/// Every value of cookie `name` in a request, across all its `Cookie` headers in order (as
/// if they were joined into one list). Nothing is allocated.
pub fn request_cookies<'a>(
    req: &'a impl RequestView,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    req.header_values("cookie")
        .flat_map(move |header| find_cookie(header, name))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The attributes after `name=value` in the `Set-Cookie` header, e.g.
/// `; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax`. Computed once per route.
pub fn set_cookie_attributes(aff: &SessionAffinity) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write!(out, "; Max-Age={}; Path={}", aff.max_age, aff.path);
    if let Some(d) = &aff.domain {
        let _ = write!(out, "; Domain={d}");
    }
    if aff.secure {
        out.push_str("; Secure");
    }
    if aff.http_only {
        out.push_str("; HttpOnly");
    }
    match aff.same_site {
        Some(SameSite::Strict) => out.push_str("; SameSite=Strict"),
        Some(SameSite::Lax) => out.push_str("; SameSite=Lax"),
        Some(SameSite::None) => out.push_str("; SameSite=None"),
        None => {}
    }
    if aff.partitioned {
        out.push_str("; Partitioned");
    }
    out
}

/// The full `Set-Cookie` header value for the affinity cookie holding `value`.
pub fn set_cookie_header(aff: &SessionAffinity, value: &str) -> String {
    format!("{}={value}{}", aff.cookie_name, set_cookie_attributes(aff))
}
