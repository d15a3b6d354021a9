#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::fixtures::{keys, KEY_A, KEY_B};
use veer_core::{
    encode_cookie_value, find_cookie, set_cookie_header, verify_cookie_value, SameSite,
    SessionAffinity, SigningKeys,
};

const SEED: [u8; 16] = *b"0123456789abcdef";
const ROUTE: &str = "test/podinfo";

/// Rebuilds a cookie value with one byte of part `part` (1 = seed, 2 = MAC) changed.
fn flip(value: &str, part: usize) -> String {
    let mut parts: Vec<String> = value.split('.').map(str::to_string).collect();
    let p = &mut parts[part];
    let c = p.as_bytes()[3];
    let replacement = if c == b'A' { 'B' } else { 'A' };
    p.replace_range(3..4, &replacement.to_string());
    parts.join(".")
}

#[test]
fn unsigned_round_trip() {
    let v = encode_cookie_value(ROUTE, &SEED, None);
    assert!(v.starts_with("v1.") && v.matches('.').count() == 1, "{v}");
    assert_eq!(verify_cookie_value(ROUTE, v.as_bytes(), None), Some(SEED));
    // Unsigned cookies do not bind the route: the cookie name is per route already.
    assert_eq!(
        verify_cookie_value("other/route", v.as_bytes(), None),
        Some(SEED)
    );
}

#[test]
fn signed_round_trip_and_tampering() {
    let k = keys(&[KEY_A]);
    let v = encode_cookie_value(ROUTE, &SEED, Some(&k));
    assert_eq!(v.matches('.').count(), 2, "{v}");
    assert_eq!(
        verify_cookie_value(ROUTE, v.as_bytes(), Some(&k)),
        Some(SEED)
    );

    assert_eq!(
        verify_cookie_value(ROUTE, flip(&v, 1).as_bytes(), Some(&k)),
        None,
        "seed byte flipped"
    );
    assert_eq!(
        verify_cookie_value(ROUTE, flip(&v, 2).as_bytes(), Some(&k)),
        None,
        "MAC byte flipped"
    );
    assert_eq!(
        verify_cookie_value(ROUTE, &v.as_bytes()[..v.len() - 1], Some(&k)),
        None,
        "MAC truncated"
    );
    assert_eq!(
        verify_cookie_value(ROUTE, &v.as_bytes()[..v.len() - 4], Some(&k)),
        None,
        "MAC truncated by 3 bytes"
    );
    let unsigned = encode_cookie_value(ROUTE, &SEED, None);
    assert_eq!(
        verify_cookie_value(ROUTE, unsigned.as_bytes(), Some(&k)),
        None,
        "unsigned with keys configured"
    );
    assert_eq!(
        verify_cookie_value("test/other", v.as_bytes(), Some(&k)),
        None,
        "signed for another route"
    );
    assert_eq!(
        verify_cookie_value(ROUTE, v.as_bytes(), Some(&keys(&[KEY_B]))),
        None,
        "key removed from the set"
    );
    assert_eq!(
        verify_cookie_value(ROUTE, format!("{v}.x").as_bytes(), Some(&k)),
        None,
        "extra part"
    );
    assert_eq!(
        verify_cookie_value(ROUTE, v.replacen("v1", "v2", 1).as_bytes(), Some(&k)),
        None,
        "version"
    );
}

