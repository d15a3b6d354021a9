//! What makes a new revision of a Deployment, as Flagger sees it: its pod template, and the
//! data of the ConfigMaps and Secrets that template references ("tracked configs"). Pure:
//! objects in, hashes and rewritten templates out.
//!
//! The revision string veer keeps (`status.lastAppliedSpec`) hashes both together, so a
//! ConfigMap change alone starts a run, as Flagger's config tracker does. veer's hash is a
//! SHA-256 prefix, not Flagger's FNV of Go's `%#v`: a Canary moved from Flagger starts one
//! run on its first revision check (Flagger has the same effect when its hash input
//! changes between versions).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Secret};
use sha2::{Digest, Sha256};

/// Annotation that opts a ConfigMap or Secret out of tracking (Flagger's).
pub const CONFIG_TRACKING_ANNOTATION: &str = "flagger.app/config-tracking";

/// Secret types Flagger tracks; others (service account tokens, docker configs) are not
/// copied to `-primary`.
const TRACKED_SECRET_TYPES: [&str; 4] = [
    "Opaque",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
    "kubernetes.io/tls",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

impl ConfigKind {
    /// The key prefix in `status.trackedConfigs`, as Flagger writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::ConfigMap => "configmap",
            ConfigKind::Secret => "secret",
        }
    }
}

/// A ConfigMap or Secret the pod template references by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigRef {
    pub kind: ConfigKind,
    pub name: String,
}

/// Every ConfigMap and Secret the template references: volumes (also projected), env
/// `valueFrom` and `envFrom`, in containers and init containers.
pub fn config_refs(template: &PodTemplateSpec) -> BTreeSet<ConfigRef> {
    let mut refs = BTreeSet::new();
    let Some(pod) = &template.spec else {
        return refs;
    };
    let mut add = |kind, name: Option<&String>| {
        if let Some(name) = name {
            refs.insert(ConfigRef {
                kind,
                name: name.clone(),
            });
        }
    };
    for volume in pod.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            add(ConfigKind::ConfigMap, Some(&cm.name));
        }
        if let Some(secret) = &volume.secret {
            add(ConfigKind::Secret, secret.secret_name.as_ref());
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(cm) = &source.config_map {
                add(ConfigKind::ConfigMap, Some(&cm.name));
            }
            if let Some(secret) = &source.secret {
                add(ConfigKind::Secret, Some(&secret.name));
            }
        }
    }
    for container in containers(pod) {
        for env in container.env.iter().flatten() {
            if let Some(from) = &env.value_from {
                if let Some(cm) = &from.config_map_key_ref {
                    add(ConfigKind::ConfigMap, Some(&cm.name));
                }
                if let Some(secret) = &from.secret_key_ref {
                    add(ConfigKind::Secret, Some(&secret.name));
                }
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(cm) = &from.config_map_ref {
                add(ConfigKind::ConfigMap, Some(&cm.name));
            }
            if let Some(secret) = &from.secret_ref {
                add(ConfigKind::Secret, Some(&secret.name));
            }
        }
    }
    refs
}

fn containers(pod: &PodSpec) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Container> {
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
}

/// A referenced config as found in the cluster.
#[derive(Debug, Clone)]
pub enum FoundConfig {
    ConfigMap(Arc<ConfigMap>),
    Secret(Arc<Secret>),
}

/// Whether a found config is tracked: not opted out, and (for Secrets) of a tracked type.
pub fn is_tracked(found: &FoundConfig) -> bool {
    let (meta, secret_type) = match found {
        FoundConfig::ConfigMap(cm) => (&cm.metadata, None),
        FoundConfig::Secret(s) => (&s.metadata, Some(s.type_.as_deref().unwrap_or("Opaque"))),
    };
    let disabled = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_TRACKING_ANNOTATION))
        .is_some_and(|v| v.starts_with("disable"));
    !disabled && secret_type.is_none_or(|t| TRACKED_SECRET_TYPES.contains(&t))
}

/// `status.trackedConfigs`: `configmap/<name>` or `secret/<name>` to a hash of its data.
/// Configs that do not exist (yet) are left out: the pod cannot start without them, and
/// their appearance is a change like any other.
pub fn tracked_configs(
    refs: &BTreeSet<ConfigRef>,
    lookup: impl Fn(&ConfigRef) -> Option<FoundConfig>,
) -> BTreeMap<String, String> {
    let mut tracked = BTreeMap::new();
    for r in refs {
        let Some(found) = lookup(r) else { continue };
        if !is_tracked(&found) {
            continue;
        }
        let data = match found {
            FoundConfig::ConfigMap(cm) => serde_json::to_vec(&(&cm.data, &cm.binary_data)),
            FoundConfig::Secret(s) => serde_json::to_vec(&(&s.data, &s.string_data)),
        }
        .unwrap_or_default();
        tracked.insert(
            format!("{}/{}", r.kind.as_str(), r.name),
            short_hash(&[&data]),
        );
    }
    tracked
}

