//! What the filter tests read from the gateway's answers, and the live table they serve it:
//! one copy for `filter_envoy.rs` and `filter_faults.rs`.

use crate::client::{HttpClient, Response};

/// The filter's `x-veer-decision` header (`decisionHeader: true`):
/// `<route>;<variant>;<reason>;g=<generation>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub route: String,
    /// `primary` or `canary`.
    pub variant: String,
    /// `weight`, `cookie`, `key`, `override` or `unmatched`.
    pub reason: String,
    /// The generation of the table that decided.
    pub generation: u64,
}

impl Decision {
    /// Parses the header's value; `None` unless it has all four parts.
    pub fn parse(value: &str) -> Option<Decision> {
        let mut parts = value.split(';');
        let decision = Decision {
            route: parts.next()?.to_string(),
            variant: parts.next()?.to_string(),
            reason: parts.next()?.to_string(),
            generation: parts.next()?.strip_prefix("g=")?.parse().ok()?,
        };
        parts.next().is_none().then_some(decision)
    }
}

/// The decision in a response, if the filter added one.
pub fn decision(r: &Response) -> Option<Decision> {
    Decision::parse(r.header(veer_core::DECISION_HEADER)?)
}

/// The `name=value` part of the affinity cookie `cookie_name` in a response, if it set one.
pub fn veer_cookie<'a>(r: &'a Response, cookie_name: &str) -> Option<&'a str> {
    r.headers_named("set-cookie")
        .into_iter()
        .find(|c| {
            c.strip_prefix(cookie_name)
                .is_some_and(|rest| rest.starts_with('='))
        })
        .map(|c| c.split(';').next().unwrap_or(c))
}

/// The table the live-table tests serve: route `test/podinfo` on every host at `weight` basis
/// points, revision `run-1`, with the `flagger-cookie` affinity cookie.
pub fn live_table(generation: u64, weight: u32) -> serde_json::Value {
    serde_json::json!({
        "generation": generation,
        "routes": [{
            "name": "test/podinfo", "hosts": ["*"], "weight": weight, "revision": "run-1",
            "sessionAffinity": { "cookieName": "flagger-cookie", "maxAge": 86400 }
        }]
    })
}

/// The generation that decided one request to `app.example.com` through `client`.
pub fn generation_seen(client: &mut HttpClient) -> Result<u64, String> {
    let r = client.get("app.example.com", "/", &[])?;
    decision(&r)
        .map(|d| d.generation)
        .ok_or_else(|| format!("no decision header (HTTP {})", r.status))
}

#[cfg(test)]
mod tests {
    use super::Decision;

    #[test]
    fn the_decision_header_has_four_parts() {
        assert_eq!(
            Decision::parse("test/podinfo;canary;cookie;g=7"),
            Some(Decision {
                route: "test/podinfo".into(),
                variant: "canary".into(),
                reason: "cookie".into(),
                generation: 7,
            })
        );
        for bad in [
            "test/podinfo;canary;cookie",
            "a;b;c;7",
            "a;b;c;g=x",
            "a;b;c;g=1;d",
        ] {
            assert_eq!(Decision::parse(bad), None, "{bad}");
        }
    }
}
