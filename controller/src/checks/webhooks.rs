//! Flagger webhooks: the payload (byte-compatible with Flagger's `CanaryWebhookPayload`, so
//! flagger-loadtester and existing gates work unchanged), the hook types, and the caller
//! that POSTs it. Only 200, 201 and 202 pass; redirects are not followed and response
//! bodies are read only up to a cap, so a misbehaving hook can neither bounce the request
//! elsewhere nor exhaust memory.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Timeout of a hook whose spec sets none (Flagger's default).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a hook's response body that is read (and quoted in errors).
pub const MAX_HOOK_RESPONSE_BYTES: usize = 64 * 1024;

/// When in a run a hook is called. Serialized as in Flagger's YAML (`type: pre-rollout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookType {
    /// Gates the start of a run; a failure means Waiting, retried every interval.
    ConfirmRollout,
    /// Before the first traffic shift; a failure is a failed check.
    PreRollout,
    /// Every analysis pass, before the metrics; a failure is a failed check.
    Rollout,
    /// Gates each weight increase; a failure only halts the pass.
    ConfirmTrafficIncrease,
    /// Gates promotion; a failure means WaitingPromotion.
    ConfirmPromotion,
    /// After promotion or rollback; failures are only logged.
    PostRollout,
    /// Inverted: a passing answer means roll back now.
    Rollback,
    /// Receives every event the controller records.
    Event,
}

impl HookType {
    pub const ALL: [HookType; 8] = [
        HookType::ConfirmRollout,
        HookType::PreRollout,
        HookType::Rollout,
        HookType::ConfirmTrafficIncrease,
        HookType::ConfirmPromotion,
        HookType::PostRollout,
        HookType::Rollback,
        HookType::Event,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookType::ConfirmRollout => "confirm-rollout",
            HookType::PreRollout => "pre-rollout",
            HookType::Rollout => "rollout",
            HookType::ConfirmTrafficIncrease => "confirm-traffic-increase",
            HookType::ConfirmPromotion => "confirm-promotion",
            HookType::PostRollout => "post-rollout",
            HookType::Rollback => "rollback",
            HookType::Event => "event",
        }
    }
}

impl fmt::Display for HookType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hook type name Flagger does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown webhook type {0:?}: expected one of confirm-rollout, pre-rollout, rollout, \
     confirm-traffic-increase, confirm-promotion, post-rollout, rollback, event"
)]
pub struct UnknownHookType(pub String);

impl FromStr for HookType {
    type Err = UnknownHookType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HookType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownHookType(s.to_string()))
    }
}

/// The JSON body of every hook call: Flagger's `CanaryWebhookPayload`.
/// `metadata` is omitted when empty, as Go's `omitempty` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookPayload {
    pub name: String,
    pub namespace: String,
    /// The canary's phase as Flagger spells it (`Progressing`, `Failed`, ...).
    pub phase: String,
    /// Identifies the canary's configuration; opaque to hooks.
    pub checksum: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl WebhookPayload {
    /// The payload of an `event` hook. As in Flagger, `eventMessage`, `eventType` and
    /// `timestamp` (milliseconds since the Unix epoch, as a string) are added to the hook's
    /// own metadata and win over keys of the same name in it.
    pub fn event(
        canary: &CanaryIdentity,
        hook_metadata: &BTreeMap<String, String>,
        message: &str,
        event_type: &str,
        at: SystemTime,
    ) -> WebhookPayload {
        let millis = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut metadata = hook_metadata.clone();
        metadata.insert("eventMessage".to_string(), message.to_string());
        metadata.insert("eventType".to_string(), event_type.to_string());
        metadata.insert("timestamp".to_string(), millis.to_string());
        canary.payload(metadata)
    }
}

/// The canary fields every payload carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryIdentity {
    pub name: String,
    pub namespace: String,
    pub phase: String,
    pub checksum: String,
}

impl CanaryIdentity {
    /// The payload for a hook with this metadata.
    pub fn payload(&self, metadata: BTreeMap<String, String>) -> WebhookPayload {
        WebhookPayload {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            phase: self.phase.clone(),
            checksum: self.checksum.clone(),
            metadata,
        }
    }
}

