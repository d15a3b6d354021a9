#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Everything veer asks an operator to apply to a cluster, checked without a cluster:
//! every YAML document under `manifests/` (except `manifests/local/`, which is Envoy and
//! Prometheus config run by the end-to-end tests), every `kubectl kustomize` build, the
//! gateway patches applied to a stand-in gateway, and what `veer render` prints for the seed.
//!
//! - Custom resources (Istio, Flagger, Gateway API) against the CRD JSON schemas copied into
//!   `manifests/schemas/`.
//! - Core kinds with `kubernetes-validate --strict` (the Kubernetes OpenAPI schemas) from
//!   `.venv`, installed by `scripts/setup.sh` from `scripts/requirements-test.txt`.
//! - Each WasmPlugin `pluginConfig` and EnvoyFilter `configuration` through the filter's own
//!   `veer_core::parse_plugin_config`, so a deployable config is one the filter accepts.
//! - Every filter config (base, example, `veer render`, EnvoyFilter) loaded by the real
//!   filter in real Envoy 1.40 (`envoy --mode validate` runs on_configure), and the gateway's
//!   stats tag rules accepted by Envoy and equal to the ones the end-to-end gateway uses.
//! - VirtualService header routes against veer-core's header constants.
//! - The example equals `veer render` output for the seed, so the two cannot drift.
//!
//! No Kubernetes API server runs here: `kubectl` only builds and patches locally.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use veer_controller::render::{render, RenderOptions, MIRROR_HEADER_VALUE};
use veer_controller::spec::{load_file, LoadOptions};
use veer_core::{parse_plugin_config, Variant, DEFAULT_MIRROR_HEADER, DEFAULT_ROUTE_HEADER};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn manifests() -> PathBuf {
    repo().join("manifests")
}

const INSTALL: &str =
    "run scripts/setup.sh, or: .venv/bin/pip install -r scripts/requirements-test.txt";

/// A tool from the project venv. A missing tool fails the test with the install command.
fn venv_tool(name: &str) -> PathBuf {
    let path = repo().join(".venv/bin").join(name);
    assert!(path.is_file(), "{} is missing; {INSTALL}", path.display());
    path
}

// ---------------------------------------------------------------------------------------
// Documents

/// One YAML document and where it came from, for error messages.
#[derive(Clone, Debug)]
struct Doc {
    origin: String,
    value: Value,
}

impl Doc {
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"].as_str().unwrap_or("")
    }
    fn id(&self) -> (String, String, String) {
        (
            self.kind().to_string(),
            self.namespace().to_string(),
            self.name().to_string(),
        )
    }
}

fn parse_docs(origin: &str, text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{origin}: document {i} is not valid YAML: {e}"));
        if !value.is_null() {
            docs.push(Doc {
                origin: format!("{origin} (document {i})"),
                value,
            });
        }
    }
    docs
}

fn read_docs(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path).unwrap();
    let origin = path
        .strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string();
    parse_docs(&origin, &text)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// What kind of file a manifest is; each kind is validated its own way.
#[derive(Debug, PartialEq)]
enum ManifestFile {
    /// `kustomization.yaml`: proven by `kubectl kustomize` on its directory.
    Kustomization,
    /// `*-patch.yaml`: a partial object, proven by applying it.
    Patch,
    /// Complete Kubernetes objects.
    Objects,
}

fn classify_file(path: &Path) -> ManifestFile {
    let name = path.file_name().unwrap().to_str().unwrap();
    if name == "kustomization.yaml" {
        ManifestFile::Kustomization
    } else if name.ends_with("-patch.yaml") {
        ManifestFile::Patch
    } else {
        ManifestFile::Objects
    }
}

/// All manifest files, minus `manifests/local/` (Envoy and Prometheus configs, not
/// Kubernetes objects; the end-to-end tests run them for real).
fn manifest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    yaml_files(&manifests(), &mut files);
    files.retain(|p| !p.starts_with(manifests().join("local")));
    assert!(files.len() > 10, "too few manifests found: {files:?}");
    files
}

fn kustomization_dirs() -> Vec<PathBuf> {
    manifest_files()
        .into_iter()
        .filter(|p| classify_file(p) == ManifestFile::Kustomization)
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect()
}

fn kustomize(dir: &Path) -> Vec<Doc> {
    let out = Command::new(venv_tool("kubectl"))
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let origin = format!(
        "kubectl kustomize {}",
        dir.strip_prefix(repo()).unwrap_or(dir).display()
    );
    parse_docs(&origin, &String::from_utf8(out.stdout).unwrap())
}

// ---------------------------------------------------------------------------------------
// Validation

/// Where a kind's schema lives: a CRD schema file, or the Kubernetes OpenAPI (core kinds).
#[derive(Debug, PartialEq)]
enum SchemaSource {
    Crd(&'static str),
    Kubernetes,
}

fn schema_for(api_version: &str, kind: &str) -> Result<SchemaSource, String> {
    use SchemaSource::*;
    // Istio's CRDs serve every version of a kind with one schema (manifests/schemas/README.md).
    Ok(match (api_version, kind) {
        ("extensions.istio.io/v1alpha1", "WasmPlugin") => {
            Crd("extensions.istio.io/wasmplugin_v1alpha1.json")
        }
        ("networking.istio.io/v1alpha3", "EnvoyFilter") => {
            Crd("networking.istio.io/envoyfilter_v1alpha3.json")
        }
        (
            "networking.istio.io/v1"
            | "networking.istio.io/v1beta1"
            | "networking.istio.io/v1alpha3",
            "Gateway",
        ) => Crd("networking.istio.io/gateway_v1.json"),
        ("networking.istio.io/v1", "VirtualService") => {
            Crd("networking.istio.io/virtualservice_v1.json")
        }
        ("networking.istio.io/v1", "DestinationRule") => {
            Crd("networking.istio.io/destinationrule_v1.json")
        }
        ("flagger.app/v1beta1", "Canary") => Crd("flagger.app/canary_v1beta1.json"),
        ("flagger.app/v1beta1", "MetricTemplate") => Crd("flagger.app/metrictemplate_v1beta1.json"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            Crd("gateway.networking.k8s.io/httproute_v1.json")
        }
        ("gateway.networking.k8s.io/v1", "Gateway") => {
            Crd("gateway.networking.k8s.io/gateway_v1.json")
        }
        (
            "v1"
            | "apps/v1"
            | "rbac.authorization.k8s.io/v1"
            | "policy/v1"
            | "networking.k8s.io/v1"
            | "autoscaling/v2"
            | "batch/v1"
            | "apiextensions.k8s.io/v1",
            _,
        ) => Kubernetes,
        _ => {
            return Err(format!(
                "no schema for apiVersion {api_version:?} kind {kind:?}: add its CRD schema to \
                 manifests/schemas/ and to schema_for()"
            ))
        }
    })
}

/// Compiled CRD validators, one per schema file.
struct CrdSchemas {
    validators: BTreeMap<&'static str, jsonschema::Validator>,
}

impl CrdSchemas {
    fn load() -> CrdSchemas {
        CrdSchemas {
            validators: BTreeMap::new(),
        }
    }

