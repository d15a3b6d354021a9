//! Reading and checking the table and the plugin configuration. One set of rules for the
//! filter and the controller; every error names the route (when there is one), the JSON
//! field path and what is wrong with it.

use crate::compiled::{CompiledTable, MAX_HOST_LEN};
use crate::json::{parse_json, unknown_field};
use crate::keys::SigningKeys;
use crate::table::{PluginConfig, Route, RoutingTable, SameSite, SessionAffinity, MAX_WEIGHT};
use std::collections::BTreeMap;
use std::fmt;

/// What is wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The route's name when the error is inside a route.
    pub route: Option<String>,
    /// JSON field path, e.g. `routes[0].match[1].headers.x-user.regex`.
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(route: Option<&str>, path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            route: route.map(str::to_string),
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Attaches the route name (used by code that checks parts without knowing the route).
    pub(crate) fn in_route(mut self, route: &str) -> Self {
        self.route = Some(route.to_string());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(route) = &self.route {
            write!(f, "route {route:?}: ")?;
        }
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses `pluginConfig` strictly: JSON and type errors and unknown fields (at any depth)
/// are reported with their field path, then the whole configuration is validated.
pub fn parse_plugin_config(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
    let cfg: PluginConfig = parse_json(bytes)?;
    if let Some(unknown) = unknown_field::<PluginConfig>(bytes) {
        return Err(unknown);
    }
    validate_config(&cfg)?;
    Ok(cfg)
}

/// Parses a table served by the controller: unknown fields are ignored, so an old filter
/// reads a newer controller's table. The table is then validated.
pub fn parse_table(bytes: &[u8]) -> Result<RoutingTable, ConfigError> {
    let table: RoutingTable = parse_json(bytes)?;
    validate_table(&table)?;
    Ok(table)
}

/// Validates the whole plugin configuration, including its inline table (paths start
/// with `table.`).
pub fn validate_config(cfg: &PluginConfig) -> Result<(), ConfigError> {
    check_header_name(&cfg.route_header, "routeHeader")?;
    check_header_name(&cfg.mirror_header, "mirrorHeader")?;
    if cfg.route_header == cfg.mirror_header {
        return Err(ConfigError::new(
            None,
            "mirrorHeader",
            format!(
                "must differ from routeHeader (both are {:?})",
                cfg.route_header
            ),
        ));
    }
    if let Some(signing) = &cfg.cookie_signing {
        match (&signing.keys_env, signing.keys.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::new(
                    None,
                    "cookieSigning",
                    "set either keys or keysEnv, not both",
                ))
            }
            (None, true) => {
                return Err(ConfigError::new(
                    None,
                    "cookieSigning",
                    "needs keys or keysEnv",
                ))
            }
            (Some(env), true) => {
                if !is_env_var_name(env) {
                    return Err(ConfigError::new(
                        None,
                        "cookieSigning.keysEnv",
                        format!("{env:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                    ));
                }
            }
            (None, false) => {
                SigningKeys::from_base64(&signing.keys)?;
            }
        }
    }
    if let Some(c) = &cfg.controller {
        if c.cluster.trim().is_empty() {
            return Err(ConfigError::new(
                None,
                "controller.cluster",
                "must not be empty",
            ));
        }
        if let Some(a) = &c.authority {
            if a.is_empty() || a.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(ConfigError::new(
                    None,
                    "controller.authority",
                    format!("{a:?} is not a valid authority"),
                ));
            }
        }
        if !c.path.starts_with('/') || c.path.contains('?') || has_ctl(&c.path) {
            return Err(ConfigError::new(
                None,
                "controller.path",
                format!("{:?} must start with '/' and carry no query string", c.path),
            ));
        }
        if c.poll_ms == 0 {
            return Err(ConfigError::new(
                None,
                "controller.pollMs",
                "must be greater than 0",
            ));
        }
        if c.timeout_ms == 0 {
            return Err(ConfigError::new(
                None,
                "controller.timeoutMs",
                "must be greater than 0",
            ));
        }
    }
    if let Some(table) = &cfg.table {
        CompiledTable::compile_at(table, "table.")?;
    }
    Ok(())
}

/// Validates a table: every route and the table as a whole (unique names, no two routes on
/// the same host and path prefix). Regexes are compiled to check them.
pub fn validate_table(t: &RoutingTable) -> Result<(), ConfigError> {
    CompiledTable::compile(t).map(|_| ())
}

/// The checks that need no compiling: ranges, names, hosts, cookie attributes and the
/// table-wide uniqueness rules. `prefix` is prepended to every path (`table.` for the
/// plugin configuration's inline table).
pub(crate) fn check_table_shape(t: &RoutingTable, prefix: &str) -> Result<(), ConfigError> {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut claims: BTreeMap<(String, &str), (usize, &str)> = BTreeMap::new();
    for (i, route) in t.routes.iter().enumerate() {
        let at = format!("{prefix}routes[{i}]");
        check_route(route, &at)?;
        if let Some(first) = names.insert(route.name.as_str(), i) {
            return Err(ConfigError::new(
                Some(&route.name),
                format!("{at}.name"),
                format!("duplicate route name (also {prefix}routes[{first}])"),
            ));
        }
        for (h, host) in route.hosts.iter().enumerate() {
            let key = (host.to_ascii_lowercase(), route.path_prefix.as_str());
            if let Some((j, other)) = claims.insert(key, (i, route.name.as_str())) {
                let reason = if j == i {
                    format!("host {host:?} is listed twice")
                } else {
                    format!(
                        "host {host:?} with pathPrefix {:?} is already claimed by route {other:?} ({prefix}routes[{j}])",
                        route.path_prefix
                    )
                };
                return Err(ConfigError::new(
                    Some(&route.name),
                    format!("{at}.hosts[{h}]"),
                    reason,
                ));
            }
        }
    }
    Ok(())
}

fn check_route(route: &Route, at: &str) -> Result<(), ConfigError> {
    let name = route.name.as_str();
    let err =
        |field: &str, reason: String| ConfigError::new(Some(name), format!("{at}.{field}"), reason);
    if name.trim().is_empty() {
        return Err(ConfigError::new(
            None,
            format!("{at}.name"),
            "must not be empty",
        ));
    }
    // The name travels in the decision header (`;`-separated) and in stat tags.
    if name
        .bytes()
        .any(|b| !(b' '..=b'~').contains(&b) || b == b';')
    {
        return Err(err("name", "must be printable ASCII without ';'".into()));
    }
    if route.hosts.is_empty() {
        return Err(err("hosts", "must list at least one host".into()));
    }
    for (h, host) in route.hosts.iter().enumerate() {
        if host.len() > MAX_HOST_LEN {
            let start: String = host.chars().take(40).collect();
            return Err(err(
                &format!("hosts[{h}]"),
                format!(
                    "{start:?}... is {} bytes long; a host may be at most {MAX_HOST_LEN} bytes \
                     (DNS names 253, bracketed IPv6 literals 47), longer ones are never looked up",
                    host.len()
                ),
            ));
        }
        if let Err(why) = check_host(host) {
            return Err(err(&format!("hosts[{h}]"), format!("{host:?} {why}")));
        }
    }
    if !route.path_prefix.starts_with('/')
        || has_ctl(&route.path_prefix)
        || route.path_prefix.contains('?')
    {
        return Err(err(
            "pathPrefix",
            format!(
                "{:?} must start with '/' (no query string)",
                route.path_prefix
            ),
        ));
    }
    for (field, w) in [
        ("weight", route.weight),
        ("mirrorWeight", route.mirror_weight),
    ] {
        if w > MAX_WEIGHT {
            return Err(err(
                field,
                format!("must be between 0 and {MAX_WEIGHT} basis points, got {w}"),
            ));
        }
    }
    if let Some(aff) = &route.session_affinity {
        check_affinity(aff)
            .map_err(|(field, why)| err(&format!("sessionAffinity.{field}"), why))?;
    }
    if let Some(key) = &route.sticky_key {
        if !is_token(&key.header) {
            return Err(err(
                "stickyKey.header",
                format!("{:?} is not a valid header name", key.header),
            ));
        }
    }
    Ok(())
}

fn check_affinity(aff: &SessionAffinity) -> Result<(), (&'static str, String)> {
    if !is_token(&aff.cookie_name) {
        return Err((
            "cookieName",
            format!(
                "{:?} is not a valid cookie name (RFC 6265 token)",
                aff.cookie_name
            ),
        ));
    }
    if aff.max_age < 0 {
        return Err(("maxAge", format!("must be >= 0, got {}", aff.max_age)));
    }
    if !is_cookie_attr(&aff.path) || !aff.path.starts_with('/') {
        return Err((
            "path",
            format!(
                "{:?} must start with '/' and contain no ';' or control characters",
                aff.path
            ),
        ));
    }
    if let Some(d) = &aff.domain {
        if d.is_empty() || !is_cookie_attr(d) || d.contains(' ') {
            return Err((
                "domain",
                format!("{d:?} must be non-empty with no ';', spaces or control characters"),
            ));
        }
    }
    if aff.partitioned && !aff.secure {
        return Err(("partitioned", "requires secure: true (CHIPS)".into()));
    }
    if aff.same_site == Some(SameSite::None) && !aff.secure {
        return Err(("sameSite", "SameSite=None requires secure: true".into()));
    }
    Ok(())
}

/// `*`, `*.suffix`, a hostname or a bracketed IPv6 literal; never a port.
fn check_host(host: &str) -> Result<(), &'static str> {
    if host == "*" {
        return Ok(());
    }
    if host.starts_with('[') {
        let ok = host.len() > 2
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        return if ok {
            Ok(())
        } else {
            Err("is not a valid bracketed IPv6 address")
        };
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains(':') {
        return Err("must not carry a port (hosts match any port)");
    }
    if name.contains('*') {
        return Err("may only use '*' alone or as a leading '*.'");
    }
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if labels_ok {
        Ok(())
    } else {
        Err("is not a valid host name")
    }
}

/// An HTTP header name the filter may set: an RFC 9110 token, lowercase (Envoy keeps header
/// names lowercase, and a mixed-case name here would never be found again).
fn check_header_name(name: &str, field: &str) -> Result<(), ConfigError> {
    if !is_token(name) {
        return Err(ConfigError::new(
            None,
            field,
            format!("{name:?} is not a valid header name"),
        ));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ConfigError::new(
            None,
            field,
            format!("{name:?} must be lowercase (Envoy header names are lowercase)"),
        ));
    }
    Ok(())
}

/// RFC 9110 / RFC 6265 token: one or more visible ASCII characters other than separators.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn is_cookie_attr(s: &str) -> bool {
    !s.contains(';') && !has_ctl(s)
}

fn has_ctl(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn is_env_var_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The path segment for a map key: `.x-user` for a plain name, `["a b"]` otherwise.
pub(crate) fn key_segment(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
    {
        format!(".{key}")
    } else {
        format!("[{key:?}]")
    }
}
