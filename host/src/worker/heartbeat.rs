//! The leases a worker holds, and the heartbeat that keeps them alive.
//!
//! Every attempt this worker claimed stays in [`InFlight`] from its claim
//! until its outcome is committed (or found stale), including while the
//! completer retries a write against an unreachable PostgreSQL. The
//! [`Heartbeat`] runs every third of the lease TTL and writes or renews the
//! lease key of every attempt but those claimed moments ago (two scripts
//! sent together, plus a third round for keys PostgreSQL had to confirm),
//! extending or revoking each attempt's [`RunGrant`]:
//!
//! - **fresh** (no key written yet): the key is written now, once the
//!   attempt was claimed at least a quarter of an interval ago
//!   ([`Heartbeat::unwritten_for`]); a younger one waits for the next round.
//!   A claim's PostgreSQL lease runs for one TTL, so the rescuer cannot act
//!   on a fresh attempt before its key is written: a job that settles
//!   within a quarter of an interval, as most do, never touches Redis at
//!   all. A fresh attempt whose grant has already lapsed (the worker was
//!   paused) is treated as missing instead;
//! - renewed: the grant is extended to (time the renewal was sent + TTL);
//! - written or renewed, but Redis answered only after the grant had lapsed
//!   (**late**): treated as missing. The grant's end comes before the
//!   claim's deadline in PostgreSQL, and the rescuer reads keys only past
//!   that deadline, so a first write answered while the grant holds was in
//!   Redis before any rescuer could read the key missing; one answered
//!   later may have landed between a rescuer's read and its rescue. (A late
//!   renewal found the key alive, but a key restored late may be what kept
//!   it so; asking PostgreSQL costs a statement only in this rare case.);
//! - missing (the key vanished: Redis was flushed, or this worker was paused
//!   past its TTL): the key is written again and the grant extended only if
//!   PostgreSQL first confirms the job is still running under this token
//!   (which moves its deadline, so no rescue decided before applies), and
//!   Redis answers the write before the end of the grant it gives; so a
//!   worker that was rescued while away can never put its stale token back
//!   over a live attempt's key;
//! - lost (another token, a revocation, or a newer attempt's release marker
//!   in the key): revoked at once.
//!
//! Beside each round, PostgreSQL is asked which of the worker's attempts
//! still run ([`Heartbeat::stop_ended`]); the others are revoked. A cancel
//! or a rescue ends an attempt in PostgreSQL first and only then writes
//! `revoked:` into its key, and a cancelling API that cannot reach Redis
//! while this worker can would otherwise leave a key this worker goes on
//! renewing (or, after a flush, writes afresh): the guest would run to its
//! end, past the moment a retry of the job may start
//! (`Store::requeue_if_finished`) and the place it held under its queue's
//! limits frees. So a cancelled guest stops at the first round after the
//! cancel, once PostgreSQL answers, whichever store its canceller reached.
//! That is one read per round, of the primary key of each attempt held: a
//! few per TTL, whatever the worker's rate of jobs.
//!
//! If Redis cannot be reached, no grant is extended, so each attempt stops
//! one TTL after its last confirmed renewal. That is the price of the
//! guarantee: a worker that cannot prove it holds a lease must assume the
//! rescuer may have given the job to someone else.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::lease::{Leases, Renewal};
use crate::sandbox::RunGrant;
use crate::store::{LeaseRef, Store, StoreResult};

/// An attempt this worker holds the lease of.
#[derive(Debug, Clone)]
struct Held {
    grant: Arc<RunGrant>,
    /// Whether its lease key has been written to Redis.
    in_redis: bool,
}

/// The attempts a worker holds leases for, by job and fencing token: a
/// cancelled attempt and the job's next one, claimed by the same worker
/// after a retry, are tracked (and renewed, or stopped) each on its own.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    attempts: Arc<Mutex<HashMap<LeaseRef, Held>>>,
}

impl InFlight {
    /// Starts tracking a claimed attempt whose lease is known valid until
    /// `valid_until`; returns its grant.
    pub fn register(&self, lease: LeaseRef, valid_until: Instant) -> Arc<RunGrant> {
        let grant = RunGrant::until(valid_until);
        let held = Held {
            grant: grant.clone(),
            in_redis: false,
        };
        self.lock().insert(lease, held);
        grant
    }

    /// Stops tracking an attempt whose outcome is settled. Returns whether
    /// its lease key was written to Redis (and so should be released).
    pub fn remove(&self, lease: LeaseRef) -> bool {
        self.lock().remove(&lease).is_some_and(|held| held.in_redis)
    }

    /// Whether `lease`'s attempt is tracked: its outcome is not settled.
    fn contains(&self, lease: LeaseRef) -> bool {
        self.lock().contains_key(&lease)
    }

