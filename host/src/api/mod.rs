//! The control plane: REST routes over PostgreSQL.
//!
//! The API keeps no job state in memory. Each request validates its input,
//! runs one short transaction and answers; a restarted API loses nothing.
//! After a commit that makes jobs `available` it publishes a Redis wake-up
//! so an idle worker starts them within milliseconds.
//!
//! - [`modules`]: `PUT /v1/modules`, `GET /v1/modules[/{hash}]`
//! - [`jobs`]: `POST /v1/jobs[/batch]`, `GET /v1/jobs[/{id}[/attempts]]`,
//!   `DELETE /v1/jobs/{id}`
//! - [`job_actions`]: `POST /v1/jobs/{id}/cancel`, `POST /v1/jobs/{id}/retry`
//! - [`health`]: `GET /healthz`, `GET /readyz`, `GET /metrics`
//! - [`openapi`]: the contract, `GET /openapi.json` (docs/openapi.json)
//! - front ends served beside the API that log their users in themselves:
//!   the web console at `/ui` (`console/`, which builds on this module and
//!   is handed to [`serve`] by `cli/server.rs`, so neither imports the other
//!   back)
//! - [`auth`]: bearer tokens on every `/v1` route
//! - [`error`]: the one error type, `{"error": {"code", "message"}}`
//! - [`types`]: request and response bodies, shared with the CLI client

pub mod auth;
mod batch;
pub mod body;
pub mod error;
pub mod health;
pub mod job_actions;
pub mod jobs;
pub mod modules;
pub mod openapi;
mod params;
pub mod queues;
pub mod replica;
pub mod serve;
pub mod types;

use std::sync::Arc;

use axum::Router;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;
pub use params::{PathParams, QueryParams};

use crate::config::{ApiConfig, ApiLimits};
use crate::lease::{EndingAnnouncer, EndingWatcher, Leases, Redis, Waker};
use crate::sandbox::Compiler;
use crate::store::{Store, StoreResult};
use replica::{Answer, Replica};

/// What every handler can reach: one shared [`ApiParts`]. Axum clones the
/// state for every request and every middleware it passes, so a clone is
/// one reference count rather than one per part (the clones and drops of
/// the parts took 4 % of the API's CPU under 32 clients, docs/benchmarks.md).
#[derive(Clone)]
pub struct ApiState(Arc<ApiParts>);

impl ApiState {
    /// The state of an API made of `parts`.
    pub fn new(parts: ApiParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiParts;

    fn deref(&self) -> &ApiParts {
        &self.0
    }
}

/// How the read-only job and queue routes and the console's pages read:
/// from the read replica if there is one, else from the primary. What
/// writes, waits on a job or checks a login uses the primary alone.
impl ApiParts {
    /// `read` on the replica; on the primary if there is no replica or the
    /// replica fails (unreachable, not yet replayed the migration that made
    /// what `read` names, or silent for [`replica::READ_TIMEOUT`]): a
    /// replica makes reads cheaper, never a new way for them to fail.
    pub async fn read<T, Read>(&self, read: impl Fn(Store) -> Read) -> StoreResult<T>
    where
        Read: Future<Output = StoreResult<T>>,
    {
        self.read_unless(read, |_| false).await
    }

    /// As [`ApiParts::read`], and what the replica does not have yet
    /// (`None`) is looked for on the primary: a client always finds the job
    /// it just created.
    pub async fn read_found<T, Read>(&self, read: impl Fn(Store) -> Read) -> StoreResult<Option<T>>
    where
        Read: Future<Output = StoreResult<Option<T>>>,
    {
        self.read_unless(read, Option::is_none).await
    }

