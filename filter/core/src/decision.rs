//! The per-request decision, steps 3–8 of the routing-table contract: overrides, A/B match,
//! sticky bucket, weight, mirror and the affinity cookie. Steps 1–2 (dropping client-sent
//! decision headers, finding the route) belong to the edge and `CompiledTable::find_route`.
//!
//! Sticky keys: the key header's bytes are hashed into a 16-byte seed (`key_seed`), and the
//! bucket is `bucket(revision, seed)` as for cookies. When the route also has session
//! affinity, that seed is what the cookie carries, so a user keeps their place on requests
//! that lack the key header (e.g. after logging out).

use crate::bucket::{bucket, fresh_seed, key_seed, mirror_bucket, mix_request_id, Bucket, Seed};
use crate::compiled::CompiledRoute;
use crate::cookie::{encode_cookie_value, request_cookies, verify_cookie_value};
use crate::keys::SigningKeys;
use crate::request::RequestView;
use crate::table::Variant;

/// At most this many same-name cookies are MAC-checked per request, so a header stuffed with
/// thousands of forged copies costs a bounded amount of HMAC work.
pub const MAX_COOKIE_CANDIDATES: usize = 8;

/// Why a request got its variant. Also the `reason` tag of the filter's request counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An override rule chose the variant.
    Override,
    /// The route has A/B rules and none matched: primary.
    Unmatched,
    /// Bucket from the sticky-key header.
    Key,
    /// Bucket from a valid affinity cookie.
    Cookie,
    /// Bucket from fresh randomness.
    Weight,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Override,
        Reason::Unmatched,
        Reason::Key,
        Reason::Cookie,
        Reason::Weight,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Override => "override",
            Reason::Unmatched => "unmatched",
            Reason::Key => "key",
            Reason::Cookie => "cookie",
            Reason::Weight => "weight",
        }
    }
}

/// What the edge does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub variant: Variant,
    pub reason: Reason,
    /// Set the mirror header.
    pub mirror: bool,
    /// The full `Set-Cookie` header value to add to the response.
    pub set_cookie: Option<String>,
    /// The sticky bucket, when one was computed: not for overrides, unmatched requests, or
    /// routes at weight 0 without mirroring (where it could not change anything).
    pub bucket: Option<Bucket>,
}

impl Decision {
    fn fixed(variant: Variant, reason: Reason) -> Decision {
        Decision {
            variant,
            reason,
            mirror: false,
            set_cookie: None,
            bucket: None,
        }
    }
}

/// Decides one request on `route`.
///
/// `entropy` is per-request uniqueness from the edge (time ⊕ counter is enough); it only
/// matters for users with neither key nor cookie, and `x-request-id` is mixed in when
/// present. Overrides and unmatched A/B requests are final: no bucket, no mirror, no cookie.
pub fn decide(
    route: &CompiledRoute,
    req: &impl RequestView,
    keys: Option<&SigningKeys>,
    entropy: u64,
) -> Decision {
    if let Some((_, variant)) = route.overrides.iter().find(|(rule, _)| rule.matches(req)) {
        return Decision::fixed(*variant, Reason::Override);
    }
    if !route.rules.is_empty() && !route.rules.iter().any(|rule| rule.matches(req)) {
        return Decision::fixed(Variant::Primary, Reason::Unmatched);
    }
    let r = route.route();
    if r.weight == 0 && r.mirror_weight == 0 {
        // Nobody can be on the canary or mirrored, and no cookie is issued: the common
        // state between runs costs no hashing and no MAC.
        return Decision::fixed(Variant::Primary, Reason::Weight);
    }
    let cookie_seed = r.session_affinity.as_ref().and_then(|aff| {
        request_cookies(req, &aff.cookie_name)
            .take(MAX_COOKIE_CANDIDATES)
            .find_map(|v| verify_cookie_value(&r.name, v, keys))
    });
    let key = route.sticky_header.as_deref().and_then(|h| req.header(h));
    let (seed, reason): (Seed, Reason) = match (key, cookie_seed) {
        (Some(k), _) => (key_seed(k), Reason::Key),
        (None, Some(s)) => (s, Reason::Cookie),
        (None, None) => {
            let entropy = match req.header("x-request-id") {
                Some(id) => mix_request_id(entropy, id),
                None => entropy,
            };
            (fresh_seed(entropy), Reason::Weight)
        }
    };
    let b = bucket(&r.revision, &seed);
    let variant = if u32::from(b) < r.weight {
        Variant::Canary
    } else {
        Variant::Primary
    };
    let mirror = variant == Variant::Primary
        && r.mirror_weight > 0
        && u32::from(mirror_bucket(&r.revision, &seed)) < r.mirror_weight;
    // Issue the cookie unless the request already holds a valid one with this very seed
    // (a key user whose cookie holds another seed gets it replaced).
    let set_cookie = match (&r.session_affinity, &route.cookie_attributes) {
        (Some(aff), Some(attrs)) if r.weight > 0 && cookie_seed != Some(seed) => {
            let value = encode_cookie_value(&r.name, &seed, keys);
            let mut header =
                String::with_capacity(aff.cookie_name.len() + 1 + value.len() + attrs.len());
            header.push_str(&aff.cookie_name);
            header.push('=');
            header.push_str(&value);
            header.push_str(attrs);
            Some(header)
        }
        _ => None,
    };
    Decision {
        variant,
        reason,
        mirror,
        set_cookie,
        bucket: Some(b),
    }
}

/// The `x-veer-decision` response header value: `<route>;<variant>;<reason>;g=<generation>`.
pub fn decision_header_value(route_name: &str, d: &Decision, generation: u64) -> String {
    format!(
        "{route_name};{};{};g={generation}",
        d.variant.as_str(),
        d.reason.as_str()
    )
}
