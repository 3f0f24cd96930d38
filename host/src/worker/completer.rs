//! Writes attempt outcomes to PostgreSQL, batched, and never drops one.
//!
//! Executions hand their [`FinishedAttempt`] to the completer and free their
//! slot at once. The completer takes everything queued (up to
//! [`MAX_BATCH`] outcomes and [`MAX_BATCH_BYTES`]) and commits it with one
//! [`Store::finish_if_lease_matches`] statement, so under load many outcomes
//! share a commit and when idle an outcome is written the moment it arrives.
//! If PostgreSQL is unreachable it retries with capped exponential backoff
//! for as long as it takes; the leases stay renewed meanwhile because the
//! attempts stay [`InFlight`] until their write settles.
//!
//! An outcome PostgreSQL refuses ([`StoreError::is_refusal`]: a value it
//! cannot store) can never jam the writer: the batch is written again one
//! outcome at a time, so the others go through, and the refused one is
//! recorded as a failed attempt (`outcome_rejected`) without its output and
//! log. Should even that be refused, it is given up: its attempt leaves
//! [`InFlight`], so its lease lapses and the rescuer ends it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::heartbeat::InFlight;
use crate::lease::{EndingAnnouncer, Leases};
use crate::store::{FinishedAttempt, Store, StoreError, Transition};
use crate::telemetry::Traces;

/// Most outcomes written in one statement.
pub const MAX_BATCH: usize = 512;

/// Most bytes of outcomes (outputs, logs, messages) written in one
/// statement. One outcome bigger than this is written alone. Bounds the
/// memory a batch takes while it is encoded and PostgreSQL's work per
/// statement.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

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
    /// after writing outcomes that schedule a retry; each written outcome
    /// of a traced job is recorded in `traces`.
    pub fn spawn(
        store: Store,
        leases: Leases,
        in_flight: InFlight,
        retry_scheduled: Arc<Notify>,
        traces: Traces,
    ) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_outcomes(
            receiver,
            store,
            leases,
            in_flight,
            retry_scheduled,
            traces,
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
    traces: Traces,
) {
    let endings = EndingAnnouncer::spawn(leases.redis().clone());
    let mut queued = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut queued, MAX_BATCH).await > 0 {
        let mut rest = queued.as_slice();
        while !rest.is_empty() {
            let (batch, after) = rest.split_at(batch_len(rest));
            let began = SystemTime::now();
            let transitions = write_with_retry(&store, batch).await;
            traces.outcomes_written(batch, &transitions, (began, SystemTime::now()));
            settle(
                batch,
                transitions,
                &leases,
                &in_flight,
                &retry_scheduled,
                &endings,
            )
            .await;
            rest = after;
        }
        queued.clear();
    }
}

/// How many of `outcomes` the next statement writes: as many as fit in
/// [`MAX_BATCH_BYTES`], and at least one.
fn batch_len(outcomes: &[FinishedAttempt]) -> usize {
    let mut bytes = 0;
    outcomes
        .iter()
        .position(|outcome| {
            bytes += outcome.size_bytes();
            bytes > MAX_BATCH_BYTES
        })
        .unwrap_or(outcomes.len())
        .max(1)
}

/// Stops tracking written outcomes, releases their lease keys, wakes the
/// scheduler if one of them scheduled a retry, and announces the jobs they
/// ended.
async fn settle(
    batch: &[FinishedAttempt],
    transitions: Vec<Transition>,
    leases: &Leases,
    in_flight: &InFlight,
    retry_scheduled: &Notify,
    endings: &EndingAnnouncer,
) {
    let mut to_release = Vec::new();
    let mut ended = Vec::new();
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
                retries |= attempt.end.retry_delay().is_some();
                if attempt.ends_job() {
                    ended.push(attempt.lease.job_id);
                }
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
    endings.announce(ended);
    metrics::counter!("taskflow_attempts_finished_total").increment(finished);
    if let Err(error) = leases.release(&to_release).await {
        tracing::debug!(%error, "could not release leases; they expire on their own");
    }
}

/// Writes `batch`, retrying while PostgreSQL is unreachable. A batch it
/// refuses is written again one outcome at a time ([`write_alone`]).
async fn write_with_retry(store: &Store, batch: &[FinishedAttempt]) -> Vec<Transition> {
    match write_until_answered(store, batch).await {
        Ok(transitions) => transitions,
        Err(error) if batch.len() == 1 => vec![write_refused(store, &batch[0], &error).await],
        Err(error) => {
            tracing::warn!(%error, outcomes = batch.len(), "PostgreSQL refused a batch of outcomes; writing them one by one");
            let mut transitions = Vec::with_capacity(batch.len());
            for attempt in batch {
                transitions.push(write_alone(store, attempt).await);
            }
            transitions
        }
    }
}

