//! A/B and override conditions, compiled once per table and evaluated per request without
//! allocating (except to percent-decode a query value that contains `%`).
//!
//! Semantics follow Istio's `HTTPMatchRequest`: header names are case-insensitive, `method`
//! is exact and case-sensitive, `uri` is matched against the path without its query string,
//! `regex` must match the whole value, and `present: false` means the header, cookie or
//! parameter is absent. String conditions never match a value that is not valid UTF-8.
//!
//! Regexes use `regex-lite`, for size: the `regex` crate (even trimmed to `perf-dfa` and the
//! Perl/case Unicode tables) made the filter's .wasm 530-800 KB larger, and the .wasm's
//! budget is 400 KB. The price is speed on patterns the shortcuts below do not cover.
//! Measured in V8 (Node 20, TurboFan, per evaluation) on real header values:
//!
//! | pattern, value                                       | regex-lite |  regex |
//! |------------------------------------------------------|-----------:|-------:|
//! | `(beta\|alpha)-[0-9]+`, 10 bytes                      |  1.0-1.5 µs |  60 ns |
//! | `.*(Firefox\|Edg)/1[0-9]{2}.*`, 130-byte user-agent    |   14-27 µs | 300 ns |
//! | `(?i).*firefox.*`, 130-byte user-agent                |   18-22 µs | 300 ns |
//! | `^(.*?;)?(canary=always)(;.*)?$`, 250-byte `Cookie`    |   26-41 µs | 500 ns |
//! | the same, answered by the list shortcut below         |  80-150 ns |        |
//! | `.*Firefox.*` (shortcut), 80-byte user-agent          |      70 ns |  70 ns |
//!
//! That is 100-200 ns per value byte, against roughly 90 µs of gateway CPU per proxied
//! request: a route whose rules need the engine on a long header pays 10-30% more CPU.
//! The shapes A/B rules really use never reach the engine; they are answered with byte
//! comparisons, with the regex's exact results (a `.` refuses `\n`, so the value is checked
//! for one; literals here never contain `\n`):
//! - `^`/`\A` at the start and `$`/`\z` at the end are dropped first: whole-value matching
//!   makes them no-ops (`$` is end-of-text, not end-of-line, without `(?m)`);
//! - a literal, `lit1|lit2|..`, `.*lit.*`, `lit.*`, `.*lit`;
//! - `(.*?S)?(lit)(S.*)?` for a one-character separator `S` (groups capturing or not, `.*`
//!   or `.*?`): `lit` is one element of an `S`-separated list. This is the form Flagger
//!   documents for cookie A/B tests, `^(.*?;)?(canary=always)(;.*)?$`; a list of
//!   comma-separated flags is the same shape.
//!
//! Gaps against RE2: Unicode classes (`\p{Greek}`, `\pL`) are rejected (see
//! `has_unicode_class`), and `(?i)` folds ASCII letters only. `\d`, `\w`, `\s` and `\b` are
//! ASCII, as in RE2.

use crate::cookie::request_cookies;
use crate::request::RequestView;
use crate::table::{MatchRule, StringMatch};
use crate::validate::{key_segment, ConfigError};
use regex_lite::Regex;
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
    /// `(.*?S)?(lit)(S.*)?`: `lit` is one element of an `S`-separated list.
    ListElement {
        item: Box<str>,
        separator: u8,
    },
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
            Kind::ListElement { item, separator } => {
                is_list_element(v, item.as_bytes(), *separator) && one_line() && utf8()
            }
            Kind::Regex(re) => std::str::from_utf8(v).is_ok_and(|s| re.is_match(s)),
        }
    }
}

/// The byte-comparison equivalent of a regex, for the shapes A/B rules commonly use.
fn regex_shortcut(pattern: &str) -> Option<Kind> {
    // Whole-value matching makes edge anchors no-ops. An escaped `\$` leaves a `\` behind,
    // which no shape below accepts.
    let pattern = pattern
        .strip_prefix('^')
        .or_else(|| pattern.strip_prefix(r"\A"))
        .unwrap_or(pattern);
    let pattern = pattern
        .strip_suffix('$')
        .or_else(|| pattern.strip_suffix(r"\z"))
        .unwrap_or(pattern);
    let lit = |s: &str| -> Box<str> { s.into() };
    if let Some(list) = list_element_shape(pattern) {
        return Some(list);
    }
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

/// Text that a regex reads as itself: no metacharacter, no `\n` (which `.` would refuse,
/// breaking the one-line check of the `.*` shapes).
fn is_literal(s: &str) -> bool {
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
                    | '\n'
            )
        })
}