    /// Errors of one custom resource against its schema, each with its JSON path.
    fn errors(&mut self, file: &'static str, doc: &Doc) -> Vec<String> {
        let validator = self.validators.entry(file).or_insert_with(|| {
            let path = manifests().join("schemas").join(file);
            let schema: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{}: not a usable schema: {e}", path.display()))
        });
        validator
            .iter_errors(&doc.value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }
}

/// Checks every document: schema, metadata, and the filter's config for WasmPlugins and
/// EnvoyFilters. Core kinds are collected into one file for kubernetes-validate.
/// Returns every problem found (empty = all valid).
fn validate_docs(docs: &[Doc], schemas: &mut CrdSchemas) -> Vec<String> {
    let mut problems = Vec::new();
    let mut core = Vec::new();
    for doc in docs {
        let at = &doc.origin;
        if doc.name().is_empty() {
            problems.push(format!("{at}: metadata.name is missing"));
        }
        match schema_for(doc.api_version(), doc.kind()) {
            Err(e) => problems.push(format!("{at}: {e}")),
            Ok(SchemaSource::Crd(file)) => {
                // Istio's CRD schemas leave metadata out; every one of ours is namespaced.
                if doc.namespace().is_empty() {
                    problems.push(format!("{at}: metadata.namespace is missing"));
                }
                for e in schemas.errors(file, doc) {
                    problems.push(format!("{at}: {} {}: {e}", doc.kind(), doc.name()));
                }
            }
            Ok(SchemaSource::Kubernetes) => core.push(doc),
        }
        for (what, config) in filter_configs(doc) {
            if let Err(e) = parse_plugin_config(config.as_bytes()) {
                problems.push(format!("{at}: {what} is rejected by the filter: {e}"));
            }
        }
    }
    if !core.is_empty() {
        problems.extend(kubernetes_validate(&core));
    }
    problems
}

/// The filter configurations inside a document, as the JSON text the filter receives.
fn filter_configs(doc: &Doc) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match doc.kind() {
        "WasmPlugin" => {
            let cfg = &doc.value["spec"]["pluginConfig"];
            out.push((
                format!("WasmPlugin {} spec.pluginConfig", doc.name()),
                serde_json::to_string(cfg).unwrap(),
            ));
        }
        "EnvoyFilter" => {
            let patches = doc.value["spec"]["configPatches"].as_array().cloned();
            for (i, p) in patches.unwrap_or_default().iter().enumerate() {
                let config = &p["patch"]["value"]["typed_config"]["config"];
                if let Some(text) = config["configuration"]["value"].as_str() {
                    out.push((
                        format!(
                            "EnvoyFilter {} configPatches[{i}] configuration",
                            doc.name()
                        ),
                        text.to_string(),
                    ));
                }
            }
        }
        _ => {}
    }
    out
}

/// Runs kubernetes-validate --strict on core-kind documents, for the oldest Kubernetes the
/// manifests target and for the validator's newest. Each document goes in its own file, so
/// that an error names where the document came from.
fn kubernetes_validate(docs: &[&Doc]) -> Vec<String> {
    let tool = venv_tool("kubernetes-validate");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut origins = BTreeMap::new();
    for (i, doc) in docs.iter().enumerate() {
        let path = dir.path().join(format!("doc{i:03}.yaml"));
        std::fs::write(&path, serde_norway::to_string(&doc.value).unwrap()).unwrap();
        origins.insert(path.display().to_string(), doc.origin.clone());
        files.push(path);
    }
    let mut problems = Vec::new();
    for version in [Some("1.30.0"), None] {
        let mut cmd = Command::new(&tool);
        cmd.args(["--strict", "--quiet", "--no-warn"]);
        if let Some(v) = version {
            cmd.args(["--kubernetes-version", v]);
        }
        let out = cmd.args(&files).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        for (path, origin) in &origins {
            text = text.replace(path, origin);
        }
        if !out.status.success() || text.contains("ERROR") {
            problems.push(format!(
                "kubernetes-validate (Kubernetes {}) failed:\n{text}",
                version.unwrap_or("latest")
            ));
        }
    }
    problems
}

fn assert_valid(what: &str, docs: &[Doc]) {
    let mut schemas = CrdSchemas::load();
    let problems = validate_docs(docs, &mut schemas);
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// The gateway patches, applied to a stand-in for Istio's gateway Deployment.

/// Istio's gateway Deployment as the Helm `gateway` chart renders it (the proxy container is
/// filled in by injection, hence `image: auto`).
const STAND_IN_GATEWAY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  template:
    metadata:
      labels:
        istio: ingressgateway
        sidecar.istio.io/inject: "true"
      annotations:
        inject.istio.io/templates: gateway
    spec:
      containers:
        - name: istio-proxy
          image: auto
          env:
            - name: ISTIO_META_UNPRIVILEGED_POD
              value: "true"
"#;

fn patch_stand_in_gateway(patch: &Path) -> Doc {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("gateway.yaml");
    std::fs::write(&base, STAND_IN_GATEWAY).unwrap();
    let out = Command::new(venv_tool("kubectl"))
        .args([
            "patch",
            "--local",
            "--type",
            "strategic",
            "-o",
            "yaml",
            "-f",
        ])
        .arg(&base)
        .arg("--patch-file")
        .arg(patch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl patch --local with {} failed:\n{}",
        patch.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let origin = format!("stand-in gateway patched with {}", patch.display());
    let mut docs = parse_docs(&origin, &String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn every_manifest_document_is_valid() {
    let mut docs = Vec::new();
    for file in manifest_files() {
        if classify_file(&file) == ManifestFile::Objects {
            let file_docs = read_docs(&file);
            assert!(!file_docs.is_empty(), "{}: no documents", file.display());
            docs.extend(file_docs);
        }
    }
    assert_valid("manifests/", &docs);
}

#[test]
fn every_kustomization_builds_and_its_output_is_valid() {
    let dirs = kustomization_dirs();
    assert!(dirs.len() >= 4, "kustomizations: {dirs:?}");
    for dir in dirs {
        let docs = kustomize(&dir);
        assert!(!docs.is_empty(), "{}: builds nothing", dir.display());
        assert_valid(&format!("kubectl kustomize {}", dir.display()), &docs);
    }
}

/// A manifest file that no kustomization includes would never be applied.
#[test]
fn every_manifest_object_is_part_of_a_kustomization() {
    let mut built = BTreeSet::new();
    let mut canaries_in_configmaps = Vec::new();
    for dir in kustomization_dirs() {
        for doc in kustomize(&dir) {
            if doc.kind() == "ConfigMap" && doc.name() == "veer-canaries" {
                for text in doc.value["data"].as_object().into_iter().flatten() {
                    canaries_in_configmaps.push(text.1.as_str().unwrap().to_string());
                }
            }
            built.insert(doc.id());
        }
    }
    for file in manifest_files() {
        if classify_file(&file) != ManifestFile::Objects {
            continue;
        }
        for doc in read_docs(&file) {
            if doc.kind() == "Canary" && !built.contains(&doc.id()) {
                // Local-mode Canaries travel as ConfigMap data, not as flagger.app objects
                // (Kubernetes-mode examples apply them as objects).
                let found = canaries_in_configmaps.iter().any(|text| {
                    parse_docs("configmap", text)
                        .iter()
                        .any(|d| d.value == doc.value)
                });
                assert!(found, "{}: in no veer-canaries ConfigMap", doc.origin);
            } else {
                assert!(
                    built.contains(&doc.id()),
                    "{}: {} {}/{} is in no kustomization",
                    doc.origin,
                    doc.kind(),
                    doc.namespace(),
                    doc.name()
                );
            }
        }
    }
}

#[test]
fn gateway_patches_apply_to_istios_gateway_and_stay_valid() {
    let mut patches = Vec::new();
    for file in manifest_files() {
        if classify_file(&file) == ManifestFile::Patch
            && file.starts_with(manifests().join("istio/gateway"))
        {
            patches.push(file);
        }
    }
    assert_eq!(patches.len(), 2, "gateway patches: {patches:?}");
    for patch in patches {
        let patched = patch_stand_in_gateway(&patch);
        let before = parse_docs("stand-in", STAND_IN_GATEWAY).remove(0);
        assert_ne!(
            patched.value,
            before.value,
            "{} changed nothing",
            patch.display()
        );
        // Istio's own settings survive the patch.
        assert_eq!(
            patched.value["spec"]["template"]["metadata"]["annotations"]
                ["inject.istio.io/templates"],
            "gateway"
        );
        assert_valid(&patched.origin.clone(), &[patched]);
    }
}

/// The filter's environment: the WasmPlugin reads VEER_COOKIE_KEYS from the gateway (HOST),
/// the gateway patch provides it from a Secret, and the EnvoyFilter variant asks for the same.
#[test]
fn cookie_keys_flow_from_secret_to_gateway_to_filter() {
    let wasm = read_docs(&manifests().join("istio/filter/wasmplugin.yaml")).remove(0);
    let cfg = parse_plugin_config(
        serde_json::to_string(&wasm.value["spec"]["pluginConfig"])
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let env_name = cfg.cookie_signing.unwrap().keys_env.unwrap();
    assert_eq!(
        wasm.value["spec"]["vmConfig"]["env"],
        json!([{ "name": env_name, "valueFrom": "HOST" }])
    );

    let patched =
        patch_stand_in_gateway(&manifests().join("istio/gateway/ingressgateway-patch.yaml"));
    let env = patched.value["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    let keys = env
        .iter()
        .find(|e| e["name"] == env_name.as_str())
        .unwrap_or_else(|| panic!("the gateway patch does not set {env_name}: {env:?}"));
    assert!(
        keys["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "{env_name} must come from a Secret, not a literal: {keys}"
    );
    assert!(keys.get("value").is_none());

    let ef = read_docs(&manifests().join("istio/envoyfilter/envoyfilter.yaml")).remove(0);
    let vm = &ef.value["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
        ["vm_config"];
    assert_eq!(
        vm["environment_variables"]["host_env_keys"],
        json!([env_name])
    );
}

/// ISTIO_BOOTSTRAP_OVERRIDE names a file that the patch really mounts from the bootstrap
/// ConfigMap: the directory is the mount, the file name is one of the ConfigMap's keys.
#[test]
fn patched_gateway_points_istio_at_the_mounted_bootstrap_override() {
    let patched =
        patch_stand_in_gateway(&manifests().join("istio/gateway/ingressgateway-patch.yaml"));
    let pod = &patched.value["spec"]["template"]["spec"];
    let proxy = &pod["containers"][0];
    let file = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ISTIO_BOOTSTRAP_OVERRIDE")
        .expect("ISTIO_BOOTSTRAP_OVERRIDE is not set")["value"]
        .as_str()
        .unwrap()
        .to_string();
    let (dir, key) = file.rsplit_once('/').unwrap();
    let mount = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm = read_docs(&manifests().join("istio/gateway/bootstrap-configmap.yaml")).remove(0);
    assert_eq!(volume["configMap"]["name"], cm.name());
    assert_eq!(cm.namespace(), patched.namespace());
    assert!(
        cm.value["data"][key].is_string(),
        "the ConfigMap has no key {key}"
    );
}

/// The Dockerfile instructions of the final stage (after the last FROM), comments dropped.
fn final_stage(dockerfile: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dockerfile).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[last_from..].to_vec()
}

/// No Docker engine here, so the images are not built; their Dockerfiles are checked for
/// what Istio and the Deployment rely on.
#[test]
fn dockerfiles_make_what_istio_and_the_deployment_expect() {
    // Istio's Wasm image format: a scratch image whose only layer holds /plugin.wasm.
    let filter = final_stage(&manifests().join("istio/filter/Dockerfile"));
    assert_eq!(filter.len(), 2, "{filter:?}");
    assert_eq!(filter[0], "FROM scratch");
    assert!(
        filter[1].starts_with("COPY --from=build ")
            && filter[1]
                .ends_with("/target/wasm32-unknown-unknown/release/veer_filter.wasm /plugin.wasm"),
        "{}",
        filter[1]
    );
    let filter_text = std::fs::read_to_string(manifests().join("istio/filter/Dockerfile")).unwrap();
    // The image ships what the tests load: the release build after wasm-opt, by the same script.
    assert!(filter_text.contains("scripts/build-filter.sh --locked"));
    assert!(filter_text.contains("binaryen@$(cat scripts/binaryen-version)"));

    // The controller image runs as the user the Deployment's securityContext names.
    let controller = final_stage(&manifests().join("istio/controller/Dockerfile"));
    let deploy = read_docs(&manifests().join("istio/controller/deployment.yaml")).remove(0);
    let pod = &deploy.value["spec"]["template"]["spec"]["securityContext"];
    let user = format!("USER {}:{}", pod["runAsUser"], pod["runAsGroup"]);
    assert!(
        controller.contains(&user),
        "{user} missing from {controller:?}"
    );
    assert!(controller.contains(&r#"ENTRYPOINT ["/usr/local/bin/veer"]"#.to_string()));
    assert_eq!(
        deploy.value["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "controller"
    );
}

#[test]
fn wasmplugin_is_deployable_as_the_issue_requires() {
    let doc = read_docs(&manifests().join("istio/filter/wasmplugin.yaml")).remove(0);
    let spec = &doc.value["spec"];
    assert_eq!(
        spec["selector"]["matchLabels"],
        json!({ "istio": "ingressgateway" })
    );
    assert_eq!(spec["failStrategy"], "FAIL_OPEN");
    assert!(spec["phase"].is_string() && spec["phase"] != "UNSPECIFIED_PHASE");
    assert!(spec["priority"].is_i64());
    assert!(spec["url"].as_str().unwrap().starts_with("oci://"));
    // The gateway's own namespace, where the gateway that public-gateway selects runs.
    let gw = read_docs(&manifests().join("examples/podinfo/gateway.yaml")).remove(0);
    assert_eq!(doc.namespace(), gw.namespace());
    assert_eq!(
        spec["selector"]["matchLabels"],
        gw.value["spec"]["selector"]
    );
}

/// `controller.cluster` is the Envoy cluster istiod generates for the controller Service,
/// and the Service really leads to the port the controller listens on.
#[test]
fn filter_polls_the_controller_service_that_exists() {
    let docs: Vec<Doc> = kustomize(&manifests().join("istio"));
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d.kind() == kind && d.name() == name)
            .unwrap_or_else(|| panic!("{kind} {name} missing from manifests/istio"))
    };
    let svc = find("Service", "veer-controller");
    let port = &svc.value["spec"]["ports"][0];
    let fqdn = format!("{}.{}.svc.cluster.local", svc.name(), svc.namespace());
    let expected = format!("outbound|{}||{fqdn}", port["port"]);

    let wasm = find("WasmPlugin", "veer");
    let ef_docs = kustomize(&manifests().join("istio/envoyfilter"));
    let ef = ef_docs.iter().find(|d| d.kind() == "EnvoyFilter").unwrap();
    let mut configs = filter_configs(wasm);
    configs.extend(filter_configs(ef));
    assert_eq!(configs.len(), 2);
    let parsed: Vec<_> = configs
        .iter()
        .map(|(_, text)| parse_plugin_config(text.as_bytes()).unwrap())
        .collect();
    // The WasmPlugin and its EnvoyFilter alternative configure the filter identically.
    assert_eq!(parsed[0], parsed[1]);
    let endpoint = parsed[0].controller.clone().unwrap();
    assert_eq!(endpoint.cluster, expected);
    assert_eq!(endpoint.authority.as_deref(), Some(fqdn.as_str()));

    // Service targetPort (by name) -> container port -> --listen.
    let deploy = find("Deployment", "veer-controller");
    let container = &deploy.value["spec"]["template"]["spec"]["containers"][0];
    let target = port["targetPort"].as_str().unwrap();
    let cport = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == target)
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap();
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&format!("--listen=0.0.0.0:{cport}").as_str()),
        "--listen does not match containerPort {cport}: {args:?}"
    );
    assert!(
        svc.value["spec"]["selector"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| deploy.value["spec"]["template"]["metadata"]["labels"][k] == *v),
        "the Service selects no controller pod"
    );
}

#[test]
fn controller_deployment_is_locked_down() {
    let docs = kustomize(&manifests().join("istio"));
    // Least privilege: the controller calls nothing on the Kubernetes API (local mode), so
    // there is no RBAC at all and no token in the pod.
    for d in &docs {
        assert!(
            !d.kind().contains("Role"),
            "{}: {} {} grants API access the controller does not use",
            d.origin,
            d.kind(),
            d.name()
        );
    }
    let sa = docs.iter().find(|d| d.kind() == "ServiceAccount").unwrap();
    assert_eq!(sa.value["automountServiceAccountToken"], false);
    let deploy = docs
        .iter()
        .find(|d| d.kind() == "Deployment" && d.name() == "veer-controller")
        .unwrap();
    let pod = &deploy.value["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], sa.name());
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
    }
    for bound in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][bound][res].is_string(),
                "resources.{bound}.{res}"
            );
        }
    }
    // The Canary specs come from the ConfigMap, the state from a volume that survives.
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert!(volumes
        .iter()
        .any(|v| v["configMap"]["name"] == "veer-canaries"));
    assert!(volumes
        .iter()
        .any(|v| v["persistentVolumeClaim"]["claimName"].is_string()));
}

/// The VirtualService routes on exactly the headers the filter sets, with the values it
/// writes. The names are veer-core's constants and the filter's configured headers.
#[test]
fn virtualservice_headers_are_the_filters() {
    let docs = kustomize(&manifests().join("examples/podinfo"));
    let wasm = docs.iter().find(|d| d.kind() == "WasmPlugin").unwrap();
    let cfg = parse_plugin_config(
        serde_json::to_string(&wasm.value["spec"]["pluginConfig"])
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(cfg.route_header, DEFAULT_ROUTE_HEADER);
    assert_eq!(cfg.mirror_header, DEFAULT_MIRROR_HEADER);
    let vs: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "VirtualService")
        .collect();
    assert_eq!(vs.len(), 1);
    assert_header_routes(vs[0], &cfg.route_header, &cfg.mirror_header);
}

/// Canary route on `routeHeader: canary`, mirror route on `mirrorHeader: "1"` with a mirror
/// to the canary host, and a last route without a match that goes to primary.
fn assert_header_routes(vs: &Doc, route_header: &str, mirror_header: &str) {
    let http = vs.value["spec"]["http"].as_array().unwrap();
    assert_eq!(
        http.len(),
        3,
        "{}: expected canary, mirror, default",
        vs.origin
    );
    let only_header = |r: &Value| -> (String, String) {
        let m = r["match"].as_array().unwrap();
        assert_eq!(m.len(), 1);
        let headers = m[0]["headers"].as_object().unwrap();
        assert_eq!(headers.len(), 1);
        let (k, v) = headers.iter().next().unwrap();
        (k.clone(), v["exact"].as_str().unwrap().to_string())
    };
    let dest = |r: &Value| {
        r["route"][0]["destination"]["host"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        only_header(&http[0]),
        (
            route_header.to_string(),
            Variant::Canary.as_str().to_string()
        )
    );
    assert!(dest(&http[0]).ends_with("-canary"));
    assert_eq!(
        only_header(&http[1]),
        (mirror_header.to_string(), MIRROR_HEADER_VALUE.to_string())
    );
    assert!(dest(&http[1]).ends_with("-primary"));
    assert_eq!(http[1]["mirror"]["host"].as_str().unwrap(), dest(&http[0]));
    assert!(
        http[2].get("match").is_none(),
        "the default route must match everything"
    );
    assert!(dest(&http[2]).ends_with("-primary"));
}

/// The example's Canary is the seed's (Flagger's Istio tutorial), unchanged but for
/// `analysis.sessionAffinity`: the example shows a sticky release.
#[test]
fn example_canary_is_the_seed_with_session_affinity() {
    let example = read_docs(&manifests().join("examples/podinfo/canary.yaml"));
    let seed = read_docs(&repo().join("controller/tests/data/seed-canary.yaml"));
    assert_eq!(example.len(), 1);
    let mut without_affinity = example[0].value.clone();
    let affinity = without_affinity["spec"]["analysis"]
        .as_object_mut()
        .unwrap()
        .remove("sessionAffinity")
        .expect("the example Canary has no analysis.sessionAffinity");
    assert_eq!(
        affinity,
        json!({ "cookieName": "flagger-cookie", "maxAge": 21600 })
    );
    assert_eq!(without_affinity, seed[0].value);
}

/// The example's cookie is signed: the route it renders has session affinity, and the
/// WasmPlugin that serves it reads signing keys, which the gateway takes from a Secret
/// (`cookie_keys_flow_from_secret_to_gateway_to_filter`).
#[test]
fn the_example_release_is_sticky_with_signed_cookies() {
    let plugin = kustomize(&manifests().join("examples/podinfo"))
        .into_iter()
        .find(|d| d.kind() == "WasmPlugin")
        .unwrap();
    let cfg = parse_plugin_config(
        serde_json::to_string(&plugin.value["spec"]["pluginConfig"])
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let signing = cfg
        .cookie_signing
        .expect("the example's cookies are not signed");
    assert_eq!(signing.keys_env.as_deref(), Some("VEER_COOKIE_KEYS"));
    let table = cfg.table.expect("the example WasmPlugin has no table");
    let route = table
        .routes
        .iter()
        .find(|r| r.name == "test/podinfo")
        .unwrap();
    let affinity = route
        .session_affinity
        .as_ref()
        .expect("the example route has no session affinity");
    assert_eq!(affinity.cookie_name, "flagger-cookie");
    assert_eq!(affinity.max_age, 21600);
}

// ---------------------------------------------------------------------------------------
// `veer render` for the seed example

const EXAMPLE_CANARY: &str = "manifests/examples/podinfo/canary.yaml";

fn rendered_seed() -> Vec<Doc> {
    let set = load_file(&repo().join(EXAMPLE_CANARY), &LoadOptions::default());
    let errors: Vec<_> = set.errors().collect();
    assert!(errors.is_empty(), "{EXAMPLE_CANARY}: {errors:?}");
    assert_eq!(set.canaries.len(), 1);
    let text = render(&set.canaries[0], &RenderOptions::default()).unwrap();
    let docs = parse_docs(&format!("veer render {EXAMPLE_CANARY}"), &text);
    assert_eq!(docs.len(), 7, "{text}");
    docs
}

#[test]
fn veer_render_output_for_the_seed_is_valid() {
    let docs = rendered_seed();
    assert_valid("veer render", &docs);
    let vs: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "VirtualService")
        .collect();
    assert_header_routes(vs[0], DEFAULT_ROUTE_HEADER, DEFAULT_MIRROR_HEADER);
}

/// The example is exactly what `veer render` prints (after kustomize applies the table patch
/// to the base WasmPlugin), so the two cannot drift apart.
#[test]
fn the_example_is_what_veer_render_prints() {
    let built = kustomize(&manifests().join("examples/podinfo"));
    for doc in rendered_seed() {
        let twin = built
            .iter()
            .find(|b| b.id() == doc.id())
            .unwrap_or_else(|| panic!("{:?} is rendered but not in the example", doc.id()));
        assert_eq!(
            doc.value,
            twin.value,
            "{:?} differs.\nveer render:\n{}\nexample:\n{}",
            doc.id(),
            serde_norway::to_string(&doc.value).unwrap(),
            serde_norway::to_string(&twin.value).unwrap()
        );
    }
}

/// The base WasmPlugin is the rendered one without a table: render's defaults are the base's
/// values, and applying render output updates the base plugin rather than adding one.
#[test]
fn the_base_wasmplugin_is_render_without_a_table() {
    let mut rendered = rendered_seed()
        .into_iter()
        .find(|d| d.kind() == "WasmPlugin")
        .unwrap();
    rendered.value["spec"]["pluginConfig"]
        .as_object_mut()
        .unwrap()
        .remove("table")
        .unwrap();
    assert_eq!(wasmplugin().value, rendered.value);
}

/// The Gateway API base WasmPlugin is `veer render` of the Gateway API example without its
/// table: the same plugin bound by `targetRefs` to the example's Gateway.
#[test]
fn the_gateway_api_wasmplugin_is_render_without_a_table() {
    let canary = "manifests/examples/podinfo-gateway-api/canary.yaml";
    let set = load_file(&repo().join(canary), &LoadOptions::default());
    assert!(set.errors().next().is_none(), "{:?}", set.problems);
    let text = render(&set.canaries[0], &RenderOptions::default()).unwrap();
    let docs = parse_docs(&format!("veer render {canary}"), &text);
    assert_valid("veer render (Gateway API)", &docs);
    let mut rendered = docs.into_iter().find(|d| d.kind() == "WasmPlugin").unwrap();
    rendered.value["spec"]["pluginConfig"]
        .as_object_mut()
        .unwrap()
        .remove("table")
        .unwrap();
    let base = read_docs(&manifests().join("gateway-api/wasmplugin.yaml")).remove(0);
    assert_eq!(base.value, rendered.value);
    let gateway = read_docs(&manifests().join("gateway-api/gateway.yaml")).remove(0);
    assert_eq!(
        rendered.value["spec"]["targetRefs"][0]["name"],
        gateway.value["metadata"]["name"]
    );
}

// ---------------------------------------------------------------------------------------
// The real filter in real Envoy (1.40, V8): `envoy --mode validate` builds every filter
// config, which starts the Wasm VM and runs the filter's on_configure.

/// The Envoy binary and the release build of the filter (as Istio would pull it from the OCI
/// image), found as every test finds them; a filter build older than its sources is refused.
fn envoy() -> PathBuf {
    veer_testkit::tools::envoy_binary().unwrap_or_else(|e| panic!("{e}"))
}

fn filter_wasm() -> PathBuf {
    veer_testkit::tools::filter_wasm().unwrap_or_else(|e| panic!("{e}"))
}

/// The Envoy HTTP filter Istio generates for a WasmPlugin: `pluginConfig` as a JSON string,
/// `vmConfig.env` with `valueFrom: HOST` as host environment keys, FAIL_OPEN as fail_open.
fn istio_filter_for(wasm_plugin: &Doc) -> Value {
    let spec = &wasm_plugin.value["spec"];
    let host_env: Vec<&Value> = spec["vmConfig"]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["valueFrom"] == "HOST")
        .map(|e| &e["name"])
        .collect();
    json!({
        "name": wasm_plugin.name(),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": wasm_plugin.name(),
                "fail_open": spec["failStrategy"] == "FAIL_OPEN",
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": "WASM" } },
                    "environment_variables": { "host_env_keys": host_env },
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": spec["pluginConfig"].to_string(),
                },
            },
        },
    })
}

