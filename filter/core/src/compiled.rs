//! The table compiled for per-request use: host and path lookup structures, compiled
//! matchers, the per-route cookie attributes and stat token. Built once per table change;
//! route lookup does not allocate.

use crate::cookie::set_cookie_attributes;
use crate::matcher::{path_without_query, CompiledRule};
use crate::stats::stat_route_token;
use crate::table::{Route, RoutingTable, Variant};
use crate::validate::{check_table_shape, ConfigError};
use std::collections::BTreeMap;

/// Longest host name looked up (DNS allows 253); longer authorities only match `*`.
/// Validation refuses longer hosts in a table, since no lookup could ever find them.
pub(crate) const MAX_HOST_LEN: usize = 255;

/// One route, ready to decide with.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    route: Route,
    /// Position in `CompiledTable::routes`.
    index: usize,
    stat_token: String,
    pub(crate) overrides: Vec<(CompiledRule, Variant)>,
    pub(crate) rules: Vec<CompiledRule>,
    /// `; Max-Age=..; Path=..` etc., when the route has session affinity.
    pub(crate) cookie_attributes: Option<String>,
    /// The sticky-key header, lowercased.
    pub(crate) sticky_header: Option<Box<str>>,
}

impl CompiledRoute {
    fn compile(route: &Route, index: usize, at: &str) -> Result<CompiledRoute, ConfigError> {
        let in_route = |e: ConfigError| e.in_route(&route.name);
        let overrides = route
            .overrides
            .iter()
            .enumerate()
            .map(|(i, o)| {
                CompiledRule::compile(&o.r#match, &format!("{at}.overrides[{i}].match"))
                    .map(|rule| (rule, o.variant))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(in_route)?;
        let rules = route
            .r#match
            .iter()
            .enumerate()
            .map(|(i, m)| CompiledRule::compile(m, &format!("{at}.match[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(in_route)?;
        Ok(CompiledRoute {
            route: route.clone(),
            index,
            stat_token: stat_route_token(&route.name),
            overrides,
            rules,
            cookie_attributes: route.session_affinity.as_ref().map(set_cookie_attributes),
            sticky_header: route
                .sticky_key
                .as_ref()
                .map(|k| k.header.to_ascii_lowercase().into()),
        })
    }

    pub fn name(&self) -> &str {
        &self.route.name
    }

    /// The route's position in `CompiledTable::routes()`, for per-route state kept beside
    /// the table (the filter's stat ids) without searching for it per request.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The route name as used in stat names (see `stat_route_token`).
    pub fn stat_token(&self) -> &str {
        &self.stat_token
    }

    pub fn route(&self) -> &Route {
        &self.route
    }
}

/// Indexes of the routes claiming one host, longest `pathPrefix` first.
#[derive(Debug, Clone, Default)]
struct HostRoutes(Vec<usize>);

/// A validated, compiled routing table.
#[derive(Debug, Clone, Default)]
pub struct CompiledTable {
    generation: u64,
    routes: Vec<CompiledRoute>,
    /// Lowercased exact hosts.
    exact: BTreeMap<Box<[u8]>, HostRoutes>,
    /// `*.example.com` is stored under `.example.com`.
    wildcard: BTreeMap<Box<[u8]>, HostRoutes>,
    any: HostRoutes,
}

impl CompiledTable {
    /// Validates and compiles `table`.
    pub fn compile(table: &RoutingTable) -> Result<CompiledTable, ConfigError> {
        CompiledTable::compile_at(table, "")
    }

    /// As `compile`, with `prefix` before every error path (`table.` inside pluginConfig).
    pub(crate) fn compile_at(
        table: &RoutingTable,
        prefix: &str,
    ) -> Result<CompiledTable, ConfigError> {
        check_table_shape(table, prefix)?;
        let mut out = CompiledTable {
            generation: table.generation,
            ..CompiledTable::default()
        };
        for (i, route) in table.routes.iter().enumerate() {
            out.routes.push(CompiledRoute::compile(
                route,
                i,
                &format!("{prefix}routes[{i}]"),
            )?);
            for host in &route.hosts {
                let host = host.to_ascii_lowercase();
                let slot = if host == "*" {
                    &mut out.any
                } else if let Some(suffix) = host.strip_prefix('*') {
                    out.wildcard.entry(suffix.as_bytes().into()).or_default()
                } else {
                    out.exact.entry(host.as_bytes().into()).or_default()
                };
                slot.0.push(i);
            }
        }
        let routes = &out.routes;
        let by_prefix_len = |slot: &mut HostRoutes| {
            slot.0
                // No ties: one host cannot list the same prefix twice (check_table_shape).
                .sort_unstable_by_key(|&i| std::cmp::Reverse(routes[i].route.path_prefix.len()));
        };
        out.exact.values_mut().for_each(by_prefix_len);
        out.wildcard.values_mut().for_each(by_prefix_len);
        by_prefix_len(&mut out.any);
        Ok(out)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }

    /// The route for a request: the host is chosen first (exact, then the longest matching
    /// `*.suffix`, then `*`; case-insensitive, port ignored), then among that host's routes
    /// the longest `pathPrefix` that prefixes the path (query string excluded). As in
    /// Envoy's virtual hosts, a chosen host whose prefixes all miss does not fall back to a
    /// wildcard: the gateway would serve the request from that host's routes.
    pub fn find_route(&self, authority: &[u8], path: &[u8]) -> Option<&CompiledRoute> {
        let path = path_without_query(path);
        let host = host_of(authority);
        let mut buf = [0u8; MAX_HOST_LEN];
        let slot = if host.is_empty() || host.len() > MAX_HOST_LEN {
            None
        } else {
            let lower = &mut buf[..host.len()];
            lower.copy_from_slice(host);
            lower.make_ascii_lowercase();
            let lower: &[u8] = lower;
            self.exact.get(lower).or_else(|| {
                // Leftmost dot first: the longest suffix wins. `*.a.com` needs a non-empty
                // label before `.a.com`.
                lower
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter(|&(_, &b)| b == b'.')
                    .find_map(|(i, _)| self.wildcard.get(&lower[i..]))
            })
        };
        let slot = slot.unwrap_or(&self.any);
        slot.0
            .iter()
            .map(|&i| &self.routes[i])
            .find(|r| path.starts_with(r.route.path_prefix.as_bytes()))
    }
}

/// The host part of `:authority`: port removed (`[::1]:8080` → `[::1]`), one trailing dot
/// removed (`example.com.` is `example.com`).
fn host_of(authority: &[u8]) -> &[u8] {
    let host = if authority.first() == Some(&b'[') {
        match authority.iter().position(|&b| b == b']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.iter().rposition(|&b| b == b':') {
            Some(colon) => &authority[..colon],
            None => authority,
        }
    };
    host.strip_suffix(b".").unwrap_or(host)
}
