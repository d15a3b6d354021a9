//! Cookie signing keys. The first key signs new cookies; every key verifies, so keys rotate
//! by prepending the new key and dropping the old one once its cookies have expired.
//! Key bytes never appear in `Debug` output or error messages.
//!
//! HMAC-SHA256 costs about 2 µs per cookie in the V8 filter, most of the per-request budget,
//! so each key set remembers the last cookie values it verified (per route, exact bytes) and
//! answers repeats from memory. Browsers send the same cookie on every request of a session,
//! so repeats are the common case. The memory belongs to the key set: new keys start empty.

use crate::bucket::Seed;
use crate::table::PluginConfig;
use crate::validate::ConfigError;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, KeyInit};
use sha2::Sha256;
use std::fmt;
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in decoded bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Slots in the memory of verified cookies (direct-mapped), 80 bytes each: 20 KiB per Envoy
/// worker. Kept at 256 by the benchmark's returning-user mix (100,000 users, Zipf-distributed
/// visits; BENCHMARKS.md): 4096 slots (320 KiB) would remember 59% of returning cookies
/// instead of 32%, which would save about 0.11 µs per request (0.25% of an empty filter's
/// cost), not worth 300 KiB more per worker. The `verified-memory-4096` feature builds the larger one,
/// only so the benchmark can keep measuring both.
#[cfg(not(feature = "verified-memory-4096"))]
const VERIFIED_SLOTS: usize = 256;
#[cfg(feature = "verified-memory-4096")]
const VERIFIED_SLOTS: usize = 4096;
/// Length of a signed cookie value: `v1.` + 22 + `.` + 22.
pub(crate) const SIGNED_VALUE_LEN: usize = 48;

#[derive(Clone, Copy)]
struct Verified {
    tag: u64,
    value: [u8; SIGNED_VALUE_LEN],
    seed: Seed,
}

/// A non-empty, ordered set of HMAC-SHA256 keys, each already keyed (the HMAC pads are
/// computed once here, not per request). Cloning is cheap and shares the keys and the
/// memory of verified cookies.
#[derive(Clone)]
pub struct SigningKeys(Arc<KeySet>);

struct KeySet {
    macs: Vec<HmacSha256>,
    verified: Mutex<Vec<Option<Verified>>>,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("count", &self.0.macs.len())
            .finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// Keys as written in `cookieSigning.keys`: base64 (standard or URL-safe, padding
    /// optional), each decoding to at least 16 bytes.
    pub fn from_base64(keys: &[String]) -> Result<SigningKeys, ConfigError> {
        SigningKeys::decode_all(keys.iter().map(String::as_str), |i| {
            format!("cookieSigning.keys[{i}]")
        })
    }

    /// Keys from the environment variable named by `cookieSigning.keysEnv`: comma-separated
    /// base64 keys; whitespace around each key and empty entries are ignored.
    pub fn from_env_value(v: &str) -> Result<SigningKeys, ConfigError> {
        SigningKeys::decode_all(v.split(',').map(str::trim).filter(|k| !k.is_empty()), |i| {
            format!("cookieSigning.keysEnv[{i}]")
        })
    }

