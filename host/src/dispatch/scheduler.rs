//! The scheduler: `scheduled | retrying → available` when `run_at` comes.
//!
//! Runs every `dispatch_interval` (default 1 s), or sooner when the next job
//! falls due earlier. A worker [`nudge`](Scheduler::nudge)s the scheduler of
//! its process whenever it schedules a retry, so the scheduler looks again
//! at once: backoffs of this process's jobs are honoured to within a few
//! milliseconds. (A retry scheduled by another process, while this
//! scheduler sleeps, is promoted by that process's own scheduler.) Each pass
//! promotes due jobs in batches of [`BATCH_SIZE`] with one guarded statement
//! per batch, then publishes one wake-up per queue that received jobs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::lease::Waker;
use crate::store::Store;

/// Most jobs promoted by one statement.
pub const BATCH_SIZE: usize = 1000;

/// Shortest sleep between passes, so a flood of due jobs is promoted in
/// batches rather than one statement per job.
const MIN_SLEEP: Duration = Duration::from_millis(2);

/// Promotes due jobs; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Scheduler {
    store: Store,
    waker: Waker,
    nudge: Arc<Notify>,
}

impl Scheduler {
    /// A scheduler over `store`, waking workers through `waker`.
    pub fn new(store: Store, waker: Waker) -> Self {
        Self {
            store,
            waker,
            nudge: Arc::new(Notify::new()),
        }
    }

    /// Signal this to make the scheduler recompute its next wake-up now
    /// (after scheduling a job for a time sooner than it may be sleeping).
    pub fn nudge(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    /// Runs passes until `shutdown`, at least every `interval`.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        loop {
            let sleep = match self.run_once().await {
                Ok(promoted) if promoted >= BATCH_SIZE => Duration::ZERO,
                Ok(_) => match self.store.next_due_in().await {
                    Ok(Some(due_in)) => due_in.clamp(MIN_SLEEP, interval),
                    Ok(None) => interval,
                    Err(error) => {
                        tracing::warn!(%error, "scheduler cannot read the next due time");
                        interval
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "scheduler pass failed");
                    interval
                }
            };
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.nudge.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass: promotes up to [`BATCH_SIZE`] due jobs and wakes their
    /// queues. Returns how many were promoted.
    pub async fn run_once(&self) -> Result<usize, crate::store::StoreError> {
        let queues = self.store.promote_due(BATCH_SIZE).await?;
        if !queues.is_empty() {
            tracing::debug!(promoted = queues.len(), "promoted due jobs");
            self.waker.wake(queues.iter().map(String::as_str));
        }
        Ok(queues.len())
    }
}
