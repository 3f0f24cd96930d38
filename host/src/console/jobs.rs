//! `GET /ui/jobs`: jobs newest first, filtered by state, queue, module
//! (hash or name) and id prefix, a page at a time (keyset on the id, so
//! page 1,000 costs what page 1 does); and `POST /ui/jobs/bulk`: retry or
//! cancel the jobs ticked, after a confirmation that says how many.

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::session::Session;
use super::view::{Chrome, ConsoleError, Done, ago, plural, redirect_with, render, short_hash};
use super::{Confirm, ConsoleQuery};
use crate::api::ApiState;
use crate::api::job_actions::{cancel_job, retry_job};
use crate::job::{IdPrefix, JobState, ModuleRef, attempts_used, check_queue_name};
use crate::store::{JobFilter, JobRecord};

/// Jobs a page lists.
const PAGE_JOBS: i64 = 50;

/// Most jobs one page with a module filter reads (see
/// [`Store::list_module_jobs`](crate::store::Store::list_module_jobs)):
/// about 50 ms where nothing matches (docs/benchmarks.md, "The console");
/// 100,000 took half a second.
const MODULE_SCAN: i64 = 10_000;

/// Most jobs one bulk action takes: a page, with room to spare.
const BULK_MAX_JOBS: usize = 500;

/// The filters as the form sends them; an empty field filters nothing.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct JobsQuery {
    state: Option<String>,
    queue: Option<String>,
    module: Option<String>,
    id: Option<String>,
    before: Option<String>,
}

impl JobsQuery {
    fn field(value: &Option<String>) -> Option<&str> {
        value
            .as_deref()
            .map(str::trim)
            .filter(|value| !value.is_empty())
    }

    /// The query string of these filters, with `before` for the next page.
    fn href(&self, before: Option<Uuid>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("state", &self.state),
            ("queue", &self.queue),
            ("module", &self.module),
            ("id", &self.id),
        ] {
            if let Some(value) = Self::field(value) {
                query.append_pair(name, value);
            }
        }
        if let Some(before) = before {
            query.append_pair("before", &before.to_string());
        }
        format!("/ui/jobs?{}", query.finish())
    }
}

/// One line of the list.
struct JobLine {
    id: Uuid,
    state: JobState,
    queue: String,
    module_hash: String,
    attempts: String,
    created: String,
    error_kind: Option<String>,
}

impl JobLine {
    fn of(job: &JobRecord, now: DateTime<Utc>) -> Self {
        Self {
            id: job.id,
            state: job.state,
            queue: job.queue.clone(),
            module_hash: job.module_hash.clone(),
            attempts: format!(
                "{} / {}",
                attempts_used(job.attempt, job.attempt_base),
                job.max_attempts
            ),
            created: ago(job.created_at, now),
            error_kind: error_kind(job),
        }
    }

    fn short_hash(&self) -> &str {
        short_hash(&self.module_hash)
    }
}

/// The `kind` of a job's last error.
pub fn error_kind(job: &JobRecord) -> Option<String> {
    job.last_error
        .as_ref()
        .and_then(|error| error.0.get("kind"))
        .and_then(|kind| kind.as_str())
        .map(str::to_owned)
}

#[derive(Template)]
#[template(path = "console/jobs.html")]
struct JobsPage {
    chrome: Chrome,
    query: JobsQuery,
    states: [JobState; 7],
    /// Why the filters match nothing, when they cannot.
    problem: Option<String>,
    /// Set when a module search stopped at its bound before filling the
    /// page.
    searched: Option<String>,
    jobs: Vec<JobLine>,
    /// This page's address, to come back to after a bulk action.
    here: String,
    next: Option<String>,
}

impl JobsPage {
    fn value<'a>(&self, field: &'a Option<String>) -> &'a str {
        field.as_deref().unwrap_or("")
    }

    fn selected(&self, state: &JobState) -> bool {
        JobsQuery::field(&self.query.state) == Some(state.as_str())
    }
}