/// `(.*?S)?(lit)(S.*)?`, where each group may be `(?:..)` and `.*?` may be `.*`.
fn list_element_shape(pattern: &str) -> Option<Kind> {
    let group = |s: &str| -> Option<(String, usize)> {
        // The body of a leading `(..)` or `(?:..)` without nested groups, and the length
        // consumed.
        let open = if s.starts_with("(?:") { 3 } else { 1 };
        if !s.starts_with('(') {
            return None;
        }
        let close = s.find(')')?;
        let body = s.get(open..close)?;
        (!body.contains('(')).then(|| (body.to_string(), close + 1))
    };
    let (head, used) = group(pattern)?;
    let rest = pattern[used..].strip_prefix('?')?;
    let (item, used) =
        group(rest).or_else(|| rest.find('(').map(|i| (rest[..i].to_string(), i)))?;
    let rest = &rest[used..];
    let (tail, used) = group(rest)?;
    if rest[used..] != *"?" {
        return None;
    }
    let separator = head
        .strip_prefix(".*?")
        .or_else(|| head.strip_prefix(".*"))?;
    let after = tail
        .strip_suffix(".*?")
        .or_else(|| tail.strip_suffix(".*"))?;
    let sep = separator.as_bytes();
    if sep.len() != 1 || separator != after || !is_literal(separator) || !is_literal(&item) {
        return None;
    }
    Some(Kind::ListElement {
        item: item.into(),
        separator: sep[0],
    })
}

/// Whether `item` sits in `v` between separators (or the value's ends).
fn is_list_element(v: &[u8], item: &[u8], separator: u8) -> bool {
    let fits = |at: usize| {
        v[at..].starts_with(item) && v.get(at + item.len()).is_none_or(|&b| b == separator)
    };
    fits(0) || memchr::memchr_iter(separator, v).any(|i| fits(i + 1))
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
    let invalid = |reason: String| ConfigError::new(None, path, format!("invalid regex: {reason}"));
    bounded_regex(pattern).map_err(|e| invalid(regex_error_reason(&e)))?;
    // Checked once the engine has accepted the pattern, so that its own errors come first
    // and the scan below only meets well-formed syntax.
    if let Some((group, op)) = repetition_after_flag_group(pattern) {
        return Err(invalid(format!(
            "repetition operator {op:?} directly follows the flag group {group:?} and has \
             nothing to repeat (RE2 rejects this); put the flags before the atom, e.g. \
             (?i)a* or (?i:a)*"
        )));
    }
    // The group keeps alternations inside the anchors: `a|b` must not become `\Aa|b\z`.
    bounded_regex(&format!(r"\A(?:{pattern})\z")).map_err(|e| invalid(regex_error_reason(&e)))
}