/// The HTTP filter an EnvoyFilter inserts, as written.
fn envoyfilter_filter(doc: &Doc) -> Value {
    doc.value["spec"]["configPatches"][0]["patch"]["value"].clone()
}

/// A gateway bootstrap with one listener per filter (each before the router) and the
/// controller's cluster as istiod names it. Returns Envoy's verdict and its log.
fn envoy_validate(filters: &[(String, Value)], stats_config: Option<&Value>) -> (bool, String) {
    let wasm = filter_wasm();
    let controller_cluster = "outbound|8080||veer-controller.veer-system.svc.cluster.local";
    let listeners: Vec<Value> = filters
        .iter()
        .enumerate()
        .map(|(i, (origin, filter))| {
            let mut filter = filter.clone();
            filter["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] =
                json!(wasm.display().to_string());
            json!({
                "name": format!("gateway-{i} ({origin})"),
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": format!("gateway_{i}"),
                        "route_config": { "virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{ "match": { "prefix": "/" },
                                         "route": { "cluster": controller_cluster } }],
                        }]},
                        "http_filters": [filter, {
                            "name": "envoy.filters.http.router",
                            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                        }],
                    },
                }]}],
            })
        })
        .collect();
    let mut bootstrap = json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": listeners,
            "clusters": [{
                "name": controller_cluster,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": { "cluster_name": controller_cluster, "endpoints": [{ "lb_endpoints": [{
                    "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 8080 } } },
                }]}]},
            }],
        },
    });
    if let Some(stats) = stats_config {
        bootstrap["stats_config"] = stats.clone();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    let out = veer_testkit::process::die_with_parent(&mut Command::new(envoy()))
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        // What the gateway patch feeds from the veer-cookie-keys Secret: a 32-byte key.
        .env(
            "VEER_COOKIE_KEYS",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .output()
        .unwrap();
    let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), log)
}