/// `GET /ui/jobs`.
pub async fn page(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    ConsoleQuery(query): ConsoleQuery<JobsQuery>,
    ConsoleQuery(done): ConsoleQuery<Done>,
) -> Result<Response, ConsoleError> {
    let (jobs, resume_before, problem) = match filter(&state, &query).await? {
        Ok((filter, None)) => {
            let filter = &filter;
            let jobs = state
                .read(|store| async move { store.list_jobs(filter).await })
                .await?;
            (jobs, None, None)
        }
        Ok((filter, Some(module))) => {
            let (filter, module) = (&filter, &module);
            let page =
                state
                    .read(|store| async move {
                        store.list_module_jobs(filter, module, MODULE_SCAN).await
                    })
                    .await?;
            (page.jobs, page.resume_before, None)
        }
        Err(problem) => (Vec::new(), None, Some(problem)),
    };
    let now = Utc::now();
    let next = match jobs.last() {
        Some(last) if jobs.len() as i64 == PAGE_JOBS => Some(query.href(Some(last.id))),
        _ => resume_before.map(|before| query.href(Some(before))),
    };
    let searched = resume_before.map(|_| {
        format!(
            "A module's jobs are searched among {MODULE_SCAN} jobs at a time (no index \
             serves modules); these are all of them among the newest {MODULE_SCAN} \
             that match the other filters. \"Older →\" searches the next {MODULE_SCAN}."
        )
    });
    let before = JobsQuery::field(&query.before).and_then(|before| before.parse().ok());
    let page = JobsPage {
        chrome: session
            .chrome(state.tokens.is_open(), "jobs")
            .with_notice(&done),
        here: query.href(before),
        problem,
        searched,
        jobs: jobs.iter().map(|job| JobLine::of(job, now)).collect(),
        states: JobState::ALL,
        query,
        next,
    };
    Ok(render(StatusCode::OK, &page))
}

/// The store filter of `query` and the module hash it names, if any; `Err`
/// with a reason when it can match no job (a module name that names
/// nothing), and a [`ConsoleError`] when a field is malformed.
async fn filter(
    state: &ApiState,
    query: &JobsQuery,
) -> Result<Result<(JobFilter, Option<String>), String>, ConsoleError> {
    let mut filter = JobFilter {
        limit: PAGE_JOBS,
        ..JobFilter::default()
    };
    if let Some(name) = JobsQuery::field(&query.state) {
        filter.state = Some(
            name.parse()
                .map_err(|error: crate::job::state::UnknownName| {
                    ConsoleError::new(StatusCode::BAD_REQUEST, format!("state: {error}"))
                })?,
        );
    }
    if let Some(queue) = JobsQuery::field(&query.queue) {
        check_queue_name("queue", queue)?;
        filter.queue = Some(queue.to_owned());
    }
    if let Some(prefix) = JobsQuery::field(&query.id) {
        filter.id_prefix = Some(IdPrefix::parse("id", prefix)?);
    }
    if let Some(before) = JobsQuery::field(&query.before) {
        filter.before =
            Some(before.parse().map_err(|_| {
                ConsoleError::new(StatusCode::BAD_REQUEST, "before: must be a job id")
            })?);
    }
    let Some(module) = JobsQuery::field(&query.module) else {
        return Ok(Ok((filter, None)));
    };
    let hash = match ModuleRef::parse("module", module)? {
        ModuleRef::Hash(hash) => hash.to_owned(),
        ModuleRef::Name(name) => {
            // A name just given is looked for on the primary too.
            match state
                .read_unless(
                    |store| async move { store.module_names_for(&[name]).await },
                    |names| !names.contains_key(name),
                )
                .await?
                .remove(name)
            {
                Some(hash) => hash,
                None => return Ok(Err(format!("No module is named {name}."))),
            }
        }
    };
    Ok(Ok((filter, Some(hash))))
}

