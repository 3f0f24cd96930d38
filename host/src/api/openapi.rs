//! The API's OpenAPI 3.1 contract, generated from the handlers' own
//! annotations and body types (`utoipa`), served at `GET /openapi.json` and
//! committed as docs/openapi.json (a test fails when the two differ:
//! host/tests/integration/openapi.rs).
//!
//! Each route module registers its handlers through
//! [`utoipa_axum::router::OpenApiRouter`], so a route cannot be served
//! without being documented. The responses every `/v1` operation may give
//! (401, 500, and for those with a body 400/413/415/503) are added here once
//! ([`add_bearer_and_shared_responses`]) rather than on each handler.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use bytes::Bytes;
use utoipa::OpenApi as _;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, Response, ResponseBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::ErrorBody;

/// `GET /openapi.json`.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(contract))
}

/// The document as served, serialized once.
static CONTRACT: LazyLock<Bytes> = LazyLock::new(|| {
    Bytes::from(
        serde_json::to_vec_pretty(&super::openapi_document())
            .expect("an OpenAPI document serializes"),
    )
});

/// `GET /openapi.json`: this contract.
#[utoipa::path(get, operation_id = "openapi", path = "/openapi.json", tag = "health",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
async fn contract() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], CONTRACT.clone())
}

/// The document's fixed parts: title, tags, the bearer scheme and the error
/// body every route shares.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "TaskFlow",
        description = "Run WebAssembly task components as background jobs: upload a module, \
                       submit jobs that reference it, read their attempts. Errors are \
                       `{\"error\": {\"code\", \"message\", \"field\"?}}`; `code` is stable.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "jobs", description = "Submit, read, cancel, retry and delete jobs"),
        (name = "modules", description = "Upload task components and name them"),
        (name = "queues", description = "Queue settings, limits, grants and stats"),
        (name = "health", description = "Probes and metrics, open without a token"),
    ),
)]
struct Fixed;

/// The complete document for the routes in `routes`.
pub fn document(routes: OpenApi) -> OpenApi {
    let mut document = Fixed::openapi();
    document.merge(routes);
    add_bearer_and_shared_responses(&mut document);
    document
}

/// Adds the bearer scheme, and the responses every `/v1` operation shares,
/// to each `/v1` operation.
fn add_bearer_and_shared_responses(openapi: &mut OpenApi) {
    let components = openapi.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    for (path, item) in openapi.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for operation in operations(item) {
            add_common_responses(operation);
        }
    }
}

fn operations(item: &mut utoipa::openapi::path::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn add_common_responses(operation: &mut Operation) {
    operation.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    let has_body = operation.request_body.is_some();
    let mut common = vec![
        (
            "401",
            "`unauthorized`: no bearer token, or one the server does not accept (only when \
             tokens are configured)",
        ),
        (
            "500",
            "`internal`: the server failed; the details are in its log, never in the answer",
        ),
    ];
    if has_body {
        common.extend([
            (
                "400",
                "`invalid_json`, `invalid_field` (with `field`), `bad_body`: the body is not \
                 what the operation takes",
            ),
            (
                "408",
                "`body_timeout`: the body did not arrive within the body timeout; \
                 `body_too_slow`: a body of declared length fell behind the pace that \
                 would bring it whole in time",
            ),
            ("413", "`body_too_large`: the body exceeds its limit"),
            (
                "415",
                "`unsupported_media_type`: the body's content type is not the one expected",
            ),
            (
                "503",
                "`busy`: the server holds as many request bodies as it allows; retry after \
                 `Retry-After`",
            ),
        ]);
    } else {
        common.push((
            "400",
            "`invalid_path`, `invalid_query`, `invalid_field` (with `field`): a parameter is \
             malformed or out of range",
        ));
    }
    for (status, description) in common {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .into()
}
