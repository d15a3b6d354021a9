//! Flagger webhooks: the payload (byte-compatible with Flagger's `CanaryWebhookPayload`, so
//! flagger-loadtester and existing gates work unchanged), the hook types, and the caller
//! that POSTs it. Only 200, 201 and 202 pass; redirects are not followed and response
//! bodies are read only up to a cap, so a misbehaving hook can neither bounce the request
//! elsewhere nor exhaust memory.
//!
//! A hook's `retries` and `disableTLS` behave as in Flagger, whose HTTP client is
//! go-retryablehttp: a call that fails with a transport error, a timeout, HTTP 429 or a
//! 5xx other than 501 is tried again within the same call, up to `retries` more times,
//! after 1s, 2s, 4s, ... (at most 30s, or the answer's `Retry-After` for 429 and 503).
//! Other answers are final. A certificate that does not verify is final too, unless the
//! hook sets `disableTLS`, which skips verification for that hook only. The timeout
//! applies to each attempt.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Timeout of a hook whose spec sets none (Flagger's default).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before the first retry of a failed hook call; it doubles for each further one.
pub const RETRY_WAIT_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two attempts of a hook call.
pub const RETRY_WAIT_MAX: Duration = Duration::from_secs(30);

/// The wait before retry number `retry` (0 for the first): 1s, 2s, 4s, ... up to 30s.
pub fn retry_backoff(retry: u32) -> Duration {
    RETRY_WAIT_MIN
        .checked_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
        .unwrap_or(RETRY_WAIT_MAX)
        .min(RETRY_WAIT_MAX)
}

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
    /// `None` means [`DEFAULT_HOOK_TIMEOUT`]; it bounds each attempt.
    pub timeout: Option<Duration>,
    pub metadata: BTreeMap<String, String>,
    /// How many more times a failed call is tried, with backoff (Flagger's `retries`).
    pub retries: u32,
    /// Skip certificate verification for this hook only (Flagger's `disableTLS`).
    pub disable_tls: bool,
}

impl Hook {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT)
    }

    /// The longest one call may take: every attempt timing out, with the backoff between
    /// them (a `Retry-After` answer may stretch a wait up to [`RETRY_WAIT_MAX`]).
    pub fn worst_case(&self) -> Duration {
        let waits: Duration = (0..self.retries).map(retry_backoff).sum();
        self.timeout()
            .saturating_mul(self.retries.saturating_add(1))
            .saturating_add(waits)
    }
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
    #[error("webhook {hook:?} ({url}): the server's certificate does not verify: {reason} (set disableTLS: true on this webhook to skip verification, e.g. for a self-signed certificate)")]
    Certificate {
        hook: String,
        url: String,
        reason: String,
    },
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp { attempts: u32, last: Box<HookError> },
}

impl HookError {
    /// The hook's name.
    pub fn hook(&self) -> &str {
        match self {
            HookError::InvalidUrl { hook, .. }
            | HookError::Status { hook, .. }
            | HookError::Timeout { hook, .. }
            | HookError::Transport { hook, .. }
            | HookError::Certificate { hook, .. } => hook,
            HookError::GaveUp { last, .. } => last.hook(),
        }
    }

