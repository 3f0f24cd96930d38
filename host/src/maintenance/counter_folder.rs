//! The counter folder: folds the log of job transitions, which every store
//! statement that moves jobs appends to, into the per-queue counters the
//! queue listing reads
//! (store/queue_stats.rs), so the log stays a second or so long and a
//! listing stays cheap. Readers add the unfolded log themselves: a late
//! fold delays nothing but the log's cleanup.

use std::time::Duration;

use super::Service;
use crate::store::{Store, StoreError};

/// Folds the transition log; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct CounterFolder {
    store: Store,
}

impl CounterFolder {
    /// A folder over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl Service for CounterFolder {
    const NAME: &'static str = "counter folder";
    type Error = StoreError;

    async fn run_once(&self) -> Result<Option<Duration>, StoreError> {
        let folded = self.store.fold_job_transitions().await?;
        metrics::counter!("taskflow_job_transitions_folded_total").increment(folded);
        Ok(None)
    }
}