#[test]
fn remembered_verifications_stay_exact() {
    // More distinct cookies than the key set remembers (256 slots; 4096 in the benchmark's
    // build), each checked twice,
    // interleaved with forgeries that share the memory slots' neighbourhood.
    let k = keys(&[KEY_A]);
    let other = keys(&[KEY_B]);
    for i in 0..10_000u32 {
        let mut seed = SEED;
        seed[..4].copy_from_slice(&i.to_le_bytes());
        let v = encode_cookie_value(ROUTE, &seed, Some(&k));
        let forged = encode_cookie_value(ROUTE, &seed, Some(&other));
        for _ in 0..2 {
            assert_eq!(
                verify_cookie_value(ROUTE, v.as_bytes(), Some(&k)),
                Some(seed)
            );
            assert_eq!(
                verify_cookie_value(ROUTE, forged.as_bytes(), Some(&k)),
                None
            );
            // Same length as ROUTE: only the name itself tells the two apart.
            assert_eq!(
                verify_cookie_value("test/podinfp", v.as_bytes(), Some(&k)),
                None
            );
        }
        // A clone shares keys and memory; a fresh set with other keys shares neither.
        assert_eq!(
            verify_cookie_value(ROUTE, v.as_bytes(), Some(&k.clone())),
            Some(seed)
        );
        assert_eq!(verify_cookie_value(ROUTE, v.as_bytes(), Some(&other)), None);
    }
}

#[test]
fn key_rotation_keeps_old_cookies_valid() {
    let old = keys(&[KEY_A]);
    let v = encode_cookie_value(ROUTE, &SEED, Some(&old));
    let rotated = keys(&[KEY_B, KEY_A]);
    assert_eq!(
        verify_cookie_value(ROUTE, v.as_bytes(), Some(&rotated)),
        Some(SEED)
    );
    // New cookies are signed with the new first key, which the old set does not know.
    let fresh = encode_cookie_value(ROUTE, &SEED, Some(&rotated));
    assert_ne!(fresh, v);
    assert_eq!(
        verify_cookie_value(ROUTE, fresh.as_bytes(), Some(&keys(&[KEY_B]))),
        Some(SEED)
    );
    assert_eq!(
        verify_cookie_value(ROUTE, fresh.as_bytes(), Some(&old)),
        None
    );
}

#[test]
fn signing_turned_off_keeps_signed_cookies_seed() {
    let v = encode_cookie_value(ROUTE, &SEED, Some(&keys(&[KEY_A])));
    assert_eq!(verify_cookie_value(ROUTE, v.as_bytes(), None), Some(SEED));
    assert_eq!(
        verify_cookie_value(ROUTE, &v.as_bytes()[..v.len() - 2], None),
        None
    );
}

