//! Where a job is claimed: the due jobs of one queue leased to a worker, in
//! priority order, each with a fresh fencing token (see execution.rs on
//! fencing).
//!
//! Two paths. A queue with no limits (most of them, and every queue never
//! configured) is claimed by one statement that never waits for another
//! worker ([`Store::claim`]'s plain path). A queue that is paused or has
//! limits (`queues.limited`, queue/limits.rs) is claimed in two short
//! transactions ([`Store::reserve_places`], then [`Store::claim_reserved`]):
//! the first locks the queue's row, works out what its limits leave from
//! statements whose snapshots are taken after the lock, reserves places
//! and commits; the second claims up to them without the queue's lock.
//! Far from the limits, a reservation takes places for several claims of
//! its worker ([`CLAIMS_PER_RESERVATION`]), which it carries in its
//! [`ClaimPath`] until a claim needs more places than are left. So the
//! limited claims of one queue take turns only for the few small writes
//! of a reservation, never for each other's update of the jobs they
//! claim, and two workers can never both see the last free slot. A
//! rate is counted in buckets ([`RATE_BUCKETS`]), and `max_running` against
//! an upper bound of the running jobs (and the places reserved, or held
//! by cancelled attempts) kept in the queue's row
//! (`running_bound`: the last count plus every place reserved since; every
//! write of the queue's settings clears it, and the next reservation
//! counts), so a claim's cost grows neither with the rate nor with the jobs
//! running. How reservations expire, are counted and give back what they did
//! not use is in migrations/20261213000001_claim_reservations.sql, how
//! one serves several claims in
//! migrations/20261216000001_reservations_serve_several_claims.sql, and
//! how a claim that outgrows one closes it in
//! migrations/20261217000001_claims_never_split.sql. A queue
//! with a per-key limit is claimed in one transaction under the row's lock
//! (`claim_limited_jobs`), since its count is per key. Every count includes
//! the places that attempts ended by a cancel hold until their guests stop
//! (migrations/20261221000001_cancelled_attempts_hold_their_places.sql).
//!
//! The plain statement skips a limited queue, so a worker that still
//! thinks a queue unlimited cannot overrun a limit set since; it finds out
//! and takes the limited path. Its snapshot predates anything it waits
//! for, so it asks the function `plain_claim_may_take`
//! (migrations/20261212000001_plain_claim_gate.sql), which takes the
//! queue's settings lock shared and reads `queues` only then, with a
//! snapshot of its own. Every write of the queue's settings takes that lock
//! exclusively (`lock_queue_settings` in queues.rs): a limit or a pause
//! waits for the plain claims past the gate to commit, and the plain claims
//! behind it see it. So the first limited claim after a limit counts every
//! job a plain claim started. The write also deletes the queue's
//! reservations, waiting for the claims of those already taken up.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::execution::LeaseRef;
use super::{Store, StoreResult, millis};
use crate::job::{AttemptLimits, TraceContext};

/// A job a worker has claimed, with everything needed to run it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job.
    pub id: Uuid,
    /// Module to run.
    pub module_hash: String,
    /// Queue it came from.
    pub queue: String,
    /// Input bytes.
    pub input: Vec<u8>,
    /// This attempt's number over the job's life, from 1.
    pub attempt: i32,
    /// `attempt` at the last user retry; `attempt - attempt_base` attempts
    /// of `max_attempts` are used, this one included.
    pub attempt_base: i32,
    /// Attempts allowed between user retries.
    pub max_attempts: i32,
    /// What the attempt may use.
    pub limits: AttemptLimits,
    /// The fencing token of this attempt.
    pub lease_token: i64,
    /// When the attempt started, by PostgreSQL's clock.
    pub attempted_at: DateTime<Utc>,
    /// When the job fell due (its submission, unless it was scheduled or is
    /// a retry).
    pub run_at: DateTime<Utc>,
}

impl ClaimedJob {
    /// This attempt's lease.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef {
            job_id: self.id,
            lease_token: self.lease_token,
        }
    }
}

