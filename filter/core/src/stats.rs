//! The route name as it appears inside Envoy stat names. Shared so the filter (which emits
//! the stats) and the controller (which queries them in Prometheus) spell it the same way.

/// Replaces `.` (Envoy's stat-name separator) and every character outside
/// `[A-Za-z0-9_/-]` with `_`. `test/podinfo` stays `test/podinfo`; `a.b` becomes `a_b`.
pub fn stat_route_token(route_name: &str) -> String {
    route_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
