//! Group commit of concurrent submissions.
//!
//! With synchronous commits, PostgreSQL can make only a few thousand commits
//! a second from one client, each waiting for its WAL flush. Single-job
//! requests arriving together are therefore written together: a writer
//! takes every submission queued while the previous write was in flight and
//! inserts them with one statement and one commit
//! ([`Store::insert_jobs_independently`]). Each request still gets its own
//! answer: an idempotency conflict or an unknown module fails only its own
//! request. A lone request waits for nobody: it is written at once.

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::{LARGE_STATEMENT_BYTES, Store, StoreError, StoreResult, Submitted};
use crate::job::NewJob;

/// Most submissions written by one statement.
const MAX_GROUP: usize = 256;

/// Writes that may be in flight at once. More than one keeps PostgreSQL
/// busy while a commit waits for its WAL flush.
const WRITERS: usize = 2;

type Reply = oneshot::Sender<StoreResult<Submitted>>;

/// Hands single-job submissions to the group-commit writers.
#[derive(Debug, Clone)]
pub struct Submitter {
    sender: mpsc::Sender<(NewJob, Reply)>,
}

impl Submitter {
    /// Starts the writers on the current runtime.
    pub fn spawn(store: Store) -> Self {
        let (sender, receiver) = mpsc::channel::<(NewJob, Reply)>(MAX_GROUP * 16);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..WRITERS {
            let mut writer = Writer {
                store: store.clone(),
                connection: None,
            };
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let mut group = Vec::with_capacity(MAX_GROUP);
                loop {
                    if receiver.lock().await.recv_many(&mut group, MAX_GROUP).await == 0 {
                        return;
                    }
                    writer.write(&mut group).await;
                }
            });
        }
        Self { sender }
    }

    /// Inserts one job, in a group with whatever else is being submitted.
    ///
    /// # Errors
    ///
    /// This job's own error (its module is unknown, its idempotency key
    /// conflicts), or the error of the group write it was part of
    /// ([`StoreError::Group`]).
    pub async fn submit(&self, job: NewJob) -> StoreResult<Submitted> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((job, reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

/// One group-commit writer.
///
/// It keeps its connection from one group to the next: handing a connection
/// back to the pool costs a round trip to PostgreSQL (sqlx checks it) and a
/// task switch, which a client submitting one job after another would
/// otherwise pay on every request. A write that fails for a database reason
/// gives the connection back, and the pool replaces it if it broke.
struct Writer {
    store: Store,
    connection: Option<PoolConnection<Postgres>>,
}

impl Writer {
    async fn write(&mut self, group: &mut Vec<(NewJob, Reply)>) {
        let (jobs, replies): (Vec<NewJob>, Vec<Reply>) = group.drain(..).unzip();
        metrics::histogram!("taskflow_submit_group_size").record(jobs.len() as f64);
        let results = match self.insert(&jobs).await {
            Err(error) if error.is_refusal() && jobs.len() > 1 => {
                // Submissions are validated against what PostgreSQL can
                // store; should one still be refused, it must fail alone, not
                // every request grouped with it.
                tracing::warn!(%error, jobs = jobs.len(), "PostgreSQL refused a group of submissions; inserting them one by one");
                let mut results = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    results.push(self.insert_one(job).await);
                }
                Ok(results)
            }
            results => results,
        };
        let connection_suspect = match &results {
            Ok(results) => results
                .iter()
                .any(|r| matches!(r, Err(e) if is_database_failure(e))),
            Err(error) => !error.is_refusal(),
        };
        let large = jobs.iter().map(NewJob::size_bytes).sum::<usize>() > LARGE_STATEMENT_BYTES;
        if let Some(mut connection) = self.connection.take_if(|_| connection_suspect || large) {
            // A broken connection is replaced by the pool; one that carried
            // a large group would keep buffers that large (see
            // `LARGE_STATEMENT_BYTES`).
            if large {
                connection.close_on_drop();
            }
        }
        match results {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Group(error.clone())));
                }
            }
        }
    }

    async fn insert_one(&mut self, job: &NewJob) -> StoreResult<Submitted> {
        let mut results = self.insert(std::slice::from_ref(job)).await?;
        results.pop().expect("one result per job")
    }

    async fn insert(&mut self, jobs: &[NewJob]) -> StoreResult<Vec<StoreResult<Submitted>>> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            empty => empty.insert(self.store.pool.acquire().await?),
        };
        self.store.insert_jobs_independently(connection, jobs).await
    }
}

/// Whether an error says the connection may be unusable, rather than
/// something about the submission.
fn is_database_failure(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(_) | StoreError::Unavailable(_)) && !error.is_refusal()
}