/// A row of either claim statement. Every column is optional because the
/// limited claim's function declares none `NOT NULL`, and it answers an
/// unlimited queue with one row of `NULL`s.
struct ClaimRow {
    id: Option<Uuid>,
    module_hash: Option<String>,
    queue: Option<String>,
    input: Option<Vec<u8>>,
    attempt: Option<i32>,
    attempt_base: Option<i32>,
    max_attempts: Option<i32>,
    timeout_ms: Option<i32>,
    fuel: Option<i64>,
    memory_limit_bytes: Option<i64>,
    lease_token: Option<i64>,
    attempted_at: Option<DateTime<Utc>>,
    run_at: Option<DateTime<Utc>>,
}

impl ClaimRow {
    /// The claimed job, or `None` for the row of `NULL`s.
    fn job(self) -> Option<ClaimedJob> {
        Some(ClaimedJob {
            id: self.id?,
            module_hash: self.module_hash?,
            queue: self.queue?,
            input: self.input?,
            attempt: self.attempt?,
            attempt_base: self.attempt_base?,
            max_attempts: self.max_attempts?,
            limits: AttemptLimits::from_columns(
                self.timeout_ms?,
                self.fuel?,
                self.memory_limit_bytes?,
            ),
            lease_token: self.lease_token?,
            attempted_at: self.attempted_at?,
            run_at: self.run_at?,
        })
    }
}

/// Which path a claim of a queue takes. A worker keeps the one its last
/// claim of the queue reported ([`Claimed::next_path`]), so a limited queue
/// does not cost a plain attempt first each time; a wrong guess costs a
/// round trip, never a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClaimPath {
    /// One statement, no lock (the queue is unlimited, as far as known).
    #[default]
    Plain,
    /// Counting its limits under the queue's row lock: places reserved in
    /// one short transaction, then claimed in another (or, with a per-key
    /// limit, claimed in the same one). With the reservation the last
    /// claim left open, if any: the next claims take its places first.
    Limited(Option<OpenReservation>),
}

impl ClaimPath {
    /// Whether this is the limited path.
    pub fn is_limited(&self) -> bool {
        matches!(self, Self::Limited(_))
    }
}

/// A reservation whose places a worker may still claim: reserved ahead
/// for several claims while its queue was far from its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReservation {
    /// The reservation's id.
    pub id: i64,
    /// Its places not yet claimed.
    pub left: usize,
}

impl OpenReservation {
    /// What is left open after a claim of up to `limit` took `claimed` of
    /// its places: nothing once the claim came back short or took the last
    /// place, which closes the reservation (`claim_reserved_jobs`).
    fn after_claiming(self, limit: usize, claimed: usize) -> Option<Self> {
        let left = self.left.saturating_sub(claimed);
        (claimed == limit.min(self.left) && left > 0).then_some(Self { left, ..self })
    }
}

/// What a claim got.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The claimed jobs, leased to the worker.
    pub jobs: Vec<ClaimedJob>,
    /// The path to take next time.
    pub next_path: ClaimPath,
}

/// How many buckets a rate period is counted in. A start at time `t` counts
/// in bucket `floor(t / (period / RATE_BUCKETS))`; a claim at `t` counts
/// every start in the buckets from the one holding `t - period` on (later
/// ones hold the places of reservations in flight, counted at their
/// expiry), which holds every start of the window `(t - period, t]` and
/// perhaps a few older ones. So it never admits more than the rate, and,
/// while no reservation is in flight, at least
/// `RATE_BUCKETS / (RATE_BUCKETS + 1)` of it over a full window.
const RATE_BUCKETS: i32 = 20;

/// How far past its free slots a per-key claim looks for jobs of keys
/// still under their limit: a batch may come back short when one key
/// crowds this window, and the next claim (with that key now at its limit,
/// and so skipped) takes the rest.
const PER_KEY_LOOKAHEAD: i32 = 16;

/// For how many claims a reservation takes places while its queue is far
/// from its limits: never more than half of what the limits leave, so
/// that as much again is left to the other workers, and near a limit a
/// reservation takes what one claim asks. Each reservation is a
/// transaction under the queue's row lock (about 1 ms of PostgreSQL's CPU,
/// docs/benchmarks.md, "Queue limits"); serving several claims with one
/// cuts that per job.
pub const CLAIMS_PER_RESERVATION: i32 = 4;

