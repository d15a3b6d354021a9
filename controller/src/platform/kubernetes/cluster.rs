//! The controller's view of the cluster: watches (kube-rs reflectors) of each kind it reads,
//! one per namespace in scope, each keeping an in-memory store that the reconciler and the readiness gate read without
//! calling the API server. Any change wakes the reconciler.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// Which Canaries this controller runs.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `--namespace`: only these namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// `--selector`: a label selector on Canaries.
    pub selector: Option<String>,
}

/// The Canary kind as Flagger defines it.
pub fn canary_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("flagger.app", "v1beta1", "Canary"),
        "canaries",
    )
}

pub fn metric_template_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("flagger.app", "v1beta1", "MetricTemplate"),
        "metrictemplates",
    )
}

/// One kind's objects in scope: one reflector store per watch (per namespace with
/// `--namespace`, else one over all namespaces). Each watch needs its own store: a store
/// replaces its whole content when its watch (re)lists, so two watches sharing one would
/// erase each other's objects.
#[derive(Clone)]
pub struct Stores<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    stores: Vec<Store<K>>,
}

impl<K: kube::Resource + Clone + 'static> Stores<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    /// Every object, across the watches.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(Store::state).collect()
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.stores.iter().find_map(|store| store.get(key))
    }

    async fn wait_until_ready(&self) -> Result<(), String> {
        for store in &self.stores {
            store.wait_until_ready().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The stores, filled by the watches.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub canaries: Stores<DynamicObject>,
    pub templates: Stores<DynamicObject>,
    pub deployments: Stores<Deployment>,
    pub configmaps: Stores<ConfigMap>,
    pub secrets: Stores<Secret>,
    /// Notified on every change the watches see.
    pub changed: Arc<Notify>,
}

impl Cluster {
    /// Starts the watches (they run until the runtime stops) and waits until every store
    /// has its first full list, so nothing is decided from a half-read cluster.
    pub async fn watch(client: Client, scope: &Scope) -> Result<Cluster, String> {
        let changed = Arc::new(Notify::new());
        let canary_ar = canary_resource();
        let template_ar = metric_template_resource();
        let canaries = watch_dynamic(&client, scope, &canary_ar, scope.selector.clone(), &changed);
        let templates = watch_dynamic(&client, scope, &template_ar, None, &changed);
        let deployments = watch_typed::<Deployment>(&client, scope, &changed);
        let configmaps = watch_typed::<ConfigMap>(&client, scope, &changed);
        let secrets = watch_typed::<Secret>(&client, scope, &changed);
        let ready = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            canaries.wait_until_ready().await?;
            templates.wait_until_ready().await?;
            deployments.wait_until_ready().await?;
            configmaps.wait_until_ready().await?;
            secrets.wait_until_ready().await
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("a watch stopped before its first list: {e}")),
            Err(_) => {
                return Err("the first list of Canaries, MetricTemplates, Deployments, ConfigMaps and Secrets did not complete within 60s: \
                     check the controller's RBAC (its log names the refused request) and that the flagger.app CRDs are installed"
                    .into())
            }
        }
        Ok(Cluster {
            client,
            canaries,
            templates,
            deployments,
            configmaps,
            secrets,
            changed,
        })
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments
            .get(&ObjectRef::new(name).within(namespace))
    }

    pub fn canary(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.canaries
            .get(&ObjectRef::new_with(name, canary_resource()).within(namespace))
    }
}

/// One watch per namespace in scope, or one over all namespaces, feeding one store.
fn streams<K>(
    all: impl Fn() -> Api<K>,
    namespaced: impl Fn(&str) -> Api<K>,
    scope: &Scope,
) -> Vec<Api<K>> {
    if scope.namespaces.is_empty() {
        vec![all()]
    } else {
        scope.namespaces.iter().map(|ns| namespaced(ns)).collect()
    }
}

fn watch_typed<K>(client: &Client, scope: &Scope, changed: &Arc<Notify>) -> Stores<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let apis = streams(
        || Api::<K>::all(client.clone()),
        |ns| Api::<K>::namespaced(client.clone(), ns),
        scope,
    );
    let stores = apis
        .into_iter()
        .map(|api| {
            let writer = reflector::store::Writer::<K>::new(());
            let reader = writer.as_reader();
            let stream = watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .reflect(writer);
            drive(stream, changed.clone(), K::kind(&()).to_string());
            reader
        })
        .collect();
    Stores { stores }
}

fn watch_dynamic(
    client: &Client,
    scope: &Scope,
    resource: &ApiResource,
    selector: Option<String>,
    changed: &Arc<Notify>,
) -> Stores<DynamicObject> {
    let apis = streams(
        || Api::<DynamicObject>::all_with(client.clone(), resource),
        |ns| Api::<DynamicObject>::namespaced_with(client.clone(), ns, resource),
        scope,
    );
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &selector {
        config = config.labels(selector);
    }
    let stores = apis
        .into_iter()
        .map(|api| {
            let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
            let reader = writer.as_reader();
            let stream = watcher(api, config.clone())
                .default_backoff()
                .reflect(writer);
            drive(stream, changed.clone(), resource.kind.clone());
            reader
        })
        .collect();
    Stores { stores }
}

fn drive<S, T>(stream: S, changed: Arc<Notify>, kind: String)
where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind, error = %e, "watch error (retrying with backoff)"),
            }
        }
    });
}
