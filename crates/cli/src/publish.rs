//! `switchboard publish`: one message into a room through the HTTP API,
//! with an id so that retries after a timeout or a 503 are stored once
//! (SPEC §2, idempotent publish).

use crate::link::error_message;
use crate::{CliError, Credentials, Endpoint};
use rand::Rng;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub endpoint: Endpoint,
    pub credentials: Credentials,
    pub room: String,
    pub text: String,
    /// The publish id; a random one when absent.
    pub id: Option<String>,
    /// Further attempts after a failure that may pass (no answer, 429,
    /// 502-504).
    pub retries: u32,
    /// Bound of each attempt.
    pub timeout: Duration,
}

/// Publishes and returns the server's answer (`{"room","cursor",
/// "duplicate"}`) as one JSON line.
pub async fn publish(options: PublishOptions) -> Result<String, CliError> {
    let id = options.id.clone().unwrap_or_else(random_id);
    let url = options
        .endpoint
        .messages_url(&options.room, &options.credentials);
    let client = reqwest::Client::builder()
        .timeout(options.timeout)
        .build()
        .map_err(|err| CliError::Usage(format!("HTTP client: {err}")))?;
    let body = json!({"text": options.text, "id": id});
    let mut backoff = Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 0..=options.retries {
        if attempt > 0 {
            let most = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
            tokio::time::sleep(Duration::from_millis(
                rand::rng().random_range(most / 2..=most),
            ))
            .await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        let mut request = client.post(url.clone()).json(&body);
        if let Credentials::Token(token) = &options.credentials {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                last = format!("{url}: {err}");
                continue;
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            // One line whatever the server's formatting.
            return Ok(serde_json::from_str::<Value>(&text)
                .map(|v| v.to_string())
                .unwrap_or(text));
        }
        last = format!("HTTP {status}: {}", error_message(&text));
        if !matches!(status.as_u16(), 429 | 502..=504) {
            let code = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            return Err(CliError::Refused {
                code,
                message: error_message(&text),
            });
        }
    }
    Err(CliError::GaveUp(format!(
        "not published after {} attempt(s) (id {id}; retrying with it is safe): {last}",
        options.retries + 1
    )))
}

/// 16 random hex digits: unique enough within the dedup window.
pub(crate) fn random_id() -> String {
    format!("cli-{:016x}", rand::rng().random::<u64>())
}
