//! The worker's presence in Redis (lease/presence.rs): who it is, its
//! slots and how many are busy, written every
//! [`PRESENCE_INTERVAL`](crate::lease::presence::PRESENCE_INTERVAL) until
//! it stops, then withdrawn.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Capacity;
use crate::lease::presence::PRESENCE_INTERVAL;
use crate::lease::{Redis, WorkerPresence};

/// Rounds between two sweeps of long-silent workers' fields (one at the
/// first round): a worker's `HGETALL` of the hash every ten minutes.
const FORGET_EVERY_ROUNDS: u32 = 300;

/// Announces the worker until `stop`, then withdraws it; now and then
/// forgets workers long silent (`Redis::forget_silent_workers`). A failed
/// write is logged at debug level and tried again next round: presence is
/// only shown, never relied on.
pub async fn announce_until(
    redis: Redis,
    worker_id: String,
    queues: Vec<String>,
    capacity: Arc<Capacity>,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(PRESENCE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0_u32.. {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => break,
        }
        if round % FORGET_EVERY_ROUNDS == 0
            && let Err(error) = redis.forget_silent_workers(chrono::Utc::now()).await
        {
            tracing::debug!(%error, "could not forget long-silent workers");
        }
        let presence = WorkerPresence {
            worker_id: worker_id.clone(),
            slots: u32::try_from(capacity.slots()).unwrap_or(u32::MAX),
            busy: u32::try_from(capacity.busy()).unwrap_or(u32::MAX),
            queues: queues.clone(),
            seen_at: chrono::Utc::now(),
        };
        if let Err(error) = redis.announce_worker(&presence).await {
            tracing::debug!(%error, "could not write this worker's presence");
        }
    }
    if let Err(error) = redis.withdraw_worker(&worker_id).await {
        tracing::debug!(%error, "could not withdraw this worker's presence");
    }
}
