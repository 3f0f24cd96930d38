//! The API's read replica (`--database-read-url`): where a read goes first,
//! and when the replica is left alone for a while. [`ApiParts::read`]
//! (api/mod.rs) decides what a read falls back to.
//!
//! [`ApiParts::read`]: super::ApiParts::read

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Store, StoreResult};

/// Longest a read waits for the replica before it is made on the primary
/// instead: a replica that stops answering (a frozen host, a partition that
/// drops packets) must not hold the API's reads. Every read the replica
/// serves is bounded (a page, a job, the queue counters) and takes
/// milliseconds; the replica's connections also ask PostgreSQL to end a
/// statement after this long (`Store::replica`), so an abandoned read does
/// not go on running there.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the replica is left alone after it failed or timed out a read:
/// a replica that is down would otherwise cost every read a failed attempt,
/// and one that is frozen a whole [`READ_TIMEOUT`].
pub const REST_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// A read replica and whether it is being left alone.
pub struct Replica {
    store: Store,
    resting_until: Mutex<Option<Instant>>,
}

/// What the replica made of a read.
pub enum Answer<T> {
    /// It answered.
    Read(T),
    /// It is being left alone after a failure; not asked.
    Resting,
    /// It returned an error (down, refusing, or not yet migrated).
    Failed,
    /// It did not answer within [`READ_TIMEOUT`].
    TimedOut,
}

impl Replica {
    /// Reads from `store`, a replica.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            resting_until: Mutex::new(None),
        }
    }

    /// `read` on the replica, unless it is resting; a failure or a
    /// timeout makes it rest for [`REST_AFTER_FAILURE`].
    pub async fn answer<T, Read>(&self, read: &impl Fn(Store) -> Read) -> Answer<T>
    where
        Read: Future<Output = StoreResult<T>>,
    {
        if self.is_resting() {
            return Answer::Resting;
        }
        match tokio::time::timeout(READ_TIMEOUT, read(self.store.clone())).await {
            Ok(Ok(answer)) => Answer::Read(answer),
            Ok(Err(error)) => {
                tracing::warn!(%error, rest = ?REST_AFTER_FAILURE, "the read replica failed a read; reading the primary");
                self.rest();
                Answer::Failed
            }
            Err(_) => {
                tracing::warn!(timeout = ?READ_TIMEOUT, rest = ?REST_AFTER_FAILURE, "the read replica did not answer a read in time; reading the primary");
                self.rest();
                Answer::TimedOut
            }
        }
    }

    fn is_resting(&self) -> bool {
        let resting_until = self.resting_until.lock().expect("not poisoned");
        resting_until.is_some_and(|until| Instant::now() < until)
    }

    fn rest(&self) {
        *self.resting_until.lock().expect("not poisoned") =
            Some(Instant::now() + REST_AFTER_FAILURE);
    }
}
