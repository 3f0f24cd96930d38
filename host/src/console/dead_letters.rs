//! `GET /ui/dead-letters`: dead jobs grouped by module and error kind,
//! largest group first; `POST /ui/dead-letters/retry` retries a whole
//! group after a confirmation that says how many.

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;

use super::session::Session;
use super::view::{Chrome, ConsoleError, Done, ago, plural, redirect_with, render, short_hash};
use super::{Confirm, ConsoleForm, ConsoleQuery};
use crate::api::ApiState;
use crate::job::{JobState, check_failure_code, check_module_hash};
use crate::store::DeadLetterGroup;

/// Most dead jobs the page groups: the newest. Bounded so the page costs
/// the same however many jobs are dead; it says when it reached the bound.
const GROUPED_JOBS: i64 = 10_000;

/// Jobs requeued per statement when retrying a group, so no statement
/// holds many row locks or runs long.
const REQUEUE_BATCH: i64 = 500;

/// One group, as the page shows it.
struct GroupLine {
    group: DeadLetterGroup,
    newest: String,
}

impl GroupLine {
    fn short_hash(&self) -> &str {
        short_hash(&self.group.module_hash)
    }

    /// The group's error kind as the retry form sends it (`""` for none).
    fn kind(&self) -> &str {
        self.group.error_kind.as_deref().unwrap_or("")
    }
}

#[derive(Template)]
#[template(path = "console/dead_letters.html")]
struct DeadLetters {
    chrome: Chrome,
    groups: Vec<GroupLine>,
    grouped: i64,
    /// All dead jobs, from the queue counters.
    dead: u64,
}

/// `GET /ui/dead-letters`.
pub async fn page(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    ConsoleQuery(done): ConsoleQuery<Done>,
) -> Result<Response, ConsoleError> {
    let groups = state
        .read(|store| async move { store.dead_letter_groups(GROUPED_JOBS).await })
        .await?;
    let dead = state
        .read(|store| async move { store.job_counts(None).await })
        .await?
        .values()
        .map(|counts| counts.get(JobState::Dead))
        .sum();
    let now = Utc::now();
    let page = DeadLetters {
        chrome: session
            .chrome(state.tokens.is_open(), "dead-letters")
            .with_notice(&done),
        grouped: groups.iter().map(|group| group.jobs).sum(),
        groups: groups
            .into_iter()
            .map(|group| GroupLine {
                newest: group.newest.map_or_else(String::new, |time| ago(time, now)),
                group,
            })
            .collect(),
        dead,
    };
    Ok(render(StatusCode::OK, &page))
}

/// The retry form of a group.
#[derive(Debug, serde::Deserialize)]
pub struct RetryGroup {
    module: String,
    /// Empty for the jobs that died without an error kind.
    #[serde(default)]
    kind: String,
    /// The group's size when the page was shown, for the question.
    #[serde(default)]
    jobs: u64,
    #[serde(default)]
    confirm: Option<String>,
}

/// `POST /ui/dead-letters/retry`: asks, then requeues every dead job of
/// the group, a batch at a time, and wakes their queues.
pub async fn retry(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    ConsoleForm(form): ConsoleForm<RetryGroup>,
) -> Result<Response, ConsoleError> {
    check_module_hash("module", &form.module)?;
    let kind = (!form.kind.is_empty()).then_some(form.kind.as_str());
    if let Some(kind) = kind {
        check_failure_code("kind", kind)?;
    }
    if form.confirm.as_deref() != Some("yes") {
        let page = Confirm {
            chrome: session.chrome(state.tokens.is_open(), "dead-letters"),
            question: format!(
                "Retry all {} dead job{} of module {} that ended with {}?",
                form.jobs,
                plural(form.jobs),
                short_hash(&form.module),
                kind.unwrap_or("no error kind")
            ),
            detail: "Each starts again with a fresh set of attempts. Jobs of the group that died after this page was shown are retried too.",
            items: Vec::new(),
            action: "/ui/dead-letters/retry".to_owned(),
            fields: vec![
                ("module".to_owned(), form.module.clone()),
                ("kind".to_owned(), form.kind.clone()),
                ("jobs".to_owned(), form.jobs.to_string()),
            ],
            button: format!("Retry {} job{}", form.jobs, plural(form.jobs)),
            back: "/ui/dead-letters".to_owned(),
        };
        return Ok(render(StatusCode::OK, &page));
    }
    let mut retried = 0;
    let died_by = Utc::now();
    let mut after = None;
    loop {
        let pass = state
            .store
            .requeue_dead_group(&form.module, kind, died_by, after, REQUEUE_BATCH)
            .await?;
        let Some(last_taken) = pass.last_taken else {
            break;
        };
        after = Some(last_taken);
        state
            .waker
            .wake(pass.requeued.iter().map(|(queue, _)| queue.as_str()));
        retried += pass
            .requeued
            .iter()
            .map(|(_, jobs)| jobs.unsigned_abs())
            .sum::<u64>();
    }
    Ok(redirect_with(
        "/ui/dead-letters",
        &Done::query("retried", retried, 0),
    ))
}
