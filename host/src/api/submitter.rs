//! Group commit of concurrent submissions.
//!
//! With synchronous commits, PostgreSQL can make only a few thousand commits
//! a second from one client, each waiting for its WAL flush. Single-job
//! requests arriving together are therefore written together: the
//! submitter takes every submission queued while the previous write was in
//! flight and inserts them with one statement and one commit
//! ([`Store::insert_jobs_independently`]). Each request still gets its own
//! answer: an idempotency conflict or an unknown module fails only its own
//! request. A lone request waits for nobody: it is written at once.

use tokio::sync::{mpsc, oneshot};

use super::ApiError;
use crate::store::{NewJob, Store, Submitted};

/// Most submissions written by one statement.
const MAX_GROUP: usize = 256;

/// Writes that may be in flight at once. More than one keeps PostgreSQL
/// busy while a commit waits for its WAL flush.
const WRITERS: usize = 2;

type Reply = oneshot::Sender<Result<Submitted, ApiError>>;

/// Hands single-job submissions to the group-commit writers.
#[derive(Debug, Clone)]
pub struct Submitter {
    sender: mpsc::Sender<(NewJob, Reply)>,
}

impl Submitter {
    /// Starts the writers on the current runtime.
    pub fn spawn(store: Store) -> Self {
        let (sender, receiver) = mpsc::channel::<(NewJob, Reply)>(MAX_GROUP * 16);
        let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..WRITERS {
            let (store, receiver) = (store.clone(), receiver.clone());
            tokio::spawn(async move {
                let mut group = Vec::with_capacity(MAX_GROUP);
                loop {
                    if receiver.lock().await.recv_many(&mut group, MAX_GROUP).await == 0 {
                        return;
                    }
                    write(&store, &mut group).await;
                }
            });
        }
        Self { sender }
    }

    /// Inserts one job, in a group with whatever else is being submitted.
    pub async fn submit(&self, job: NewJob) -> Result<Submitted, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((job, reply))
            .await
            .map_err(|_| ApiError::internal("the submission writer stopped"))?;
        answer
            .await
            .map_err(|_| ApiError::internal("the submission writer dropped a request"))?
    }
}

async fn write(store: &Store, group: &mut Vec<(NewJob, Reply)>) {
    let jobs: Vec<NewJob> = group.iter().map(|(job, _)| job.clone()).collect();
    metrics::histogram!("taskflow_submit_group_size").record(jobs.len() as f64);
    match store.insert_jobs_independently(&jobs).await {
        Ok(results) => {
            for ((_, reply), result) in group.drain(..).zip(results) {
                let _ = reply.send(result.map_err(ApiError::from));
            }
        }
        Err(error) => {
            let error = ApiError::from(error);
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
