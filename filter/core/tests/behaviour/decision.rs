#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::fixtures::{keys, one_route, KEY_A, KEY_B};
use veer_core::{
    bucket, decide, decision_header_value, encode_cookie_value, key_seed, verify_cookie_value,
    CompiledTable, Decision, OwnedRequest, Reason, Variant,
};

const AFFINITY: &str =
    r#""sessionAffinity": {"cookieName": "veer", "maxAge": 600, "sameSite": "Lax"}"#;

fn req() -> OwnedRequest {
    OwnedRequest::new("GET", "app.example.com", "/")
}

fn run(t: &CompiledTable, r: &OwnedRequest, entropy: u64) -> Decision {
    let route = t.find_route(r.authority_bytes(), r.path_bytes()).unwrap();
    decide(route, r, None, entropy)
}

trait Pseudo {
    fn authority_bytes(&self) -> &[u8];
    fn path_bytes(&self) -> &[u8];
}
impl Pseudo for OwnedRequest {
    fn authority_bytes(&self) -> &[u8] {
        veer_core::RequestView::authority(self)
    }
    fn path_bytes(&self) -> &[u8] {
        veer_core::RequestView::path(self)
    }
}

/// Seeds whose bucket in "rev-1" is below / above `b`.
fn seed_with_bucket(pred: impl Fn(u16) -> bool) -> [u8; 16] {
    (0u64..)
        .map(veer_core::fresh_seed)
        .find(|s| pred(bucket("rev-1", s)))
        .unwrap()
}

#[test]
fn overrides_come_first_and_are_final() {
    let t = one_route(&format!(
        r#""weight": 10000, "mirrorWeight": 10000, {AFFINITY},
        "overrides": [
          {{"match": {{"headers": {{"x-canary": {{"exact": "never"}}}}}}, "variant": "primary"}},
          {{"match": {{"headers": {{"x-canary": {{"present": true}}}}}}, "variant": "canary"}}],
        "match": [{{"headers": {{"x-beta": {{"present": true}}}}}}]"#
    ));
    let d = run(&t, &req().with_header("x-canary", "never"), 1);
    assert_eq!(
        d,
        Decision {
            variant: Variant::Primary,
            reason: Reason::Override,
            mirror: false,
            set_cookie: None,
            bucket: None
        }
    );
    let d = run(&t, &req().with_header("x-canary", "always"), 1);
    assert_eq!(
        (d.variant, d.reason, d.set_cookie),
        (Variant::Canary, Reason::Override, None)
    );
    let d = run(&t, &req(), 1);
    assert_eq!(
        d,
        Decision {
            variant: Variant::Primary,
            reason: Reason::Unmatched,
            mirror: false,
            set_cookie: None,
            bucket: None
        }
    );
    let d = run(&t, &req().with_header("x-beta", "1"), 1);
    assert_eq!((d.variant, d.reason), (Variant::Canary, Reason::Weight));
    assert!(d.set_cookie.is_some());
}

#[test]
fn weight_zero_is_primary_for_everyone_without_cookies() {
    let t = one_route(AFFINITY);
    let canary_seed = seed_with_bucket(|b| b == 0);
    let cookie = format!(
        "veer={}",
        encode_cookie_value("test/podinfo", &canary_seed, None)
    );
    for (i, r) in [req(), req().with_header("cookie", cookie)]
        .iter()
        .enumerate()
    {
        let d = run(&t, r, i as u64);
        assert_eq!(d.variant, Variant::Primary);
        assert_eq!(d.set_cookie, None);
    }
}

#[test]
fn an_idle_route_costs_nothing_but_overrides_still_work() {
    let t = one_route(&format!(
        r#""weight": 0, {AFFINITY}, "stickyKey": {{"header": "x-user"}},
        "overrides": [{{"match": {{"headers": {{"x-canary": {{"exact": "always"}}}}}}, "variant": "canary"}}]"#
    ));
    let d = run(&t, &req().with_header("x-user", "alice"), 1);
    assert_eq!(
        d,
        Decision {
            variant: Variant::Primary,
            reason: Reason::Weight,
            mirror: false,
            set_cookie: None,
            bucket: None
        }
    );
    let d = run(&t, &req().with_header("x-canary", "always"), 1);
    assert_eq!((d.variant, d.reason), (Variant::Canary, Reason::Override));
}