/// How long a reservation's places wait for their claims. The first claim
/// follows at once, so only a worker that stalls or dies between the two
/// runs past it, or one whose later claims come slowly (long jobs) with
/// places left; its places come back with the first reservation after
/// that. On a queue with a rate, its places count as starts in the bucket
/// of its expiry until they are folded, so a longer expiry would hold back
/// more of the rate while reservations are open.
pub const RESERVATION_EXPIRY: Duration = Duration::from_secs(2);

/// What [`Store::reserve_places`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The queue has no limits (any more): claim it on the plain path.
    Unlimited,
    /// The queue has a per-key limit: claim it under its row lock.
    Keyed,
    /// The queue is paused, full, or has no job waiting.
    Nothing,
    /// Places reserved.
    Places(OpenReservation),
}

impl Store {
    /// Claims up to `limit` due jobs of `queue` for `worker_id`, in priority
    /// order, and leases each for `lease_ttl`, taking `path` first (see the
    /// [module docs](self)).
    ///
    /// Guard: `state = 'available'`, rows locked with `FOR UPDATE SKIP
    /// LOCKED` so concurrent workers never claim the same job. Each claimed
    /// job gets a fresh fencing token. The plain path is one statement served
    /// by `jobs_claim_idx` (no table scan however many jobs wait); it claims
    /// nothing of a paused or limited queue, and shares the queue's settings
    /// lock until it commits. The limited path claims nothing
    /// of a paused queue and no more than its limits leave.
    pub async fn claim(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
        path: ClaimPath,
    ) -> StoreResult<Claimed> {
        let open = match path {
            ClaimPath::Limited(open) => open,
            ClaimPath::Plain => {
                let jobs = self
                    .claim_unlimited(queue, worker_id, limit, lease_ttl)
                    .await?;
                if jobs.len() == limit || !self.queue_is_limited(queue).await? {
                    return Ok(Claimed {
                        jobs,
                        next_path: ClaimPath::Plain,
                    });
                }
                if !jobs.is_empty() {
                    // Claimed just before a limit was set, which applies to
                    // the claims after it.
                    return Ok(Claimed {
                        jobs,
                        next_path: ClaimPath::Limited(None),
                    });
                }
                None
            }
        };
        self.claim_limited(queue, worker_id, limit, lease_ttl, open)
            .await
    }

    /// The plain path: one statement, skipping a limited queue. The gate is
    /// an uncorrelated subquery, so PostgreSQL asks it once, before the
    /// scan (`One-Time Filter`), and claims nothing when it says no.
    async fn claim_unlimited(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Vec<ClaimedJob>> {
        super::statement("claim_unlimited");
        let rows = sqlx::query_as!(
            ClaimRow,
            r#"WITH due AS (
                 SELECT id FROM jobs
                 WHERE state = 'available' AND queue = $1
                   AND (SELECT plain_claim_may_take($1))
                 ORDER BY priority DESC, run_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ),
             claimed AS (
                 UPDATE jobs j
                 SET state = 'running', attempt = j.attempt + 1,
                     lease_token = nextval('lease_tokens'), worker_id = $3,
                     lease_expires_at = now() + $4 * interval '1 millisecond',
                     lease_ttl_ms = ceil($4::float8)::bigint,
                     attempted_at = now(), updated_at = now()
                 FROM due WHERE j.id = due.id
                 RETURNING j.id, j.module_hash, j.queue, j.input, j.attempt, j.attempt_base,
                           j.max_attempts, j.timeout_ms, j.fuel, j.memory_limit_bytes,
                           j.lease_token, j.attempted_at, j.run_at
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT $1, 'available', 'running', count(*) FROM claimed HAVING count(*) > 0
             )
             SELECT id AS "id?", module_hash AS "module_hash?", queue AS "queue?",
                    input AS "input?", attempt AS "attempt?", attempt_base AS "attempt_base?",
                    max_attempts AS "max_attempts?", timeout_ms AS "timeout_ms?",
                    fuel AS "fuel?", memory_limit_bytes AS "memory_limit_bytes?",
                    lease_token AS "lease_token?", attempted_at AS "attempted_at?",
                    run_at AS "run_at?"
             FROM claimed"#,
            queue,
            limit as i64,
            worker_id,
            millis(lease_ttl) as f64
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().filter_map(ClaimRow::job).collect())
    }

