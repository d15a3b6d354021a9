//! What the fuzz targets share: the signing keys they use, the invariants every decision
//! must satisfy, and a request that lands on a given route. The invariants restate the
//! routing-table contract (docs/routing-table.md, "The decision, per request"), so a
//! target that finds a violation has found a contract bug, not just a panic.

use veer_core::{
    bucket, CompiledRoute, Decision, OwnedRequest, Reason, SigningKeys, Variant, BUCKETS,
    MAX_WEIGHT,
};

/// 32 bytes 0x01..=0x20, base64. Signs in every target that signs.
pub const KEY_A: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
/// 16 bytes 0xA0..=0xAF, base64: the "other" key for rotation and wrong-key checks.
pub const KEY_B: &str = "oKGio6SlpqeoqaqrrK2urw==";

/// Keys parsed the way `cookieSigning.keysEnv` is read.
pub fn keys(env_value: &str) -> SigningKeys {
    match SigningKeys::from_env_value(env_value) {
        Ok(k) => k,
        Err(e) => panic!("harness key {env_value:?} rejected: {e}"),
    }
}

/// Checks `d`, decided on `route`, against the contract. `weight`/`mirrorWeight` semantics:
/// canary iff bucket < weight; weight 0 is primary unless an override says otherwise;
/// mirroring only for primary-bound requests; a cookie only on routes with affinity and a
/// weight above 0, never for final (override/unmatched) decisions.
pub fn check_decision(route: &CompiledRoute, d: &Decision) {
    let r = route.route();
    match d.reason {
        Reason::Override => {
            assert!(
                d.bucket.is_none() && !d.mirror && d.set_cookie.is_none(),
                "{d:?}"
            );
            assert!(
                !route.route().overrides.is_empty(),
                "override reason without overrides"
            );
        }
        Reason::Unmatched => {
            assert_eq!(
                d.variant,
                Variant::Primary,
                "unmatched must be primary: {d:?}"
            );
            assert!(
                d.bucket.is_none() && !d.mirror && d.set_cookie.is_none(),
                "{d:?}"
            );
            assert!(
                !r.r#match.is_empty(),
                "unmatched reason on a route without match rules"
            );
        }
        Reason::Weight if d.bucket.is_none() => {
            // An idle route (weight 0, no mirroring) decides without hashing.
            assert!(
                r.weight == 0 && r.mirror_weight == 0,
                "no bucket on a live route: {d:?}"
            );
            assert_eq!(
                d.variant,
                Variant::Primary,
                "idle route routed to canary: {d:?}"
            );
            assert!(!d.mirror && d.set_cookie.is_none(), "{d:?}");
        }
        Reason::Key | Reason::Cookie | Reason::Weight => {
            let Some(b) = d.bucket else {
                panic!("bucketed decision without a bucket: {d:?}")
            };
            assert!(u64::from(b) < BUCKETS, "bucket {b} out of range");
            let canary = u32::from(b) < r.weight;
            assert_eq!(
                d.variant == Variant::Canary,
                canary,
                "bucket {b} weight {}",
                r.weight
            );
            if d.reason == Reason::Key {
                assert!(r.sticky_key.is_some(), "key reason without stickyKey");
            }
            if d.reason == Reason::Cookie {
                assert!(
                    r.session_affinity.is_some(),
                    "cookie reason without affinity"
                );
            }
        }
    }
    if r.weight == 0 && d.reason != Reason::Override {
        assert_eq!(
            d.variant,
            Variant::Primary,
            "weight 0 routed to canary: {d:?}"
        );
    }
    if r.weight == MAX_WEIGHT && matches!(d.reason, Reason::Key | Reason::Cookie | Reason::Weight) {
        assert_eq!(
            d.variant,
            Variant::Canary,
            "weight 10000 left a user on primary: {d:?}"
        );
    }
    if d.mirror {
        assert_eq!(
            d.variant,
            Variant::Primary,
            "mirrored a canary-bound request"
        );
        assert!(r.mirror_weight > 0, "mirrored at mirrorWeight 0");
    }
    if let Some(set_cookie) = &d.set_cookie {
        let Some(aff) = &r.session_affinity else {
            panic!("Set-Cookie on a route without affinity: {set_cookie}")
        };
        assert!(r.weight > 0, "Set-Cookie at weight 0: {set_cookie}");
        assert!(
            d.reason != Reason::Cookie,
            "re-issued a cookie that was valid: {set_cookie}"
        );
        let prefix = format!("{}=v1.", aff.cookie_name);
        assert!(
            set_cookie.starts_with(&prefix),
            "{set_cookie} lacks {prefix}"
        );
        assert!(
            !set_cookie.bytes().any(|b| b.is_ascii_control()),
            "control byte in Set-Cookie {set_cookie:?}"
        );
    }
}

/// The bucket a decision must have when it came from `seed`.
pub fn bucket_of(route: &CompiledRoute, seed: &[u8; 16]) -> u16 {
    bucket(&route.route().revision, seed)
}

/// An `:authority` that names `host` as a client would send it: wildcards filled in, with a
/// port and mixed case when `variant` asks for them (both must be ignored by the lookup).
pub fn authority_for(host: &str, variant: u8) -> String {
    let concrete = if host == "*" {
        "any-host.invalid".to_string()
    } else if let Some(suffix) = host.strip_prefix("*.") {
        format!("fz.{suffix}")
    } else {
        host.to_string()
    };
    let mut a = if variant & 1 == 1 {
        concrete.to_ascii_uppercase()
    } else {
        concrete
    };
    if variant & 2 == 2 {
        a.push_str(":8443");
    }
    a
}

/// A GET for `authority` and `path` with the extra headers given.
pub fn request(authority: &str, path: &str, headers: &[(&str, Vec<u8>)]) -> OwnedRequest {
    let mut req = OwnedRequest::new("GET", authority, path);
    for (n, v) in headers {
        req = req.with_header(*n, v.clone());
    }
    req
}

/// The independent cookie-format oracle, shared with veer-core's tests, which check it on
/// every `cargo test` (this crate is outside the root workspace, so its own tests would not
/// run there).
#[path = "../../filter/core/tests/behaviour/oracle.rs"]
mod oracle;
pub use oracle::genuine_seed;

/// `KEY_A` decoded.
pub fn key_a_bytes() -> Vec<u8> {
    (1..=32).collect()
}