/// Every filter configuration veer ships or prints: the base WasmPlugin, the example's
/// (with its table), `veer render`'s, and the EnvoyFilter's.
fn all_filter_configs() -> Vec<(String, Value)> {
    let mut filters = Vec::new();
    let base = wasmplugin();
    filters.push((base.origin.clone(), istio_filter_for(&base)));
    for doc in kustomize(&manifests().join("examples/podinfo")) {
        if doc.kind() == "WasmPlugin" {
            filters.push((doc.origin.clone(), istio_filter_for(&doc)));
        }
    }
    for doc in rendered_seed() {
        if doc.kind() == "WasmPlugin" {
            filters.push((doc.origin.clone(), istio_filter_for(&doc)));
        }
    }
    let ef = read_docs(&manifests().join("istio/envoyfilter/envoyfilter.yaml")).remove(0);
    filters.push((ef.origin.clone(), envoyfilter_filter(&ef)));
    filters
}

#[test]
fn every_filter_config_loads_in_real_envoy_with_the_real_filter() {
    let filters = all_filter_configs();
    assert_eq!(filters.len(), 4);
    let (ok, log) = envoy_validate(&filters, None);
    assert!(ok, "Envoy rejected a veer filter configuration:\n{log}");
}

#[test]
fn real_envoy_rejects_a_plugin_config_the_filter_refuses() {
    let mut doc = wasmplugin();
    doc.value["spec"]["pluginConfig"]["routeHeadr"] = json!("x-typo");
    let (ok, log) = envoy_validate(&[(doc.origin.clone(), istio_filter_for(&doc))], None);
    assert!(!ok, "Envoy accepted a config with an unknown field:\n{log}");
    assert!(
        log.contains("routeHeadr"),
        "the filter's log must name the field:\n{log}"
    );
}

