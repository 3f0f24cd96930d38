//! Module upload and lookup.
//!
//! An upload is validated by compiling it and resolving it against the
//! `taskflow:task` world exactly as a worker would, so a module that is
//! accepted can run. Compilation is bounded: an upload first takes a place
//! in a queue of `max_concurrent_compiles + max_queued_uploads` (503 with
//! `Retry-After` when it is full) before its body is read, so uploads
//! waiting for a compile slot are few and their bodies bounded; then at
//! most `max_concurrent_compiles` compile at once, each abandoned after
//! `compile_timeout`.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use sha2::{Digest, Sha256};

use super::types::{ModulePage, ModuleQuery, ModuleView};
use super::{ApiError, ApiState, PAGE_DEFAULT, PAGE_MAX, PathParams, QueryParams, page_limit};
use crate::job::check_module_hash;
use crate::sandbox::{CompileError, InvalidModule};

/// Routes under `/v1/modules`.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/modules", put(upload).get(list))
        .route("/v1/modules/{hash}", get(get_one))
}

/// `PUT /v1/modules`: the raw component bytes. 201 with the module when
/// new, 200 when these bytes were uploaded before.
async fn upload(
    State(state): State<ApiState>,
    request: Request,
) -> Result<(StatusCode, Json<ModuleView>), ApiError> {
    let _queued = state
        .upload_queue
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::busy("too many uploads are waiting to be compiled; retry shortly")
        })?;
    let (parts, body) = request.into_parts();
    let (bytes, _reserved) = super::body::read(
        &state.budget,
        &parts.headers,
        body,
        state.limits.max_module_bytes,
        1,
    )
    .await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "send the component's bytes as the request body",
        ));
    }
    let hash = hex::encode(Sha256::digest(&bytes));
    if let Some(existing) = state.store.get_module(&hash).await? {
        return Ok((StatusCode::OK, Json(existing.into())));
    }
    validate(&state, &bytes).await?;
    let record = state.store.insert_module(&hash, &bytes).await?;
    metrics::counter!("taskflow_modules_uploaded_total").increment(1);
    tracing::info!(hash = %record.hash, size_bytes = record.size_bytes, "module uploaded");
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// Compiles and type-checks an upload in a compiler process, under the
/// compile limits.
async fn validate(state: &ApiState, bytes: &[u8]) -> Result<(), ApiError> {
    state
        .compiler
        .check(bytes)
        .await
        .map_err(|error| match &error {
            CompileError::Invalid(InvalidModule::NotWasm) => {
                ApiError::bad_request("not_wasm", error.to_string())
            }
            CompileError::Invalid(InvalidModule::Invalid(_)) => {
                ApiError::bad_request("invalid_component", error.to_string())
            }
            CompileError::Invalid(InvalidModule::CoreModule) => {
                ApiError::unprocessable("core_module", error.to_string())
            }
            CompileError::Invalid(InvalidModule::WrongWorld(_)) => {
                ApiError::unprocessable("wrong_world", error.to_string())
            }
            CompileError::Timeout(_) => {
                ApiError::unprocessable("compile_timeout", error.to_string())
            }
            CompileError::MemoryLimit(_) => {
                ApiError::unprocessable("compile_memory_limit", error.to_string())
            }
            CompileError::Failed(_) => ApiError::internal(&error),
        })
}

/// `GET /v1/modules/{hash}`.
async fn get_one(
    State(state): State<ApiState>,
    PathParams(hash): PathParams<String>,
) -> Result<Json<ModuleView>, ApiError> {
    check_module_hash("hash", &hash)?;
    let module = state.store.get_module(&hash).await?.ok_or_else(|| {
        ApiError::not_found(
            "module_not_found",
            format!("module {hash} was never uploaded"),
        )
    })?;
    Ok(Json(module.into()))
}

/// `GET /v1/modules?limit=&cursor=`: modules in hash order.
async fn list(
    State(state): State<ApiState>,
    QueryParams(query): QueryParams<ModuleQuery>,
) -> Result<Json<ModulePage>, ApiError> {
    let limit = page_limit(query.limit, PAGE_DEFAULT, PAGE_MAX)?;
    if let Some(cursor) = &query.cursor {
        check_module_hash("cursor", cursor)?;
    }
    let modules = state
        .store
        .list_modules(query.cursor.as_deref(), limit)
        .await?;
    let next_cursor = (modules.len() as i64 == limit)
        .then(|| modules.last().map(|m| m.hash.clone()))
        .flatten();
    Ok(Json(ModulePage {
        modules: modules.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
