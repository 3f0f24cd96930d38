//! Writes attempt outcomes to PostgreSQL, batched, and never drops one.
//!
//! Executions hand their [`FinishedAttempt`] to the completer and free their
//! slot at once. The completer takes everything queued (up to
//! [`MAX_BATCH`]) and commits it with one
//! [`Store::finish_if_lease_matches`] statement, so under load many outcomes
//! share a commit and when idle an outcome is written the moment it arrives.
//! If PostgreSQL is unreachable it retries with capped exponential backoff
//! for as long as it takes; the leases stay renewed meanwhile because the
//! attempts stay [`InFlight`] until their write settles.

use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::heartbeat::InFlight;
use crate::lease::Leases;
use crate::store::{FinishedAttempt, NextState, Store, Transition};

/// Most outcomes written in one statement.
pub const MAX_BATCH: usize = 512;

/// First delay before retrying a failed write; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Queues outcomes for the completer task.
#[derive(Debug, Clone)]
pub struct Completer {
    sender: mpsc::UnboundedSender<FinishedAttempt>,
}

impl Completer {
    /// Starts the completer task. It runs until every [`Completer`] clone is
    /// dropped and the queue is written out. `retry_scheduled` is signalled
    /// after writing outcomes that schedule a retry.
    pub fn spawn(
        store: Store,
        leases: Leases,
        in_flight: InFlight,
        retry_scheduled: Arc<Notify>,
    ) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_outcomes(
            receiver,
            store,
            leases,
            in_flight,
            retry_scheduled,
        ));
        (Self { sender }, task)
    }

    /// Queues an outcome for writing.
    pub fn submit(&self, attempt: FinishedAttempt) {
        if self.sender.send(attempt).is_err() {
            // Only possible if the completer task panicked; the attempt's
            // lease will lapse and the rescuer will run the job again.
            tracing::error!("completer is gone; an outcome was not written");
        }
    }
}

async fn write_outcomes(
    mut receiver: mpsc::UnboundedReceiver<FinishedAttempt>,
    store: Store,
    leases: Leases,
    in_flight: InFlight,
    retry_scheduled: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let transitions = write_with_retry(&store, &batch).await;
        let mut to_release = Vec::new();
        let mut finished = 0;
        let mut retries = false;
        for (attempt, transition) in batch.iter().zip(transitions) {
            let in_redis = in_flight.remove(attempt.lease);
            match transition {
                Transition::Applied => {
                    finished += 1;
                    if in_redis {
                        to_release.push(attempt.lease);
                    }
                    retries |= matches!(attempt.next, NextState::Retrying { .. });
                }
                Transition::Stale => {
                    metrics::counter!("taskflow_stale_outcomes_total").increment(1);
                    tracing::warn!(
                        job_id = %attempt.lease.job_id,
                        lease_token = attempt.lease.lease_token,
                        "lost the lease before the outcome was written (job rescued, cancelled or \
                         claimed again); outcome discarded"
                    );
                }
            }
        }
        if retries {
            retry_scheduled.notify_one();
        }
        metrics::counter!("taskflow_attempts_finished_total").increment(finished);
        if let Err(error) = leases.release(&to_release).await {
            tracing::debug!(%error, "could not release leases; they expire on their own");
        }
        batch.clear();
    }
}

async fn write_with_retry(store: &Store, batch: &[FinishedAttempt]) -> Vec<Transition> {
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        match store.finish_if_lease_matches(batch).await {
            Ok(transitions) => return transitions,
            Err(error) => {
                tracing::warn!(%error, outcomes = batch.len(), retry_in = ?delay, "cannot write outcomes; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}