#[test]
fn weight_10000_is_canary_for_everyone() {
    let t = one_route(r#""weight": 10000"#);
    for e in 0..1000 {
        assert_eq!(run(&t, &req(), e).variant, Variant::Canary);
    }
}

#[test]
fn a_valid_cookie_keeps_the_bucket_and_is_not_reissued() {
    let t = one_route(&format!(r#""weight": 5000, {AFFINITY}"#));
    let low = seed_with_bucket(|b| b < 5000);
    let high = seed_with_bucket(|b| b >= 5000);
    for (seed, want) in [(low, Variant::Canary), (high, Variant::Primary)] {
        let v = encode_cookie_value("test/podinfo", &seed, None);
        for e in 0..20 {
            let d = run(
                &t,
                &req().with_header("cookie", format!("a=b; veer={v}")),
                e,
            );
            assert_eq!(
                (d.variant, d.reason, d.set_cookie.as_deref()),
                (want, Reason::Cookie, None)
            );
            assert_eq!(d.bucket, Some(bucket("rev-1", &seed)));
        }
    }
}

#[test]
fn several_cookie_headers_are_read_as_one_list() {
    let t = one_route(&format!(r#""weight": 5000, {AFFINITY}"#));
    let seed = seed_with_bucket(|b| b < 5000);
    let v = encode_cookie_value("test/podinfo", &seed, None);
    let r = req()
        .with_header("cookie", "a=b; c=d")
        .with_header("x-other", "1")
        .with_header("cookie", format!("veer={v}"));
    let d = run(&t, &r, 3);
    assert_eq!(
        (d.variant, d.reason, d.set_cookie),
        (Variant::Canary, Reason::Cookie, None)
    );
    // A broken copy in the first header does not hide a valid one in the second.
    let r = req()
        .with_header("cookie", "veer=garbage")
        .with_header("cookie", format!("veer={v}"));
    assert_eq!(run(&t, &r, 3).reason, Reason::Cookie);
}

#[test]
fn a_fresh_user_gets_a_cookie_holding_the_seed_that_decided() {
    let t = one_route(&format!(r#""weight": 3000, {AFFINITY}"#));
    let route = t.find_route(b"app.example.com", b"/").unwrap();
    let k = keys(&[KEY_A]);
    for e in 0..200u64 {
        let d = decide(route, &req(), Some(&k), e);
        assert_eq!(d.reason, Reason::Weight);
        let set = d.set_cookie.unwrap();
        let value = set
            .strip_prefix("veer=")
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert!(
            set.ends_with("; Max-Age=600; Path=/; HttpOnly; SameSite=Lax"),
            "{set}"
        );
        let seed = verify_cookie_value("test/podinfo", value.as_bytes(), Some(&k)).unwrap();
        assert_eq!(d.bucket, Some(bucket("rev-1", &seed)));
        // The returning user is decided the same way, from the cookie.
        let again = decide(
            route,
            &req().with_header("cookie", format!("veer={value}")),
            Some(&k),
            e + 1000,
        );
        assert_eq!(
            (again.variant, again.reason, again.bucket),
            (d.variant, Reason::Cookie, d.bucket)
        );
        assert_eq!(again.set_cookie, None);
    }
}

#[test]
fn forged_and_foreign_cookies_are_ignored_and_replaced() {
    let t = one_route(&format!(r#""weight": 5000, {AFFINITY}"#));
    let route = t.find_route(b"app.example.com", b"/").unwrap();
    let k = keys(&[KEY_A]);
    let canary = seed_with_bucket(|b| b == 0);
    let forged = [
        encode_cookie_value("test/podinfo", &canary, None),
        encode_cookie_value("test/podinfo", &canary, Some(&keys(&[KEY_B]))),
        encode_cookie_value("test/other", &canary, Some(&k)),
        "v1.garbage".to_string(),
    ];
    for f in forged {
        let d = decide(
            route,
            &req().with_header("cookie", format!("veer={f}")),
            Some(&k),
            9,
        );
        assert_eq!(d.reason, Reason::Weight, "{f}");
        assert!(d.set_cookie.is_some());
    }
    // Duplicates: the first valid one wins, invalid ones before it are skipped.
    let good = encode_cookie_value("test/podinfo", &canary, Some(&k));
    let d = decide(
        route,
        &req().with_header("cookie", format!("veer=bad; veer={good}; veer=v1.x")),
        Some(&k),
        9,
    );
    assert_eq!(
        (d.reason, d.variant, d.set_cookie),
        (Reason::Cookie, Variant::Canary, None)
    );
    // Beyond MAX_COOKIE_CANDIDATES forged copies, a valid cookie is no longer looked for.
    let stuffed = format!(
        "{}veer={good}",
        "veer=v1.x; ".repeat(veer_core::MAX_COOKIE_CANDIDATES)
    );
    let d = decide(route, &req().with_header("cookie", stuffed), Some(&k), 9);
    assert_eq!(d.reason, Reason::Weight);
}

#[test]
fn sticky_key_decides_and_the_cookie_carries_the_key_seed() {
    let t = one_route(&format!(
        r#""weight": 5000, "stickyKey": {{"header": "X-User-Id"}}, {AFFINITY}"#
    ));
    let route = t.find_route(b"app.example.com", b"/").unwrap();
    let d = decide(route, &req().with_header("x-user-id", "alice"), None, 1);
    let seed = key_seed(b"alice");
    assert_eq!(
        (d.reason, d.bucket),
        (Reason::Key, Some(bucket("rev-1", &seed)))
    );
    let value = encode_cookie_value("test/podinfo", &seed, None);
    assert_eq!(
        d.set_cookie.as_deref().unwrap().split(';').next().unwrap(),
        format!("veer={value}")
    );
    // With that cookie already present, nothing is reissued.
    let d2 = decide(
        route,
        &req()
            .with_header("x-user-id", "alice")
            .with_header("cookie", format!("veer={value}")),
        None,
        2,
    );
    assert_eq!(
        (d2.reason, d2.variant, d2.set_cookie),
        (Reason::Key, d.variant, None)
    );
    // Without the key, the cookie keeps alice where she was.
    let d3 = decide(
        route,
        &req().with_header("cookie", format!("veer={value}")),
        None,
        3,
    );
    assert_eq!(
        (d3.reason, d3.variant, d3.bucket),
        (Reason::Cookie, d.variant, d.bucket)
    );
    // A key beats a cookie holding another seed, and that cookie is replaced.
    let other = encode_cookie_value("test/podinfo", &[7u8; 16], None);
    let d4 = decide(
        route,
        &req()
            .with_header("x-user-id", "alice")
            .with_header("cookie", format!("veer={other}")),
        None,
        4,
    );
    assert_eq!((d4.reason, d4.bucket), (Reason::Key, d.bucket));
    assert!(d4
        .set_cookie
        .unwrap()
        .starts_with(&format!("veer={value};")));
}

#[test]
fn without_affinity_no_cookie_is_set_or_read() {
    let t = one_route(r#""weight": 5000"#);
    let v = encode_cookie_value("test/podinfo", &[0u8; 16], None);
    let d = run(&t, &req().with_header("cookie", format!("veer={v}")), 5);
    assert_eq!((d.reason, d.set_cookie), (Reason::Weight, None));
}

#[test]
fn fresh_randomness_uses_entropy_and_request_id() {
    let t = one_route(r#""weight": 5000"#);
    let canary = (0..10_000)
        .filter(|&e| run(&t, &req(), e).variant == Variant::Canary)
        .count();
    assert!(
        (4_700..=5_300).contains(&canary),
        "{canary} of 10000 went to the canary at 50%"
    );
    let with_id = |id: &str, e| run(&t, &req().with_header("x-request-id", id), e).bucket;
    assert_eq!(with_id("abc", 1), with_id("abc", 1));
    assert_ne!(with_id("abc", 1), with_id("abd", 1));
    assert_ne!(with_id("abc", 1), run(&t, &req(), 1).bucket);
}

#[test]
fn mirror_only_for_primary_and_at_the_mirror_weight() {
    let all = one_route(r#""weight": 0, "mirrorWeight": 10000"#);
    assert!(run(&all, &req(), 1).mirror);
    let canary = one_route(r#""weight": 10000, "mirrorWeight": 10000"#);
    assert!(!run(&canary, &req(), 1).mirror);
    let none = one_route(r#""weight": 0, "mirrorWeight": 0"#);
    assert!(!run(&none, &req(), 1).mirror);
    let some = one_route(r#""weight": 0, "mirrorWeight": 2500"#);
    let mirrored = (0..10_000)
        .filter(|&e| run(&some, &req(), e).mirror)
        .count();
    assert!(
        (2_200..=2_800).contains(&mirrored),
        "{mirrored} of 10000 mirrored at 25%"
    );
}

#[test]
fn decision_header() {
    let d = Decision {
        variant: Variant::Canary,
        reason: Reason::Cookie,
        mirror: false,
        set_cookie: None,
        bucket: Some(3),
    };
    assert_eq!(
        decision_header_value("test/podinfo", &d, 42),
        "test/podinfo;canary;cookie;g=42"
    );
    let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, ["override", "unmatched", "key", "cookie", "weight"]);
}
