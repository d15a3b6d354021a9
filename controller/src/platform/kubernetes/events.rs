//! Kubernetes Events on Canaries, the way Flagger records them (core/v1, source component
//! `veer`, reason `Synced`), so `kubectl describe canary` lists every transition with its
//! own message. A message repeated for the same Canary raises that event's count instead of
//! adding an event, as Kubernetes' own event recorder does.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Repeats of one message on one object: the event's name and its count.
type Seen = HashMap<(String, EventType, String), (String, i32)>;

pub struct EventRecorder {
    client: Client,
    instance: String,
    seen: Mutex<Seen>,
}

impl EventRecorder {
    pub fn new(client: Client, instance: String) -> EventRecorder {
        EventRecorder {
            client,
            instance,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub async fn record(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        message: &str,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Time(Timestamp::now());
        let key = (
            regarding.uid.clone().unwrap_or_default(),
            type_,
            message.to_string(),
        );
        let mut seen = self.seen.lock().await;
        if let Some((name, count)) = seen.get_mut(&key) {
            let patched = api
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "count": *count + 1, "lastTimestamp": now })),
                )
                .await;
            if patched.is_ok() {
                *count += 1;
                return Ok(());
            }
            // Expired (events live an hour by default): record it anew.
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or("canary"),
            Timestamp::now().as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: regarding.clone(),
            reason: Some("Synced".into()),
            message: Some(message.to_string()),
            type_: Some(type_.as_str().into()),
            source: Some(EventSource {
                component: Some(super::FIELD_MANAGER.into()),
                host: None,
            }),
            reporting_component: Some(super::FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        };
        api.create(&PostParams::default(), &event).await?;
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(key, (name, 1));
        Ok(())
    }
}
