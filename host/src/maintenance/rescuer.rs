//! The rescuer: ends attempts whose worker is gone, so their jobs run again.
//!
//! A running job is rescued when both of these hold:
//!
//! 1. PostgreSQL's `lease_expires_at` has passed. It is set to claim time +
//!    TTL; whenever Redis shows the lease alive the rescuer moves it to the
//!    moment the Redis key would expire unless renewed, so it looks again
//!    exactly when the lease could next be gone, and a long job costs one
//!    PostgreSQL write per two thirds of a TTL or so, not one per heartbeat.
//! 2. Redis no longer holds the attempt's token under its lease key (the
//!    worker stopped renewing and the key expired, or it never got written).
//!
//! and Redis has held TaskFlow's state for at least one TTL
//! ([`Leases::redis_age`]), the rescuer's and the one the attempt's claim
//! granted (`jobs.lease_ttl_ms`, which workers set with their own
//! `--lease-ttl`): right after a flush or restart every key is missing, and
//! live workers need one renewal round to restore theirs;
//! right after a cluster failover the promoted replica may lack the last
//! renewals its old master accepted (ADR 006). If
//! Redis is unreachable the rescuer does nothing; it cannot tell a dead
//! worker from a live one.
//!
//! A rescue is the same guarded write as a worker's finish
//! ([`Store::finish_if_lease_matches`], outcome `lease_expired`), so it can
//! never overwrite an attempt that finished or was claimed again meanwhile;
//! it also needs the job's deadline unchanged since this pass read it, so
//! it never ends a lease its worker confirmed meanwhile
//! ([`Store::confirm_leases`]), however long the pass took.
//! Afterwards the rescuer marks the attempt's lease key as revoked (unless a
//! newer attempt already owns it): if the old worker was only paused and
//! restored its key between the rescuer's check and its write, its next
//! renewal sees the marker and stops the attempt.
//! The job then retries after its backoff, or is dead-lettered if that was
//! its last attempt. Rescue latency: the key expires at most one TTL after
//! the worker's last renewal, and the rescuer, on the maintenance leader,
//! notices within one `maintenance_interval`. When traces are on, each
//! rescue is recorded as the `job finish` span of the attempt it ended
//! (telemetry/traces.rs).

use std::time::{Duration, SystemTime};

use super::Service;
use crate::backoff;
use crate::config::RetryPolicy;
use crate::job::{AttemptEnd, AttemptLog, AttemptRequests, TraceContext, attempts_used};
use crate::lease::{EndingAnnouncer, Leases};
use crate::store::{FinishedAttempt, RunningLease, Store, StoreError, Transition};
use crate::telemetry::Traces;

/// Most leases examined per pass.
pub const BATCH_SIZE: usize = 1000;

/// Rescues jobs of vanished workers; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Rescuer {
    store: Store,
    leases: Leases,
    retry: RetryPolicy,
    endings: EndingAnnouncer,
    traces: Traces,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RescueCounts {
    /// Leases past their PostgreSQL expiry that were examined.
    pub examined: usize,
    /// Of those, confirmed alive in Redis and extended.
    pub extended: usize,
    /// Attempts ended and their jobs sent to retry or dead.
    pub rescued: usize,
    /// The pass was skipped: Redis was flushed, restarted or failed over
    /// less than one TTL ago.
    pub in_grace_period: bool,
}

/// Why a pass could not run.
#[derive(Debug, thiserror::Error)]
pub enum RescueError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis failed; nothing was rescued.
    #[error(transparent)]
    Redis(#[from] crate::lease::RedisError),
}

impl Rescuer {
    /// A rescuer over `store` and `leases`, retrying rescued jobs on `retry`.
    pub fn new(store: Store, leases: Leases, retry: RetryPolicy) -> Self {
        Self {
            endings: EndingAnnouncer::spawn(leases.redis().clone()),
            store,
            leases,
            retry,
            traces: Traces::default(),
        }
    }

    /// This rescuer, recording its rescues as spans in `traces`.
    pub fn with_traces(self, traces: Traces) -> Self {
        Self { traces, ..self }
    }

    /// How long Redis has kept its keys, or `None` if it was flushed,
    /// restarted or failed over less than one TTL ago, so a missing lease
    /// key proves nothing yet.
    async fn keys_kept_for(&self) -> Result<Option<Duration>, RescueError> {
        let age = self.leases.redis_age().await?;
        Ok((age >= self.leases.ttl()).then_some(age))
    }

