//! The leases a worker holds, and the heartbeat that keeps them alive.
//!
//! Every attempt this worker claimed stays in [`InFlight`] from its claim
//! until its outcome is committed (or found stale), including while the
//! completer retries a write against an unreachable PostgreSQL. The
//! [`Heartbeat`] renews all of them in Redis every third of the lease TTL in
//! one round trip and, for each, extends or revokes the attempt's
//! [`RunGrant`]:
//!
//! - renewed: the grant is extended to (time the renewal was sent + TTL);
//! - missing (the key vanished: Redis was flushed, or this worker was paused
//!   past its TTL): the key is written again and the grant extended only if
//!   PostgreSQL first confirms the job is still running under this token, so
//!   a worker that was rescued while away can never put its stale token back
//!   over a live attempt's key;
//! - lost (another token or a revocation in the key): revoked at once.
//!
//! If Redis cannot be reached, no grant is extended, so each attempt stops
//! one TTL after its last confirmed renewal. That is the price of the
//! guarantee: a worker that cannot prove it holds a lease must assume the
//! rescuer may have given the job to someone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::lease::{Leases, Renewal};
use crate::sandbox::RunGrant;
use crate::store::{LeaseRef, Store};

/// Per job: the fencing token of the attempt this worker runs, and its grant.
type HeldLeases = HashMap<Uuid, (i64, Arc<RunGrant>)>;

/// The attempts a worker holds leases for.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    attempts: Arc<Mutex<HeldLeases>>,
}

impl InFlight {
    /// Starts tracking a claimed attempt whose lease is known valid until
    /// `valid_until`; returns its grant.
    pub fn register(&self, lease: LeaseRef, valid_until: Instant) -> Arc<RunGrant> {
        let grant = RunGrant::until(valid_until);
        self.lock()
            .insert(lease.job_id, (lease.lease_token, grant.clone()));
        grant
    }

    /// Stops tracking an attempt whose outcome is settled.
    pub fn remove(&self, lease: LeaseRef) {
        let mut attempts = self.lock();
        if attempts
            .get(&lease.job_id)
            .is_some_and(|(token, _)| *token == lease.lease_token)
        {
            attempts.remove(&lease.job_id);
        }
    }

    /// How many attempts are tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<(LeaseRef, Arc<RunGrant>)> {
        self.lock()
            .iter()
            .map(|(job_id, (lease_token, grant))| {
                (
                    LeaseRef {
                        job_id: *job_id,
                        lease_token: *lease_token,
                    },
                    grant.clone(),
                )
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeldLeases> {
        self.attempts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Renews the leases of [`InFlight`] attempts; see the module docs.
pub struct Heartbeat {
    /// Attempts to renew.
    pub in_flight: InFlight,
    /// Where the leases live.
    pub leases: Leases,
    /// Where restored leases are confirmed.
    pub store: Store,
}

/// What one heartbeat did, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartbeatCounts {
    /// Leases renewed (including restored and confirmed).
    pub renewed: usize,
    /// Leases lost; their attempts were told to stop.
    pub lost: usize,
}

impl Heartbeat {
    /// Renews every in-flight lease every third of the lease TTL until
    /// `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.leases.renew_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = shutdown.cancelled() => return,
            }
            self.run_once().await;
        }
    }

    /// One renewal round.
    pub async fn run_once(&self) -> HeartbeatCounts {
        let held = self.in_flight.snapshot();
        if held.is_empty() {
            return HeartbeatCounts::default();
        }
        let sent_at = Instant::now();
        let refs: Vec<LeaseRef> = held.iter().map(|(lease, _)| *lease).collect();
        let renewals = match self.leases.renew(&refs).await {
            Ok(renewals) => renewals,
            Err(error) => {
                tracing::warn!(%error, leases = refs.len(), "cannot renew leases; attempts stop when they lapse");
                return HeartbeatCounts::default();
            }
        };
        let missing: Vec<LeaseRef> = refs
            .iter()
            .zip(&renewals)
            .filter(|(_, renewal)| **renewal == Renewal::Missing)
            .map(|(lease, _)| *lease)
            .collect();
        let restored = self.restore_confirmed(&missing).await;

        let valid_until = sent_at + self.leases.ttl();
        let mut counts = HeartbeatCounts::default();
        for ((lease, grant), renewal) in held.iter().zip(renewals) {
            let still_held = match renewal {
                Renewal::Renewed => Some(true),
                Renewal::Missing => restored.as_ref().map(|held| held.contains(lease)),
                Renewal::Lost => Some(false),
            };
            match still_held {
                Some(true) => {
                    grant.extend_until(valid_until);
                    counts.renewed += 1;
                }
                Some(false) => {
                    tracing::warn!(job_id = %lease.job_id, lease_token = lease.lease_token, "lost the lease; stopping the attempt");
                    grant.revoke();
                    counts.lost += 1;
                }
                // PostgreSQL could not confirm: leave the grant to lapse
                // unless a later round confirms it.
                None => {}
            }
        }
        counts
    }

    /// Of `missing` leases, those PostgreSQL confirms as current and whose
    /// keys could be written again; `None` if either store cannot answer.
    async fn restore_confirmed(&self, missing: &[LeaseRef]) -> Option<Vec<LeaseRef>> {
        if missing.is_empty() {
            return Some(Vec::new());
        }
        let confirmed = match self.store.leases_still_held(missing).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "cannot confirm leases missing from Redis with PostgreSQL");
                return None;
            }
        };
        match self.leases.restore(&confirmed).await {
            Ok(held) => Some(
                confirmed
                    .into_iter()
                    .zip(held)
                    .filter(|(_, held)| *held)
                    .map(|(lease, _)| lease)
                    .collect(),
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot restore leases in Redis");
                None
            }
        }
    }
}
