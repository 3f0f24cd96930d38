//! Queues: `GET /v1/queues`, `GET|PUT|PATCH /v1/queues/{name}`,
//! `POST /v1/queues/{name}/pause|resume`.
//!
//! Secrets are sealed here, with the server's `TASKFLOW_SECRET_KEY`, before
//! anything is written; their values are never returned or logged.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::{BodyLimit, JsonBody};
use super::error::ErrorBody;
use super::types::{PatchQueue, PutQueue, QueueList, QueueView};
use super::{ApiError, ApiState, PathParams};
use crate::config::ApiLimits;
use crate::job::check_queue_name;
use crate::queue::QueueSpec;
use crate::store::{QueueRecord, Store, StoreResult};

/// Routes under `/v1/queues`.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one, put_one, patch_one))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// Settings are bounded entry by entry (`queue::settings`); this bounds the
/// body before any of it is parsed.
const MAX_QUEUE_BODY_BYTES: usize = 2 << 20;

impl BodyLimit for PutQueue {
    fn max_body_bytes(_limits: &ApiLimits) -> usize {
        MAX_QUEUE_BODY_BYTES
    }
}

impl BodyLimit for PatchQueue {
    fn max_body_bytes(_limits: &ApiLimits) -> usize {
        MAX_QUEUE_BODY_BYTES
    }
}

/// `GET /v1/queues`: every queue configured or holding jobs, with what it
/// is doing. Reads counters, not jobs (store/queue_stats.rs).
#[utoipa::path(get, operation_id = "list_queues", path = "/v1/queues", tag = "queues",
    responses((status = 200, description = "Every queue configured or holding jobs, with its stats", body = QueueList)))]
async fn list(State(state): State<ApiState>) -> Result<Json<QueueList>, ApiError> {
    let queues = state
        .read(|store| async move { store.queues_with_stats().await })
        .await?
        .into_iter()
        .map(|(record, stats)| QueueView::new(record, stats))
        .collect();
    Ok(Json(QueueList { queues }))
}

/// `GET /v1/queues/{name}`: a queue never configured grants nothing.
#[utoipa::path(get, operation_id = "get_queue", path = "/v1/queues/{name}", tag = "queues", params(("name" = String, Path, description = "The queue's name")),
    responses((status = 200, description = "The queue; one never configured grants nothing and has no limits", body = QueueView)))]
async fn get_one(
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<QueueView>, ApiError> {
    check_queue_name("name", &name)?;
    let name = &name;
    let view = state
        .read(|store| async move { with_stats(&store, store.queue(name).await?).await })
        .await?;
    Ok(Json(view))
}

/// `record` with its stats, as the primary has them: what a change answers.
async fn view(state: &ApiState, record: QueueRecord) -> Result<Json<QueueView>, ApiError> {
    Ok(Json(with_stats(&state.store, record).await?))
}

/// `record` with its stats as `store` has them.
async fn with_stats(store: &Store, record: QueueRecord) -> StoreResult<QueueView> {
    let stats = store.queue_stats(Some(&record.name)).await?;
    let stats = stats.into_values().next().unwrap_or_default();
    Ok(QueueView::new(record, stats))
}

/// `PUT /v1/queues/{name}`: replaces the queue's settings (not whether it
/// is paused).
#[utoipa::path(put, operation_id = "put_queue", path = "/v1/queues/{name}", tag = "queues", params(("name" = String, Path, description = "The queue's name")), request_body = PutQueue,
    responses(
        (status = 200, description = "The settings as stored", body = QueueView),
        (status = 400, description = "`invalid_field` naming the setting; `secret_key_missing` when a secret is given but the server has no `TASKFLOW_SECRET_KEY`", body = ErrorBody),
        (status = 409, description = "`queue_changed`: another writer changed the queue meanwhile; read it and try again", body = ErrorBody),
    ))]