    fn decode_all<'a>(
        keys: impl Iterator<Item = &'a str>,
        path: impl Fn(usize) -> String,
    ) -> Result<SigningKeys, ConfigError> {
        let mut macs = Vec::new();
        for (i, k) in keys.enumerate() {
            let bytes = decode_key(k).map_err(|why| ConfigError::new(None, path(i), why))?;
            let mac = HmacSha256::new_from_slice(&bytes)
                .map_err(|_| ConfigError::new(None, path(i), "HMAC-SHA256 rejected the key"))?;
            macs.push(mac);
        }
        if macs.is_empty() {
            return Err(ConfigError::new(
                None,
                path(0).trim_end_matches("[0]").to_string(),
                "no keys given",
            ));
        }
        Ok(SigningKeys(Arc::new(KeySet {
            macs,
            verified: Mutex::new(vec![None; VERIFIED_SLOTS]),
        })))
    }

    /// How many keys verify.
    pub fn len(&self) -> usize {
        self.0.macs.len()
    }

    /// Never true: construction rejects an empty set.
    pub fn is_empty(&self) -> bool {
        self.0.macs.is_empty()
    }

    /// The keyed MAC that signs new cookies.
    pub(crate) fn signer(&self) -> Option<&HmacSha256> {
        self.0.macs.first()
    }

    /// Every keyed MAC, signer first.
    pub(crate) fn verifiers(&self) -> impl Iterator<Item = &HmacSha256> {
        self.0.macs.iter()
    }

    /// The seed of `value` for `route` if these keys verified exactly these bytes before.
    pub(crate) fn recall(&self, route: &str, value: &[u8]) -> Option<Seed> {
        let value: &[u8; SIGNED_VALUE_LEN] = value.try_into().ok()?;
        let tag = memory_tag(route, value);
        // Contention (only possible natively, across threads) just means a fresh HMAC.
        let slots = self.0.verified.try_lock().ok()?;
        match slots.get(slot_of(tag)) {
            Some(Some(v)) if v.tag == tag && &v.value == value => Some(v.seed),
            _ => None,
        }
    }

    /// Remembers that `value` verified for `route` with these keys.
    pub(crate) fn remember(&self, route: &str, value: &[u8], seed: Seed) {
        let Ok(value) = <&[u8; SIGNED_VALUE_LEN]>::try_from(value) else {
            return;
        };
        let tag = memory_tag(route, value);
        if let Ok(mut slots) = self.0.verified.try_lock() {
            if let Some(slot) = slots.get_mut(slot_of(tag)) {
                *slot = Some(Verified {
                    tag,
                    value: *value,
                    seed,
                });
            }
        }
    }
}

/// Binds a remembered value to its route: the same bytes verified for one route say
/// nothing about another.
fn memory_tag(route: &str, value: &[u8]) -> u64 {
    // Two one-shot hashes: the streaming hasher costs more than the HMAC saving is worth
    // re-spending on short inputs.
    xxh3_64_with_seed(value, xxh3_64(route.as_bytes()))
}

fn slot_of(tag: u64) -> usize {
    // The remainder is below VERIFIED_SLOTS, so it fits usize on every target.
    (tag % VERIFIED_SLOTS as u64) as usize
}

fn decode_key(k: &str) -> Result<Vec<u8>, String> {
    let trimmed = k.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        // The key itself is secret: the message says what is wrong, never what it was.
        .map_err(|_| "is not valid base64".to_string())?;
    if bytes.len() < MIN_KEY_BYTES {
        return Err(format!(
            "key must decode to at least {MIN_KEY_BYTES} bytes, got {}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// The signing keys a configuration asks for: inline keys, or the keys in the environment
/// variable it names, read through `env` (the edge passes its way of reading the
/// environment). `Ok(None)` when cookies are not signed.
pub fn signing_keys(
    cfg: &PluginConfig,
    env: impl FnOnce(&str) -> Option<String>,
) -> Result<Option<SigningKeys>, ConfigError> {
    let Some(signing) = &cfg.cookie_signing else {
        return Ok(None);
    };
    match &signing.keys_env {
        Some(var) => {
            let value = env(var).ok_or_else(|| {
                ConfigError::new(
                    None,
                    "cookieSigning.keysEnv",
                    format!("environment variable {var} is not set"),
                )
            })?;
            SigningKeys::from_env_value(&value).map(Some)
        }
        None => SigningKeys::from_base64(&signing.keys).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_is_as_large_as_documented() {
        // The doc comment on VERIFIED_SLOTS and BENCHMARKS.md quote this per-worker size.
        let bytes = std::mem::size_of::<Option<Verified>>() * VERIFIED_SLOTS;
        #[cfg(not(feature = "verified-memory-4096"))]
        assert_eq!(bytes, 20 * 1024);
        #[cfg(feature = "verified-memory-4096")]
        assert_eq!(bytes, 320 * 1024);
    }
}
