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

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::caller;
use super::error::ErrorBody;
use super::types::{
    ModuleNameList, ModuleNameView, ModulePage, ModuleView, NameMoveView, PageQuery,
};
use super::{
    ApiError, ApiState, PAGE_DEFAULT, PAGE_MAX, PathParams, QueryParams, next_cursor, page_limit,
};
use crate::job::{check_module_hash, check_module_name};
use crate::sandbox::{CompileError, InvalidModule};
use crate::store::{ModuleDeletion, ModuleRecord, NameMove, NameRollback};

/// Routes under `/v1/modules` and `/v1/module-names`.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(upload, list))
        .routes(routes!(get_one, delete_one))
        .routes(routes!(name_module))
        .routes(routes!(list_names))
        .routes(routes!(get_name))
        .routes(routes!(roll_back_name))
}

/// Moves of a name shown with it.
const NAME_HISTORY_SHOWN: i64 = 100;

/// `PUT /v1/modules`: the raw component bytes. 201 with the module when
/// new, 200 when these bytes were uploaded before.
#[utoipa::path(put, operation_id = "upload_module", path = "/v1/modules", tag = "modules",
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component's bytes"),
    responses(
        (status = 201, description = "Stored", body = ModuleView),
        (status = 200, description = "Already stored", body = ModuleView),
        (status = 400, description = "`empty_body`, `not_wasm`, `core_module`, `invalid_component`, `wrong_world`: the bytes are not a component a worker could run; `compile_memory_limit`, `compile_timeout`: compiling it exceeded a limit", body = ErrorBody),
        (status = 503, description = "`busy`: as many uploads are compiling or waiting as the server allows; retry after `Retry-After`", body = ErrorBody),
    ))]
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
#[utoipa::path(get, operation_id = "get_module", path = "/v1/modules/{hash}", tag = "modules", params(("hash" = String, Path, description = "SHA-256 of the module, 64 lowercase hex digits")),
    responses(
        (status = 200, description = "The module and the names pointing at it", body = ModuleView),
        (status = 400, description = "`invalid_hash`", body = ErrorBody),
        (status = 404, description = "`module_not_found`", body = ErrorBody),
    ))]
async fn get_one(
    State(state): State<ApiState>,
    PathParams(hash): PathParams<String>,
) -> Result<Json<ModuleView>, ApiError> {
    let module = uploaded_module(&state, &hash).await?;
    let names = state.store.names_of_module(&hash).await?;
    Ok(Json(ModuleView {
        names: Some(names),
        ..module.into()
    }))
}

/// The module `hash` names, or the 4xx that says why there is none.
async fn uploaded_module(state: &ApiState, hash: &str) -> Result<ModuleRecord, ApiError> {
    check_module_hash("hash", hash)?;
    state
        .store
        .get_module(hash)
        .await?
        .ok_or_else(|| never_uploaded(hash))
}

fn never_uploaded(hash: &str) -> ApiError {
    ApiError::not_found(
        "module_not_found",
        format!("module {hash} was never uploaded"),
    )
}

/// `DELETE /v1/modules/{hash}`: removes a module no name points at and no
/// unfinished job would run; 409 naming which otherwise.
#[utoipa::path(delete, operation_id = "delete_module", path = "/v1/modules/{hash}", tag = "modules", params(("hash" = String, Path, description = "SHA-256 of the module, 64 lowercase hex digits")),
    responses(
        (status = 200, description = "Deleted; the module as it was", body = ModuleView),
        (status = 404, description = "`module_not_found`", body = ErrorBody),
        (status = 409, description = "`module_in_use`: names point at it or unfinished jobs would run it (the message says which)", body = ErrorBody),
    ))]
async fn delete_one(
    State(state): State<ApiState>,
    PathParams(hash): PathParams<String>,
) -> Result<Json<ModuleView>, ApiError> {
    let module = uploaded_module(&state, &hash).await?;
    match state.store.delete_module_if_unused(&hash).await? {
        ModuleDeletion::Deleted => {
            tracing::info!(hash = %hash, "module deleted");
            Ok(Json(module.into()))
        }
        ModuleDeletion::NotFound => Err(never_uploaded(&hash)),
        ModuleDeletion::InUse(in_use) => {
            let mut reasons = Vec::new();
            if !in_use.names.is_empty() {
                reasons.push(format!("names point at it: {}", in_use.names.join(", ")));
            }
            if !in_use.unfinished_jobs.is_empty() {
                let jobs: Vec<String> = in_use
                    .unfinished_jobs
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                reasons.push(format!("unfinished jobs would run it: {}", jobs.join(", ")));
            }
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "module_in_use",
                format!("module {hash} is in use; {}", reasons.join("; ")),
            ))
        }
    }
}

/// `PUT /v1/modules/{hash}/names/{name}`: points `name` at the module,
/// wherever it pointed before; the move is recorded with the caller.
#[utoipa::path(put, operation_id = "name_module", path = "/v1/modules/{hash}/names/{name}", tag = "modules", params(("hash" = String, Path, description = "SHA-256 of the module, 64 lowercase hex digits"), ("name" = String, Path, description = "A module name: `[a-z0-9][a-z0-9._-]*(:[a-z0-9._-]+)?`")),
    responses(
        (status = 200, description = "The name now points at the module; the move is recorded", body = NameMoveView),
        (status = 404, description = "`module_not_found`", body = ErrorBody),
        (status = 409, description = "`too_many_names`: as many names as a module may have (100) point at it already", body = ErrorBody),
    ))]