/// One hook as the spec declares it, in plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub url: String,
    /// `None` means [`DEFAULT_HOOK_TIMEOUT`].
    pub timeout: Option<Duration>,
    pub metadata: BTreeMap<String, String>,
}

/// Why a hook did not pass. Every message names the hook and its URL (password removed).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("webhook {hook:?}: invalid URL {url:?}: {reason}")]
    InvalidUrl {
        hook: String,
        url: String,
        reason: String,
    },
    #[error("webhook {hook:?} ({url}) answered HTTP {status}{}: {body:?}",
        match location { Some(l) => format!(" redirecting to {l:?} (redirects are not followed)"), None => String::new() })]
    Status {
        hook: String,
        url: String,
        status: u16,
        location: Option<String>,
        /// The start of the response body.
        body: String,
    },
    #[error("webhook {hook:?} ({url}) did not answer within {}", humantime::format_duration(*.after))]
    Timeout {
        hook: String,
        url: String,
        after: Duration,
    },
    #[error("webhook {hook:?} ({url}) failed: {reason}")]
    Transport {
        hook: String,
        url: String,
        reason: String,
    },
}

impl HookError {
    /// The hook's name.
    pub fn hook(&self) -> &str {
        match self {
            HookError::InvalidUrl { hook, .. }
            | HookError::Status { hook, .. }
            | HookError::Timeout { hook, .. }
            | HookError::Transport { hook, .. } => hook,
        }
    }
}

/// The first hook of a list that failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{hook_type} webhook {} of {total} failed{}: {error}", .index + 1,
    if .index + 1 < *.total { ", the rest were not called" } else { "" })]
pub struct HookFailure {
    pub hook_type: HookType,
    /// Position of the failed hook in the list (0-based).
    pub index: usize,
    pub total: usize,
    pub error: HookError,
}

/// Calls hooks over one shared HTTP client.
#[derive(Debug, Clone)]
pub struct WebhookCaller {
    http: reqwest::Client,
}

impl WebhookCaller {
    pub fn new() -> Result<WebhookCaller, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("veer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(WebhookCaller { http })
    }

    /// POSTs `payload` as JSON to `url`. Passes on 200, 201 or 202; anything else
    /// (including 204 and redirects), a transport error or no complete answer within
    /// `timeout` fails.
    pub async fn call(
        &self,
        name: &str,
        url: &str,
        timeout: Duration,
        payload: &WebhookPayload,
    ) -> Result<(), HookError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| HookError::InvalidUrl {
            hook: name.to_string(),
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let shown = redacted(&parsed);
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(HookError::InvalidUrl {
                hook: name.to_string(),
                url: shown,
                reason: format!("scheme {:?} is not http or https", parsed.scheme()),
            });
        }
        let timed_out = || HookError::Timeout {
            hook: name.to_string(),
            url: shown.clone(),
            after: timeout,
        };
        let from_reqwest = |e: reqwest::Error| {
            if e.is_timeout() {
                timed_out()
            } else {
                HookError::Transport {
                    hook: name.to_string(),
                    url: shown.clone(),
                    reason: error_chain(&e),
                }
            }
        };
        let exchange = async {
            let response = self
                .http
                .post(parsed.clone())
                .json(payload)
                .timeout(timeout)
                .send()
                .await
                .map_err(from_reqwest)?;
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
            let body = read_body_capped(response, MAX_HOOK_RESPONSE_BYTES)
                .await
                .map_err(from_reqwest)?;
            Ok::<_, HookError>((status, location, body))
        };
        // reqwest's timeout covers the body too; this outer one is the guarantee.
        let (status, location, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| timed_out())??;
        if matches!(status, 200..=202) {
            return Ok(());
        }
        Err(HookError::Status {
            hook: name.to_string(),
            url: shown,
            status,
            location: location.filter(|_| (300..400).contains(&status)),
            body: body.excerpt(512),
        })
    }

    /// Calls `hooks` (all of type `hook_type`) one after another with the payload for
    /// `canary`. The first failure stops the rest and says which hook it was.
    pub async fn run_in_order(
        &self,
        hook_type: HookType,
        hooks: &[Hook],
        canary: &CanaryIdentity,
    ) -> Result<(), HookFailure> {
        for (index, hook) in hooks.iter().enumerate() {
            let payload = canary.payload(hook.metadata.clone());
            let timeout = hook.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT);
            tracing::debug!(hook = %hook.name, %hook_type, "calling webhook");
            if let Err(error) = self.call(&hook.name, &hook.url, timeout, &payload).await {
                return Err(HookFailure {
                    hook_type,
                    index,
                    total: hooks.len(),
                    error,
                });
            }
        }
        Ok(())
    }

    /// Sends one event to an `event` hook.
    pub async fn send_event(
        &self,
        hook: &Hook,
        canary: &CanaryIdentity,
        message: &str,
        event_type: &str,
    ) -> Result<(), HookError> {
        let payload = WebhookPayload::event(
            canary,
            &hook.metadata,
            message,
            event_type,
            SystemTime::now(),
        );
        let timeout = hook.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT);
        self.call(&hook.name, &hook.url, timeout, &payload).await
    }
}

