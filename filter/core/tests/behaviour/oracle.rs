//! An independent reading of the signed-cookie format, written from its specification
//! (`filter/core/src/cookie.rs` module doc, docs/routing-table.md), not from veer-core's
//! code, to judge veer-core's verdicts. One copy: veer-core's tests check it against the
//! fixed vector and against what veer-core mints (cookie.rs
//! `the_format_oracle_agrees_with_the_vector_and_with_minted_cookies`), and the fuzz targets
//! include this same file (fuzz/src/lib.rs) to judge every `cookie` verdict they see.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The seed of `value` if it is a cookie for `route` correctly signed with `key` (raw key
/// bytes), per the documented format: `v1.<seed>.<mac>`, unpadded base64url, MAC =
/// HMAC-SHA256(key, "veer-affinity-v1\0" ‖ u64le(len(route)) ‖ route ‖ seed)[..16].
pub fn genuine_seed(key: &[u8], route: &str, value: &[u8]) -> Option<[u8; 16]> {
    let rest = value.strip_prefix(b"v1.")?;
    if rest.len() != 45 || rest[22] != b'.' {
        return None;
    }
    let seed: [u8; 16] = URL_SAFE_NO_PAD.decode(&rest[..22]).ok()?.try_into().ok()?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(b"veer-affinity-v1\0");
    mac.update(&(route.len() as u64).to_le_bytes());
    mac.update(route.as_bytes());
    mac.update(&seed);
    let tag = mac.finalize().into_bytes();
    let want = URL_SAFE_NO_PAD.encode(&tag[..16]);
    (&rest[23..] == want.as_bytes()).then_some(seed)
}
