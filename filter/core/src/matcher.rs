//! A/B and override conditions, compiled once per table and evaluated per request without
//! allocating (except to percent-decode a query value that contains `%`).
//!
//! Semantics follow Istio's `HTTPMatchRequest`: header names are case-insensitive, `method`
//! is exact and case-sensitive, `uri` is matched against the path without its query string,
//! `regex` must match the whole value, and `present: false` means the header, cookie or
//! parameter is absent. String conditions never match a value that is not valid UTF-8.
//!
//! Regexes use `regex-lite`, which keeps the filter's .wasm small. It accepts RE2 syntax
//! except for Unicode classes: `\p{..}`/`\P{..}` are rejected, and `\w`, `\d`, `\s`, `\b`
//! and `(?i)` are ASCII-only (RE2's `\w`, `\d`, `\s` are ASCII-only too).

use crate::cookie::find_cookie;
use crate::request::RequestView;
use crate::table::{MatchRule, StringMatch};
use crate::validate::{key_segment, ConfigError};
use regex_lite::Regex;
use std::borrow::Cow;

/// One compiled string condition.
#[derive(Debug, Clone)]
pub enum CompiledMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Anchored to the whole value.
    Regex(Regex),
    /// `true`: the value exists; `false`: it does not.
    Present(bool),
}

impl CompiledMatch {
    /// Compiles `m`; `path` names it in errors (e.g. `routes[0].match[1].headers.x-user`).
    pub fn compile(m: &StringMatch, path: &str) -> Result<CompiledMatch, ConfigError> {
        let set = [
            ("exact", m.exact.is_some()),
            ("prefix", m.prefix.is_some()),
            ("suffix", m.suffix.is_some()),
            ("regex", m.regex.is_some()),
            ("present", m.present.is_some()),
        ];
        let given: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
        if given.len() != 1 {
            let reason = if given.is_empty() {
                "needs exactly one of exact, prefix, suffix, regex, present; got none".to_string()
            } else {
                format!(
                    "needs exactly one of exact, prefix, suffix, regex, present; got {}",
                    given.join(", ")
                )
            };
            return Err(ConfigError::new(None, path, reason));
        }
        Ok(if let Some(s) = &m.exact {
            CompiledMatch::Exact(s.as_str().into())
        } else if let Some(s) = &m.prefix {
            CompiledMatch::Prefix(s.as_str().into())
        } else if let Some(s) = &m.suffix {
            CompiledMatch::Suffix(s.as_str().into())
        } else if let Some(s) = &m.regex {
            CompiledMatch::Regex(compile_whole_value_regex(s, &format!("{path}.regex"))?)
        } else {
            CompiledMatch::Present(m.present.unwrap_or(true))
        })
    }

    /// Whether the condition holds for `value` (`None`: the thing is absent).
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        let Some(v) = value else {
            return matches!(self, CompiledMatch::Present(false));
        };
        match self {
            CompiledMatch::Present(want) => *want,
            // Equal bytes to a &str are valid UTF-8 by construction.
            CompiledMatch::Exact(s) => v == s.as_bytes(),
            CompiledMatch::Prefix(s) => {
                v.starts_with(s.as_bytes()) && std::str::from_utf8(v).is_ok()
            }
            CompiledMatch::Suffix(s) => v.ends_with(s.as_bytes()) && std::str::from_utf8(v).is_ok(),
            CompiledMatch::Regex(re) => std::str::from_utf8(v).is_ok_and(|s| re.is_match(s)),
        }
    }
}