/// The gateway's bootstrap override: its tag rules are the ones the end-to-end gateway runs
/// with, and Envoy accepts them next to Istio's `use_all_default_tags: false`.
#[test]
fn gateway_bootstrap_override_is_the_tested_tag_extraction_and_envoy_accepts_it() {
    let cm = read_docs(&manifests().join("istio/gateway/bootstrap-configmap.yaml")).remove(0);
    let custom: Value =
        serde_json::from_str(cm.value["data"]["custom_bootstrap.json"].as_str().unwrap()).unwrap();
    let tags = custom["stats_config"]["stats_tags"].as_array().unwrap();

    let local = std::fs::read_to_string(manifests().join("local/gateway.yaml")).unwrap();
    // The local gateway is a template with ${NAME} placeholders; stats_config has none.
    let mut without_placeholders = String::new();
    let mut rest = local.as_str();
    while let Some(start) = rest.find("${") {
        without_placeholders.push_str(&rest[..start]);
        without_placeholders.push('0');
        rest = &rest[start + rest[start..].find('}').unwrap() + 1..];
    }
    without_placeholders.push_str(rest);
    let local = parse_docs("manifests/local/gateway.yaml", &without_placeholders).remove(0);
    let local_veer_tags: Vec<&Value> = local.value["stats_config"]["stats_tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["tag_name"].as_str().unwrap().starts_with("veer_"))
        .collect();
    assert_eq!(local_veer_tags.len(), 4);
    assert_eq!(tags.iter().collect::<Vec<_>>(), local_veer_tags);

    let stats = json!({ "use_all_default_tags": false, "stats_tags": tags });
    let (ok, log) = envoy_validate(&[], Some(&stats));
    assert!(
        ok,
        "Envoy rejected the bootstrap override's stats_tags:\n{log}"
    );

    let broken = json!({ "use_all_default_tags": false,
                         "stats_tags": [{ "tag_name": "veer_route", "regex": "([" }] });
    let (ok, log) = envoy_validate(&[], Some(&broken));
    assert!(!ok, "Envoy accepted a broken regex:\n{log}");
}

// ---------------------------------------------------------------------------------------
// Negative checks: the validators above really reject broken documents.

fn wasmplugin() -> Doc {
    read_docs(&manifests().join("istio/filter/wasmplugin.yaml")).remove(0)
}

#[test]
fn a_wrong_fail_strategy_fails_the_wasmplugin_schema() {
    let mut doc = wasmplugin();
    doc.value["spec"]["failStrategy"] = json!("FAIL_SOMETIMES");
    let problems = validate_docs(&[doc], &mut CrdSchemas::load());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("/spec/failStrategy") && problems[0].contains("FAIL_SOMETIMES"),
        "{problems:?}"
    );
}