/// The revision of a target: its pod template and its tracked configs.
pub fn revision(template: &PodTemplateSpec, tracked: &BTreeMap<String, String>) -> String {
    let template = serde_json::to_vec(template).unwrap_or_default();
    let tracked = serde_json::to_vec(tracked).unwrap_or_default();
    short_hash(&[&template, b"\n", &tracked])
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The name a tracked config has in the primary's copy.
pub fn primary_config_name(name: &str) -> String {
    format!("{name}-primary")
}

/// The canary's pod template as the primary runs it: the selector label takes the
/// primary's value, and every reference to a tracked config points at its `-primary` copy.
pub fn primary_template(
    template: &PodTemplateSpec,
    selector_key: &str,
    primary_value: &str,
    tracked: &BTreeSet<ConfigRef>,
) -> PodTemplateSpec {
    let mut t = template.clone();
    t.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(selector_key.to_string(), primary_value.to_string());
    let Some(pod) = t.spec.as_mut() else { return t };
    let rename = |kind: ConfigKind, name: &mut String| {
        if tracked.contains(&ConfigRef {
            kind,
            name: name.clone(),
        }) {
            *name = primary_config_name(name);
        }
    };
    for volume in pod.volumes.iter_mut().flatten() {
        if let Some(cm) = volume.config_map.as_mut() {
            rename(ConfigKind::ConfigMap, &mut cm.name);
        }
        if let Some(name) = volume.secret.as_mut().and_then(|s| s.secret_name.as_mut()) {
            rename(ConfigKind::Secret, name);
        }
        for source in volume
            .projected
            .iter_mut()
            .flat_map(|p| p.sources.iter_mut().flatten())
        {
            if let Some(cm) = source.config_map.as_mut() {
                rename(ConfigKind::ConfigMap, &mut cm.name);
            }
            if let Some(secret) = source.secret.as_mut() {
                rename(ConfigKind::Secret, &mut secret.name);
            }
        }
    }
    let containers = pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten());
    for container in containers {
        for env in container.env.iter_mut().flatten() {
            if let Some(from) = env.value_from.as_mut() {
                if let Some(cm) = from.config_map_key_ref.as_mut() {
                    rename(ConfigKind::ConfigMap, &mut cm.name);
                }
                if let Some(secret) = from.secret_key_ref.as_mut() {
                    rename(ConfigKind::Secret, &mut secret.name);
                }
            }
        }
        for from in container.env_from.iter_mut().flatten() {
            if let Some(cm) = from.config_map_ref.as_mut() {
                rename(ConfigKind::ConfigMap, &mut cm.name);
            }
            if let Some(secret) = from.secret_ref.as_mut() {
                rename(ConfigKind::Secret, &mut secret.name);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> PodTemplateSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    const APP: &str = "
metadata:
  labels: {app: podinfo}
spec:
  containers:
    - name: app
      image: podinfo:6.0.0
      env:
        - name: A
          valueFrom: {configMapKeyRef: {name: settings, key: a}}
        - name: B
          valueFrom: {secretKeyRef: {name: creds, key: b}}
      envFrom:
        - configMapRef: {name: env-cm}
  volumes:
    - name: v
      configMap: {name: files}
    - name: p
      projected:
        sources:
          - secret: {name: projected-secret}
";

    #[test]
    fn every_kind_of_reference_is_found_and_rewritten() {
        let t = template(APP);
        let refs = config_refs(&t);
        let names: Vec<String> = refs
            .iter()
            .map(|r| format!("{}/{}", r.kind.as_str(), r.name))
            .collect();
        assert_eq!(
            names,
            [
                "configmap/env-cm",
                "configmap/files",
                "configmap/settings",
                "secret/creds",
                "secret/projected-secret"
            ]
        );
        let primary = primary_template(&t, "app", "podinfo-primary", &refs);
        let yaml = serde_norway::to_string(&primary).unwrap();
        for name in ["env-cm", "files", "settings", "creds", "projected-secret"] {
            assert!(yaml.contains(&format!("{name}-primary")), "{name}: {yaml}");
        }
        assert!(yaml.contains("app: podinfo-primary"), "{yaml}");
    }

    #[test]
    fn a_config_change_alone_is_a_new_revision() {
        let t = template(APP);
        let refs = config_refs(&t);
        let mut cm: ConfigMap =
            serde_norway::from_str("metadata: {name: settings}\ndata: {a: '1'}").unwrap();
        let before = tracked_configs(&refs, |r| {
            (r.name == "settings").then(|| FoundConfig::ConfigMap(Arc::new(cm.clone())))
        });
        assert_eq!(before.keys().collect::<Vec<_>>(), ["configmap/settings"]);
        let rev_before = revision(&t, &before);
        cm.data = Some(BTreeMap::from([("a".to_string(), "2".to_string())]));
        let after = tracked_configs(&refs, |r| {
            (r.name == "settings").then(|| FoundConfig::ConfigMap(Arc::new(cm.clone())))
        });
        assert_ne!(before, after);
        assert_ne!(rev_before, revision(&t, &after));
        assert_eq!(rev_before.len(), 16);
    }

    #[test]
    fn opted_out_configs_and_service_account_tokens_are_not_tracked() {
        let opted_out: ConfigMap = serde_norway::from_str(
            "metadata: {name: c, annotations: {flagger.app/config-tracking: disabled}}",
        )
        .unwrap();
        assert!(!is_tracked(&FoundConfig::ConfigMap(Arc::new(opted_out))));
        let token: Secret = serde_norway::from_str(
            "metadata: {name: s}\ntype: kubernetes.io/service-account-token",
        )
        .unwrap();
        assert!(!is_tracked(&FoundConfig::Secret(Arc::new(token))));
        let tls: Secret =
            serde_norway::from_str("metadata: {name: s}\ntype: kubernetes.io/tls").unwrap();
        assert!(is_tracked(&FoundConfig::Secret(Arc::new(tls))));
    }
}
