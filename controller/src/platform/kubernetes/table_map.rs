//! The routing table every replica serves: the leader writes each table it publishes into
//! the ConfigMap `veer-routing-table` (in the controller's namespace) before serving it,
//! and every other replica serves what that ConfigMap holds.
//!
//! - One generation is one table, whichever replica answers a gateway: a follower serves
//!   the leader's table with the leader's generation, byte for byte the same routes.
//! - The generation never goes back: a new leader reads the ConfigMap first and publishes
//!   above it, across restarts and failovers.
//! - Every write carries the `resourceVersion` of the last write this replica made (or
//!   read), so a replica that lost the leadership without noticing (paused, partitioned)
//!   cannot overwrite its successor's table: the API server answers 409 and nothing is
//!   served.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use veer_core::RoutingTable;

use crate::serve::table_hub::{PublishedTable, TableHub};

/// The ConfigMap's name.
pub const TABLE_CONFIGMAP: &str = "veer-routing-table";
/// The table, exactly as `GET /v1/table` serves it.
const TABLE_KEY: &str = "table.json";
/// The generation again, for `kubectl get configmap veer-routing-table -o yaml` readers.
const GENERATION_KEY: &str = "generation";
/// A ConfigMap holds at most 1 MiB; leave room for the metadata.
const MAX_TABLE_BYTES: usize = 1000 * 1024;

/// The ConfigMap, as one replica reads and writes it.
pub struct TableMap {
    api: Api<ConfigMap>,
    namespace: String,
    /// The resourceVersion of the last version this replica read or wrote: `None` when
    /// the ConfigMap did not exist.
    version: Mutex<Option<String>>,
}

impl TableMap {
    pub fn new(client: Client, namespace: &str) -> TableMap {
        TableMap {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            version: Mutex::new(None),
        }
    }

    fn name(&self) -> String {
        format!("ConfigMap {}/{TABLE_CONFIGMAP}", self.namespace)
    }

    /// The stored table (`None` before the first), remembering its version for the next
    /// write.
    pub async fn read(&self) -> Result<Option<RoutingTable>, String> {
        let found = self
            .api
            .get_opt(TABLE_CONFIGMAP)
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.name()))?;
        let table = match &found {
            Some(map) => Some(decode(map).map_err(|e| format!("{}: {e}", self.name()))?),
            None => None,
        };
        *self.version.lock().unwrap_or_else(|p| p.into_inner()) =
            found.and_then(|m| m.metadata.resource_version);
        Ok(table)
    }

    /// Stores `table` over the version last read or written; a conflict means another
    /// replica wrote since, so this one is not the leader any more.
    pub async fn write(&self, table: &PublishedTable) -> Result<(), String> {
        let json = table.json();
        if json.len() > MAX_TABLE_BYTES {
            return Err(format!(
                "the routing table (generation {}, {} routes) is {} bytes, more than a ConfigMap holds ({MAX_TABLE_BYTES}): \
                 split the Canaries between controllers with --namespace or --selector",
                table.table().generation,
                table.table().routes.len(),
                json.len()
            ));
        }
        let text = std::str::from_utf8(json)
            .map_err(|e| format!("the routing table is not UTF-8 JSON: {e}"))?;
        let previous = self
            .version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(TABLE_CONFIGMAP.into()),
                resource_version: previous.clone(),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "veer".to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(
                [
                    (TABLE_KEY.to_string(), text.to_string()),
                    (
                        GENERATION_KEY.to_string(),
                        table.table().generation.to_string(),
                    ),
                ]
                .into(),
            ),
            ..ConfigMap::default()
        };
        let params = PostParams {
            field_manager: Some(super::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let written = match previous {
            None => self.api.create(&params, &map).await,
            Some(_) => self.api.replace(TABLE_CONFIGMAP, &params, &map).await,
        };
        match written {
            Ok(written) => {
                *self.version.lock().unwrap_or_else(|p| p.into_inner()) =
                    written.metadata.resource_version;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(format!(
                "{} was written by another replica since this one last wrote it: this replica is not the leader; \
                 table generation {} is not served",
                self.name(),
                table.table().generation
            )),
            Err(e) => Err(format!(
                "cannot write table generation {} to {}: {e}",
                table.table().generation,
                self.name()
            )),
        }
    }

    /// Serves every newer table the ConfigMap holds on `hub`, until `stop` turns true.
    pub async fn follow(&self, hub: Arc<TableHub>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={TABLE_CONFIGMAP}"));
        let mut events = std::pin::pin!(watcher(self.api.clone(), config).default_backoff());
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = super::until_stopped(&mut stop) => return,
            };
            let map = match event {
                Some(Ok(watcher::Event::Apply(map) | watcher::Event::InitApply(map))) => map,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching {} (retrying with backoff)", self.name());
                    continue;
                }
                None => return,
            };
            match decode(&map) {
                Ok(table) => {
                    let generation = table.generation;
                    match hub.adopt(table) {
                        Ok(true) => tracing::debug!(generation, "serving the leader's table"),
                        Ok(false) => {}
                        Err(e) => tracing::error!(error = %e, "cannot serve the leader's table"),
                    }
                }
                Err(e) => tracing::error!(
                    "{}: {e}; still serving generation {}",
                    self.name(),
                    hub.generation()
                ),
            }
        }
    }
}

fn decode(map: &ConfigMap) -> Result<RoutingTable, String> {
    let text = map
        .data
        .as_ref()
        .and_then(|d| d.get(TABLE_KEY))
        .ok_or_else(|| format!("no data.{TABLE_KEY}"))?;
    serde_json::from_str(text).map_err(|e| format!("data.{TABLE_KEY} is not a routing table: {e}"))
}
