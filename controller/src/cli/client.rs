//! The client commands (`status`, `rollout`, `promote|rollback|pause|resume`): the
//! controller's HTTP API as the CLI sees it, and how its answers are printed.

use std::process::ExitCode;

use serde_json::Value;

use super::{fail, CliCommand, CliError, ServerArgs, CLIENT_TIMEOUT};

/// The controller's API as the CLI sees it.
struct ApiClient {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    fn new(args: &ServerArgs) -> Result<ApiClient, CliError> {
        let mut base = reqwest::Url::parse(&args.server)
            .map_err(|e| fail(format!("--server {:?}: {e}", args.server)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(fail(format!(
                "--server {:?}: the scheme must be http or https",
                args.server
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .user_agent(concat!("veer-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("cannot build the HTTP client: {e}")))?;
        Ok(ApiClient {
            base,
            token: args.token.clone().filter(|t| !t.is_empty()),
            http,
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, CliError> {
        self.base
            .join(path)
            .map_err(|e| fail(format!("bad API path {path:?}: {e}")))
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let response = request.send().await.map_err(|e| {
            fail(format!(
                "cannot reach the controller at {}: {} (is `veer controller` running? set --server or VEER_SERVER)",
                self.base,
                error_chain(&e)
            ))
        })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| fail(format!("cannot read the controller's answer: {e}")))?;
        let json: Option<Value> = serde_json::from_str(&body).ok();
        if status.is_success() {
            return json
                .ok_or_else(|| fail(format!("the controller's answer is not JSON: {body:.200}")));
        }
        let message = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(Value::as_str)
            .map_or_else(|| body.trim().to_string(), str::to_string);
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (pass --token or set VEER_TOKEN)"
        } else {
            ""
        };
        Err(fail(format!(
            "the controller answered HTTP {}: {message}{hint}",
            status.as_u16()
        )))
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.answer(self.http.get(self.url(path)?)).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        let mut request = self.http.post(self.url(path)?).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.answer(request).await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// `NS/NAME` as an API path prefix.
pub(super) fn canary_path(canary: &str) -> Result<String, CliError> {
    let bad = || fail(format!("{canary:?} is not NAMESPACE/NAME"));
    let (ns, name) = canary.split_once('/').ok_or_else(bad)?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if !valid(ns) || !valid(name) {
        return Err(bad());
    }
    Ok(format!("v1/canaries/{ns}/{name}"))
}

pub(super) async fn run_client(command: CliCommand) -> Result<ExitCode, CliError> {
    let (target, action, body) = match command {
        CliCommand::Status(args) => {
            let client = ApiClient::new(&args.server)?;
            let list = client.get("v1/canaries").await?;
            if args.json {
                let text = serde_json::to_string_pretty(&list)
                    .map_err(|e| fail(format!("cannot print JSON: {e}")))?;
                println!("{text}");
            } else {
                print!("{}", status_table(&list, args.wide));
            }
            return Ok(ExitCode::SUCCESS);
        }
        CliCommand::Rollout(args) => {
            let body = serde_json::json!({ "revision": args.revision });
            (args.target, "revision", body)
        }
        CliCommand::Promote(t) => (t, "promote", Value::Null),
        CliCommand::Rollback(t) => (t, "rollback", Value::Null),
        CliCommand::Pause(t) => (t, "pause", Value::Null),
        CliCommand::Resume(t) => (t, "resume", Value::Null),
        CliCommand::Controller(_)
        | CliCommand::Explain(_)
        | CliCommand::Render(_)
        | CliCommand::Validate(_)
        | CliCommand::Crds => {
            return Err(fail("internal: not a client command"));
        }
    };
    let client = ApiClient::new(&target.server)?;
    let path = format!("{}/{action}", canary_path(&target.canary)?);
    let body = if body.is_null() {
        serde_json::json!({})
    } else {
        body
    };
    let answer = client.post(&path, body).await?;
    println!("{}", one_line_status(&answer));
    Ok(ExitCode::SUCCESS)
}

fn text_of(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    }
}

fn one_line_status(canary: &Value) -> String {
    let mut line = format!(
        "{}: {}, weight {}",
        text_of(canary, "key"),
        text_of(canary, "phase"),
        text_of(canary, "weight")
    );
    let message = text_of(canary, "message");
    if message != "-" && !message.is_empty() {
        line.push_str(" (");
        line.push_str(&message);
        line.push(')');
    }
    line
}

/// The `veer status` table.
pub(super) fn status_table(list: &Value, wide: bool) -> String {
    let mut rows: Vec<Vec<String>> = vec![[
        "NAME", "PHASE", "WEIGHT", "FAILED", "ITER", "REVISION", "PRIMARY", "GATEWAYS",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()];
    if wide {
        rows[0].push("MESSAGE".into());
    }
    let canaries = list
        .get("canaries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in &canaries {
        let mut phase = text_of(c, "phase");
        if c.get("paused").and_then(Value::as_bool) == Some(true) {
            phase.push_str(" (paused)");
        }
        if c.get("suspended").and_then(Value::as_bool) == Some(true) {
            phase.push_str(" (suspended)");
        }
        let mut weight = text_of(c, "weight");
        if c.get("mirror").and_then(Value::as_bool) == Some(true) {
            weight.push_str("+mirror");
        }
        let total = c.get("gatewaysTotal").and_then(Value::as_u64).unwrap_or(0);
        let applied = c
            .get("gatewaysApplied")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let gateways = if total == 0 {
            "-".to_string()
        } else {
            format!("{applied}/{total} applied")
        };
        let mut row = vec![
            text_of(c, "key"),
            phase,
            weight,
            format!("{}/{}", text_of(c, "failedChecks"), text_of(c, "threshold")),
            text_of(c, "iterations"),
            text_of(c, "canaryRevision"),
            text_of(c, "primaryRevision"),
            gateways,
        ];
        if wide {
            row.push(text_of(c, "message"));
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if canaries.is_empty() {
        out.push_str("(no canaries loaded)\n");
    }
    let gateways = list
        .get("gateways")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    out.push_str(&format!(
        "table generation {}, {gateways} gateway{} polling\n",
        text_of(list, "tableGeneration"),
        if gateways == 1 { "" } else { "s" }
    ));
    out
}
