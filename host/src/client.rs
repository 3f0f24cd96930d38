//! A typed HTTP client for the TaskFlow API, used by the CLI and by tests.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::api::error::ErrorBody;
use crate::api::jobs::MAX_JOB_WAIT;
use crate::api::types::{
    AttemptList, AttemptQuery, JobPage, JobQuery, JobView, ModuleNameList, ModuleNameView,
    ModulePage, ModuleView, NameMoveView, PageQuery, PatchQueue, PutQueue, QueueList, QueueView,
    SubmitBatch, SubmitJob, SubmittedBatch, SubmittedJob,
};

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API could not be reached.
    #[error(
        "cannot reach the TaskFlow API at {url} ({source}); is `taskflow api` running? (--api / TASKFLOW_API_URL)"
    )]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The API answered with an error.
    #[error("{message} ({status}, {code})")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error's stable code.
        code: String,
        /// The error's message.
        message: String,
    },
    /// The API answered with something this client does not understand.
    #[error("unexpected response from the API: {0}")]
    Unexpected(String),
    /// A module hash, name or queue name that cannot be one path segment
    /// (`.` or `..`, which a URL resolves to another resource).
    #[error("{0:?} cannot name a module or a queue")]
    InvalidName(String),
    /// `wait` gave up.
    #[error("job {0} did not finish within {1:?}")]
    WaitTimedOut(Uuid, Duration),
}

/// Every byte but letters, digits and `-._~` is percent-encoded in a path
/// segment, so a `/`, `?`, `#` or `%` in a name cannot change which
/// resource a request reaches.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The start of a body an error quotes, as printable text (a server's
/// page may hold anything).
fn quoted(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY_BYTES)]);
    let more = if body.len() > QUOTED_BODY_BYTES {
        "…"
    } else {
        ""
    };
    format!("{}{more}", crate::cli::terminal::printable(&text))
}

/// `text` as one path segment of a request's URL.
fn segment(text: &str) -> Result<percent_encoding::PercentEncode<'_>, ClientError> {
    if text.is_empty() || text == "." || text == ".." {
        return Err(ClientError::InvalidName(text.to_owned()));
    }
    Ok(percent_encoding::utf8_percent_encode(text, SEGMENT))
}

/// Most bytes of a successful response the client reads: more than any
/// answer of the API (PostgreSQL holds no value over 1 GB), and a bound on
/// a server that never ends its body.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// Most bytes of an error response the client reads. The API's errors are
/// small JSON objects; anything bigger is a proxy's page or a hostile
/// server, and only its start is quoted ([`QUOTED_BODY_BYTES`]).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// The least time between two reads of a job `get_job_when_ended` makes,
/// for a server that answers without waiting.
const EARLY_ANSWER_PAUSE: Duration = Duration::from_millis(250);

/// Most bytes of a response body an error message quotes.
const QUOTED_BODY_BYTES: usize = 512;

/// A client of one TaskFlow API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    traceparent: Option<String>,
}

