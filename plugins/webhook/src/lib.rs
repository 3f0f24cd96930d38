//! Delivers a signed webhook.
//!
//! Input `{"url", "payload", "secret"?}` → output `{"status"}`. `payload`
//! (any JSON) is POSTed to `url` as `application/json`, signed in the
//! header `x-taskflow-signature: sha256=<hex>`: the HMAC-SHA256 of the body
//! keyed with the queue's secret `secret` (default `webhook_key`). The host
//! computes the HMAC, so the receiver can check who sent the payload while
//! the task never holds the key.
//!
//! A 5xx answer (or 408, 429) is retried; any other answer outside 2xx fails
//! the job for good. The queue must allow the receiver's host and grant the
//! secret.

use serde::{Deserialize, Serialize};
use taskflow_sdk::{TaskError, http, secret, task};

#[derive(Deserialize)]
struct Delivery {
    url: String,
    payload: serde_json::Value,
    #[serde(default = "default_secret")]
    secret: String,
}

fn default_secret() -> String {
    "webhook_key".to_owned()
}

#[derive(Debug, PartialEq, Serialize)]
struct Delivered {
    status: u16,
}

#[task]
fn webhook(delivery: Delivery) -> Result<Delivered, TaskError> {
    // Signed and sent as the same bytes: the receiver checks exactly these.
    let body = serde_json::to_vec(&delivery.payload)?;
    let signature = secret(&delivery.secret)?.hmac_sha256(&body)?;
    let size = body.len();
    let response = http::post(&delivery.url)
        .header("content-type", "application/json")
        .header("x-taskflow-signature", signature_header(&signature))
        .body(body)
        .send()?
        .error_for_status()?;
    let status = response.status();
    if !(200..300).contains(&status) {
        return Err(TaskError::fatal(format!(
            "the receiver answered with status {status}, not 2xx"
        )));
    }
    taskflow_sdk::log::info!("delivered {size} bytes: status {status}");
    Ok(Delivered { status })
}

/// The signature header's value, as GitHub-style receivers expect it.
fn signature_header(mac: &[u8]) -> String {
    format!("sha256={}", hex::encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_lowercase_hex_with_its_algorithm() {
        assert_eq!(signature_header(&[0x0f, 0xa0, 0xff]), "sha256=0fa0ff");
    }

    #[test]
    fn the_secret_defaults_to_webhook_key() {
        let delivery: Delivery =
            serde_json::from_str(r#"{"url": "https://example.com/hook", "payload": [1]}"#).unwrap();
        assert_eq!(delivery.secret, "webhook_key");
    }

    #[test]
    fn outside_a_task_there_is_no_secret_to_sign_with() {
        let delivery = Delivery {
            url: "https://example.com/hook".into(),
            payload: serde_json::json!({"event": "paid"}),
            secret: default_secret(),
        };
        let error = webhook(delivery).unwrap_err();
        assert!(error.message().starts_with("no TaskFlow host"), "{error}");
    }
}