/// Writes one outcome; if PostgreSQL refuses it, records the attempt
/// without it ([`write_refused`]).
async fn write_alone(store: &Store, attempt: &FinishedAttempt) -> Transition {
    match write_until_answered(store, std::slice::from_ref(attempt)).await {
        Ok(transitions) => transitions[0],
        Err(error) => write_refused(store, attempt, &error).await,
    }
}

/// Records an attempt whose outcome PostgreSQL refused as failed with
/// `outcome_rejected`, without its output and log. If that is refused too,
/// the attempt is given up (reported `Stale`): its lease lapses and the
/// rescuer ends it.
async fn write_refused(store: &Store, attempt: &FinishedAttempt, error: &StoreError) -> Transition {
    let sqlstate = error.sqlstate().unwrap_or_else(|| "none".to_owned());
    tracing::error!(
        job_id = %attempt.lease.job_id, lease_token = attempt.lease.lease_token, %sqlstate, %error,
        "PostgreSQL refused an attempt's outcome; recording the attempt as failed without it"
    );
    metrics::counter!("taskflow_outcomes_refused_total").increment(1);
    let recorded = attempt.refused(&sqlstate);
    match write_until_answered(store, std::slice::from_ref(&recorded)).await {
        Ok(transitions) => transitions[0],
        Err(error) => {
            tracing::error!(
                job_id = %attempt.lease.job_id, lease_token = attempt.lease.lease_token, %error,
                "PostgreSQL refused the failed attempt record too; leaving the attempt to the rescuer"
            );
            Transition::Stale
        }
    }
}

/// Writes `batch` until PostgreSQL answers: retries with backoff while it is
/// unreachable or fails for any reason but refusing the values.
async fn write_until_answered(
    store: &Store,
    batch: &[FinishedAttempt],
) -> Result<Vec<Transition>, StoreError> {
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        match store.finish_if_lease_matches(batch).await {
            Ok(transitions) => return Ok(transitions),
            Err(error) if error.is_refusal() => return Err(error),
            Err(error) => {
                tracing::warn!(%error, outcomes = batch.len(), retry_in = ?delay, "cannot write outcomes; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{
        AfterFailure, AttemptEnd, AttemptLog, AttemptOutcome, AttemptRequests, FailureKind,
    };
    use crate::store::LeaseRef;

    fn outcome(output_bytes: usize) -> FinishedAttempt {
        FinishedAttempt {
            lease: LeaseRef {
                job_id: uuid::Uuid::now_v7(),
                lease_token: 1,
            },
            attempt: 1,
            worker_id: "w".into(),
            started_at: chrono::Utc::now(),
            end: AttemptEnd::Succeeded {
                output: vec![0; output_bytes],
            },
            usage: None,
            log: AttemptLog::empty(),
            requests: AttemptRequests::none(),
            if_refused: AfterFailure::Dead,
            trace: None,
        }
    }

    #[test]
    fn batches_are_bounded_by_bytes_and_hold_at_least_one_outcome() {
        let small: Vec<_> = (0..100).map(|_| outcome(1 << 10)).collect();
        assert_eq!(batch_len(&small), 100);
        let big: Vec<_> = (0..20).map(|_| outcome(1 << 20)).collect();
        assert_eq!(
            batch_len(&big),
            7,
            "8 MiB hold 7 outcomes of 1 MiB and change"
        );
        let huge = [outcome(MAX_BATCH_BYTES * 2), outcome(1)];
        assert_eq!(batch_len(&huge), 1, "an outcome over the bound goes alone");
    }

    #[test]
    fn a_refused_outcome_is_recorded_as_failed_without_what_was_refused() {
        let mut refused = outcome(10);
        refused.log = AttemptLog {
            lines_json: r#"[{"source":"log","message":"a"},{"source":"log","message":"b"}]"#.into(),
            kept: 2,
            dropped: 3,
        };
        let recorded = refused.refused("22021");
        assert_eq!(recorded.end.outcome(), AttemptOutcome::Failed);
        let (kind, message) = recorded.end.error().expect("a failure");
        assert_eq!(kind, FailureKind::OutcomeRejected);
        assert!(message.contains("22021"));
        assert_eq!(recorded.end.output(), None);
        assert_eq!(
            recorded.log,
            AttemptLog {
                lines_json: "[]".into(),
                kept: 0,
                dropped: 5
            }
        );
        assert_eq!(recorded.end.after_failure(), Some(AfterFailure::Dead));
        assert_eq!(recorded.lease, refused.lease);
    }
}