async fn put_one(
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
    JsonBody(request, _reserved): JsonBody<PutQueue>,
) -> Result<Json<QueueView>, ApiError> {
    check_queue_name("name", &name)?;
    let record = write_settings(&state, &name, QueueSpec::from(request), None).await?;
    view(&state, record).await
}

/// How many times a `PATCH` reads and writes again when another change of
/// the queue committed in between.
const PATCH_ATTEMPTS: usize = 5;

/// `PATCH /v1/queues/{name}`: changes the fields given, on the settings as
/// they are at the moment of writing (a concurrent change is never lost).
#[utoipa::path(patch, operation_id = "patch_queue", path = "/v1/queues/{name}", tag = "queues", params(("name" = String, Path, description = "The queue's name")), request_body = PatchQueue,
    responses(
        (status = 200, description = "The settings as stored", body = QueueView),
        (status = 400, description = "`invalid_field` naming the setting; `secret_key_missing`", body = ErrorBody),
        (status = 409, description = "`queue_changed`", body = ErrorBody),
    ))]
async fn patch_one(
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
    JsonBody(request, _reserved): JsonBody<PatchQueue>,
) -> Result<Json<QueueView>, ApiError> {
    check_queue_name("name", &name)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = state.store.queue(&name).await?;
        let spec = request.clone().apply_to(QueueSpec::from(&current.settings));
        match write_settings(&state, &name, spec, Some(current.updated_at)).await {
            Err(ApiError {
                code: "queue_changed",
                ..
            }) if attempts < PATCH_ATTEMPTS => continue,
            written => return view(&state, written?).await,
        }
    }
}

/// `POST /v1/queues/{name}/pause`: no worker claims the queue's jobs from
/// its next claim on; running ones finish, submissions are accepted.
#[utoipa::path(post, operation_id = "pause_queue", path = "/v1/queues/{name}/pause", tag = "queues", params(("name" = String, Path, description = "The queue's name")),
    responses((status = 200, description = "Paused: no worker claims its jobs from now on; running ones finish", body = QueueView)))]
async fn pause(
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<QueueView>, ApiError> {
    set_paused(state, name, true).await
}

/// `POST /v1/queues/{name}/resume`.
#[utoipa::path(post, operation_id = "resume_queue", path = "/v1/queues/{name}/resume", tag = "queues", params(("name" = String, Path, description = "The queue's name")),
    responses((status = 200, description = "Resumed", body = QueueView)))]
async fn resume(
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<QueueView>, ApiError> {
    set_paused(state, name, false).await
}

async fn set_paused(
    state: ApiState,
    name: String,
    paused: bool,
) -> Result<Json<QueueView>, ApiError> {
    let record = pause_or_resume(&state, &name, paused).await?;
    view(&state, record).await
}

/// Pauses or resumes queue `name`: the API's pause and resume and the
/// console's buttons.
pub(crate) async fn pause_or_resume(
    state: &ApiState,
    name: &str,
    paused: bool,
) -> Result<QueueRecord, ApiError> {
    check_queue_name("name", name)?;
    let record = state.store.set_queue_paused(name, paused).await?;
    tracing::info!(queue = %name, paused, "queue paused or resumed");
    Ok(record)
}

/// Checks `spec`, seals its new secret values and writes it (if the queue
/// was last updated at `if_updated_at`, when given).
async fn write_settings(
    state: &ApiState,
    name: &str,
    spec: QueueSpec,
    if_updated_at: Option<Option<DateTime<Utc>>>,
) -> Result<QueueRecord, ApiError> {
    let change = spec.resolve()?;
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
            sealed.insert(secret.clone(), key.seal(name, secret, value));
        }
    }
    let record = state
        .store
        .put_queue(name, &change.settings, &sealed, if_updated_at)
        .await?;
    tracing::info!(
        queue = %name,
        allowed_hosts = change.settings.allowed_hosts.len(),
        config = change.settings.config.len(),
        secrets = change.settings.secrets.len(),
        secrets_set = sealed.len(),
        limits = ?change.settings.limits,
        "queue settings replaced"
    );
    Ok(record)
}
