//! Fuzz target `matchers`: string conditions and whole rules compiled from fuzzed strings
//! (only when validation accepts them), evaluated on fuzzed header, cookie, path and query
//! bytes.
//!
//! Properties: nothing panics; exact/prefix/suffix/present mean exactly what they say and
//! never match non-UTF-8; an accepted regex is a valid pattern on its own (the `\A(?:…)\z`
//! wrapper must not turn an invalid pattern such as `a)|(?:b` into a valid but different
//! one); a regex of escaped literals matches exactly those strings; on ASCII values every
//! accepted regex agrees with an independent whole-value match by the `regex` crate in
//! byte mode, which also checks veer-core's literal shortcuts (`.*lit.*`, `a|b`, ...) against
//! real regex semantics; a rule holds iff each of its conditions holds on the value it
//! names; percent-decoding inverts percent-encoding.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use veer_core::matcher::{path_without_query, percent_decode, query_param};
use veer_core::{
    find_cookie, CompiledMatch, CompiledRule, MatchRule, OwnedRequest, RequestView, StringMatch,
};

#[derive(Arbitrary, Debug)]
struct Cond {
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    regex: Option<String>,
    present: Option<bool>,
}

impl Cond {
    fn to_match(&self) -> StringMatch {
        StringMatch {
            exact: self.exact.clone(),
            prefix: self.prefix.clone(),
            suffix: self.suffix.clone(),
            regex: self.regex.clone(),
            present: self.present,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    cond: Cond,
    values: Vec<&'a [u8]>,
    /// Alternatives for the escaped-literal regex check.
    literals: (String, String),
    rule_headers: Vec<(String, Cond)>,
    rule_cookies: Vec<(String, Cond)>,
    rule_query: Vec<(String, Cond)>,
    method: Option<String>,
    uri: Option<Cond>,
    req_method: &'a [u8],
    req_path: &'a [u8],
    req_headers: Vec<(&'a [u8], &'a [u8])>,
    query_name: &'a [u8],
    query_value: &'a [u8],
}

fuzz_target!(|input: Input| {
    condition(&input.cond.to_match(), &input.values);
    literal_regex(&input.literals.0, &input.literals.1, &input.values);
    rule(&input);
    query_round_trip(input.query_name, input.query_value);
});

fn condition(m: &StringMatch, values: &[&[u8]]) {
    let Ok(c) = CompiledMatch::compile(m, "fuzz") else {
        return;
    };
    let ops = [
        m.exact.is_some(),
        m.prefix.is_some(),
        m.suffix.is_some(),
        m.regex.is_some(),
        m.present.is_some(),
    ];
    assert_eq!(ops.iter().filter(|on| **on).count(), 1, "accepted {m:?}");
    assert_eq!(
        c.matches(None),
        m.present == Some(false),
        "absent value vs {m:?}"
    );
    let anchored_oracle = m.regex.as_deref().map(|p| {
        // Accepted ⇒ valid as written (RE2 syntax, as Istio takes it), not only once wrapped.
        if let Err(e) = regex_syntax::Parser::new().parse(p) {
            panic!("regex {p:?} accepted although it is not a valid pattern on its own (RE2 syntax per regex-syntax): {e}");
        }
        ascii_oracle(p)
    });
    for v in values.iter().take(16) {
        let got = c.matches(Some(v));
        let utf8 = std::str::from_utf8(v).ok();
        if utf8.is_none() && m.present.is_none() {
            assert!(!got, "non-UTF-8 {v:?} matched {m:?}");
        }
        if let Some(s) = &m.exact {
            assert_eq!(got, *v == s.as_bytes(), "exact {s:?} on {v:?}");
        }
        if let Some(s) = &m.prefix {
            assert_eq!(
                got,
                utf8.is_some() && v.starts_with(s.as_bytes()),
                "prefix {s:?} on {v:?}"
            );
        }
        if let Some(s) = &m.suffix {
            assert_eq!(
                got,
                utf8.is_some() && v.ends_with(s.as_bytes()),
                "suffix {s:?} on {v:?}"
            );
        }
        if let Some(want) = m.present {
            assert_eq!(got, want, "present {want} on {v:?}");
        }
        if let (Some(Some(oracle)), Some(s)) = (&anchored_oracle, utf8) {
            if s.is_ascii() {
                assert_eq!(
                    got,
                    oracle.is_match(v),
                    "regex {:?} on {s:?}: veer-core vs the regex oracle",
                    m.regex
                );
            }
        }
    }
}

/// An independent whole-value match of `p`: the `regex` crate on bytes with Unicode off,
/// which on ASCII values means what RE2 means (Unicode `\w`, `\d`, `\s`, `(?i)` only differ
/// on non-ASCII text). `None` when `p` is not ASCII, is long (regex compilation dominates
/// the run time), or this mode refuses it (e.g. `\x{212A}`, which could fold to ASCII).
fn ascii_oracle(p: &str) -> Option<regex::bytes::Regex> {
    if !p.is_ascii() || p.len() > 256 {
        return None;
    }
    let build = |s: &str| {
        regex::bytes::RegexBuilder::new(s)
            .unicode(false)
            .size_limit(1 << 20)
            .build()
            .ok()
    };
    // `p` parses alone (checked above), so the wrapper cannot re-bracket it.
    build(&format!(r"\A(?:{p})\z"))
}

/// A regex made of two escaped literals matches exactly those two strings, whole.
fn literal_regex(a: &str, b: &str, values: &[&[u8]]) {
    let p = format!("{}|{}", regex::escape(a), regex::escape(b));
    let m = StringMatch {
        regex: Some(p.clone()),
        ..StringMatch::default()
    };
    let c = match CompiledMatch::compile(&m, "fuzz") {
        Ok(c) => c,
        Err(e) => panic!("escaped literals {p:?} rejected: {e}"),
    };
    assert!(
        c.matches(Some(a.as_bytes())) && c.matches(Some(b.as_bytes())),
        "{p:?}"
    );
    for v in values.iter().take(16) {
        let want = *v == a.as_bytes() || *v == b.as_bytes();
        assert_eq!(c.matches(Some(v)), want, "{p:?} on {v:?}");
    }
}

fn rule(input: &Input) {
    let to_map = |conds: &[(String, Cond)]| -> BTreeMap<String, StringMatch> {
        conds
            .iter()
            .take(4)
            .map(|(n, c)| (n.clone(), c.to_match()))
            .collect()
    };
    let mr = MatchRule {
        headers: to_map(&input.rule_headers),
        cookies: to_map(&input.rule_cookies),
        query_params: to_map(&input.rule_query),
        method: input.method.clone(),
        uri: input.uri.as_ref().map(Cond::to_match),
    };
    let Ok(compiled) = CompiledRule::compile(&mr, "fuzz") else {
        return;
    };
    let mut req = OwnedRequest::from_pairs([
        (&b":method"[..], input.req_method),
        (b":path", input.req_path),
    ]);
    for (n, v) in input.req_headers.iter().take(8) {
        req = req.with_header(*n, *v);
    }
    // The rule is the AND of its conditions, each on the value it names.
    let compile = |m: &StringMatch| match CompiledMatch::compile(m, "fuzz") {
        Ok(c) => c,
        Err(e) => panic!("condition of an accepted rule rejected alone: {e}"),
    };
    let method_ok = mr
        .method
        .as_ref()
        .is_none_or(|m| req.method() == m.as_bytes());
    let uri_ok = mr
        .uri
        .as_ref()
        .is_none_or(|m| compile(m).matches(Some(path_without_query(req.path()))));
    let headers_ok = mr
        .headers
        .iter()
        .all(|(n, m)| compile(m).matches(req.header(&n.to_ascii_lowercase())));
    let cookie_header = req.header("cookie").unwrap_or_default();
    let cookies_ok = mr
        .cookies
        .iter()
        .all(|(n, m)| compile(m).matches(find_cookie(cookie_header, n).next()));
    let query = query_of(req.path());
    let query_ok = mr
        .query_params
        .iter()
        .all(|(n, m)| compile(m).matches(query_param(query, n.as_bytes()).as_deref()));
    let want = method_ok && uri_ok && headers_ok && cookies_ok && query_ok;
    assert_eq!(compiled.matches(&req), want, "rule {mr:?} on {req:?}");
}

/// Everything after the first `?`, up to `#`.
fn query_of(path: &[u8]) -> &[u8] {
    let Some(q) = path.iter().position(|&b| b == b'?') else {
        return &[];
    };
    let rest = &path[q + 1..];
    &rest[..rest.iter().position(|&b| b == b'#').unwrap_or(rest.len())]
}

fn query_round_trip(name: &[u8], value: &[u8]) {
    let (en, ev) = (percent_encode(name), percent_encode(value));
    assert_eq!(percent_decode(&en).as_ref(), name);
    assert_eq!(percent_decode(&ev).as_ref(), value);
    if !name.is_empty() {
        let mut q = b"other=1&".to_vec();
        q.extend_from_slice(&en);
        q.push(b'=');
        q.extend_from_slice(&ev);
        q.extend_from_slice(b"&");
        q.extend_from_slice(&en);
        q.extend_from_slice(b"=second");
        let got = query_param(&q, name);
        // `other` itself may be the fuzzed name; then the first parameter wins.
        let want: &[u8] = if name == b"other" { b"1" } else { value };
        assert_eq!(
            got.as_deref(),
            Some(want),
            "query {:?}",
            String::from_utf8_lossy(&q)
        );
    }
}

fn percent_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3);
    for &b in s {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}
