//! The pruner: deletes finished jobs once their queue's retention has
//! passed (queue/retention.rs), with their attempts and idempotency keys, so
//! the tables hold days of history rather than everything ever run.
//!
//! Each pass is two statements: one that deletes the places cancelled
//! attempts held past their TTL ([`Store::forget_lapsed_places`], a table
//! of as many rows as attempts cancelled in the last TTL or so), then one
//! bounded [`Store::prune_finished`] that locks only the rows it deletes.
//! A full batch asks for the next pass after [`PAUSE_BETWEEN_BATCHES`], so
//! a backlog of millions drains steadily without taking PostgreSQL from the
//! workers; a short batch means the backlog is gone, and the pruner waits
//! for its interval.

use std::time::Duration;

use super::Service;
use crate::store::{Pruned, Store, StoreError};

/// Most jobs deleted per pass (and per statement).
pub const BATCH_SIZE: usize = 1000;

/// The breather between two full batches.
pub const PAUSE_BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// Prunes expired finished jobs; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Pruner {
    store: Store,
}

impl Pruner {
    /// A pruner over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// One batch.
    pub async fn prune(&self) -> Result<Pruned, StoreError> {
        let pruned = self.store.prune_finished(BATCH_SIZE).await?;
        metrics::counter!("taskflow_jobs_pruned_total").increment(pruned.total());
        Ok(pruned)
    }
}

impl Service for Pruner {
    const NAME: &'static str = "pruner";
    type Error = StoreError;

    async fn run_once(&self) -> Result<Option<Duration>, StoreError> {
        let forgotten = self.store.forget_lapsed_places().await?;
        if forgotten > 0 {
            tracing::debug!(
                forgotten,
                "forgot places cancelled attempts held past their TTL"
            );
        }
        let pruned = self.prune().await?;
        if pruned.total() > 0 {
            tracing::info!(
                succeeded = pruned.succeeded,
                dead = pruned.dead,
                cancelled = pruned.cancelled,
                "pruned finished jobs past their retention"
            );
        }
        Ok((pruned.total() as usize == BATCH_SIZE).then_some(PAUSE_BETWEEN_BATCHES))
    }
}
