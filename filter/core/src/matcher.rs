//! A/B and override conditions, compiled once per table and evaluated per request without
//! allocating (except to percent-decode a query value that contains `%`).
//!
//! Semantics follow Istio's `HTTPMatchRequest`: header names are case-insensitive, `method`
//! is exact and case-sensitive, `uri` is matched against the path without its query string,
//! `regex` must match the whole value, and `present: false` means the header, cookie or
//! parameter is absent. String conditions never match a value that is not valid UTF-8.
//!
//! Regexes use the `regex` crate, trimmed to the features RE2 patterns need (`unicode-perl`
//! for `\d`/`\w`/`\s`, `unicode-case` for `(?i)`). `regex-lite` would keep the .wasm about
//! 800 KB smaller, but it has no literal prefilters or DFA: it took 11 µs to match Flagger's
//! `.*Firefox.*` against a browser user-agent (0.5 µs with `regex`), more than the filter's
//! whole per-request budget. Gaps against RE2: Unicode classes (`\p{Greek}`, `\pL`) are
//! rejected (see `has_unicode_class`), and `\d`, `\w`, `\s` match Unicode digits, letters and
//! spaces where RE2's are ASCII-only.
//!
//! The most common A/B patterns skip the regex engine: a plain literal, `lit1|lit2|..`,
//! `.*lit.*`, `lit.*` and `.*lit` are answered with byte comparisons (same results: header
//! values cannot hold the `\n` that `.` would refuse, and a decoded `\n` is checked for).

use crate::cookie::find_cookie;
use crate::request::RequestView;
use crate::table::{MatchRule, StringMatch};
use crate::validate::{key_segment, ConfigError};
use regex::Regex;
use std::borrow::Cow;

/// One compiled string condition.
#[derive(Debug, Clone)]
pub struct CompiledMatch(Kind);

#[derive(Debug, Clone)]
enum Kind {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// A regex of literals: `a|b|c`, whole-value.
    OneOf(Box<[Box<str>]>),
    /// `.*lit.*`: a substring search, prepared once.
    Contains(Box<memchr::memmem::Finder<'static>>),
    /// `lit.*`, `.*lit`: like Prefix/Suffix, but `.` does not match `\n`.
    LinePrefix(Box<str>),
    LineSuffix(Box<str>),
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
            let got = if given.is_empty() {
                "none".to_string()
            } else {
                given.join(", ")
            };
            return Err(ConfigError::new(
                None,
                path,
                format!("needs exactly one of exact, prefix, suffix, regex, present; got {got}"),
            ));
        }
        Ok(CompiledMatch(if let Some(s) = &m.exact {
            Kind::Exact(s.as_str().into())
        } else if let Some(s) = &m.prefix {
            Kind::Prefix(s.as_str().into())
        } else if let Some(s) = &m.suffix {
            Kind::Suffix(s.as_str().into())
        } else if let Some(s) = &m.regex {
            // Compiled even when a shortcut applies, so that validation is the regex
            // engine's, whichever way the pattern is evaluated.
            let re = compile_whole_value_regex(s, &format!("{path}.regex"))?;
            regex_shortcut(s).unwrap_or(Kind::Regex(re))
        } else {
            Kind::Present(m.present.unwrap_or(true))
        }))
    }

    /// Whether the condition holds for `value` (`None`: the thing is absent).
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        let Some(v) = value else {
            return matches!(self.0, Kind::Present(false));
        };
        let utf8 = || std::str::from_utf8(v).is_ok();
        let one_line = || memchr::memchr(b'\n', v).is_none();
        match &self.0 {
            Kind::Present(want) => *want,
            // Equal bytes to a &str are valid UTF-8 by construction.
            Kind::Exact(s) => v == s.as_bytes(),
            Kind::OneOf(set) => set.iter().any(|s| v == s.as_bytes()),
            Kind::Prefix(s) => v.starts_with(s.as_bytes()) && utf8(),
            Kind::Suffix(s) => v.ends_with(s.as_bytes()) && utf8(),
            Kind::LinePrefix(s) => v.starts_with(s.as_bytes()) && one_line() && utf8(),
            Kind::LineSuffix(s) => v.ends_with(s.as_bytes()) && one_line() && utf8(),
            Kind::Contains(f) => f.find(v).is_some() && one_line() && utf8(),
            Kind::Regex(re) => std::str::from_utf8(v).is_ok_and(|s| re.is_match(s)),
        }
    }
}

