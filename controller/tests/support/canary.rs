//! Flagger Canary YAML for the tests that load or run specs: one `test/<name>` Canary for
//! Deployment `<name>`, with the test's own `spec.service` and `spec.analysis`.

/// `spec.analysis` lines (indented four spaces) for a run that is quick to finish: a check
/// every second, two failures to roll back, 10 % steps up to 30 %.
pub const QUICK_ANALYSIS: &str =
    "    interval: 1s\n    threshold: 2\n    maxWeight: 30\n    stepWeight: 10\n";

/// A Canary on service port 80 with host `<name>.example.com`; `analysis` is the body of
/// `spec.analysis`, each line indented four spaces and ending in a newline.
pub fn canary_yaml(name: &str, analysis: &str) -> String {
    canary_yaml_with_service(
        name,
        &format!("    port: 80\n    hosts: [{name}.example.com]\n"),
        analysis,
    )
}

/// As `canary_yaml`, with `service` as the body of `spec.service` (same indentation).
pub fn canary_yaml_with_service(name: &str, service: &str, analysis: &str) -> String {
    format!(
        r#"apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: {name}
  namespace: test
spec:
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {name}
  service:
{service}  analysis:
{analysis}"#
    )
}

/// A Canary with `QUICK_ANALYSIS` followed by `analysis_extra` (e.g. metrics, webhooks).
pub fn quick_canary_yaml(name: &str, analysis_extra: &str) -> String {
    canary_yaml(name, &format!("{QUICK_ANALYSIS}{analysis_extra}"))
}

/// `spec.service` of the podinfo Canaries: podinfo's port, behind host `app.example.com`.
pub const PODINFO_SERVICE: &str = "    port: 9898\n    hosts: [app.example.com]\n";