/// A URL for messages: the password of `user:password@` is replaced, since hook and
/// provider URLs may carry credentials.
fn redacted(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() && shown.set_password(Some("REDACTED")).is_err() {
        return format!("{}://(redacted)", url.scheme());
    }
    shown.to_string()
}

/// A response body read up to a cap.
#[derive(Debug, Clone, Default)]
pub(crate) struct CappedBody {
    pub bytes: Vec<u8>,
    /// The body was longer than the cap and the rest was not read.
    pub truncated: bool,
}

impl CappedBody {
    /// The first `max` bytes as text, for error messages.
    pub fn excerpt(&self, max: usize) -> String {
        let end = self.bytes.len().min(max);
        let mut text = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        if self.truncated || end < self.bytes.len() {
            text.push_str("...");
        }
        text
    }
}

/// Reads at most `cap` bytes of a response body; the rest is dropped with the connection.
pub(crate) async fn read_body_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<CappedBody, reqwest::Error> {
    let mut body = CappedBody::default();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.bytes.len();
        if chunk.len() > room {
            body.bytes.extend_from_slice(&chunk[..room]);
            body.truncated = true;
            break;
        }
        body.bytes.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its sources on one line: reqwest's top-level message alone ("error
/// sending request") does not say that the connection was refused.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary() -> CanaryIdentity {
        CanaryIdentity {
            name: "podinfo".into(),
            namespace: "test".into(),
            phase: "Progressing".into(),
            checksum: "abc".into(),
        }
    }

    #[test]
    fn payload_omits_empty_metadata() {
        let json = serde_json::to_string(&canary().payload(BTreeMap::new())).unwrap();
        assert_eq!(
            json,
            r#"{"name":"podinfo","namespace":"test","phase":"Progressing","checksum":"abc"}"#
        );
    }

    #[test]
    fn event_metadata_wins_over_hook_metadata_and_uses_milliseconds() {
        let hook_meta = BTreeMap::from([
            ("eventType".to_string(), "mine".to_string()),
            ("channel".to_string(), "ops".to_string()),
        ]);
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let p = WebhookPayload::event(&canary(), &hook_meta, "weight 10", "Normal", at);
        assert_eq!(p.metadata["eventType"], "Normal");
        assert_eq!(p.metadata["eventMessage"], "weight 10");
        assert_eq!(p.metadata["timestamp"], "1700000000123");
        assert_eq!(p.metadata["channel"], "ops");
    }

    #[test]
    fn hook_types_use_flagger_names() {
        for t in HookType::ALL {
            let yaml_name = serde_json::to_value(t).unwrap();
            assert_eq!(yaml_name, serde_json::Value::String(t.as_str().to_string()));
            assert_eq!(t.as_str().parse::<HookType>().unwrap(), t);
        }
        assert_eq!(
            serde_json::from_str::<HookType>("\"confirm-traffic-increase\"").unwrap(),
            HookType::ConfirmTrafficIncrease
        );
        assert!("pre_rollout".parse::<HookType>().is_err());
    }

    #[test]
    fn urls_in_messages_hide_passwords() {
        let url = reqwest::Url::parse("http://user:s3cret@hooks.example/x").unwrap();
        let shown = redacted(&url);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("user:REDACTED@hooks.example"), "{shown}");
    }
}