    /// As [`ApiParts::read`], and an answer of the replica's for which
    /// `on_primary` holds (it lacks what a client may just have written)
    /// is read again on the primary.
    pub async fn read_unless<T, Read>(
        &self,
        read: impl Fn(Store) -> Read,
        on_primary: impl Fn(&T) -> bool,
    ) -> StoreResult<T>
    where
        Read: Future<Output = StoreResult<T>>,
    {
        if let Some(replica) = &self.replica {
            let reason = match replica.answer(&read).await {
                Answer::Resting => "resting",
                Answer::Read(answer) if !on_primary(&answer) => return Ok(answer),
                Answer::Read(_) => "missing",
                Answer::Failed => "failed",
                Answer::TimedOut => "timed_out",
            };
            metrics::counter!("taskflow_replica_fallbacks_total", "reason" => reason).increment(1);
        }
        read(self.store.clone()).await
    }
}

/// The handles and settings an API's handlers use.
pub struct ApiParts {
    /// PostgreSQL.
    pub store: Store,
    /// The read replica (`--database-read-url`), if any: see
    /// [`ApiParts::read`].
    pub replica: Option<Replica>,
    /// Redis, for readiness checks.
    pub redis: Redis,
    /// Leases, to revoke the lease of a cancelled running job.
    pub leases: Leases,
    /// Wake-ups after jobs become available.
    pub waker: Waker,
    /// Announces the jobs a cancel ended, to those waiting on them.
    pub ending_announcer: EndingAnnouncer,
    /// Wakes the requests waiting on a job when it ends.
    pub endings: EndingWatcher,
    /// Group commit of single-job submissions.
    pub submitter: crate::store::Submitter,
    /// Compiles uploads to check them, in compiler processes.
    pub compiler: Compiler,
    /// Limits on what clients may ask for.
    pub limits: Arc<ApiLimits>,
    /// API settings.
    pub config: Arc<ApiConfig>,
    /// Places for uploads compiling or waiting to (see [`modules`]).
    pub upload_queue: Arc<Semaphore>,
    /// Bytes the request bodies in flight may hold (see [`body`]).
    pub budget: body::RequestBudget,
    /// Accepted API tokens; empty means the API is open.
    pub tokens: auth::TokenHashes,
    /// Seals queue secrets (`TASKFLOW_SECRET_KEY`); without it the API
    /// refuses to store one.
    pub secret_key: Option<crate::queue::SecretKey>,
    /// Records the spans of submissions (telemetry/traces.rs).
    pub traces: crate::telemetry::Traces,
}

/// All routes, with their state: the API's own and `front_ends`, routes
/// that sit outside the token check because they authenticate their users
/// themselves (the console's login).
pub fn router(state: ApiState, front_ends: Router<ApiState>) -> Router {
    // Everything but the probes, the contract and the front ends sits
    // behind the token check, unknown paths included, so a stranger cannot
    // even tell which routes exist.
    let authenticated = Router::from(authenticated_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.tokens.clone(),
            auth::require_token,
        ));
    // Every route, the front ends' too, answers an open API's browser
    // visitors only from this machine's own names (auth.rs).
    let guard = auth::LocalHostGuard(state.tokens.is_open() && !state.config.insecure_no_auth);
    Router::from(public_routes())
        .merge(front_ends)
        .merge(authenticated)
        .layer(axum::middleware::from_fn_with_state(
            guard,
            auth::require_local_host,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The `/v1` routes, documented.
fn authenticated_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .merge(modules::router())
        .merge(jobs::router())
        .merge(job_actions::router())
        .merge(queues::router())
}

/// The routes open without a token, documented.
fn public_routes() -> OpenApiRouter<ApiState> {
    health::router().merge(openapi::router())
}

/// The OpenAPI document `GET /openapi.json` serves (docs/openapi.json).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut routes = authenticated_routes().into_openapi();
    routes.merge(public_routes().into_openapi());
    openapi::document(routes)
}

/// Serves the API and `front_ends` ([`router`]) on `listener` until
/// `shutdown`, finishing requests in flight, under the connection limits of
/// its configuration ([`serve::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    front_ends: Router<ApiState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = serve::ConnectionLimits {
        max_connections: state.config.max_connections,
        header_timeout: state.config.request_header_timeout,
        open_gauge: "taskflow_api_connections_open",
    };
    serve::serve(listener, router(state, front_ends), limits, shutdown).await
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "route_not_found",
        "no such route; see the API reference in README.md",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Resolves a page size: `default` when absent, an error above `max`.
fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<i64, ApiError> {
    match limit.unwrap_or(default) {
        0 => Err(
            ApiError::bad_request("invalid_limit", "limit must be at least 1").for_field("limit"),
        ),
        n if n > max => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be at most {max}"),
        )
        .for_field("limit")),
        n => Ok(i64::from(n)),
    }
}

/// The cursor of the page after `page`, a full page of `limit` items (a
/// shorter one is the last): what `cursor` makes of its last item.
fn next_cursor<T>(page: &[T], limit: i64, cursor: impl Fn(&T) -> String) -> Option<String> {
    (page.len() as i64 == limit)
        .then(|| page.last().map(cursor))
        .flatten()
}

/// Default and largest page size of list routes.
const PAGE_DEFAULT: u32 = 50;
const PAGE_MAX: u32 = 500;
