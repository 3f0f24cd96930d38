//! Queue settings: `GET /v1/queues`, `GET|PUT /v1/queues/{name}`.
//!
//! Secrets are sealed here, with the server's `TASKFLOW_SECRET_KEY`, before
//! anything is written; their values are never returned or logged.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::body::{BodyLimit, JsonBody};
use super::types::{PutQueue, QueueList, QueueView};
use super::{ApiError, ApiState, PathParams};
use crate::config::ApiLimits;
use crate::job::check_queue_name;
use crate::queue::QueueSpec;

/// Routes under `/v1/queues`.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/queues", get(list))
        .route("/v1/queues/{name}", get(get_one).put(put_one))
}

/// Settings are bounded entry by entry (`queue::settings`); this bounds the
/// body before any of it is parsed.
impl BodyLimit for PutQueue {
    fn max_body_bytes(_limits: &ApiLimits) -> usize {
        2 << 20
    }
}

/// `GET /v1/queues`: every configured queue.
async fn list(State(state): State<ApiState>) -> Result<Json<QueueList>, ApiError> {
    let queues = state.store.list_queues().await?;
    Ok(Json(QueueList {
        queues: queues.into_iter().map(Into::into).collect(),
    }))
}

/// `GET /v1/queues/{name}`: a queue never configured grants nothing.
async fn get_one(
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<QueueView>, ApiError> {
    check_queue_name("name", &name)?;
    Ok(Json(state.store.queue(&name).await?.into()))
}

/// `PUT /v1/queues/{name}`: replaces the queue's settings.
async fn put_one(
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
    JsonBody(request, _reserved): JsonBody<PutQueue>,
) -> Result<Json<QueueView>, ApiError> {
    check_queue_name("name", &name)?;
    let change = QueueSpec::from(request).resolve()?;
    let mut sealed = BTreeMap::new();
    if !change.new_secret_values.is_empty() {
        let key = state.secret_key.as_ref().ok_or_else(|| {
            ApiError::unprocessable(
                "secret_key_missing",
                "this server cannot store secrets: start it with TASKFLOW_SECRET_KEY set \
                 (32 random bytes in base64, e.g. `openssl rand -base64 32`)",
            )
        })?;
        for (secret, value) in &change.new_secret_values {
            sealed.insert(secret.clone(), key.seal(&name, secret, value));
        }
    }
    let record = state
        .store
        .put_queue(&name, &change.settings, &sealed)
        .await?;
    tracing::info!(
        queue = %name,
        allowed_hosts = change.settings.allowed_hosts.len(),
        config = change.settings.config.len(),
        secrets = change.settings.secrets.len(),
        secrets_set = sealed.len(),
        "queue settings replaced"
    );
    Ok(Json(record.into()))
}