fn compile_whole_value_regex(pattern: &str, path: &str) -> Result<Regex, ConfigError> {
    // The group keeps alternations inside the anchors: `a|b` must not become `\Aa|b\z`.
    Regex::new(&format!(r"\A(?:{pattern})\z")).map_err(|e| {
        let mut reason = format!("invalid regex: {}", one_line(&e.to_string()));
        if pattern.contains(r"\p") || pattern.contains(r"\P") {
            reason.push_str(
                " (the filter's regex engine, regex-lite, has no Unicode classes: write explicit ranges such as [\\x{370}-\\x{3ff}])",
            );
        }
        ConfigError::new(None, path, reason)
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One compiled A/B or override rule: every condition must hold.
#[derive(Debug, Clone, Default)]
pub struct CompiledRule {
    /// Lowercased header names.
    headers: Vec<(Box<str>, CompiledMatch)>,
    cookies: Vec<(Box<str>, CompiledMatch)>,
    query_params: Vec<(Box<[u8]>, CompiledMatch)>,
    method: Option<Box<[u8]>>,
    uri: Option<CompiledMatch>,
}

impl CompiledRule {
    /// Compiles `rule`; `path` names it in errors (e.g. `routes[0].match[1]`).
    pub fn compile(rule: &MatchRule, path: &str) -> Result<CompiledRule, ConfigError> {
        let mut out = CompiledRule::default();
        for (name, m) in &rule.headers {
            let at = format!("{path}.headers{}", key_segment(name));
            if !crate::validate::is_token(name.trim_start_matches(':')) {
                return Err(ConfigError::new(
                    None,
                    at,
                    format!("{name:?} is not a valid header name"),
                ));
            }
            out.headers.push((
                name.to_ascii_lowercase().into(),
                CompiledMatch::compile(m, &at)?,
            ));
        }
        for (name, m) in &rule.cookies {
            let at = format!("{path}.cookies{}", key_segment(name));
            if !crate::validate::is_token(name) {
                return Err(ConfigError::new(
                    None,
                    at,
                    format!("{name:?} is not a valid cookie name"),
                ));
            }
            out.cookies
                .push((name.as_str().into(), CompiledMatch::compile(m, &at)?));
        }
        for (name, m) in &rule.query_params {
            let at = format!("{path}.queryParams{}", key_segment(name));
            if name.is_empty() {
                return Err(ConfigError::new(
                    None,
                    at,
                    "query parameter name must not be empty",
                ));
            }
            out.query_params
                .push((name.as_bytes().into(), CompiledMatch::compile(m, &at)?));
        }
        if let Some(method) = &rule.method {
            if !crate::validate::is_token(method) {
                return Err(ConfigError::new(
                    None,
                    format!("{path}.method"),
                    format!("{method:?} is not a valid HTTP method"),
                ));
            }
            out.method = Some(method.as_bytes().into());
        }
        if let Some(uri) = &rule.uri {
            out.uri = Some(CompiledMatch::compile(uri, &format!("{path}.uri"))?);
        }
        Ok(out)
    }

    /// Whether every condition holds for `req`. An empty rule matches everything.
    pub fn matches(&self, req: &impl RequestView) -> bool {
        if let Some(m) = &self.method {
            if req.method() != &m[..] {
                return false;
            }
        }
        if let Some(uri) = &self.uri {
            if !uri.matches(Some(path_without_query(req.path()))) {
                return false;
            }
        }
        if !self
            .headers
            .iter()
            .all(|(name, m)| m.matches(req.header(name)))
        {
            return false;
        }
        if !self.cookies.is_empty() {
            let header = req.header("cookie").unwrap_or_default();
            if !self
                .cookies
                .iter()
                .all(|(name, m)| m.matches(find_cookie(header, name).next()))
            {
                return false;
            }
        }
        if !self.query_params.is_empty() {
            let query = query_string(req.path());
            if !self
                .query_params
                .iter()
                .all(|(name, m)| m.matches(query_param(query, name).as_deref()))
            {
                return false;
            }
        }
        true
    }
}

/// `:path` up to (not including) `?` or `#`.
pub fn path_without_query(path: &[u8]) -> &[u8] {
    match path.iter().position(|&b| b == b'?' || b == b'#') {
        Some(i) => &path[..i],
        None => path,
    }
}

fn query_string(path: &[u8]) -> &[u8] {
    let Some(q) = path.iter().position(|&b| b == b'?') else {
        return &[];
    };
    let query = &path[q + 1..];
    match query.iter().position(|&b| b == b'#') {
        Some(h) => &query[..h],
        None => query,
    }
}

/// The percent-decoded value of the first parameter named `name` (compared after decoding);
/// a parameter without `=` has the empty value. `+` is left as is, as Envoy does.
pub fn query_param<'a>(query: &'a [u8], name: &[u8]) -> Option<Cow<'a, [u8]>> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        if k.is_empty() || percent_decode(k).as_ref() != name {
            return None;
        }
        Some(percent_decode(v))
    })
}

/// Decodes `%XX` escapes; malformed escapes stay literal. Borrows when there is no `%`.
pub fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