    /// How many attempts are tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<(LeaseRef, Held)> {
        self.lock()
            .iter()
            .map(|(lease, held)| (*lease, held.clone()))
            .collect()
    }

    fn mark_in_redis(&self, leases: &[LeaseRef]) {
        let mut attempts = self.lock();
        for lease in leases {
            if let Some(held) = attempts.get_mut(lease) {
                held.in_redis = true;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseRef, Held>> {
        self.attempts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// What a heartbeat round saw of one lease in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    /// A fresh attempt's key was written (`true`) or found speaking for a
    /// newer attempt or for this one's end (`false`).
    Written(bool),
    /// A written key's renewal.
    Renewal(Renewal),
    /// A fresh attempt whose grant lapsed before its key was written (the
    /// worker was paused): as good as missing.
    Lapsed,
    /// A key written or renewed, but answered after the attempt's grant
    /// lapsed: it may have landed after a rescuer read it missing, so it is
    /// as good as missing.
    Late,
}

impl Observed {
    /// What Redis saw of an attempt whose grant was `in_time` when Redis
    /// answered: a write or renewal answered late proves nothing.
    fn answered(self, in_time: bool) -> Self {
        match self {
            Self::Written(true) | Self::Renewal(Renewal::Renewed) if !in_time => Self::Late,
            seen => seen,
        }
    }

    /// Whether only PostgreSQL can say if the lease is still held.
    fn needs_confirmation(self) -> bool {
        matches!(
            self,
            Self::Renewal(Renewal::Missing) | Self::Lapsed | Self::Late
        )
    }
}

/// What a round decides for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Its grant is extended by one TTL from when the round was sent.
    Held,
    /// Its grant is revoked: the attempt stops.
    Lost,
    /// Nothing changes: its grant lapses unless a later round decides.
    Unknown,
}

/// The heartbeat's decision for one attempt: `observed` in Redis and, for a
/// key that is missing, whether PostgreSQL `confirmed` the lease as current
/// and its key was written again (`None` when either could not answer). A
/// missing key is never held on Redis's word alone: a worker rescued while
/// it was away must not put its stale token back over a live attempt.
fn verdict(observed: Observed, confirmed: Option<bool>) -> Verdict {
    let held = |held: bool| if held { Verdict::Held } else { Verdict::Lost };
    match observed {
        Observed::Written(written) => held(written),
        Observed::Renewal(Renewal::Renewed) => Verdict::Held,
        Observed::Renewal(Renewal::Lost) => Verdict::Lost,
        Observed::Renewal(Renewal::Missing) | Observed::Lapsed | Observed::Late => {
            confirmed.map_or(Verdict::Unknown, held)
        }
    }
}

/// Renews the leases of [`InFlight`] attempts; see the module docs.
pub struct Heartbeat {
    /// Attempts to renew.
    pub in_flight: InFlight,
    /// Where the leases live.
    pub leases: Leases,
    /// Where restored leases are confirmed, and which attempts still run
    /// is asked.
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
    /// Every third of the lease TTL until `shutdown`, renews the in-flight
    /// leases ([`Heartbeat::run_once`]) and, beside it, stops the
    /// attempts PostgreSQL says have ended ([`Heartbeat::stop_ended`]).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.leases.renew_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = shutdown.cancelled() => return,
            }
            tokio::join!(self.run_once(), self.stop_ended());
        }
    }

    /// Revokes the grants of the attempts held that PostgreSQL says no
    /// longer run (a cancel or a rescue ended them); returns how many.
    /// PostgreSQL gets one renewal interval to answer; without its answer
    /// nothing changes, and Redis's word stands. An attempt whose outcome
    /// the completer wrote meanwhile has usually left [`InFlight`] and is
    /// skipped; one caught between the write and its removal has its grant
    /// revoked after its guest returned, which changes nothing.
    pub async fn stop_ended(&self) -> usize {
        let held = self.in_flight.snapshot();
        if held.is_empty() {
            return 0;
        }
        let leases: Vec<LeaseRef> = held.iter().map(|(lease, _)| *lease).collect();
        let asked = self.store.still_running(&leases);
        let Some(running) = self.in_time("check which attempts still run", asked).await else {
            return 0;
        };
        let running: HashSet<LeaseRef> = running.into_iter().collect();
        let mut stopped = 0;
        for (lease, held) in held {
            let ended = !running.contains(&lease) && self.in_flight.contains(lease);
            // A grant already revoked or lapsed has stopped its guest.
            if ended && held.grant.is_valid_at(Instant::now()) {
                tracing::info!(job_id = %lease.job_id, lease_token = lease.lease_token, "the attempt ended in PostgreSQL; stopping it");
                held.grant.revoke();
                stopped += 1;
            }
        }
        stopped
    }

    /// One renewal round. It leaves alone the attempts claimed too recently
    /// to need a key ([`Heartbeat::unwritten_for`]).
    pub async fn run_once(&self) -> HeartbeatCounts {
        let sent_at = Instant::now();
        let valid_until = sent_at + self.leases.ttl();
        // A fresh grant still valid then was claimed within `unwritten_for`
        // of now: it runs on its claim's TTL until a later round.
        let young_until = valid_until - self.unwritten_for();
        let held: Vec<(LeaseRef, Held)> = self
            .in_flight
            .snapshot()
            .into_iter()
            .filter(|(_, held)| held.in_redis || !held.grant.is_valid_at(young_until))
            .collect();
        if held.is_empty() {
            return HeartbeatCounts::default();
        }
        let (fresh, written): (Vec<_>, Vec<_>) = held.iter().partition(|(_, held)| !held.in_redis);
        let (fresh, lapsed): (Vec<_>, Vec<_>) = fresh
            .into_iter()
            .partition(|(_, held)| held.grant.is_valid_at(sent_at));
        let refs = |leases: &[&(LeaseRef, Held)]| {
            leases.iter().map(|(lease, _)| *lease).collect::<Vec<_>>()
        };
        let (fresh_refs, written_refs) = (refs(&fresh), refs(&written));

        let (written_now, renewals) = match tokio::try_join!(
            self.leases.restore(&fresh_refs),
            self.leases.renew(&written_refs),
        ) {
            Ok(results) => results,
            Err(error) => {
                tracing::warn!(%error, leases = held.len(), "cannot renew leases; attempts stop when they lapse");
                return HeartbeatCounts::default();
            }
        };
        let replied_at = Instant::now();
        let in_time = |attempt: &(LeaseRef, Held)| attempt.1.grant.is_valid_at(replied_at);
        let mut observed: Vec<(&(LeaseRef, Held), Observed)> = Vec::with_capacity(held.len());
        observed.extend(fresh.iter().zip(&written_now).map(|(attempt, written)| {
            let seen = Observed::Written(*written).answered(in_time(attempt));
            (*attempt, seen)
        }));
        observed.extend(written.iter().zip(&renewals).map(|(attempt, renewal)| {
            let seen = Observed::Renewal(*renewal).answered(in_time(attempt));
            (*attempt, seen)
        }));
        observed.extend(lapsed.iter().map(|attempt| (*attempt, Observed::Lapsed)));

        let unproven: Vec<LeaseRef> = observed
            .iter()
            .filter(|(_, seen)| seen.needs_confirmation())
            .map(|((lease, _), _)| *lease)
            .collect();
        let restored = self.restore_confirmed(&unproven, valid_until).await;
        let confirmed = |lease: &LeaseRef| restored.as_ref().map(|held| held.contains(lease));

        let mut counts = HeartbeatCounts::default();
        let mut now_in_redis = Vec::new();
        for ((lease, held), seen) in observed {
            match verdict(seen, confirmed(lease)) {
                Verdict::Held => {
                    held.grant.extend_until(valid_until);
                    now_in_redis.push(*lease);
                    counts.renewed += 1;
                }
                Verdict::Lost => {
                    tracing::warn!(job_id = %lease.job_id, lease_token = lease.lease_token, "lost the lease; stopping the attempt");
                    held.grant.revoke();
                    counts.lost += 1;
                }
                Verdict::Unknown => {}
            }
        }
        self.in_flight.mark_in_redis(&now_in_redis);
        counts
    }

    /// How long after its claim an attempt goes without a lease key: a
    /// quarter of a renewal interval. Its claim keeps the rescuer away for
    /// one TTL (three intervals), and the round that writes its key comes
    /// at most 1¼ intervals after the claim, leaving 1¾: room for one lost
    /// round, as a renewal has. Without the wait a round wrote the key of
    /// every attempt held, even one claimed a moment before, and the
    /// completer released it again moments after: four Redis commands for
    /// each short job a round happened to catch, while claimed ahead,
    /// running, or waiting for its outcome's batch.
    fn unwritten_for(&self) -> Duration {
        self.leases.renew_interval() / 4
    }

    /// PostgreSQL's answer to `question` (to `what` it was asked to do), if
    /// it comes within one renewal interval; else `None`, logged. While
    /// PostgreSQL is unreachable a connection attempt may wait for the
    /// pool's timeout, and a round must not hold up the next one, which
    /// renews every other lease of the worker through Redis alone.
    async fn in_time<T>(
        &self,
        what: &str,
        question: impl Future<Output = StoreResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.leases.renew_interval(), question).await {
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot {what} with PostgreSQL");
                None
            }
            Err(_) => {
                tracing::warn!("PostgreSQL did not {what} in time");
                None
            }
        }
    }

    /// Of `missing` leases, those PostgreSQL confirms as current and whose
    /// keys could be written again by `valid_until`, the end of the grant
    /// the round may give; `None` if either store cannot answer in time.
    /// The confirmation moves the lease's deadline in PostgreSQL past
    /// `valid_until`, so a key written back by then is in Redis before any
    /// rescuer reads it past that deadline, and a rescuer that read it
    /// missing before finds the deadline it decided on gone.
    ///
    /// PostgreSQL gets at most one renewal interval to answer
    /// ([`Heartbeat::in_time`]).
    async fn restore_confirmed(
        &self,
        missing: &[LeaseRef],
        valid_until: Instant,
    ) -> Option<Vec<LeaseRef>> {
        if missing.is_empty() {
            return Some(Vec::new());
        }
        let confirmation = self.store.confirm_leases(missing, self.leases.ttl());
        let confirmed = self
            .in_time("confirm leases missing from Redis", confirmation)
            .await?;
        match self.leases.restore(&confirmed).await {
            Ok(_) if Instant::now() >= valid_until => {
                tracing::warn!("Redis wrote back leases PostgreSQL confirmed too late to count");
                None
            }
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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    /// A cancelled attempt still running here, and the job's next attempt
    /// claimed here after a retry: the heartbeat must see both, to stop the
    /// first (its key now speaks for the second) and renew the second.
    #[test]
    fn a_jobs_next_attempt_on_the_same_worker_leaves_the_earlier_one_tracked() {
        let in_flight = InFlight::default();
        let job_id = Uuid::now_v7();
        let first = LeaseRef {
            job_id,
            lease_token: 1,
        };
        let next = LeaseRef {
            job_id,
            lease_token: 2,
        };
        let until = Instant::now() + Duration::from_secs(10);
        let first_grant = in_flight.register(first, until);
        in_flight.register(next, until);
        let mut tracked: Vec<LeaseRef> = in_flight.snapshot().into_iter().map(|(l, _)| l).collect();
        tracked.sort_by_key(|lease| lease.lease_token);
        assert_eq!(tracked, [first, next]);
        let (_, held) = &in_flight
            .snapshot()
            .into_iter()
            .find(|(l, _)| *l == first)
            .unwrap();
        assert!(Arc::ptr_eq(&held.grant, &first_grant));

        in_flight.mark_in_redis(&[first]);
        assert!(
            in_flight.remove(first),
            "the first attempt's key was written"
        );
        assert!(!in_flight.remove(first), "and is no longer tracked");
        let left: Vec<LeaseRef> = in_flight.snapshot().into_iter().map(|(l, _)| l).collect();
        assert_eq!(left, [next]);
    }

    #[test]
    fn a_key_redis_still_holds_or_just_wrote_keeps_its_attempt() {
        assert_eq!(verdict(Observed::Written(true), None), Verdict::Held);
        assert_eq!(
            verdict(Observed::Renewal(Renewal::Renewed), None),
            Verdict::Held
        );
    }

    #[test]
    fn a_key_speaking_for_another_attempt_stops_this_one_whatever_postgres_says() {
        assert_eq!(verdict(Observed::Written(false), Some(true)), Verdict::Lost);
        assert_eq!(
            verdict(Observed::Renewal(Renewal::Lost), Some(true)),
            Verdict::Lost
        );
    }

    #[test]
    fn a_missing_key_is_held_only_if_postgres_confirms_it() {
        for missing in [
            Observed::Renewal(Renewal::Missing),
            Observed::Lapsed,
            Observed::Late,
        ] {
            assert_eq!(verdict(missing, Some(true)), Verdict::Held, "{missing:?}");
            assert_eq!(verdict(missing, Some(false)), Verdict::Lost, "{missing:?}");
            assert_eq!(verdict(missing, None), Verdict::Unknown, "{missing:?}");
        }
    }

    #[test]
    fn a_write_or_renewal_answered_after_the_grant_lapsed_needs_postgres() {
        for seen in [Observed::Written(true), Observed::Renewal(Renewal::Renewed)] {
            assert_eq!(seen.answered(true), seen);
            assert_eq!(seen.answered(false), Observed::Late);
        }
        assert!(Observed::Late.needs_confirmation());
        for lost in [Observed::Written(false), Observed::Renewal(Renewal::Lost)] {
            assert_eq!(lost.answered(false), lost, "lost, in time or not");
            assert!(!lost.needs_confirmation());
        }
    }
}