impl Client {
    /// A client of the API at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .tcp_nodelay(true)
                .http1_only()
                .build()
                .expect("a default HTTP client builds"),
            base: base_url.trim_end_matches('/').to_owned(),
            token: None,
            traceparent: None,
        }
    }

    /// Sends `token` as `Authorization: Bearer <token>` on every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Sends `traceparent` (a W3C trace context) with submissions, so that
    /// the jobs' spans join the caller's trace.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// Uploads a component. Returns the module and whether it is new.
    pub async fn push_module(&self, bytes: Vec<u8>) -> Result<(ModuleView, bool), ClientError> {
        let request = self
            .http
            .put(self.url("/v1/modules"))
            .header("content-type", "application/wasm")
            .body(bytes);
        let (status, module) = self.send_with_status(request).await?;
        Ok((module, status == StatusCode::CREATED))
    }

    /// A module's record.
    pub async fn get_module(&self, hash: &str) -> Result<ModuleView, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/modules/{}", segment(hash)?))),
        )
        .await
    }

    /// Deletes a module nothing uses.
    pub async fn delete_module(&self, hash: &str) -> Result<ModuleView, ClientError> {
        self.send(
            self.http
                .delete(self.url(&format!("/v1/modules/{}", segment(hash)?))),
        )
        .await
    }

    /// Points `name` at module `hash`.
    pub async fn name_module(&self, hash: &str, name: &str) -> Result<NameMoveView, ClientError> {
        self.send(self.http.put(self.url(&format!(
            "/v1/modules/{}/names/{}",
            segment(hash)?,
            segment(name)?
        ))))
        .await
    }

    /// A page of module names and where they point.
    pub async fn module_names(
        &self,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<ModuleNameList, ClientError> {
        self.send(
            self.http
                .get(self.url("/v1/module-names"))
                .query(&PageQuery {
                    limit,
                    cursor: cursor.map(str::to_owned),
                }),
        )
        .await
    }

    /// One module name, with its moves.
    pub async fn module_name(&self, name: &str) -> Result<ModuleNameView, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/module-names/{}", segment(name)?))),
        )
        .await
    }

    /// Points `name` back where its latest move took it from.
    pub async fn roll_back_module_name(&self, name: &str) -> Result<NameMoveView, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/module-names/{}/rollback", segment(name)?))),
        )
        .await
    }

    /// A page of modules.
    pub async fn list_modules(
        &self,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<ModulePage, ClientError> {
        self.send(self.http.get(self.url("/v1/modules")).query(&PageQuery {
            limit,
            cursor: cursor.map(str::to_owned),
        }))
        .await
    }

    /// A queue's settings (secrets by name only).
    pub async fn get_queue(&self, name: &str) -> Result<QueueView, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/queues/{}", segment(name)?))),
        )
        .await
    }

    /// Replaces a queue's settings.
    pub async fn put_queue(&self, name: &str, queue: &PutQueue) -> Result<QueueView, ClientError> {
        self.send(
            self.http
                .put(self.url(&format!("/v1/queues/{}", segment(name)?)))
                .json(queue),
        )
        .await
    }

    /// Changes the fields of a queue's settings that `patch` gives.
    pub async fn patch_queue(
        &self,
        name: &str,
        patch: &PatchQueue,
    ) -> Result<QueueView, ClientError> {
        self.send(
            self.http
                .patch(self.url(&format!("/v1/queues/{}", segment(name)?)))
                .json(patch),
        )
        .await
    }

    /// Pauses (`true`) or resumes a queue.
    pub async fn set_queue_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<QueueView, ClientError> {
        let action = if paused { "pause" } else { "resume" };
        self.send(
            self.http
                .post(self.url(&format!("/v1/queues/{}/{action}", segment(name)?))),
        )
        .await
    }

    /// Every configured queue.
    pub async fn list_queues(&self) -> Result<QueueList, ClientError> {
        self.send(self.http.get(self.url("/v1/queues"))).await
    }

    /// Submits a job.
    pub async fn submit(&self, job: &SubmitJob) -> Result<SubmittedJob, ClientError> {
        self.send(self.traced(self.http.post(self.url("/v1/jobs"))).json(job))
            .await
    }

    /// Submits jobs in one transaction.
    pub async fn submit_batch(&self, jobs: &SubmitBatch) -> Result<SubmittedBatch, ClientError> {
        self.send(
            self.traced(self.http.post(self.url("/v1/jobs/batch")))
                .json(jobs),
        )
        .await
    }

    /// A job with its payloads.
    pub async fn get_job(&self, id: Uuid) -> Result<JobView, ClientError> {
        self.send(self.http.get(self.url(&format!("/v1/jobs/{id}"))))
            .await
    }

    /// A page of jobs.
    pub async fn list_jobs(&self, query: &JobQuery) -> Result<JobPage, ClientError> {
        self.send(self.http.get(self.url("/v1/jobs")).query(query))
            .await
    }

    /// A page of a job's finished attempts.
    pub async fn attempts_page(
        &self,
        id: Uuid,
        query: &AttemptQuery,
    ) -> Result<AttemptList, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/jobs/{id}/attempts")))
                .query(query),
        )
        .await
    }

    /// Every finished attempt of a job, following the pages.
    ///
    /// # Errors
    ///
    /// [`ClientError::Unexpected`] for pages that do not advance: one with
    /// a next cursor but no attempt, or one whose next cursor is the one it
    /// was asked with.
    pub async fn attempts(&self, id: Uuid) -> Result<AttemptList, ClientError> {
        let mut all = self.attempts_page(id, &AttemptQuery::default()).await?;
        let mut asked = None;
        let mut page_was_empty = all.attempts.is_empty();
        while let Some(cursor) = all.next_cursor.take() {
            if page_was_empty || asked.as_ref() == Some(&cursor) {
                return Err(ClientError::Unexpected(format!(
                    "the pages of job {id}'s attempts do not advance (cursor {cursor:?})"
                )));
            }
            let query = AttemptQuery {
                cursor: Some(cursor.clone()),
                ..AttemptQuery::default()
            };
            let page = self.attempts_page(id, &query).await?;
            page_was_empty = page.attempts.is_empty();
            all.attempts.extend(page.attempts);
            all.next_cursor = page.next_cursor;
            asked = Some(cursor);
        }
        Ok(all)
    }

    /// Cancels a job.
    pub async fn cancel(&self, id: Uuid) -> Result<JobView, ClientError> {
        self.send(self.http.post(self.url(&format!("/v1/jobs/{id}/cancel"))))
            .await
    }

    /// Requeues a dead or cancelled job.
    pub async fn retry(&self, id: Uuid) -> Result<JobView, ClientError> {
        self.send(self.http.post(self.url(&format!("/v1/jobs/{id}/retry"))))
            .await
    }

    /// Deletes a finished job and its attempts; returns it as it was.
    pub async fn delete_job(&self, id: Uuid) -> Result<JobView, ClientError> {
        self.send(self.http.delete(self.url(&format!("/v1/jobs/{id}"))))
            .await
    }

    /// The job once it has reached `succeeded`, `dead` or `cancelled`.
    ///
    /// # Errors
    ///
    /// [`ClientError::WaitTimedOut`] if it has not within `timeout`.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<JobView, ClientError> {
        let job = self.get_job_when_ended(id, timeout).await?;
        if job.state.is_final() {
            Ok(job)
        } else {
            Err(ClientError::WaitTimedOut(id, timeout))
        }
    }

    /// The job as soon as it has ended, or as it is after `at_most`: long
    /// polls (`GET /v1/jobs/{id}?wait=`, at most [`MAX_JOB_WAIT`] a
    /// request), so the answer comes the moment the API hears of the end.
    pub async fn get_job_when_ended(
        &self,
        id: Uuid,
        at_most: Duration,
    ) -> Result<JobView, ClientError> {
        let deadline = Instant::now() + at_most;
        loop {
            let asked = Instant::now();
            let wait = deadline.saturating_duration_since(asked).min(MAX_JOB_WAIT);
            let job: JobView = self
                .send(
                    self.http
                        .get(self.url(&format!("/v1/jobs/{id}")))
                        .query(&[("wait", format!("{}ms", wait.as_millis()))]),
                )
                .await?;
            if job.state.is_final() || Instant::now() >= deadline {
                return Ok(job);
            }
            // An answer long before the wait asked for, with the job not
            // ended: a server that does not long-poll (an older API, a
            // proxy that drops the query). Ask again at a polling pace.
            let next = (asked + EARLY_ANSWER_PAUSE).min(deadline);
            tokio::time::sleep_until(next.into()).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `request` with the `traceparent` header, if one is set.
    fn traced(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.traceparent {
            Some(traceparent) => request.header("traceparent", traceparent),
            None => request,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        Ok(self.send_with_status(request).await?.1)
    }

    async fn send_with_status<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, T), ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if !status.is_success() {
            let body = self.body(response, MAX_ERROR_BODY_BYTES).await?;
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(error) => ClientError::Api {
                    status,
                    code: error.error.code,
                    message: error.error.message,
                },
                Err(_) => ClientError::Unexpected(format!("{status}: {}", quoted(&body))),
            });
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
        {
            return Err(ClientError::Unexpected(format!(
                "a response of {} bytes",
                response.content_length().unwrap_or_default()
            )));
        }
        let body = self.body(response, MAX_RESPONSE_BYTES).await?;
        if body.len() >= MAX_RESPONSE_BYTES {
            return Err(ClientError::Unexpected(format!(
                "a response over {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        let value = serde_json::from_slice(&body)
            .map_err(|error| ClientError::Unexpected(format!("{error}: {}", quoted(&body))))?;
        Ok((status, value))
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            source,
        }
    }

    /// At most `limit` bytes of `response`'s body: reading stops there.
    async fn body(
        &self,
        mut response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let mut body = Vec::new();
        while body.len() < limit {
            let chunk = response.chunk().await.map_err(|e| self.unreachable(e))?;
            let Some(chunk) = chunk else { break };
            body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]);
        }
        Ok(body)
    }
}