#[test]
fn a_misspelt_virtualservice_field_fails_the_schema() {
    let mut doc = read_docs(&manifests().join("examples/podinfo/virtualservice.yaml")).remove(0);
    doc.value["spec"]["http"][0]["retries"]["attemps"] = json!(3);
    let problems = validate_docs(&[doc], &mut CrdSchemas::load());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("attemps"), "{problems:?}");
}

#[test]
fn a_weight_over_10000_in_plugin_config_is_rejected_by_the_filter() {
    let mut doc = wasmplugin();
    doc.value["spec"]["pluginConfig"]["table"] = json!({
        "generation": 1,
        "routes": [{ "name": "test/podinfo", "hosts": ["app.example.com"], "weight": 10001 }]
    });
    // The real filter in real Envoy refuses it, naming the field.
    let (ok, log) = envoy_validate(&[(doc.origin.clone(), istio_filter_for(&doc))], None);
    assert!(!ok, "Envoy accepted a weight of 10001:\n{log}");
    assert_rejection_line(
        &log,
        "route \"test/podinfo\": table.routes[0].weight: must be between 0 and 10000 basis points, got 10001",
    );
    // The CRD schema accepts any pluginConfig; only the filter's own check catches it, and
    // the manifest check runs that same check in process.
    let problems = validate_docs(&[doc], &mut CrdSchemas::load());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("rejected by the filter") && problems[0].contains("weight"),
        "{problems:?}"
    );
}

