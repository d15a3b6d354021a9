//! Go durations as Flagger's specs write them (`1m`, `30s`, `1m30s`, `500ms`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// with its text because query templates use the text (`{{ interval }}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoDuration {
    pub text: String,
    pub duration: Duration,
}

impl GoDuration {
    pub fn parse(text: &str) -> Result<GoDuration, String> {
        parse_go_duration(text).map(|duration| GoDuration {
            text: text.to_string(),
            duration,
        })
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct GoDurationVisitor;
        impl de::Visitor<'_> for GoDurationVisitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration like \"1m\", \"30s\" or \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<GoDuration, E> {
                GoDuration::parse(text).map_err(E::custom)
            }
            // A bare number is the commonest mistake (`interval: 90`): say which unit is
            // missing instead of "expected a string".
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<GoDuration, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<GoDuration, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<GoDuration, E> {
                self.visit_str(&n.to_string())
            }
        }
        d.deserialize_any(GoDurationVisitor)
    }
}

/// Parses Go's `time.ParseDuration` syntax: a sequence of decimal numbers, each with an
/// optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), or a bare `0`.
/// Negative durations are rejected: no spec field means anything by one.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("invalid duration {text:?}: {why} (Go syntax, e.g. \"1m\", \"30s\", \"1m30s\")")
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('-') {
        return Err(bad("negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad("malformed number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad("out of range"))
}