    /// One pass over up to [`BATCH_SIZE`] expired leases.
    pub async fn rescue(&self) -> Result<RescueCounts, RescueError> {
        let grace_period = RescueCounts {
            in_grace_period: true,
            ..Default::default()
        };
        let Some(kept_for) = self.keys_kept_for().await? else {
            return Ok(grace_period);
        };
        let candidates = self.store.running_past_lease(BATCH_SIZE, kept_for).await?;
        if candidates.is_empty() {
            return Ok(RescueCounts::default());
        }
        let ids: Vec<_> = candidates.iter().map(|c| c.job_id).collect();
        let holders = self.leases.holders(&ids).await?;
        let (alive, gone): (Vec<_>, Vec<_>) =
            candidates
                .into_iter()
                .zip(holders)
                .partition(|(candidate, holder)| {
                    holder.is_some_and(|holder| holder.lease_token == candidate.lease_token)
                });
        // A failover between the check above and the read of the holders
        // would make the promoted replica's missing keys look like dead
        // workers: they are trusted only if the same Redis still answers.
        if !gone.is_empty() && self.keys_kept_for().await?.is_none() {
            return Ok(grace_period);
        }

        let alive: Vec<_> = alive
            .iter()
            .filter_map(|(candidate, holder)| {
                Some((candidate.lease(), holder.as_ref()?.expires_in))
            })
            .collect();
        let extended = self.store.extend_leases_if_token_matches(&alive).await?;

        let traces = self
            .traces
            .contexts_of(&self.store, gone.iter().map(|(lease, _)| lease.job_id))
            .await;
        let rescues: Vec<FinishedAttempt> = gone
            .iter()
            .map(|(c, _)| self.rescue_of(c, traces.get(&c.job_id).copied()))
            .collect();
        let began = SystemTime::now();
        let transitions = self.store.finish_if_lease_matches(&rescues).await?;
        self.traces
            .outcomes_written(&rescues, &transitions, (began, SystemTime::now()));
        let rescued: Vec<_> = rescues
            .iter()
            .zip(&transitions)
            .filter(|(_, transition)| **transition == Transition::Applied)
            .map(|(rescue, _)| rescue)
            .collect();
        self.endings.announce(
            rescued
                .iter()
                .filter(|rescue| rescue.ends_job())
                .map(|rescue| rescue.lease.job_id),
        );
        let rescued: Vec<_> = rescued.iter().map(|rescue| rescue.lease).collect();
        // A worker that was only paused may come back and find its key
        // missing; the marker makes its next renewal report the lease lost.
        let longest_granted = gone.iter().filter_map(|(c, _)| c.lease_ttl()).max();
        if let Err(error) = self.leases.revoke(&rescued, longest_granted).await {
            tracing::warn!(%error, "cannot mark rescued leases as revoked");
        }
        let rescued = rescued.len();
        metrics::counter!("taskflow_jobs_rescued_total").increment(rescued as u64);
        Ok(RescueCounts {
            examined: alive.len() + gone.len(),
            extended: extended as usize,
            rescued,
            in_grace_period: false,
        })
    }

    fn rescue_of(&self, lease: &RunningLease, trace: Option<TraceContext>) -> FinishedAttempt {
        let next = backoff::after_failure(
            &self.retry,
            lease.job_id,
            attempts_used(lease.attempt, lease.attempt_base),
            lease.max_attempts as u32,
            true,
        );
        FinishedAttempt {
            lease: lease.lease(),
            attempt: lease.attempt,
            worker_id: lease.worker_id.clone(),
            started_at: lease.attempted_at,
            end: AttemptEnd::LeaseExpired {
                message: format!(
                    "worker {} stopped renewing its lease (it crashed, hung or lost its connection)",
                    lease.worker_id
                ),
                next,
                deadline: lease.lease_expires_at,
            },
            usage: None,
            log: AttemptLog::empty(),
            requests: AttemptRequests::none(),
            if_refused: next,
            trace,
        }
    }
}

impl Service for Rescuer {
    const NAME: &'static str = "rescuer";
    type Error = RescueError;

    async fn run_once(&self) -> Result<Option<Duration>, RescueError> {
        let counts = self.rescue().await?;
        if counts.rescued > 0 {
            tracing::info!(rescued = counts.rescued, "rescued jobs of vanished workers");
        }
        Ok(None)
    }
}
