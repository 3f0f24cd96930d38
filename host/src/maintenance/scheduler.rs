//! The scheduler: `scheduled | retrying → available` when `run_at` comes.
//!
//! Runs on the maintenance leader every `maintenance_interval` (default
//! 1 s), or sooner when the next job falls due earlier. A worker
//! [`nudge`](Scheduler::nudge)s the scheduler of its process whenever it
//! schedules a retry, so a leader looks again at once: backoffs of its own
//! jobs are honoured to within a few milliseconds, and those of other
//! workers' jobs to within one interval. Each pass promotes due jobs in
//! batches of [`BATCH_SIZE`] with one guarded statement per batch, then
//! publishes one wake-up per queue that received jobs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Service;
use crate::lease::Waker;
use crate::store::{Store, StoreError};

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

    /// Promotes up to [`BATCH_SIZE`] due jobs and wakes their queues.
    /// Returns how many were promoted.
    pub async fn promote(&self) -> Result<usize, StoreError> {
        let queues = self.store.promote_due(BATCH_SIZE).await?;
        if !queues.is_empty() {
            tracing::debug!(promoted = queues.len(), "promoted due jobs");
            self.waker.wake(queues.iter().map(String::as_str));
        }
        Ok(queues.len())
    }
}

impl Service for Scheduler {
    const NAME: &'static str = "scheduler";
    type Error = StoreError;

    /// Promotes a batch; asks to run again at once if the batch was full,
    /// else when the next job falls due (but not sooner than [`MIN_SLEEP`]).
    async fn run_once(&self) -> Result<Option<Duration>, StoreError> {
        if self.promote().await? >= BATCH_SIZE {
            return Ok(Some(Duration::ZERO));
        }
        Ok(self
            .store
            .next_due_in()
            .await?
            .map(|due_in| due_in.max(MIN_SLEEP)))
    }

    fn doorbell(&self) -> Option<Arc<Notify>> {
        Some(self.nudge.clone())
    }
}
