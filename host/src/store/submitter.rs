//! Group commit of concurrent submissions.
//!
//! With synchronous commits, PostgreSQL can make only a few thousand commits
//! a second from one client, each waiting for its WAL flush. Single-job
//! requests arriving together are therefore written together: the writer
//! takes every submission queued while the previous write was in flight and
//! inserts them with one statement and one commit
//! ([`Store::insert_jobs_independently`]). Each request still gets its own
//! answer: an idempotency conflict or an unknown module fails only its own
//! request.
//!
//! There is one group writer, so at most two writes are in flight: a lone
//! one (below) and a group. With two group writers, 32 clients formed
//! groups of 7.6 jobs on average instead of 10.5, PostgreSQL spent about
//! 34 µs of CPU per job instead of 24, and 15 % fewer requests were
//! answered a second (docs/benchmarks.md, "One group writer").
//!
//! A lone request waits for nobody, nor for another task: when nothing is
//! being written, it writes its job from its own task
//! ([`Submitter::submit`]). Handing it to a writer task and back would cost
//! two task wake-ups, each a context switch when the tasks are on different
//! threads: more than the rest of a request's CPU on some machines
//! (docs/benchmarks.md, issue 15).

use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{LARGE_STATEMENT_BYTES, Store, StoreError, StoreResult, Submitted, pool};
use crate::job::NewJob;

/// Most submissions written by one statement.
const MAX_GROUP: usize = 256;

type Reply = oneshot::Sender<StoreResult<Submitted>>;

/// Hands single-job submissions to the group-commit writer.
#[derive(Debug, Clone)]
pub struct Submitter {
    sender: mpsc::Sender<(NewJob, Reply)>,
    /// Writes in flight, lone or grouped.
    writing: Arc<AtomicUsize>,
    /// The writer a lone submission uses, from its own task.
    lone: Arc<tokio::sync::Mutex<Writer>>,
}

impl Submitter {
    /// Starts the group writer on the current runtime.
    pub fn spawn(store: Store) -> Self {
        let (sender, mut receiver) = mpsc::channel::<(NewJob, Reply)>(MAX_GROUP * 16);
        let writing = Arc::new(AtomicUsize::new(0));
        let mut writer = Writer::new(store.clone());
        let in_flight = writing.clone();
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(MAX_GROUP);
            while receiver.recv_many(&mut group, MAX_GROUP).await > 0 {
                let _writing = Writing::start(&in_flight);
                writer.write(&mut group).await;
            }
        });
        Self {
            sender,
            writing,
            lone: Arc::new(tokio::sync::Mutex::new(Writer::new(store))),
        }
    }

    /// Inserts one job: at once from this task if nothing else is being
    /// written, else in a group with whatever else is being submitted.
    ///
    /// Should the caller stop waiting (its client went away), a lone write
    /// stops where it is: the job is then written or not, as when an answer
    /// is lost on the way back, and the connection finishes the statement
    /// before its next one (sqlx waits for it).
    ///
    /// # Errors
    ///
    /// This job's own error (its module is unknown, its idempotency key
    /// conflicts), or the error of the group write it was part of
    /// ([`StoreError::Group`]).
    pub async fn submit(&self, job: NewJob) -> StoreResult<Submitted> {
        if let Some(mut writer) = self.lone_writer() {
            let _writing = Writing::start(&self.writing);
            return writer.write_one(job).await;
        }
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((job, reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// The lone writer, if nothing is being written nor waits to be.
    fn lone_writer(&self) -> Option<tokio::sync::MutexGuard<'_, Writer>> {
        let idle = self.writing.load(Ordering::Acquire) == 0
            && self.sender.capacity() == self.sender.max_capacity();
        idle.then(|| self.lone.try_lock().ok()).flatten()
    }
}

/// A write in flight, counted in [`Submitter::writing`] while it lives.
struct Writing<'a>(&'a AtomicUsize);

impl<'a> Writing<'a> {
    fn start(writing: &'a AtomicUsize) -> Self {
        writing.fetch_add(1, Ordering::AcqRel);
        Self(writing)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One group-commit writer.
///
/// It keeps its connection from one group to the next: handing a connection
/// back to the pool costs a round trip to PostgreSQL (sqlx checks it) and a
/// task switch, which a client submitting one job after another would
/// otherwise pay on every request. A write that fails for a database reason
/// gives the connection back, and the pool replaces it if it broke.
#[derive(Debug)]
struct Writer {
    store: Store,
    connection: Option<pool::Connection>,
}

impl Writer {
    fn new(store: Store) -> Self {
        Self {
            store,
            connection: None,
        }
    }

    /// Writes a group and answers each of its submissions.
    async fn write(&mut self, group: &mut Vec<(NewJob, Reply)>) {
        let (jobs, replies): (Vec<NewJob>, Vec<Reply>) = group.drain(..).unzip();
        match self.insert_group(&jobs).await {
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

    /// Writes one job, alone.
    async fn write_one(&mut self, job: NewJob) -> StoreResult<Submitted> {
        let mut results = self.insert_group(std::slice::from_ref(&job)).await?;
        results.pop().expect("one result per job")
    }

    /// Inserts `jobs` with one statement (one by one should PostgreSQL
    /// refuse the group), keeping the connection for the next group unless
    /// it may be broken or grew large buffers.
    async fn insert_group(&mut self, jobs: &[NewJob]) -> StoreResult<Vec<StoreResult<Submitted>>> {
        metrics::histogram!("taskflow_submit_group_size").record(jobs.len() as f64);
        let results = match self.insert(jobs).await {
            Err(error) if error.is_refusal() && jobs.len() > 1 => {
                // Submissions are validated against what PostgreSQL can
                // store; should one still be refused, it must fail alone, not
                // every request grouped with it.
                tracing::warn!(%error, jobs = jobs.len(), "PostgreSQL refused a group of submissions; inserting them one by one");
                let mut results = Vec::with_capacity(jobs.len());
                for job in jobs {
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
        results
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
        self.store
            .insert_jobs_independently(connection.statements(), jobs)
            .await
    }
}

/// Whether an error says the connection may be unusable, rather than
/// something about the submission.
fn is_database_failure(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(_) | StoreError::Unavailable(_)) && !error.is_refusal()
}