/// Envoy's log has the filter's rejection line, and it carries `want`.
fn assert_rejection_line(log: &str, want: &str) {
    let line = log
        .lines()
        .find(|l| l.contains("invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no rejection line in Envoy's log:\n{log}"));
    assert!(line.contains(want), "{want:?} not in {line:?}");
}

#[test]
fn an_unknown_plugin_config_field_in_the_envoyfilter_is_rejected_by_the_filter() {
    let mut doc = read_docs(&manifests().join("istio/envoyfilter/envoyfilter.yaml")).remove(0);
    let cfg = &mut doc.value["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
        ["config"]["configuration"]["value"];
    let mut parsed: Value = serde_json::from_str(cfg.as_str().unwrap()).unwrap();
    parsed["routeHeadr"] = json!("x-typo");
    *cfg = json!(parsed.to_string());
    // The EnvoyFilter's HTTP filter, as written, with the real filter in real Envoy.
    let (ok, log) = envoy_validate(&[(doc.origin.clone(), envoyfilter_filter(&doc))], None);
    assert!(!ok, "Envoy accepted an unknown pluginConfig field:\n{log}");
    assert_rejection_line(&log, "routeHeadr: unknown field");
    let problems = validate_docs(&[doc], &mut CrdSchemas::load());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("routeHeadr"), "{problems:?}");
}