    /// Whether `queue` is paused or limited, read without a lock: asked only
    /// when a plain claim came back short, to tell an empty queue from a
    /// limited one.
    async fn queue_is_limited(&self, queue: &str) -> StoreResult<bool> {
        super::statement("queue_is_limited");
        Ok(
            sqlx::query_scalar!("SELECT limited FROM queues WHERE name = $1", queue)
                .fetch_optional(self.pool())
                .await?
                .unwrap_or(false),
        )
    }

    /// The limited path. A queue without a per-key limit is claimed in two
    /// short transactions, so that the queue's row is locked only for the
    /// first: `reserve_claim_places` works out what the limits leave under
    /// the row's lock and reserves places, then `claim_reserved_jobs`
    /// claims up to them without it (the latter in
    /// migrations/20261216000001_reservations_serve_several_claims.sql,
    /// which says how reservations serve several claims, are folded back,
    /// expire and are counted; the former's latest version in
    /// migrations/20261217000001_claims_never_split.sql). A claim takes
    /// its jobs from the reservation `open` if that has places for all of
    /// them, and otherwise reserves anew, closing `open` in the same
    /// transaction: so a claim is one round trip, or two, never split
    /// between reservations. It also reserves anew when `open` had none
    /// for it (closed, expired, or revoked by a settings write). A queue
    /// with a per-key limit is claimed under the row's lock
    /// ([`Self::claim_locked`]), after the reservation's call has said so.
    async fn claim_limited(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
        open: Option<OpenReservation>,
    ) -> StoreResult<Claimed> {
        if let Some(open) = open.filter(|open| open.left >= limit) {
            let claimed = self.claim_from(open, worker_id, limit, lease_ttl).await?;
            if !claimed.jobs.is_empty() {
                // Full, or short because no more jobs wait.
                return Ok(claimed);
            }
            // It had none for the claim: closed, expired, or revoked by a
            // settings write.
        }
        let closing = open.map(|open| open.id);
        match self.reserve_places(queue, limit, closing).await? {
            Reservation::Unlimited => {
                self.claim_after_limits_lifted(queue, worker_id, limit, lease_ttl)
                    .await
            }
            Reservation::Keyed => self.claim_locked(queue, worker_id, limit, lease_ttl).await,
            Reservation::Nothing => Ok(Claimed {
                jobs: Vec::new(),
                next_path: ClaimPath::Limited(None),
            }),
            Reservation::Places(reservation) => {
                self.claim_from(reservation, worker_id, limit, lease_ttl)
                    .await
            }
        }
    }