    /// Whether another attempt may go differently (go-retryablehttp's default policy).
    fn is_retryable(&self) -> bool {
        match self {
            HookError::Timeout { .. } | HookError::Transport { .. } => true,
            HookError::Status { status, .. } => {
                *status == 429 || (*status >= 500 && *status != 501)
            }
            HookError::InvalidUrl { .. }
            | HookError::Certificate { .. }
            | HookError::GaveUp { .. } => false,
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

/// Calls hooks over two shared HTTP clients: one that verifies certificates, and one for
/// the hooks that set `disableTLS`.
#[derive(Debug, Clone)]
pub struct WebhookCaller {
    verifying: reqwest::Client,
    not_verifying: reqwest::Client,
}

/// One attempt's answer: passed, or why not (and how long the server asked us to wait).
struct AttemptFailure {
    error: HookError,
    retry_after: Option<Duration>,
}

impl WebhookCaller {
    pub fn new() -> Result<WebhookCaller, reqwest::Error> {
        let client = |verify: bool| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("veer/", env!("CARGO_PKG_VERSION")))
                .danger_accept_invalid_certs(!verify)
                .build()
        };
        Ok(WebhookCaller {
            verifying: client(true)?,
            not_verifying: client(false)?,
        })
    }

    /// POSTs `payload` as JSON to the hook. Passes on 200, 201 or 202; anything else
    /// (including 204 and redirects), a transport error or no complete answer within the
    /// hook's timeout fails. A retryable failure is tried again up to `hook.retries` more
    /// times, after the backoff (see the module's doc).
    pub async fn call(&self, hook: &Hook, payload: &WebhookPayload) -> Result<(), HookError> {
        let mut retry = 0;
        loop {
            let failure = match self.attempt(hook, payload).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            if retry >= hook.retries || !failure.error.is_retryable() {
                return Err(if retry == 0 {
                    failure.error
                } else {
                    HookError::GaveUp {
                        attempts: retry + 1,
                        last: Box::new(failure.error),
                    }
                });
            }
            let wait = failure
                .retry_after
                .map_or_else(|| retry_backoff(retry), |w| w.min(RETRY_WAIT_MAX));
            tracing::debug!(hook = %hook.name, error = %failure.error, retry = retry + 1, of = hook.retries, ?wait, "webhook failed; retrying");
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }

    async fn attempt(&self, hook: &Hook, payload: &WebhookPayload) -> Result<(), AttemptFailure> {
        let name = hook.name.as_str();
        let timeout = hook.timeout();
        let final_error = |error| AttemptFailure {
            error,
            retry_after: None,
        };
        let parsed = reqwest::Url::parse(&hook.url).map_err(|e| {
            final_error(HookError::InvalidUrl {
                hook: name.to_string(),
                url: hook.url.clone(),
                reason: e.to_string(),
            })
        })?;
        let shown = redacted(&parsed);
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(final_error(HookError::InvalidUrl {
                hook: name.to_string(),
                url: shown,
                reason: format!("scheme {:?} is not http or https", parsed.scheme()),
            }));
        }
        let timed_out = || HookError::Timeout {
            hook: name.to_string(),
            url: shown.clone(),
            after: timeout,
        };
        let from_reqwest = |e: reqwest::Error| {
            if e.is_timeout() {
                return timed_out();
            }
            let reason = error_chain(&e);
            if !hook.disable_tls && is_certificate_error(&reason) {
                HookError::Certificate {
                    hook: name.to_string(),
                    url: shown.clone(),
                    reason,
                }
            } else {
                HookError::Transport {
                    hook: name.to_string(),
                    url: shown.clone(),
                    reason,
                }
            }
        };
        let http = if hook.disable_tls {
            &self.not_verifying
        } else {
            &self.verifying
        };
        let exchange = async {
            let response = http
                .post(parsed.clone())
                .json(payload)
                .timeout(timeout)
                .send()
                .await
                .map_err(from_reqwest)?;
            let status = response.status().as_u16();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
            };
            let location = header(reqwest::header::LOCATION);
            let retry_after = header(reqwest::header::RETRY_AFTER)
                .filter(|_| matches!(status, 429 | 503))
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = read_body_capped(response, MAX_HOOK_RESPONSE_BYTES)
                .await
                .map_err(from_reqwest)?;
            Ok::<_, HookError>((status, location, retry_after, body))
        };
        // reqwest's timeout covers the body too; this outer one is the guarantee.
        let (status, location, retry_after, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| final_error(timed_out()))?
            .map_err(final_error)?;
        if matches!(status, 200..=202) {
            return Ok(());
        }
        Err(AttemptFailure {
            error: HookError::Status {
                hook: name.to_string(),
                url: shown,
                status,
                location: location.filter(|_| (300..400).contains(&status)),
                body: body.excerpt(512),
            },
            retry_after,
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
            tracing::debug!(hook = %hook.name, %hook_type, "calling webhook");
            if let Err(error) = self.call(hook, &payload).await {
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
        self.call(hook, &payload).await
    }
}

/// Whether a transport error is a certificate that did not verify (rustls says "invalid
/// peer certificate"): retrying cannot help, and the message should say what to set.
fn is_certificate_error(reason: &str) -> bool {
    reason.contains("invalid peer certificate") || reason.contains("certificate verify failed")
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
        // Flagger's names, spelled out (pkg/apis/flagger/v1beta1/canary.go): each type
        // serialises to, parses from and prints as exactly this literal.
        let flagger = [
            (HookType::ConfirmRollout, "confirm-rollout"),
            (HookType::PreRollout, "pre-rollout"),
            (HookType::Rollout, "rollout"),
            (HookType::ConfirmTrafficIncrease, "confirm-traffic-increase"),
            (HookType::ConfirmPromotion, "confirm-promotion"),
            (HookType::PostRollout, "post-rollout"),
            (HookType::Rollback, "rollback"),
            (HookType::Event, "event"),
        ];
        assert_eq!(
            HookType::ALL.to_vec(),
            flagger.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            "ALL lists every hook type once"
        );
        for (t, name) in flagger {
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(name));
            assert_eq!(
                serde_json::from_value::<HookType>(serde_json::json!(name)).unwrap(),
                t
            );
            assert_eq!(t.as_str(), name);
            assert_eq!(name.parse::<HookType>().unwrap(), t);
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