#[test]
fn malformed_values_are_rejected() {
    let k = keys(&[KEY_A]);
    for bad in [
        &b""[..],
        b"v1",
        b"v1.",
        b"v1..",
        b"v1.MDEyMzQ1Njc4OWFiY2Rl",    // too short
        b"v1.MDEyMzQ1Njc4OWFiY2RlZg=", // padded
        b"v1.MDEyMzQ1Njc4OWFiY2RlZh",  // non-canonical trailing bits
        b"v1.MDEyMzQ1Njc4OWFiY2Rl+g",  // standard alphabet
        b"\xff\xfe\x00",
        b"v1.\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ] {
        assert_eq!(verify_cookie_value(ROUTE, bad, None), None, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(verify_cookie_value(ROUTE, bad, Some(&k)), None);
    }
    // The well-formed value those are mutations of.
    assert_eq!(
        verify_cookie_value(ROUTE, b"v1.MDEyMzQ1Njc4OWFiY2RlZg", None),
        Some(SEED)
    );
}

#[test]
fn find_cookie_tolerates_real_world_headers() {
    let h = b"a=1; veer=x;veer=\"y\" ;  b ; =z; veer = w\t; veer=\"broken; c=\xff\xfe";
    let found: Vec<&[u8]> = find_cookie(h, "veer").collect();
    assert_eq!(found, vec![&b"x"[..], b"y", b"w", b"\"broken"]);
    assert_eq!(
        find_cookie(h, "c").collect::<Vec<_>>(),
        vec![&b"\xff\xfe"[..]]
    );
    assert_eq!(find_cookie(h, "b").count(), 0, "a bare name has no value");
    assert_eq!(
        find_cookie(b"VEER=1", "veer").count(),
        0,
        "names are case-sensitive"
    );
    assert_eq!(find_cookie(b"", "veer").count(), 0);

    // 64 KiB of other cookies before ours.
    let mut big = Vec::new();
    for i in 0..5000 {
        big.extend_from_slice(format!("c{i}=vvvvvvvv; ").as_bytes());
    }
    big.extend_from_slice(b"veer=found");
    assert!(big.len() > 64 * 1024);
    assert_eq!(
        find_cookie(&big, "veer").collect::<Vec<_>>(),
        vec![&b"found"[..]]
    );
}

fn affinity() -> SessionAffinity {
    SessionAffinity {
        cookie_name: "flagger-cookie".into(),
        max_age: 86400,
        path: "/".into(),
        domain: Some("example.com".into()),
        secure: true,
        http_only: true,
        same_site: Some(SameSite::Lax),
        partitioned: true,
    }
}

#[test]
fn set_cookie_header_carries_every_attribute() {
    assert_eq!(
        set_cookie_header(&affinity(), "v1.abc"),
        "flagger-cookie=v1.abc; Max-Age=86400; Path=/; Domain=example.com; Secure; HttpOnly; SameSite=Lax; Partitioned"
    );
    let plain = SessionAffinity {
        domain: None,
        secure: false,
        http_only: false,
        same_site: None,
        partitioned: false,
        max_age: 0,
        ..affinity()
    };
    assert_eq!(
        set_cookie_header(&plain, "v"),
        "flagger-cookie=v; Max-Age=0; Path=/"
    );
}

#[test]
fn signing_keys_never_print_key_bytes() {
    let k = keys(&[KEY_A, KEY_B]);
    let shown = format!("{k:?}");
    assert_eq!(shown, "SigningKeys { count: 2, .. }");
    assert!(!shown.contains("AQID"));
}

#[test]
fn signing_keys_from_env_value() {
    let k = SigningKeys::from_env_value(&format!(" {KEY_B} ,{KEY_A},")).unwrap();
    assert_eq!(k.len(), 2);
    let v = encode_cookie_value(ROUTE, &SEED, Some(&k));
    assert_eq!(
        verify_cookie_value(ROUTE, v.as_bytes(), Some(&keys(&[KEY_B]))),
        Some(SEED)
    );
    assert_eq!(
        SigningKeys::from_env_value(" , ").unwrap_err().to_string(),
        "cookieSigning.keysEnv: no keys given"
    );
    assert_eq!(
        SigningKeys::from_env_value(&format!("{KEY_A},c2hvcnQ="))
            .unwrap_err()
            .to_string(),
        "cookieSigning.keysEnv[1]: key must decode to at least 16 bytes, got 5"
    );
    // URL-safe and unpadded keys are accepted too.
    assert!(SigningKeys::from_env_value("_-_-_-_-_-_-_-_-_-_-_-_-").is_ok());
}

/// The fuzz targets' independent oracle (oracle.rs) agrees with the fixed vector
/// (vectors.rs) and with what veer-core mints, and rejects another route and a
/// one-character change. It runs here because the fuzz crate is outside the workspace.
#[test]
fn the_format_oracle_agrees_with_the_vector_and_with_minted_cookies() {
    use super::oracle::genuine_seed;
    let key_a: Vec<u8> = (1..=32).collect();
    let seed = *b"0123456789abcdef";
    let vector = b"v1.MDEyMzQ1Njc4OWFiY2RlZg.-gCJV8NMSnvOaRv2YdHSoQ";
    assert_eq!(genuine_seed(&key_a, "test/podinfo", vector), Some(seed));
    let minted = encode_cookie_value("a/b", &[7; 16], Some(&keys(&[KEY_A])));
    assert_eq!(
        genuine_seed(&key_a, "a/b", minted.as_bytes()),
        Some([7; 16])
    );
    assert_eq!(genuine_seed(&key_a, "a/c", minted.as_bytes()), None);
    let mut bad = vector.to_vec();
    bad[30] ^= 1;
    assert_eq!(genuine_seed(&key_a, "test/podinfo", &bad), None);
    // Signed with another key: not genuine under key A.
    let other = encode_cookie_value("a/b", &[7; 16], Some(&keys(&[KEY_B])));
    assert_eq!(genuine_seed(&key_a, "a/b", other.as_bytes()), None);
}