/// A flag-only group `(?flags)` followed directly by `*`, `+`, `?` or `{` (the engine only
/// accepts `{` as a counted repetition), returned as (group, operator). regex-lite applies
/// such a repetition to the atom before the group (`a(?i)*b` means `a*b`), while RE2, which
/// Istio uses, rejects it. At the start of the pattern or of a group or alternative,
/// regex-lite rejects it itself. Escapes, character classes and, in `x` mode, whitespace and
/// `#` comments are skipped as the engine reads them. `pattern` must already compile.
fn repetition_after_flag_group(pattern: &str) -> Option<(&str, char)> {
    // Every byte the scan acts on is ASCII, so byte offsets are enough; UTF-8 continuation
    // bytes are skipped like any other literal.
    let p = pattern.as_bytes();
    // Whether `x` (ignore whitespace, `#` comments) is on, and its value at each open group.
    let mut verbose = false;
    let mut outer: Vec<bool> = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' => i += 2,
            b'[' => i = class_end(pattern, i, verbose),
            b'#' if verbose => i = comment_end(p, i),
            b')' => {
                verbose = outer.pop().unwrap_or(verbose);
                i += 1;
            }
            b'(' => {
                let Some((flags, end)) = flag_group(p, i) else {
                    outer.push(verbose);
                    i += 1;
                    continue;
                };
                if p[end] == b':' {
                    // `(?flags:...)`: the flags last until the group's `)`.
                    outer.push(verbose);
                    verbose = sets_verbose(flags, verbose);
                    i = end + 1;
                    continue;
                }
                verbose = sets_verbose(flags, verbose);
                // The last flag group before the operator, for the message.
                let mut group = i..end + 1;
                i = end + 1;
                // Further flag groups, and what `x` mode ignores, still leave nothing to repeat.
                loop {
                    i = skip_ignored(pattern, i, verbose);
                    match flag_group(p, i) {
                        Some((more, end)) if p[end] == b')' => {
                            verbose = sets_verbose(more, verbose);
                            group = i..end + 1;
                            i = end + 1;
                        }
                        _ => break,
                    }
                }
                if let Some(&op @ (b'*' | b'+' | b'?' | b'{')) = p.get(i) {
                    return pattern.get(group).map(|g| (g, char::from(op)));
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// For `(?flags)` or `(?flags:` at `at`: the flag letters and the index of the `)` or `:`.
fn flag_group(p: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let flags = p.get(at..)?.strip_prefix(b"(?")?;
    let len = flags
        .iter()
        .position(|c| !c.is_ascii_alphabetic() && *c != b'-')?;
    let end = at + 2 + len;
    (len > 0 && matches!(p[end], b')' | b':')).then(|| (&flags[..len], end))
}

/// The `x` flag after applying `flags` (`-` turns off the flags after it).
fn sets_verbose(flags: &[u8], mut verbose: bool) -> bool {
    let mut on = true;
    for &c in flags {
        match c {
            b'-' => on = false,
            b'x' => verbose = on,
            _ => {}
        }
    }
    verbose
}

/// The index after whitespace (Unicode's, as the engine reads it) and `#` comments from
/// `at`, in `x` mode.
fn skip_ignored(pattern: &str, mut at: usize, verbose: bool) -> usize {
    if !verbose {
        return at;
    }
    loop {
        match pattern.get(at..).and_then(|rest| rest.chars().next()) {
            Some(c) if c.is_whitespace() => at += c.len_utf8(),
            Some('#') => at = comment_end(pattern.as_bytes(), at),
            _ => return at,
        }
    }
}

/// The index after the line comment starting at `at`.
fn comment_end(p: &[u8], at: usize) -> usize {
    memchr::memchr(b'\n', &p[at..]).map_or(p.len(), |n| at + n + 1)
}

/// The index after the character class opening at `at`: a `]` first (after `^`) is literal,
/// `[:name:]` nests, and `x` mode skips whitespace and comments here too.
fn class_end(pattern: &str, at: usize, verbose: bool) -> usize {
    let p = pattern.as_bytes();
    let mut i = skip_ignored(pattern, at + 1, verbose);
    if p.get(i) == Some(&b'^') {
        i = skip_ignored(pattern, i + 1, verbose);
    }
    if p.get(i) == Some(&b']') {
        i += 1;
    }
    let mut depth = 1;
    while i < p.len() {
        i = skip_ignored(pattern, i, verbose);
        match p.get(i) {
            Some(b'\\') => i += 2,
            Some(b'[') => {
                depth += 1;
                i += 1;
            }
            Some(b']') => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    p.len()
}

/// Whether the pattern uses `\p`/`\P`. regex-lite refuses them too, but with a message
/// that does not say what to write instead.
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
/// the crate's default (10 MiB program): real A/B patterns need a few KiB, and an oversized
/// one is a config error rather than a gateway's memory.
fn bounded_regex(pattern: &str) -> Result<Regex, regex_lite::Error> {
    regex_lite::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Bytes of compiled program one regex may take.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A config error is one line; the engine's size error gains the limit it exceeded.
fn regex_error_reason(e: &regex_lite::Error) -> String {
    let reason = one_line(&e.to_string());
    if reason.contains("size limit") {
        format!("{reason} ({REGEX_SIZE_LIMIT} bytes)")
    } else {
        reason
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
        if !self
            .cookies
            .iter()
            .all(|(name, m)| m.matches(request_cookies(req, name).next()))
        {
            return false;
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
