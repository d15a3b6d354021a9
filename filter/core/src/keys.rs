//! Cookie signing keys. The first key signs new cookies; every key verifies, so keys rotate
//! by prepending the new key and dropping the old one once its cookies have expired.
//! Key bytes never appear in `Debug` output or error messages.

use crate::table::PluginConfig;
use crate::validate::ConfigError;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, KeyInit};
use sha2::Sha256;
use std::fmt;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in decoded bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// A non-empty, ordered set of HMAC-SHA256 keys, each already keyed (the HMAC pads are
/// computed once here, not per request).
#[derive(Clone)]
pub struct SigningKeys {
    macs: Vec<HmacSha256>,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("count", &self.macs.len())
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
        Ok(SigningKeys { macs })
    }

    /// How many keys verify.
    pub fn len(&self) -> usize {
        self.macs.len()
    }

    /// Never true: construction rejects an empty set.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    /// The keyed MAC that signs new cookies.
    pub(crate) fn signer(&self) -> Option<&HmacSha256> {
        self.macs.first()
    }

    /// Every keyed MAC, signer first.
    pub(crate) fn verifiers(&self) -> impl Iterator<Item = &HmacSha256> {
        self.macs.iter()
    }
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