    /// Reserves places for claims of up to `limit` jobs of `queue`: the
    /// first step of the limited path (public so that tests can stop a
    /// claim between its steps, as a stalled worker does). Far from the
    /// queue's limits, places for [`CLAIMS_PER_RESERVATION`] claims.
    /// Closes the caller's reservation `closing` first, if given, and gives
    /// back its unused places.
    pub async fn reserve_places(
        &self,
        queue: &str,
        limit: usize,
        closing: Option<i64>,
    ) -> StoreResult<Reservation> {
        super::statement("reserve_claim_places");
        let row = sqlx::query!(
            r#"SELECT unlimited AS "unlimited!", keyed AS "keyed!", reservation, places
             FROM reserve_claim_places($1, $2, $3, $4, $5, $6)"#,
            queue,
            limit as i64,
            CLAIMS_PER_RESERVATION,
            RATE_BUCKETS,
            millis(RESERVATION_EXPIRY) as f64,
            closing
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            None => Reservation::Nothing,
            Some(row) if row.unlimited => Reservation::Unlimited,
            Some(row) if row.keyed => Reservation::Keyed,
            Some(row) => match (row.reservation, row.places) {
                (Some(id), Some(places)) => Reservation::Places(OpenReservation {
                    id,
                    left: usize::try_from(places).unwrap_or(0),
                }),
                _ => Reservation::Nothing,
            },
        })
    }

    /// Claims up to `limit` of the places `reservation` has left, and says
    /// what it leaves open for the next claim.
    async fn claim_from(
        &self,
        reservation: OpenReservation,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Claimed> {
        let jobs = self
            .claim_reserved(reservation.id, worker_id, limit, lease_ttl)
            .await?;
        Ok(Claimed {
            next_path: ClaimPath::Limited(reservation.after_claiming(limit, jobs.len())),
            jobs,
        })
    }

    /// Claims up to `limit` of the places `reservation` has left, leased
    /// for `lease_ttl`: the second step of the limited path. Nothing once
    /// the reservation is closed, has expired or is gone; a claim that
    /// comes back short, or uses its last place, closes it.
    pub async fn claim_reserved(
        &self,
        reservation: i64,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Vec<ClaimedJob>> {
        super::statement("claim_reserved_jobs");
        let rows = sqlx::query_as!(
            ClaimRow,
            "SELECT id, module_hash, queue, input, attempt, attempt_base, max_attempts,
                    timeout_ms, fuel, memory_limit_bytes, lease_token, attempted_at, run_at
             FROM claim_reserved_jobs($1, $2, $3, $4)",
            reservation,
            worker_id,
            limit as i64,
            millis(lease_ttl) as f64
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().filter_map(ClaimRow::job).collect())
    }

    /// The locked claim, for a queue with a per-key limit: one call of
    /// `claim_limited_jobs` (its latest version in
    /// migrations/20261221000001_cancelled_attempts_hold_their_places.sql,
    /// whose counts add the places cancelled attempts hold), which locks the
    /// queue's row, then, with snapshots taken after the lock, claims what
    /// its limits leave, in one round trip and one transaction; the lock
    /// serializes the limited claims of this queue.
    async fn claim_locked(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Claimed> {
        super::statement("claim_limited");
        let rows = sqlx::query_as!(
            ClaimRow,
            "SELECT id, module_hash, queue, input, attempt, attempt_base, max_attempts,
                    timeout_ms, fuel, memory_limit_bytes, lease_token, attempted_at, run_at
             FROM claim_limited_jobs($1, $2, $3, $4, $5, $6)",
            queue,
            worker_id,
            limit as i64,
            millis(lease_ttl) as f64,
            PER_KEY_LOOKAHEAD,
            RATE_BUCKETS
        )
        .fetch_all(self.pool())
        .await?;
        // The function answers a queue that is no longer limited with one row
        // of `NULL`s (its `unlimited` column set), and a claimed job's row
        // always has an id.
        if rows.first().is_some_and(|row| row.id.is_none()) {
            return self
                .claim_after_limits_lifted(queue, worker_id, limit, lease_ttl)
                .await;
        }
        let jobs = rows.into_iter().filter_map(ClaimRow::job).collect();
        Ok(Claimed {
            jobs,
            next_path: ClaimPath::Limited(None),
        })
    }

    /// The plain claim, for a queue whose limits were lifted since this
    /// worker last looked.
    async fn claim_after_limits_lifted(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        lease_ttl: Duration,
    ) -> StoreResult<Claimed> {
        let jobs = self
            .claim_unlimited(queue, worker_id, limit, lease_ttl)
            .await?;
        Ok(Claimed {
            jobs,
            next_path: ClaimPath::Plain,
        })
    }

    /// The trace contexts of `jobs` that have one, by job. Read apart from
    /// the claim, and only by a worker that exports traces
    /// (telemetry/traces.rs), so that a worker that does not pays nothing
    /// for them and the claim statements stay as they are.
    pub async fn trace_contexts(&self, jobs: &[Uuid]) -> StoreResult<HashMap<Uuid, TraceContext>> {
        super::statement("trace_contexts");
        let rows = sqlx::query!(
            r#"SELECT id, traceparent AS "traceparent!: TraceContext" FROM jobs
             WHERE id = ANY($1) AND traceparent IS NOT NULL"#,
            jobs
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.id, row.traceparent))
            .collect())
    }
}
