//! A task that makes outbound requests (or reads its queue's configuration)
//! on command, so the host's tests and benchmarks can prove each rule of
//! outbound HTTP and configuration against a real guest. A
//! plugin of its own, apart from `misbehave`, because a component that
//! imports `wasi:http` makes its worker read the queue's grants: the other
//! tests' guests must not.
//!
//! Input: `{"mode": "...", ...}`; see [`Mode`].

use serde::Deserialize;
use serde_json::{Value, json};
use taskflow_sdk::http::{self, Method};
use taskflow_sdk::{TaskError, task};

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum Mode {
    /// GETs `url` and returns its status: with `Authorization: Bearer` and
    /// the placeholder of secret `bearer_secret`, and with that of
    /// `secret_in_query` appended as `?key=` (which the host must refuse).
    Get {
        url: String,
        bearer_secret: Option<String>,
        secret_in_query: Option<String>,
    },
    /// GETs `url` `count` times and reports how many got a response and
    /// how many failed.
    Flood { url: String, count: u32 },
    /// Returns the queue's configuration value `name` (`null` if unset) and
    /// every key it grants.
    Config { name: String },
}

#[task]
fn http_probe(mode: Mode) -> Result<Value, TaskError> {
    match mode {
        Mode::Get {
            url,
            bearer_secret,
            secret_in_query,
        } => get(url, bearer_secret, secret_in_query),
        Mode::Flood { url, count } => {
            let ok = (0..count).filter(|_| http::get(&url).is_ok()).count();
            Ok(json!({ "ok": ok, "failed": count as usize - ok }))
        }
        Mode::Config { name } => {
            let keys: Vec<String> = taskflow_sdk::config::all()?.into_keys().collect();
            Ok(json!({ "value": taskflow_sdk::config::get(&name)?, "keys": keys }))
        }
    }
}

fn get(
    mut url: String,
    bearer_secret: Option<String>,
    secret_in_query: Option<String>,
) -> Result<Value, TaskError> {
    if let Some(name) = secret_in_query {
        url = format!("{url}?key={}", taskflow_sdk::secret(&name)?);
    }
    let mut request = http::request(Method::Get, &url);
    if let Some(name) = bearer_secret {
        let secret = taskflow_sdk::secret(&name)?;
        request = request.header("authorization", format!("Bearer {secret}"));
    }
    let response = request.send()?;
    Ok(json!({ "status": response.status() }))
}