/// A bulk action: what, on which jobs, and whether it was confirmed.
struct BulkForm {
    action: BulkAction,
    ids: Vec<Uuid>,
    confirmed: bool,
    back: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkAction {
    Retry,
    Cancel,
}

impl BulkForm {
    /// Reads the form: `action`, `id` once per job, `confirm`, `back`.
    fn parse(body: &[u8]) -> Result<Self, ConsoleError> {
        let bad = |message: &str| ConsoleError::new(StatusCode::BAD_REQUEST, message);
        let mut action = None;
        let mut ids = Vec::new();
        let mut confirmed = false;
        let mut back = "/ui/jobs".to_owned();
        for (name, value) in form_urlencoded::parse(body) {
            match &*name {
                "action" => {
                    action = Some(match &*value {
                        "retry" => BulkAction::Retry,
                        "cancel" => BulkAction::Cancel,
                        _ => return Err(bad("action: must be retry or cancel")),
                    });
                }
                "id" => ids.push(
                    value
                        .parse()
                        .map_err(|_| bad("id: every id must be a job id"))?,
                ),
                "confirm" => confirmed = value == "yes",
                // Only a jobs page (never a redirect off the console) that
                // can be a `Location` header: no control characters.
                "back"
                    if value.starts_with("/ui/jobs")
                        && value.bytes().all(|byte| byte.is_ascii_graphic()) =>
                {
                    back = value.into_owned();
                }
                _ => {}
            }
        }
        let action = action.ok_or_else(|| bad("action: choose retry or cancel"))?;
        if ids.is_empty() {
            return Err(bad("Tick at least one job first."));
        }
        if ids.len() > BULK_MAX_JOBS {
            return Err(bad(&format!(
                "At most {BULK_MAX_JOBS} jobs can be acted on at once."
            )));
        }
        ids.sort();
        ids.dedup();
        Ok(Self {
            action,
            ids,
            confirmed,
            back,
        })
    }
}

/// `POST /ui/jobs/bulk`: asks for confirmation, then acts on each job.
pub async fn bulk(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let form = BulkForm::parse(&body)?;
    let count = form.ids.len() as u64;
    let verb = match form.action {
        BulkAction::Retry => "Retry",
        BulkAction::Cancel => "Cancel",
    };
    if !form.confirmed {
        let mut fields = vec![
            ("action".to_owned(), verb.to_lowercase()),
            ("back".to_owned(), form.back.clone()),
        ];
        fields.extend(form.ids.iter().map(|id| ("id".to_owned(), id.to_string())));
        let page = Confirm {
            chrome: session.chrome(state.tokens.is_open(), "jobs"),
            question: format!("{verb} {count} job{}?", plural(count)),
            detail: match form.action {
                BulkAction::Retry => {
                    "Dead and cancelled jobs start again with a fresh set of attempts; others are skipped."
                }
                BulkAction::Cancel => {
                    "Jobs that have not finished stop; running attempts are told to stop. Finished jobs are skipped."
                }
            },
            items: form.ids.iter().map(Uuid::to_string).collect(),
            action: "/ui/jobs/bulk".to_owned(),
            fields,
            button: format!("{verb} {count} job{}", plural(count)),
            back: form.back,
        };
        return Ok(render(StatusCode::OK, &page));
    }
    let mut acted = 0;
    for id in &form.ids {
        let result = match form.action {
            BulkAction::Retry => retry_job(&state, *id).await,
            BulkAction::Cancel => cancel_job(&state, *id).await,
        };
        match result {
            Ok(_) => acted += 1,
            Err(error) if error.status.is_client_error() => {}
            Err(error) => return Err(error.into()),
        }
    }
    let done = match form.action {
        BulkAction::Retry => "retried",
        BulkAction::Cancel => "cancelled",
    };
    Ok(redirect_with(
        &form.back,
        &Done::query(done, acted, count - acted),
    ))
}