#[test]
fn kubernetes_validate_rejects_a_broken_deployment_and_names_its_origin() {
    // kubernetes-validate reports the first error of a document, so one fault per document.
    let mut wrong_type = read_docs(&manifests().join("istio/controller/deployment.yaml")).remove(0);
    wrong_type.value["spec"]["replicas"] = json!("one");
    let mut unknown_field = read_docs(&manifests().join("istio/controller/service.yaml")).remove(0);
    unknown_field.value["spec"]["ports"][0]["targetPortt"] = json!(8080);
    let problems = validate_docs(&[wrong_type, unknown_field], &mut CrdSchemas::load());
    let text = problems.join("\n");
    assert_eq!(
        problems.len(),
        2,
        "one report per Kubernetes version: {text}"
    );
    assert!(text.contains("spec.replicas"), "{text}");
    assert!(
        text.contains("targetPortt"),
        "--strict must reject unknown fields: {text}"
    );
    assert!(text.contains("istio/controller/deployment.yaml"), "{text}");
    assert!(text.contains("istio/controller/service.yaml"), "{text}");
}

#[test]
fn a_kind_without_a_schema_is_an_error_not_a_pass() {
    let doc = parse_docs(
        "inline",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: n}\n",
    );
    let problems = validate_docs(&doc, &mut CrdSchemas::load());
    assert_eq!(problems.len(), 1);
    assert!(problems[0].contains("no schema"), "{problems:?}");
}

#[test]
fn a_document_without_a_name_is_an_error() {
    let mut doc = wasmplugin();
    doc.value["metadata"] = json!({ "namespace": "istio-system" });
    let problems = validate_docs(&[doc], &mut CrdSchemas::load());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("metadata.name"));
}

/// Kubernetes mode's controller: `--kubernetes`, its ServiceAccount's token mounted, the
/// shipped ClusterRole bound to that account (the e2e tests run the controller with that
/// role's token; tests/tests/kubernetes.rs takes a verb out to show each one is needed),
/// and the Lease namespace from the downward API.
#[test]
fn kubernetes_mode_controller_runs_as_the_bound_service_account() {
    let docs = kustomize(&manifests().join("kubernetes"));
    let deploy = docs
        .iter()
        .find(|d| d.kind() == "Deployment" && d.name() == "veer-controller")
        .unwrap();
    let pod = &deploy.value["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--kubernetes"), "{args:?}");
    assert!(!args
        .iter()
        .any(|a| a.starts_with("--state") || a.starts_with("--canaries")));
    let account = pod["serviceAccountName"].as_str().unwrap();
    assert_ne!(pod["automountServiceAccountToken"], false);
    let sa = docs.iter().find(|d| d.kind() == "ServiceAccount").unwrap();
    assert_eq!(sa.name(), account);
    assert_ne!(sa.value["automountServiceAccountToken"], false);
    let binding = docs
        .iter()
        .find(|d| d.kind() == "ClusterRoleBinding")
        .unwrap();
    assert_eq!(binding.value["subjects"][0]["name"], account);
    assert_eq!(
        binding.value["subjects"][0]["namespace"],
        deploy.value["metadata"]["namespace"]
    );
    let role = docs.iter().find(|d| d.kind() == "ClusterRole").unwrap();
    assert_eq!(binding.value["roleRef"]["name"], role.name());
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "POD_NAMESPACE"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"));
    // Nothing in the role deletes: owned objects go with their Canary by garbage collection.
    for rule in role.value["rules"].as_array().unwrap() {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            !verbs.contains(&"delete") && !verbs.contains(&"*"),
            "{rule}"
        );
    }
}
