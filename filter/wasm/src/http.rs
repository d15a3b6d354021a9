//! One HTTP exchange: on request headers, strip client-sent veer headers (only those present),
//! decide with veer-core and set the route header on a canary decision only (its absence is
//! primary); on response headers, add the affinity cookie and the decision header and, with
//! `responseMetrics`, count and time the response. Any host error leaves the request as it is
//! (the gateway's default route: primary) and counts `veer_errors_total`; nothing here panics.

use crate::headers::HeaderBlock;
use crate::host::{self, MapType};
use crate::metrics::RouteStats;
use crate::root::{ActiveTable, EdgeConfig};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use veer_core::{
    decide, decision_header_value, RequestView, Variant, DECISION_HEADER, MIRROR_HEADER_VALUE,
};

impl RequestView for HeaderBlock {
    fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        self.get(lowercase_name)
    }
    fn header_values<'a>(&'a self, lowercase_name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(lowercase_name)
    }
    fn authority(&self) -> &[u8] {
        self.get(":authority").unwrap_or_default()
    }
    fn path(&self) -> &[u8] {
        self.get(":path").unwrap_or_default()
    }
    fn method(&self) -> &[u8] {
        self.get(":method").unwrap_or_default()
    }
}

/// What the request decided, kept for the response.
struct Outcome {
    stats: Option<Rc<RouteStats>>,
    variant: Variant,
    set_cookie: Option<String>,
    decision: Option<String>,
    started_ns: Option<u64>,
}

pub struct Exchange {
    config: Rc<EdgeConfig>,
    table: Option<Rc<ActiveTable>>,
    entropy: u64,
    outcome: Option<Outcome>,
}

impl Exchange {
    pub fn new(config: Rc<EdgeConfig>, table: Option<Rc<ActiveTable>>, entropy: u64) -> Self {
        Exchange {
            config,
            table,
            entropy,
            outcome: None,
        }
    }

    fn strip(&self, name: &str) {
        if host::remove_header(MapType::RequestHeaders, name).is_err() {
            self.config.count_error();
        }
    }

    fn on_request(&mut self) {
        let config = Rc::clone(&self.config);
        let block = host::header_pairs(MapType::RequestHeaders)
            .ok()
            .and_then(HeaderBlock::parse);
        let Some(block) = block else {
            // Cannot see the headers: still make sure no client-chosen variant gets through.
            config.count_error();
            self.strip(&config.route_header);
            self.strip(&config.mirror_header);
            return;
        };
        if block.contains(&config.mirror_header) {
            self.strip(&config.mirror_header);
        }
        let Some(active) = self.table.clone() else {
            if block.contains(&config.route_header) {
                self.strip(&config.route_header);
            }
            return;
        };
        let Some(route) = active.table.find_route(block.authority(), block.path()) else {
            if block.contains(&config.route_header) {
                self.strip(&config.route_header);
            }
            return;
        };
        let decision = decide(route, &block, config.keys.as_ref(), self.entropy);
        if decision.variant == Variant::Canary {
            // Replacing also drops any client-sent value of the route header.
            let routed = host::replace_header(
                MapType::RequestHeaders,
                &config.route_header,
                Variant::Canary.as_str().as_bytes(),
            );
            if routed.is_err() {
                config.count_error();
                self.strip(&config.route_header);
                return;
            }
        } else if block.contains(&config.route_header) {
            // Primary is the header's absence (the gateway's default route). Writing a
            // request header makes Envoy match the route again, so only a client-sent value
            // costs a host call here.
            self.strip(&config.route_header);
        }
        if decision.mirror
            && host::replace_header(
                MapType::RequestHeaders,
                &config.mirror_header,
                MIRROR_HEADER_VALUE.as_bytes(),
            )
            .is_err()
        {
            config.count_error();
        }
        let stats = active.stats.get(route.index()).cloned().flatten();
        if let Some(stats) = &stats {
            stats.count_request(decision.variant, decision.reason);
        }
        let decision_value = config
            .decision_header
            .then(|| decision_header_value(route.name(), &decision, active.table.generation()));
        let started_ns = stats
            .as_ref()
            .filter(|s| s.measures_responses())
            .and_then(|_| host::now_nanos().ok());
        self.outcome = Some(Outcome {
            stats,
            variant: decision.variant,
            set_cookie: decision.set_cookie,
            decision: decision_value,
            started_ns,
        });
    }

    fn on_response(&mut self) {
        let Some(outcome) = self.outcome.take() else {
            return;
        };
        let config = &self.config;
        if let Some(cookie) = &outcome.set_cookie {
            // Added, never replaced: the upstream may set cookies of its own.
            if host::add_header(MapType::ResponseHeaders, "set-cookie", cookie.as_bytes()).is_err()
            {
                config.count_error();
            }
        }
        if let Some(value) = &outcome.decision {
            if host::replace_header(MapType::ResponseHeaders, DECISION_HEADER, value.as_bytes())
                .is_err()
            {
                config.count_error();
            }
        }
        let Some(stats) = outcome.stats.filter(|s| s.measures_responses()) else {
            return;
        };
        match host::header_value(MapType::ResponseHeaders, ":status") {
            Ok(Some(status)) => stats.count_response(outcome.variant, &status),
            Ok(None) => {}
            Err(_) => config.count_error(),
        }
        let histogram = stats.duration(outcome.variant);
        if let (Some(id), Some(start), Ok(end)) = (histogram, outcome.started_ns, host::now_nanos())
        {
            // Rounded, not truncated: a 0.9 ms response must not land in the 0.5 ms bucket.
            let ms = end.saturating_sub(start).saturating_add(500_000) / 1_000_000;
            if host::record_metric(id, ms).is_err() {
                config.count_error();
            }
        }
    }
}

impl Context for Exchange {}

impl HttpContext for Exchange {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_request();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_response();
        Action::Continue
    }
}
