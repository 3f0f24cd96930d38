//! How many jobs a worker claims at a time.
//!
//! A worker runs at most `concurrency` attempts at once, but claiming only
//! when a slot is free costs one PostgreSQL round trip per few jobs, which
//! caps a worker of short jobs at a few thousand jobs a second. So a worker
//! claims ahead: as many jobs as it expects to start within
//! [`PREFETCH_HORIZON`], judged from how long its recent attempts took.
//! Jobs of a few microseconds are claimed hundreds at a time (one statement
//! for hundreds of jobs); jobs of a minute are never claimed ahead, so no job
//! waits behind a long one on a busy worker while another worker idles.
//! Claimed jobs wait for a slot (roughly in claim order: tokio's semaphore is
//! fair, and the tasks reach it in the order they first run), their leases
//! renewed by the heartbeat like those of running ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How far ahead a worker claims, in expected execution time.
pub const PREFETCH_HORIZON: Duration = Duration::from_millis(100);

/// Most jobs claimed ahead of a free slot.
pub const PREFETCH_MAX: usize = 256;

/// A worker's execution slots and claimed-but-waiting jobs.
#[derive(Debug)]
pub struct Capacity {
    concurrency: usize,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Moving average of attempt durations, in microseconds.
    average_us: AtomicU64,
    changed: Notify,
    /// `taskflow_worker_busy_slots`, registered once.
    busy: metrics::Gauge,
}

impl Capacity {
    /// Capacity for `concurrency` attempts at once.
    pub fn new(concurrency: usize) -> Arc<Self> {
        metrics::gauge!("taskflow_worker_slots").set(concurrency as f64);
        Arc::new(Self {
            concurrency,
            slots: Arc::new(Semaphore::new(concurrency)),
            waiting: AtomicUsize::new(0),
            // Until attempts have been timed, claim one job ahead per slot.
            average_us: AtomicU64::new(PREFETCH_HORIZON.as_micros() as u64),
            changed: Notify::new(),
            busy: metrics::gauge!("taskflow_worker_busy_slots"),
        })
    }

    /// How many attempts it runs at once.
    pub fn slots(&self) -> usize {
        self.concurrency
    }

    /// How many slots are running an attempt now.
    pub fn busy(&self) -> usize {
        self.concurrency
            .saturating_sub(self.slots.available_permits())
    }

    /// How many jobs to claim now: free slots, plus the prefetch target, less
    /// jobs already claimed and waiting.
    pub fn claimable(&self) -> usize {
        let average = self.average_us.load(Ordering::Relaxed).max(1);
        let prefetch = (self.concurrency as u64 * PREFETCH_HORIZON.as_micros() as u64 / average)
            .min(PREFETCH_MAX as u64) as usize;
        (self.slots.available_permits() + prefetch)
            .saturating_sub(self.waiting.load(Ordering::Acquire))
    }

    /// Records a claimed job that will wait for a slot.
    pub fn claim(self: &Arc<Self>) -> Claim {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Claim {
            capacity: self.clone(),
            seated: false,
        }
    }

    /// Slots free now.
    #[cfg(test)]
    pub(crate) fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Resolves when a slot frees up.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn record(&self, duration: Duration) {
        let sample = duration.as_micros().min(u64::MAX as u128) as u64;
        // Exponential moving average with weight 1/8: follows a change of
        // workload within a few dozen attempts.
        let _ = self
            .average_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                Some(average - average / 8 + sample / 8)
            });
    }
}

/// A claimed job's place among those waiting for a slot. [`Claim::slot`]
/// turns it into a [`Slot`]; dropping it instead (the attempt failed before
/// its guest could run, or panicked) gives the place back, so claiming goes
/// on as if the job had run.
#[derive(Debug)]
pub struct Claim {
    capacity: Arc<Capacity>,
    /// Whether it became a slot.
    seated: bool,
}

impl Claim {
    /// Waits for an execution slot (first come, first served).
    pub async fn slot(mut self) -> Slot {
        let permit = self
            .capacity
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // Taking a slot frees a waiting place: what may be claimed is
        // unchanged, so the claim loop need not be told.
        self.capacity.waiting.fetch_sub(1, Ordering::AcqRel);
        self.seated = true;
        self.capacity.busy.increment(1);
        Slot {
            capacity: self.capacity.clone(),
            permit: Some(permit),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.seated {
            self.capacity.waiting.fetch_sub(1, Ordering::AcqRel);
            self.capacity.changed.notify_one();
        }
    }
}

/// An execution slot, held while the guest runs. Dropping it frees it, so
/// an attempt that ends abnormally (a panic unwinding through it) still
/// gives its slot back.
#[derive(Debug)]
pub struct Slot {
    capacity: Arc<Capacity>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Frees the slot, recording how long the attempt ran.
    pub fn release(self, ran_for: Duration) {
        self.capacity.record(ran_for);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit goes back before the claim loop is told, so the loop
        // sees the free slot when it looks.
        drop(self.permit.take());
        self.capacity.busy.decrement(1);
        self.capacity.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn short_jobs_are_claimed_far_ahead_and_long_ones_not_at_all() {
        let capacity = Capacity::new(2);
        assert_eq!(capacity.claimable(), 2 + 2, "untimed: one ahead per slot");
        for _ in 0..100 {
            let slot = capacity.slot_for_test().await;
            slot.release(Duration::from_micros(50));
        }
        assert_eq!(capacity.claimable(), 2 + PREFETCH_MAX);
        for _ in 0..100 {
            let slot = capacity.slot_for_test().await;
            slot.release(Duration::from_secs(60));
        }
        assert_eq!(capacity.claimable(), 2, "only free slots");
        let _waiting = [capacity.claim(), capacity.claim()];
        assert_eq!(capacity.claimable(), 0);
    }

    impl Capacity {
        async fn slot_for_test(self: &Arc<Self>) -> Slot {
            self.claim().slot().await
        }
    }

    #[tokio::test]
    async fn a_claim_given_up_before_its_slot_frees_its_place() {
        let capacity = Capacity::new(1);
        let before = capacity.claimable();
        let claim = capacity.claim();
        assert_eq!(capacity.claimable(), before - 1);
        drop(claim);
        assert_eq!(capacity.claimable(), before);
    }
}
