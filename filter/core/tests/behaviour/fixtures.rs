//! Small builders shared by the behaviour tests.

use veer_core::{parse_table, CompiledTable, RoutingTable, SigningKeys};

/// A table from JSON, validated and compiled; panics with the config error otherwise.
pub fn compile(json: &str) -> CompiledTable {
    let table: RoutingTable = parse_table(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    CompiledTable::compile(&table).unwrap()
}

/// A one-route table on `app.example.com` with the given extra route fields (JSON members).
pub fn one_route(extra: &str) -> CompiledTable {
    let sep = if extra.is_empty() { "" } else { ", " };
    compile(&format!(
        r#"{{"generation": 7, "routes": [{{"name": "test/podinfo", "hosts": ["app.example.com"],
            "revision": "rev-1"{sep}{extra}}}]}}"#
    ))
}

/// 32 bytes of 0x01.., base64: "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=".
pub const KEY_A: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
/// 16 bytes of 0xAA.
pub const KEY_B: &str = "qqqqqqqqqqqqqqqqqqqqqg==";

pub fn keys(list: &[&str]) -> SigningKeys {
    SigningKeys::from_base64(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}