async fn name_module(
    State(state): State<ApiState>,
    headers: HeaderMap,
    PathParams((hash, name)): PathParams<(String, String)>,
) -> Result<Json<NameMoveView>, ApiError> {
    check_module_hash("hash", &hash)?;
    check_module_name("name", &name)?;
    let moved = state
        .store
        .move_module_name(&name, &hash, &caller(&headers))
        .await?;
    tracing::info!(name = %name, hash = %hash, previous = ?moved.from_hash, by = %moved.moved_by, "module name moved");
    Ok(Json(moved.into()))
}

/// `GET /v1/module-names?limit=&cursor=`: names in name order.
#[utoipa::path(get, operation_id = "list_module_names", path = "/v1/module-names", tag = "modules", params(PageQuery),
    responses(
        (status = 200, description = "A page of names and where they point, in name order", body = ModuleNameList),
        (status = 400, description = "`invalid_limit`, `invalid_field` (cursor), `invalid_query`", body = ErrorBody),
    ))]
async fn list_names(
    State(state): State<ApiState>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<ModuleNameList>, ApiError> {
    let limit = page_limit(query.limit, PAGE_DEFAULT, PAGE_MAX)?;
    if let Some(cursor) = &query.cursor {
        check_module_name("cursor", cursor)?;
    }
    let names = state
        .store
        .list_module_names(query.cursor.as_deref(), limit)
        .await?;
    let next_cursor = next_cursor(&names, limit, |(name, _)| name.clone());
    Ok(Json(ModuleNameList {
        names: names.into_iter().collect(),
        next_cursor,
    }))
}

/// `GET /v1/module-names/{name}`: where it points, and its moves.
#[utoipa::path(get, operation_id = "get_module_name", path = "/v1/module-names/{name}", tag = "modules", params(("name" = String, Path, description = "A module name: `[a-z0-9][a-z0-9._-]*(:[a-z0-9._-]+)?`")),
    responses(
        (status = 200, description = "Where the name points, and its moves, newest first", body = ModuleNameView),
        (status = 404, description = "`module_name_not_found`", body = ErrorBody),
    ))]
async fn get_name(
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<ModuleNameView>, ApiError> {
    let history = name_moves(&state, &name, NAME_HISTORY_SHOWN).await?;
    let current = &history[0];
    Ok(Json(ModuleNameView {
        name: name.clone(),
        module: current.to_hash.clone(),
        history: history.into_iter().map(Into::into).collect(),
    }))
}

/// The latest `limit` moves of `name`, newest first and never empty, or
/// the 4xx that says why there are none.
async fn name_moves(state: &ApiState, name: &str, limit: i64) -> Result<Vec<NameMove>, ApiError> {
    check_module_name("name", name)?;
    let moves = state.store.module_name_moves(name, limit).await?;
    if moves.is_empty() {
        return Err(name_not_found(name));
    }
    Ok(moves)
}

fn name_not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "module_name_not_found",
        format!("no module is named {name}"),
    )
}

/// `POST /v1/module-names/{name}/rollback`: points the name back where its
/// latest move took it from (itself a recorded move, so a second rollback
/// undoes the first); the latest move when the rollback runs
/// ([`Store::roll_back_module_name`](crate::store::Store::roll_back_module_name)).
#[utoipa::path(post, operation_id = "roll_back_module_name", path = "/v1/module-names/{name}/rollback", tag = "modules", params(("name" = String, Path, description = "A module name: `[a-z0-9][a-z0-9._-]*(:[a-z0-9._-]+)?`")),
    responses(
        (status = 200, description = "The name points where its latest move took it from", body = NameMoveView),
        (status = 404, description = "`module_name_not_found`; `module_not_found`: the module it pointed at before was deleted", body = ErrorBody),
        (status = 409, description = "`no_previous_module`: the name's first move has nothing to go back to; `too_many_names`: the module it would point at has as many names as a module may have (100)", body = ErrorBody),
    ))]
async fn roll_back_name(
    State(state): State<ApiState>,
    headers: HeaderMap,
    PathParams(name): PathParams<String>,
) -> Result<Json<NameMoveView>, ApiError> {
    check_module_name("name", &name)?;
    let moved = match state
        .store
        .roll_back_module_name(&name, &caller(&headers))
        .await?
    {
        NameRollback::Moved(moved) => moved,
        NameRollback::NoSuchName => return Err(name_not_found(&name)),
        NameRollback::NothingBefore { points_at } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_previous_module",
                format!("{name} pointed nowhere before {points_at}"),
            ));
        }
    };
    tracing::info!(name = %name, hash = %moved.to_hash, by = %moved.moved_by, "module name rolled back");
    Ok(Json(moved.into()))
}

/// `GET /v1/modules?limit=&cursor=`: modules in hash order.
#[utoipa::path(get, operation_id = "list_modules", path = "/v1/modules", tag = "modules", params(PageQuery),
    responses(
        (status = 200, description = "A page of modules in hash order", body = ModulePage),
        (status = 400, description = "`invalid_limit`, `invalid_field` (cursor), `invalid_query`", body = ErrorBody),
    ))]
async fn list(
    State(state): State<ApiState>,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<ModulePage>, ApiError> {
    let limit = page_limit(query.limit, PAGE_DEFAULT, PAGE_MAX)?;
    if let Some(cursor) = &query.cursor {
        check_module_hash("cursor", cursor)?;
    }
    let modules = state
        .store
        .list_modules(query.cursor.as_deref(), limit)
        .await?;
    let next_cursor = next_cursor(&modules, limit, |m| m.hash.clone());
    Ok(Json(ModulePage {
        modules: modules.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
