//! Fixed test vectors. They pin the hash, the seed derivations and the cookie format: the
//! same constants must hold natively (64-bit) and in wasm32 (32-bit usize), and a change
//! to any of them would reshuffle every sticky user in production.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::fixtures::{keys, KEY_A};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{KeyInit, Mac};
use veer_core::{bucket, encode_cookie_value, fresh_seed, key_seed, mirror_bucket};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// Seeds as specified: xxh3_128 of `"veer\0" || tag || input`, little-endian bytes.
fn spec_seed(tag: u8, input: &[u8]) -> String {
    let mut all = b"veer\0".to_vec();
    all.push(tag);
    all.extend_from_slice(input);
    hex(&xxh3_128(&all).to_le_bytes())
}

/// The bucket as specified, spelled out with the one-shot hash: xxh3_64 of
/// `"veer\0" || tag || u64le(len(revision)) || revision || seed`, mod 10000.
fn spec_bucket(tag: u8, revision: &str, seed: &[u8]) -> u16 {
    let mut input = b"veer\0".to_vec();
    input.push(tag);
    input.extend_from_slice(&(revision.len() as u64).to_le_bytes());
    input.extend_from_slice(revision.as_bytes());
    input.extend_from_slice(seed);
    (xxh3_64(&input) % 10_000) as u16
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn bucket_vectors() {
    let got: Vec<(u16, u16)> = [
        ("", &[0u8; 16][..]),
        ("7f9c2ba", b"0123456789abcdef"),
        (
            "rev-1",
            b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0",
        ),
        ("a-much-longer-revision-string-over-sixteen-bytes", b"alice"),
        ("v2", &[0x5a; 300][..]),
    ]
    .iter()
    .map(|(rev, seed)| {
        let got = (bucket(rev, seed), mirror_bucket(rev, seed));
        assert_eq!(got, (spec_bucket(1, rev, seed), spec_bucket(2, rev, seed)));
        got
    })
    .collect();
    assert_eq!(got, VECTORS_BUCKETS);
}

#[test]
fn seed_vectors() {
    assert_eq!(spec_seed(3, &0u64.to_le_bytes()), VECTOR_FRESH_0);
    assert_eq!(spec_seed(3, &u64::MAX.to_le_bytes()), VECTOR_FRESH_MAX);
    assert_eq!(spec_seed(4, b"alice"), VECTOR_KEY_ALICE);
    assert_eq!(hex(&fresh_seed(0)), VECTOR_FRESH_0);
    assert_eq!(hex(&fresh_seed(u64::MAX)), VECTOR_FRESH_MAX);
    assert_eq!(hex(&key_seed(b"alice")), VECTOR_KEY_ALICE);
}

#[test]
fn cookie_vectors() {
    let seed = *b"0123456789abcdef";
    assert_eq!(
        encode_cookie_value("test/podinfo", &seed, None),
        "v1.MDEyMzQ1Njc4OWFiY2RlZg"
    );
    assert_eq!(
        encode_cookie_value("test/podinfo", &seed, Some(&keys(&[KEY_A]))),
        VECTOR_SIGNED_COOKIE
    );
    // The MAC as specified: HMAC-SHA256(key, "veer-affinity-v1\0" || u64le(len(route)) ||
    // route || seed), first 16 bytes.
    let key = base64::engine::general_purpose::STANDARD
        .decode(KEY_A)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(b"veer-affinity-v1\0");
    mac.update(&("test/podinfo".len() as u64).to_le_bytes());
    mac.update(b"test/podinfo");
    mac.update(&seed);
    let tag = mac.finalize().into_bytes();
    assert_eq!(
        VECTOR_SIGNED_COOKIE,
        format!(
            "v1.{}.{}",
            URL_SAFE_NO_PAD.encode(seed),
            URL_SAFE_NO_PAD.encode(&tag[..16])
        )
    );
}

const VECTORS_BUCKETS: [(u16, u16); 5] = [
    (8098, 1004),
    (284, 973),
    (2078, 3067),
    (6289, 4037),
    (7146, 7180),
];
const VECTOR_FRESH_0: &str = "c62a13474df8d917bc355775eab8356c";
const VECTOR_FRESH_MAX: &str = "edd701b11b5b367b79145b14c05ea5e7";
const VECTOR_KEY_ALICE: &str = "a42b72c293afbecdff155ff031a59c64";
const VECTOR_SIGNED_COOKIE: &str = "v1.MDEyMzQ1Njc4OWFiY2RlZg.-gCJV8NMSnvOaRv2YdHSoQ";
