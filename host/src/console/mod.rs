//! The web console at `/ui`: server-rendered pages for people, over the
//! same store and the same actions as the REST API (docs/console.md).
//!
//! - [`session`]: log in with an API token once, then a session cookie;
//!   a CSRF token in every form
//! - [`overview`]: every queue, the last hour's activity, live workers
//! - [`jobs`]: the filtered, paginated list and bulk retry or cancel
//! - [`job`]: one job, its payloads and attempts; retry and cancel
//! - [`dead_letters`]: dead jobs by module and error; retry a group
//! - [`modules`], [`queues`]: what is uploaded; settings, pause, resume
//! - [`view`]: the frame, formatting and error page every page shares;
//!   templates in host/templates/console/, style and script in
//!   host/src/console/assets/
//!
//! The routes serve HTML to a browser, not a contract to clients, so they
//! are not in the OpenAPI document (host/tests/integration/openapi.rs
//! checks every other route is). Pages refresh themselves by fetching
//! their own address every few seconds (assets/console.js), with no
//! server state per viewer.
//!
//! With a read replica (`--database-read-url`), the lists and overviews
//! read it ([`crate::api::ApiParts::read`]); a job's own page, logins and
//! every action use the primary, so a job's page shows what was just done
//! to it, while a list shown right after a bulk action may lag it by the
//! replica's delay.

mod dead_letters;
mod job;
mod jobs;
mod modules;
mod overview;
mod queues;
pub mod session;
pub mod view;

use askama::Template;
use axum::Router;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::api::ApiState;
use view::{Chrome, ConsoleError};

/// The console's routes, under `/ui`.
pub fn router(state: ApiState) -> Router<ApiState> {
    let pages = Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/jobs", get(jobs::page))
        .route("/ui/jobs/bulk", post(jobs::bulk))
        .route("/ui/jobs/{id}", get(job::page))
        .route("/ui/jobs/{id}/retry", post(job::retry))
        .route("/ui/jobs/{id}/cancel", post(job::cancel))
        .route("/ui/dead-letters", get(dead_letters::page))
        .route("/ui/dead-letters/retry", post(dead_letters::retry))
        .route("/ui/modules", get(modules::page))
        .route("/ui/queues", get(queues::page))
        .route("/ui/queues/{name}/pause", post(queues::pause))
        .route("/ui/queues/{name}/resume", post(queues::resume))
        .route("/ui/logout", post(session::log_out))
        .layer(axum::middleware::from_fn_with_state(
            state,
            session::require_session,
        ));
    Router::new()
        .route("/ui/login", get(session::login_page).post(session::log_in))
        .route("/ui/assets/console.css", get(stylesheet))
        .route("/ui/assets/console.js", get(script))
        .merge(pages)
        .layer(DefaultBodyLimit::max(session::FORM_MAX_BYTES))
}

/// Cached for an hour: the files change only with the binary.
const ASSET_CACHE: &str = "public, max-age=3600";

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, ASSET_CACHE),
        ],
        include_str!("assets/console.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, ASSET_CACHE),
        ],
        include_str!("assets/console.js"),
    )
}

/// A confirmation before an action on several jobs: the question says how
/// many, the button repeats it, and the form re-sends the action's fields
/// with `confirm=yes`.
#[derive(Template)]
#[template(path = "console/confirm.html")]
pub(crate) struct Confirm {
    chrome: Chrome,
    question: String,
    detail: &'static str,
    /// What the action applies to, listed.
    items: Vec<String>,
    /// Where the form posts.
    action: String,
    /// The action's fields, sent again.
    fields: Vec<(String, String)>,
    button: String,
    /// Where "Back" goes.
    back: String,
}

/// A query string whose rejections are error pages.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ConsoleError))]
pub struct ConsoleQuery<T>(pub T);

/// Path parameters whose rejections are error pages.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ConsoleError))]
pub struct ConsolePath<T>(pub T);

/// A form whose rejections are error pages.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Form), rejection(ConsoleError))]
pub struct ConsoleForm<T>(pub T);

impl From<QueryRejection> for ConsoleError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

impl From<PathRejection> for ConsoleError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(StatusCode::NOT_FOUND, rejection.body_text())
    }
}

impl From<FormRejection> for ConsoleError {
    fn from(rejection: FormRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}
