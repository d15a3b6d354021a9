#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The CRDs veer ships (`manifests/crds/flagger.app.yaml`) are what `veer crds` generates
//! from the controller's types, and they accept every field of Flagger's own CRDs, so a
//! Canary written for Flagger is never pruned or refused by veer's schema.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use veer_controller::platform::kubernetes::crd::crds_yaml;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn the_shipped_crds_are_the_generated_ones() {
    let shipped = std::fs::read_to_string(root().join("manifests/crds/flagger.app.yaml")).unwrap();
    assert!(
        shipped == crds_yaml().unwrap(),
        "manifests/crds/flagger.app.yaml is stale: regenerate it with `cargo run -p veer-controller -- crds > manifests/crds/flagger.app.yaml`"
    );
}

fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| {
            let v: serde_norway::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn schema<'a>(crds: &'a [Value], name: &str) -> &'a Value {
    let crd = crds
        .iter()
        .find(|c| c["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no CRD {name}"));
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// Every field path of a schema (`spec.analysis.metrics[].name`).
fn paths(node: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = node["properties"].as_object() {
        for (key, child) in props {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            out.insert(path.clone());
            paths(child, &path, out);
        }
    }
    if node["items"].is_object() {
        paths(&node["items"], &format!("{prefix}[]"), out);
    }
}

/// Whether `path` is accepted by `schema`: declared, or inside an object that keeps
/// unknown fields.
fn accepts(schema: &Value, path: &str) -> bool {
    let mut node = schema;
    for part in path.split('.') {
        let (key, arrays) = (part.trim_end_matches("[]"), part.matches("[]").count());
        if node["x-kubernetes-preserve-unknown-fields"] == true {
            return true;
        }
        let Some(child) = node["properties"].get(key) else {
            return false;
        };
        node = child;
        for _ in 0..arrays {
            if node["x-kubernetes-preserve-unknown-fields"] == true {
                return true;
            }
            node = &node["items"];
        }
    }
    true
}

#[test]
fn veer_accepts_every_field_of_flaggers_crds() {
    let flagger = root().join("../shared/crds/flagger-crds.yaml");
    let Ok(text) = std::fs::read_to_string(&flagger) else {
        // Flagger's CRD is reference material beside developers' and CI's checkouts, not
        // part of the repository.
        eprintln!("{} is not here; nothing to compare with", flagger.display());
        return;
    };
    let flagger = docs(&text);
    let veer = docs(&crds_yaml().unwrap());
    let mut missing = Vec::new();
    for name in ["canaries.flagger.app", "metrictemplates.flagger.app"] {
        let mut all = BTreeSet::new();
        paths(schema(&flagger, name), "", &mut all);
        // apiVersion, kind and metadata are the API server's own, in every CRD.
        for path in all
            .into_iter()
            .filter(|p| p.starts_with("spec") || p.starts_with("status"))
        {
            if !accepts(schema(&veer, name), &path) {
                missing.push(format!("{name}: {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "fields of Flagger's CRDs that veer's refuse or prune:\n{}",
        missing.join("\n")
    );
}
