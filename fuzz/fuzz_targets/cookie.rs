//! Fuzz target `cookie`: a client-chosen `Cookie` header, looked up and verified with and
//! without signing keys, plus the round trip of cookies the filter mints itself.
//!
//! Properties: nothing panics; verdicts with a key agree with an independent MAC check and
//! do not change when repeated (veer-core answers repeats from a memory of verified values);
//! with one key, the only value accepted for a seed is the one the filter would mint (no
//! second encoding of the same seat); a value accepted with keys is
//! also accepted, for the same seed, after signing is turned off; minted cookies verify to
//! their seed, survive key rotation, and are refused for another route or by another key;
//! a minted cookie spliced into arbitrary header bytes is still found.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use veer_core::{encode_cookie_value, find_cookie, verify_cookie_value, SigningKeys};
use veer_fuzz::{genuine_seed, key_a_bytes, keys, KEY_A, KEY_B};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: &'a [u8],
    /// Index into NAMES, or a fuzzed name.
    name: NameChoice<'a>,
    route: &'a str,
    other_route: &'a str,
    seed: [u8; 16],
    /// Bytes before and after the minted cookie when it is spliced into a header.
    before: &'a [u8],
    after: &'a [u8],
}

#[derive(Arbitrary, Debug)]
enum NameChoice<'a> {
    Known(u8),
    Fuzzed(&'a str),
}

const NAMES: [&str; 3] = ["flagger-cookie", "veer", "c"];

fuzz_target!(|input: Input| {
    let name = match input.name {
        NameChoice::Known(i) => NAMES[usize::from(i) % NAMES.len()],
        NameChoice::Fuzzed(s) => s,
    };
    let one = keys(KEY_A);
    let rotated = keys(&format!("{KEY_B},{KEY_A}"));
    let other = keys(KEY_B);

    // Client-chosen bytes: every candidate, and the raw header as a value.
    for v in find_cookie(input.header, name).take(64) {
        check_client_value(input.route, v, &one, &rotated);
    }
    check_client_value(input.route, input.header, &one, &rotated);

    // The filter's own cookies.
    let seed = input.seed;
    let signed = encode_cookie_value(input.route, &seed, Some(&one));
    let unsigned = encode_cookie_value(input.route, &seed, None);
    assert_eq!(
        verify_cookie_value(input.route, signed.as_bytes(), Some(&one)),
        Some(seed)
    );
    assert_eq!(
        verify_cookie_value(input.route, signed.as_bytes(), Some(&rotated)),
        Some(seed)
    );
    assert_eq!(
        verify_cookie_value(input.route, signed.as_bytes(), None),
        Some(seed)
    );
    assert_eq!(
        verify_cookie_value(input.route, signed.as_bytes(), Some(&other)),
        None
    );
    assert_eq!(
        verify_cookie_value(input.route, unsigned.as_bytes(), None),
        Some(seed)
    );
    assert_eq!(
        verify_cookie_value(input.route, unsigned.as_bytes(), Some(&one)),
        None
    );
    // Asked again, from memory this time (the same key set remembers what it verified).
    assert_eq!(
        verify_cookie_value(input.route, signed.as_bytes(), Some(&one)),
        Some(seed)
    );
    // The memory is per route: a value remembered for one route is not valid for another.
    if input.other_route != input.route {
        assert_eq!(
            verify_cookie_value(input.other_route, signed.as_bytes(), Some(&one)),
            None,
            "cookie for {:?} accepted for {:?}",
            input.route,
            input.other_route
        );
    }
    assert!(
        signed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
        "minted value {signed:?} is not a plain cookie-octet string"
    );

    // Spliced between arbitrary bytes, the minted pair is its own `;`-separated element.
    if is_token(name) {
        let mut header = input.before.to_vec();
        header.extend_from_slice(format!("; {name}={signed};").as_bytes());
        header.extend_from_slice(input.after);
        assert!(
            find_cookie(&header, name).any(|v| v == signed.as_bytes()),
            "minted cookie not found in {:?}",
            String::from_utf8_lossy(&header)
        );
    }
});

fn check_client_value(route: &str, v: &[u8], one: &SigningKeys, rotated: &SigningKeys) {
    let unsigned_ok = verify_cookie_value(route, v, None);
    let verdict = verify_cookie_value(route, v, Some(one));
    // The second call may be answered from the key set's memory: same verdict, and the
    // same as an independent MAC check.
    assert_eq!(
        verify_cookie_value(route, v, Some(one)),
        verdict,
        "memory changed {v:?}"
    );
    assert_eq!(
        verdict,
        genuine_seed(&key_a_bytes(), route, v),
        "MAC verdict on {v:?}"
    );
    if let Some(seed) = verdict {
        let minted = encode_cookie_value(route, &seed, Some(one));
        assert_eq!(
            v,
            minted.as_bytes(),
            "second encoding accepted for seed {seed:?}"
        );
        assert_eq!(
            unsigned_ok,
            Some(seed),
            "signing off lost the seed of {v:?}"
        );
        assert_eq!(verify_cookie_value(route, v, Some(rotated)), Some(seed));
    }
    if let Some(seed) = unsigned_ok {
        // Unsigned acceptance: exactly `v1.<seed>`, optionally with a well-formed MAC part.
        let minted = encode_cookie_value(route, &seed, None);
        assert!(
            v.starts_with(minted.as_bytes()),
            "{v:?} accepted as {seed:?}"
        );
        let rest = &v[minted.len()..];
        assert!(
            rest.is_empty() || (rest.len() == 23 && rest[0] == b'.'),
            "{v:?}"
        );
    }
}

/// RFC 6265 cookie-name token (the names validation lets through).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
