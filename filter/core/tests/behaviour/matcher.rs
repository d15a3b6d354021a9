#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use veer_core::{CompiledMatch, CompiledRule, MatchRule, OwnedRequest, StringMatch};

fn sm(json: &str) -> CompiledMatch {
    let m: StringMatch = serde_json::from_str(json).unwrap();
    CompiledMatch::compile(&m, "m").unwrap()
}

fn rule(json: &str) -> CompiledRule {
    let r: MatchRule = serde_json::from_str(json).unwrap();
    CompiledRule::compile(&r, "rule").unwrap()
}

#[test]
fn string_conditions() {
    // (condition, value, expected)
    let cases: &[(&str, Option<&[u8]>, bool)] = &[
        (r#"{"exact": "abc"}"#, Some(b"abc"), true),
        (r#"{"exact": "abc"}"#, Some(b"abcd"), false),
        (r#"{"exact": "abc"}"#, Some(b"ABC"), false),
        (r#"{"exact": "abc"}"#, None, false),
        (r#"{"exact": ""}"#, Some(b""), true),
        (r#"{"prefix": "ab"}"#, Some(b"abc"), true),
        (r#"{"prefix": "bc"}"#, Some(b"abc"), false),
        (r#"{"prefix": "ab"}"#, Some(b"ab\xff"), false),
        (r#"{"suffix": "bc"}"#, Some(b"abc"), true),
        (r#"{"suffix": "ab"}"#, Some(b"abc"), false),
        (r#"{"regex": "b"}"#, Some(b"abc"), false),
        (r#"{"regex": "a.c"}"#, Some(b"abc"), true),
        (r#"{"regex": "a|abc"}"#, Some(b"abc"), true),
        (r#"{"regex": "a|b"}"#, Some(b"abc"), false),
        (r#"{"regex": "(?i)ABC"}"#, Some(b"abc"), true),
        (r#"{"regex": ".*"}"#, Some(b"\xff"), false),
        (r#"{"regex": ".*"}"#, None, false),
        (r#"{"regex": "^b$"}"#, Some(b"b"), true),
        // Shapes answered without the regex engine, same results as the regex.
        (r#"{"regex": "beta|alpha"}"#, Some(b"alpha"), true),
        (r#"{"regex": "beta|alpha"}"#, Some(b"alphabet"), false),
        (r#"{"regex": "beta"}"#, Some(b"beta "), false),
        (
            r#"{"regex": ".*Firefox.*"}"#,
            Some(b"Mozilla/5.0 (X11; rv:121.0) Gecko/20100101 Firefox/121.0"),
            true,
        ),
        (r#"{"regex": ".*Firefox.*"}"#, Some(b"Firefox"), true),
        (r#"{"regex": ".*Firefox.*"}"#, Some(b"Chrome"), false),
        (r#"{"regex": ".*Firefox.*"}"#, Some(b"a\nFirefox"), false),
        (r#"{"regex": "Mozilla.*"}"#, Some(b"Mozilla/5.0"), true),
        (r#"{"regex": "Mozilla.*"}"#, Some(b"Mozilla\n"), false),
        (r#"{"regex": ".*/5.0"}"#, Some(b"Mozilla/5x0"), true),
        (r#"{"regex": ".*Gecko"}"#, Some(b"Mozilla Gecko"), true),
        (r#"{"regex": ".*Gecko"}"#, Some(b"Gecko Mozilla"), false),
        (
            r#"{"regex": "^(.*?;)?(canary=always)(;.*)?$"}"#,
            Some(b"a=1;canary=always;b=2"),
            true,
        ),
        (
            r#"{"regex": "^(.*?;)?(canary=always)(;.*)?$"}"#,
            Some(b"canary=always"),
            true,
        ),
        (
            r#"{"regex": "^(.*?;)?(canary=always)(;.*)?$"}"#,
            Some(b"a=1;canary=never"),
            false,
        ),
        (
            r#"{"regex": "^(.*?;)?(canary=always)(;.*)?$"}"#,
            Some(b"a=1; canary=always"),
            false,
        ),
        (
            r#"{"regex": "(?:.*,)?beta(?:,.*)?"}"#,
            Some(b"alpha,beta,gamma"),
            true,
        ),
        (
            r#"{"regex": "(?:.*,)?beta(?:,.*)?"}"#,
            Some(b"alpha,betamax"),
            false,
        ),
        (
            r#"{"regex": "(?:.*,)?beta(?:,.*)?"}"#,
            Some(b"alpha\n,beta"),
            false,
        ),
        (
            r#"{"regex": "^.*Chrome.*$"}"#,
            Some(b"Mozilla Chrome/120"),
            true,
        ),
        (r#"{"regex": "\\Abeta\\z"}"#, Some(b"beta"), true),
        (r#"{"regex": "beta\\$"}"#, Some(b"beta$"), true),
        (r#"{"regex": "beta\\$"}"#, Some(b"beta"), false),
        (r#"{"regex": "\\d+"}"#, Some(b"123"), true),
        // ASCII Perl classes, as in RE2.
        (r#"{"regex": "\\d+"}"#, Some("١٢٣".as_bytes()), false),
        (r#"{"regex": "\\w+"}"#, Some("δ".as_bytes()), false),
        (r#"{"present": true}"#, Some(b""), true),
        (r#"{"present": true}"#, Some(b"\xff"), true),
        (r#"{"present": true}"#, None, false),
        (r#"{"present": false}"#, None, true),
        (r#"{"present": false}"#, Some(b"x"), false),
    ];
    for (cond, value, want) in cases {
        assert_eq!(
            sm(cond).matches(*value),
            *want,
            "{cond} on {:?}",
            value.map(String::from_utf8_lossy)
        );
    }
}

#[test]
fn header_names_are_case_insensitive() {
    let r = rule(r#"{"headers": {"X-User-Group": {"exact": "beta"}}}"#);
    let req = OwnedRequest::new("GET", "a", "/").with_header("x-user-group", "beta");
    assert!(r.matches(&req));
    let req = OwnedRequest::new("GET", "a", "/").with_header("X-USER-GROUP", "beta");
    assert!(r.matches(&req));
    let req = OwnedRequest::new("GET", "a", "/").with_header("x-user-group", "Beta");
    assert!(!r.matches(&req), "values are case-sensitive");
}

#[test]
fn cookies_query_params_method_and_uri() {
    let r = rule(
        r#"{"cookies": {"tester": {"present": true}, "plan": {"exact": "pro"}},
            "queryParams": {"canary": {"exact": "1"}, "q": {"exact": "a b/c"}},
            "method": "GET",
            "uri": {"prefix": "/api/"}}"#,
    );
    let ok = OwnedRequest::new("GET", "a", "/api/x?canary=1&q=a%20b%2Fc")
        .with_header("cookie", "tester=; plan=\"pro\"");
    assert!(r.matches(&ok));
    let with_path =
        |p: &str| OwnedRequest::new("GET", "a", p).with_header("cookie", "tester=1; plan=pro");
    assert!(!r.matches(&with_path("/api/x?canary=2&q=a%20b%2Fc")));
    assert!(
        !r.matches(&with_path("/api/x?canary=1&q=a+b%2Fc")),
        "+ is not a space (Envoy)"
    );
    assert!(
        !r.matches(&with_path("/api/x?q=a%20b%2Fc")),
        "parameter missing"
    );
    assert!(
        r.matches(&with_path("/api/x?c%61nary=1&q=a%20b%2Fc&canary=2")),
        "first occurrence, decoded name"
    );
    assert!(!r.matches(&with_path("/web/x?canary=1&q=a%20b%2Fc")), "uri");
    let no_cookie = OwnedRequest::new("GET", "a", "/api/x?canary=1&q=a%20b%2Fc");
    assert!(!r.matches(&no_cookie));
    let post = OwnedRequest::new("POST", "a", "/api/x?canary=1&q=a%20b%2Fc")
        .with_header("cookie", "tester=1; plan=pro");
    assert!(!r.matches(&post));
    let lower = OwnedRequest::new("get", "a", "/api/x?canary=1&q=a%20b%2Fc")
        .with_header("cookie", "tester=1; plan=pro");
    assert!(!r.matches(&lower), "method is case-sensitive");
}

#[test]
fn cookie_conditions_read_every_cookie_header() {
    let r = rule(r#"{"cookies": {"tester": {"exact": "1"}, "plan": {"present": true}}}"#);
    let split = OwnedRequest::new("GET", "a", "/")
        .with_header("cookie", "plan=pro")
        .with_header("cookie", "x=y; tester=1");
    assert!(r.matches(&split));
    // The first copy of a cookie decides, across headers as within one.
    let first_wins = OwnedRequest::new("GET", "a", "/")
        .with_header("cookie", "tester=0; plan=pro")
        .with_header("cookie", "tester=1");
    assert!(!r.matches(&first_wins));
    let absent = rule(r#"{"cookies": {"optout": {"present": false}}}"#);
    assert!(!absent.matches(
        &OwnedRequest::new("GET", "a", "/")
            .with_header("cookie", "a=1")
            .with_header("cookie", "optout=1")
    ));
}

#[test]
fn uri_excludes_the_query_string() {
    let r = rule(r#"{"uri": {"exact": "/login"}}"#);
    assert!(r.matches(&OwnedRequest::new("GET", "a", "/login?next=/x")));
    assert!(r.matches(&OwnedRequest::new("GET", "a", "/login#frag")));
    assert!(!r.matches(&OwnedRequest::new("GET", "a", "/login/x")));
    let re = rule(r#"{"uri": {"regex": "/users/[0-9]+"}}"#);
    assert!(re.matches(&OwnedRequest::new("GET", "a", "/users/42?x=1")));
    assert!(!re.matches(&OwnedRequest::new("GET", "a", "/users/42/edit")));
}

#[test]
fn absent_things_and_present_false() {
    let r = rule(
        r#"{"headers": {"x-debug": {"present": false}},
            "cookies": {"optout": {"present": false}},
            "queryParams": {"nocanary": {"present": false}}}"#,
    );
    assert!(r.matches(&OwnedRequest::new("GET", "a", "/?x=1").with_header("cookie", "a=1")));
    assert!(!r.matches(&OwnedRequest::new("GET", "a", "/").with_header("x-debug", "")));
    assert!(!r.matches(&OwnedRequest::new("GET", "a", "/").with_header("cookie", "optout=1")));
    assert!(
        !r.matches(&OwnedRequest::new("GET", "a", "/?nocanary")),
        "valueless parameter is present"
    );
    assert!(
        rule("{}").matches(&OwnedRequest::default()),
        "an empty rule matches everything"
    );
}

#[test]
fn percent_decoding() {
    use veer_core::matcher::percent_decode;
    assert_eq!(&*percent_decode(b"a%20b"), b"a b");
    assert_eq!(&*percent_decode(b"%zz%4"), b"%zz%4");
    assert_eq!(&*percent_decode(b"%e2%9C%93"), "\u{2713}".as_bytes());
    assert_eq!(&*percent_decode(b"%"), b"%");
}

#[test]
fn non_utf8_values_never_match_string_conditions() {
    let r = rule(r#"{"headers": {"x": {"regex": ".*"}}, "queryParams": {"p": {"prefix": ""}}}"#);
    assert!(!r.matches(&OwnedRequest::new("GET", "a", "/?p=ok").with_header("x", &b"\xc3\x28"[..])));
    assert!(!r.matches(&OwnedRequest::new("GET", "a", "/?p=%ff").with_header("x", "ok")));
    assert!(r.matches(&OwnedRequest::new("GET", "a", "/?p=%C3%A9").with_header("x", "ok")));
}

fn compile_error(pattern: &str) -> Option<String> {
    let m = StringMatch {
        regex: Some(pattern.to_string()),
        ..Default::default()
    };
    CompiledMatch::compile(&m, "m").err().map(|e| e.to_string())
}

/// regex-lite applies a repetition after `(?flags)` to the atom before it (`a(?i)*b` means
/// `a*b`); RE2 and the `regex` crate have nothing to repeat there and reject the pattern.
#[test]
fn repetition_after_a_flag_group_is_rejected() {
    for pattern in [
        "a(?i)*b",
        "a(?i)+",
        "a(?i)?b",
        "a(?i){2}",
        "a(?-i)*b",
        "a(?i)(?s)*",
        "a(?i)(?-i)*b",
        "[a](?i)*",
        "[(?i)*]a(?i)*",
        "(a(?i)*)",
        "a|b(?i)+",
        // `x` mode ignores the space and the comment before the `*`.
        "a(?x) *b",
        "a(?x)# c\n*b",
        "(?x)a(?i) # x\n  *",
        // Rejected by regex-lite itself: nothing before the flag group, or no group at all.
        "(?i)*a",
        "*a",
        "(*a)",
        "a|*b",
        "(?i)+a",
        "a|(?i)*b",
    ] {
        let err = compile_error(pattern);
        assert!(
            err.as_ref()
                .is_some_and(|e| e.starts_with("m.regex: invalid regex: ")),
            "{pattern:?} must be rejected, got {err:?}"
        );
    }
    assert_eq!(
        compile_error("a(?i)*b").unwrap(),
        r#"m.regex: invalid regex: repetition operator '*' directly follows the flag group "(?i)" and has nothing to repeat (RE2 rejects this); put the flags before the atom, e.g. (?i)a* or (?i:a)*"#
    );
    assert!(compile_error("a(?i)(?s){3}")
        .unwrap()
        .contains(r#"'{' directly follows the flag group "(?s)""#));
    // The same characters where they are not a repetition of a flag group.
    for pattern in [
        "(?i)a*",
        "(?i:a)*",
        "(a(?i))*",
        "a(?i)",
        "(?i)",
        r"a(?i)\*b",
        r"\(?i\)*",
        "[(?i)*]",
        "[](?i)*]",
        "[^](?i)*]",
        "[[:alpha:]](?i)x*",
        "a(?i)x*",
        "a(?P<n>b)*",
        "a(?:b)*",
        "a(?i) *",
        "a(?i)# *",
        "(?x)a # (?i)*\n b",
        "(?x:a) (?i) *",
        "(?x)[ a](?i)b*",
        "(?x)a(?-x)(?i) *",
    ] {
        assert_eq!(compile_error(pattern), None, "{pattern:?}");
    }
    assert!(sm(r#"{"regex": "a(?i)\\*b"}"#).matches(Some(b"a*B")));
    assert!(!sm(r#"{"regex": "a(?i)\\*b"}"#).matches(Some(b"A*B")));
    assert!(!sm(r#"{"regex": "(?x:a) (?i) *"}"#).matches(Some(b"ab")));
    assert!(sm(r#"{"regex": "(?x:a) (?i) *"}"#).matches(Some(b"a   ")));
}
