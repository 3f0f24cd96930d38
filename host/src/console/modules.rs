//! `GET /ui/modules`: every uploaded module, its names, size and upload
//! time, with a link to the jobs that use it, a page at a time in hash
//! order. There is no count of those jobs: no index serves one (see
//! [`Store::list_module_jobs`](crate::store::Store::list_module_jobs)).

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;

use super::ConsoleQuery;
use super::session::Session;
use super::view::{Chrome, ConsoleError, ago, bytes, render};
use crate::api::ApiState;
use crate::job::check_module_hash;

/// Modules a page lists.
const PAGE_MODULES: i64 = 50;

/// One module, as the page shows it.
struct ModuleLine {
    hash: String,
    names: Vec<String>,
    size: String,
    uploaded: String,
}

#[derive(Template)]
#[template(path = "console/modules.html")]
struct Modules {
    chrome: Chrome,
    modules: Vec<ModuleLine>,
    next: Option<String>,
}

/// The page's query: the last hash of the previous page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ModulesQuery {
    after: Option<String>,
}

/// `GET /ui/modules`.
pub async fn page(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    ConsoleQuery(query): ConsoleQuery<ModulesQuery>,
) -> Result<Response, ConsoleError> {
    if let Some(after) = &query.after {
        check_module_hash("after", after)?;
    }
    let after = query.after.as_deref();
    let modules = state
        .read(|store| async move { store.list_modules(after, PAGE_MODULES).await })
        .await?;
    let hashes: Vec<&str> = modules.iter().map(|module| module.hash.as_str()).collect();
    let hashes = &hashes;
    let mut names = state
        .read(|store| async move { store.names_of_modules(hashes).await })
        .await?;
    let now = Utc::now();
    let next = (modules.len() as i64 == PAGE_MODULES)
        .then(|| {
            modules
                .last()
                .map(|module| format!("/ui/modules?after={}", module.hash))
        })
        .flatten();
    let page = Modules {
        chrome: session.chrome(state.tokens.is_open(), "modules"),
        modules: modules
            .into_iter()
            .map(|module| ModuleLine {
                names: names.remove(&module.hash).unwrap_or_default(),
                size: bytes(module.size_bytes.unsigned_abs()),
                uploaded: ago(module.created_at, now),
                hash: module.hash,
            })
            .collect(),
        next,
    };
    Ok(render(StatusCode::OK, &page))
}