/// The byte-comparison equivalent of a regex, for the shapes A/B rules commonly use.
fn regex_shortcut(pattern: &str) -> Option<Kind> {
    let is_literal = |s: &str| {
        !s.is_empty()
            && !s.contains(|c: char| {
                matches!(
                    c,
                    '\\' | '.'
                        | '+'
                        | '*'
                        | '?'
                        | '('
                        | ')'
                        | '|'
                        | '['
                        | ']'
                        | '{'
                        | '}'
                        | '^'
                        | '$'
                )
            })
    };
    let lit = |s: &str| -> Box<str> { s.into() };
    if let Some(inner) = pattern
        .strip_prefix(".*")
        .and_then(|p| p.strip_suffix(".*"))
    {
        return is_literal(inner)
            .then(|| Kind::Contains(Box::new(memchr::memmem::Finder::new(inner).into_owned())));
    }
    if let Some(head) = pattern.strip_suffix(".*") {
        return is_literal(head).then(|| Kind::LinePrefix(lit(head)));
    }
    if let Some(tail) = pattern.strip_prefix(".*") {
        return is_literal(tail).then(|| Kind::LineSuffix(lit(tail)));
    }
    let alternatives: Vec<&str> = pattern.split('|').collect();
    if alternatives.iter().all(|a| is_literal(a)) {
        return Some(if alternatives.len() == 1 {
            Kind::Exact(lit(pattern))
        } else {
            Kind::OneOf(alternatives.into_iter().map(lit).collect())
        });
    }
    None
}

fn compile_whole_value_regex(pattern: &str, path: &str) -> Result<Regex, ConfigError> {
    if has_unicode_class(pattern) {
        return Err(ConfigError::new(
            None,
            path,
            r"invalid regex: Unicode classes (\p{..}, \P{..}) are not supported: write explicit ranges such as [\x{370}-\x{3ff}]",
        ));
    }
    // The user's pattern is compiled alone first so that a syntax error describes their
    // text, not the anchoring wrapper around it.
    let anchored = bounded_regex(pattern)
        // The group keeps alternations inside the anchors: `a|b` must not become `\Aa|b\z`.
        .and_then(|_| bounded_regex(&format!(r"\A(?:{pattern})\z")));
    anchored.map_err(|e| {
        ConfigError::new(
            None,
            path,
            format!("invalid regex: {}", regex_error_reason(&e)),
        )
    })
}

/// Whether the pattern uses `\p`/`\P`. The filter's build of the regex crate has no tables
/// for them, but another crate in the same build (the controller's JSON-schema checker,
/// proptest in tests) can switch them on through feature unification; rejecting them here
/// keeps the controller and the filter in agreement about which tables are valid.
fn has_unicode_class(pattern: &str) -> bool {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.next(), Some('p' | 'P')) {
            return true;
        }
    }
    false
}

/// Every worker VM holds every regex of the table, so their memory is bounded well below
/// the crate's defaults (10 MiB program, 2 MiB lazy-DFA cache): real A/B patterns need a
/// few KiB, and an oversized one is a config error rather than a gateway's memory.
fn bounded_regex(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 18)
        .build()
}

/// The regex crate's syntax errors are a multi-line caret diagram ending in
/// `error: <reason>`; a config error is one line, so only the reason is kept.
fn regex_error_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => {
            let last = text.lines().last().unwrap_or_default();
            one_line(last.strip_prefix("error: ").unwrap_or(last))
        }
        other => one_line(&other.to_string()),
    }
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
