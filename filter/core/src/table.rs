//! The routing table and plugin configuration as they travel in JSON: the contract between
//! the controller (which serves it) and the filter (which decides with it). Field names are
//! camelCase. These types only describe shape; `validate` checks meaning.

use crate::json::{Field, Shape, Shaped};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default request header carrying the decision to the gateway's routes.
pub const DEFAULT_ROUTE_HEADER: &str = "x-veer-route";
/// Default request header asking the gateway's route to mirror to the canary.
pub const DEFAULT_MIRROR_HEADER: &str = "x-veer-mirror";
/// The mirror header's value when a request is to be mirrored; the gateway's route matches
/// it exactly.
pub const MIRROR_HEADER_VALUE: &str = "1";
/// Response header with the decision, when `decisionHeader` is on.
pub const DECISION_HEADER: &str = "x-veer-decision";
/// Headers the filter sends on each poll of the controller.
pub const GATEWAY_ID_HEADER: &str = "x-veer-gateway";
pub const GATEWAY_GENERATION_HEADER: &str = "x-veer-generation";
/// Default controller path serving the table.
pub const DEFAULT_TABLE_PATH: &str = "/v1/table";
/// Weights are in basis points: 10000 is everyone.
pub const MAX_WEIGHT: u32 = 10_000;

/// Defines the JSON types and their `Shaped` impls from one field list. The plugin
/// configuration is checked against those shapes for unknown fields (at every depth); the
/// table from the controller is read without that check, so that an old filter can read a
/// newer table.
macro_rules! config_types {
    ($(
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $ty:ty,
            )*
        }
    )*) => {
        $(
            $(#[$meta])*
            pub struct $name {
                $(
                    $(#[$field_meta])*
                    pub $field: $ty,
                )*
            }

            impl Shaped for $name {
                fn shape() -> Shape {
                    const FIELDS: &[Field] =
                        &[$((stringify!($field), <$ty as Shaped>::shape)),*];
                    Shape::Struct(FIELDS)
                }
            }
        )*
    };
}

config_types! {
/// The filter's plugin configuration (`WasmPlugin.spec.pluginConfig`).
/// Unknown fields are an error here, at any depth: a typo in deployed config must not pass
/// silently (`validate::parse_plugin_config` checks the document against this type's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    #[serde(default = "default_route_header")]
    pub route_header: String,
    #[serde(default = "default_mirror_header")]
    pub mirror_header: String,
    #[serde(default)]
    pub decision_header: bool,
    /// The per-response metrics (`veer_responses_total`, `veer_request_duration_ms`). Off,
    /// the filter makes no host call for a response it does not set a cookie on; Istio's own
    /// metrics already count each variant's workload.
    #[serde(default = "default_true")]
    pub response_metrics: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_signing: Option<CookieSigning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<RoutingTable>,
}

/// Cookie signing keys: inline base64 keys, or the name of an environment variable holding
/// comma-separated base64 keys. The first key signs; every key verifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CookieSigning {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_env: Option<String>,
}

/// Where the filter long-polls the live table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerEndpoint {
    /// Envoy cluster name, e.g. `outbound|8080||veer-controller.veer-system.svc.cluster.local`.
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default = "default_table_path")]
    pub path: String,
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// The routing table as the controller serves it. Unknown fields are ignored (at every
/// depth), so an old filter can read a newer controller's table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTable {
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One canary's routing: which requests it covers and how they split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Unique; `namespace/name` of the Canary.
    pub name: String,
    /// Matched against `:authority`, case-insensitive, port ignored. `*` is any host,
    /// `*.example.com` any subdomain.
    pub hosts: Vec<String>,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Canary share in basis points, 0..=10000.
    #[serde(default)]
    pub weight: u32,
    /// Basis points of primary-bound requests to mirror, 0..=10000.
    #[serde(default)]
    pub mirror_weight: u32,
    /// Identifies the canary run; salts the sticky bucket.
    #[serde(default)]
    pub revision: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<MatchRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_key: Option<StickyKey>,
}

/// QA access: the first matching override sets the variant before anything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    pub r#match: MatchRule,
    pub variant: Variant,
}

/// One A/B rule. Every present condition must hold (AND); rules in a list are OR-ed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchRule {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
}

/// A string condition. Exactly one operator must be set; `validate` enforces it, so that
/// the error can name the field path rather than a serde position.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Whole-value match, RE2 syntax as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Cookie-based session affinity. Absent means no cookie is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    pub cookie_name: String,
    #[serde(default = "default_max_age")]
    pub max_age: i64,
    #[serde(default = "default_cookie_path")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default)]
    pub secure: bool,
    #[serde(default = "default_true")]
    pub http_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,
    #[serde(default)]
    pub partitioned: bool,
}

/// Bucket users by a request header (e.g. a user id) instead of a cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StickyKey {
    pub header: String,
}
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            route_header: default_route_header(),
            mirror_header: default_mirror_header(),
            decision_header: false,
            response_metrics: true,
            cookie_signing: None,
            controller: None,
            table: None,
        }
    }
}

fn default_route_header() -> String {
    DEFAULT_ROUTE_HEADER.to_string()
}

fn default_mirror_header() -> String {
    DEFAULT_MIRROR_HEADER.to_string()
}

fn default_table_path() -> String {
    DEFAULT_TABLE_PATH.to_string()
}

fn default_poll_ms() -> u64 {
    1000
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_path_prefix() -> String {
    "/".to_string()
}

/// Which upstream a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Primary,
    Canary,
}

impl Shaped for Variant {
    fn shape() -> Shape {
        Shape::Leaf
    }
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Primary => "primary",
            Variant::Canary => "canary",
        }
    }
}

fn default_max_age() -> i64 {
    86_400
}

fn default_cookie_path() -> String {
    "/".to_string()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl Shaped for SameSite {
    fn shape() -> Shape {
        Shape::Leaf
    }
}
