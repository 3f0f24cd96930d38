//! The statements that end a job's attempts and check its leases, used by
//! workers and the maintenance services (claim.rs claims). Each is batched:
//! one statement moves many jobs, so PostgreSQL commits per batch rather
//! than per job.
//!
//! Fencing: a claim stamps the job with a fresh `lease_token` from the
//! `lease_tokens` sequence. Every later write about that attempt carries the
//! token and matches `state = 'running' AND lease_token = $token`; a writer
//! whose token is no longer current (it was paused past its lease and the job
//! was rescued and claimed again) changes nothing. See
//! `docs/adr/001-fencing-tokens.md`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreResult, Transition, millis, saturating_i64, storable_text};
use crate::job::{
    AfterFailure, AttemptEnd, AttemptLog, AttemptOutcome, AttemptRequests, Failure, FailureKind,
    JobState, TraceContext, Usage,
};

/// A job and the fencing token of one of its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    /// The job.
    pub job_id: Uuid,
    /// The attempt's fencing token.
    pub lease_token: i64,
}

/// The record of an ended attempt and the job's next state, written together.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    /// The attempt's lease; the write applies only if it is still current.
    pub lease: LeaseRef,
    /// Attempt number.
    pub attempt: i32,
    /// Worker that ran it.
    pub worker_id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How it ended and where the job goes.
    pub end: AttemptEnd,
    /// What it used, if it ran in this worker's sandbox (a rescue knows
    /// nothing of it).
    pub usage: Option<Usage>,
    /// What it logged.
    pub log: AttemptLog,
    /// The outbound requests it made.
    pub requests: AttemptRequests,
    /// Where the job goes instead if PostgreSQL refuses to store this
    /// outcome and the attempt is recorded without it
    /// ([`FinishedAttempt::refused`]).
    pub if_refused: AfterFailure,
    /// Its job's trace, when the worker records spans (not stored: the job
    /// holds it).
    pub trace: Option<TraceContext>,
}

impl FinishedAttempt {
    /// Whether writing it ends the job (`succeeded` or `dead`), for those
    /// waiting on the job (lease/endings.rs).
    pub fn ends_job(&self) -> bool {
        self.end.next_state().is_final()
    }

    /// Roughly the bytes this outcome sends to PostgreSQL, so writers can
    /// bound a batch by size as well as by count.
    pub fn size_bytes(&self) -> usize {
        /// The fixed-size columns, ids and names.
        const ROW_OVERHEAD_BYTES: usize = 256;
        ROW_OVERHEAD_BYTES
            + self.end.output().map_or(0, <[u8]>::len)
            + self.log.lines_json.len()
            + self.requests.records_json.len()
            + self.end.error().map_or(0, |(_, message)| message.len())
            + self.worker_id.len()
    }

    /// This attempt recorded as failed with `outcome_rejected`, after
    /// PostgreSQL refused to store it with SQLSTATE `sqlstate`: no output,
    /// no log (its lines counted as dropped), no guest message.
    pub fn refused(&self, sqlstate: &str) -> Self {
        Self {
            end: AttemptEnd::Failed {
                failure: Failure::new(
                    FailureKind::OutcomeRejected,
                    format!(
                        "PostgreSQL refused to store this attempt's outcome (SQLSTATE \
                         {sqlstate}); its output, log and message were discarded and the \
                         worker's log has the details"
                    ),
                ),
                next: self.if_refused,
            },
            log: self.log.discarded(),
            ..self.clone()
        }
    }
}

impl Store {
    /// Ends attempts: records each in `job_attempts` and moves its job to
    /// the next state, in one statement for the whole batch, locking the
    /// jobs in id order (`in_lock_order`).
    ///
    /// Guard, per job: `state = 'running' AND lease_token = <the attempt's
    /// token>`, and for a rescue (outcome `lease_expired`) also
    /// `lease_expires_at` still the deadline the rescuer found passed
    /// (`AttemptEnd::LeaseExpired::deadline`; see [`Store::confirm_leases`]).
    /// An attempt whose guard does not match (the job was rescued,
    /// cancelled, or claimed again) is not recorded and its job is untouched:
    /// the result says [`Transition::Stale`] and the caller discards it.
    /// Only its outbound requests are kept: they are put on the record the
    /// cancel or the rescue wrote for that very attempt (same job and token;
    /// the statement's snapshot does not see the rows it inserts), so the
    /// requests an attempt made are on its record whoever ended it, unless
    /// the cancel or rescue committed while this statement ran. The stale
    /// outcomes with requests are picked out first (`stale`, materialized,
    /// usually empty): joined with every outcome of the batch instead, a
    /// plan made while `job_attempts` looked empty (a young table, before
    /// autovacuum analyzes it) compared each of its rows with every outcome,
    /// half a second per batch of 512 (docs/benchmarks.md, issue 13).
    ///
    /// A worker's outcome for an attempt that a cancel ended also frees the
    /// place the cancel held for it under its queue's limits
    /// ([`Store::cancel_if_unfinished`]), unless the cancel committed while
    /// this statement ran (the place then lapses one TTL after the cancel).
    pub async fn finish_if_lease_matches(
        &self,
        attempts: &[FinishedAttempt],
    ) -> StoreResult<Vec<Transition>> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        super::statement("finish_if_lease_matches");
        let mut connection = self
            .connection_for(attempts.iter().map(FinishedAttempt::size_bytes).sum())
            .await?;
        let ordered = super::in_lock_order(attempts, |a| a.lease.job_id);
        let errors: Vec<Option<(&str, String)>> = ordered
            .iter()
            .map(|a| {
                a.end
                    .error()
                    .map(|(kind, message)| (kind.code(), storable_text(message)))
            })
            .collect();
        let last_errors: Vec<Option<serde_json::Value>> = errors
            .iter()
            .map(|error| {
                error
                    .as_ref()
                    .map(|(kind, message)| serde_json::json!({ "kind": kind, "message": message }))
            })
            .collect();
        let job_ids: Vec<Uuid> = ordered.iter().map(|a| a.lease.job_id).collect();
        let tokens: Vec<i64> = ordered.iter().map(|a| a.lease.lease_token).collect();
        let next_states: Vec<JobState> = ordered.iter().map(|a| a.end.next_state()).collect();
        let outputs: Vec<Option<&[u8]>> = ordered.iter().map(|a| a.end.output()).collect();
        let retry_delays: Vec<Option<i64>> = ordered
            .iter()
            .map(|a| a.end.retry_delay().map(millis))
            .collect();
        let numbers: Vec<i32> = ordered.iter().map(|a| a.attempt).collect();
        let workers: Vec<&str> = ordered.iter().map(|a| a.worker_id.as_str()).collect();
        let started: Vec<DateTime<Utc>> = ordered.iter().map(|a| a.started_at).collect();
        let outcomes: Vec<AttemptOutcome> = ordered.iter().map(|a| a.end.outcome()).collect();
        let kinds: Vec<Option<&str>> = errors
            .iter()
            .map(|error| error.as_ref().map(|(kind, _)| *kind))
            .collect();
        let messages: Vec<Option<&str>> = errors
            .iter()
            .map(|error| error.as_ref().map(|(_, message)| message.as_str()))
            .collect();
        let fuel: Vec<Option<i64>> = ordered
            .iter()
            .map(|a| a.usage.map(|u| saturating_i64(u.fuel_consumed)))
            .collect();
        let memory: Vec<Option<i64>> = ordered
            .iter()
            .map(|a| a.usage.map(|u| saturating_i64(u.memory_bytes)))
            .collect();
        let durations: Vec<Option<i64>> = ordered
            .iter()
            .map(|a| a.usage.map(|u| saturating_i64(u.duration.as_micros())))
            .collect();
        let logs: Vec<&str> = ordered.iter().map(|a| a.log.lines_json.as_str()).collect();
        let dropped: Vec<i64> = ordered
            .iter()
            .map(|a| saturating_i64(a.log.dropped))
            .collect();
        let requests: Vec<&str> = ordered
            .iter()
            .map(|a| a.requests.records_json.as_str())
            .collect();
        let requests_dropped: Vec<i64> = ordered
            .iter()
            .map(|a| saturating_i64(a.requests.dropped))
            .collect();
        let rescued_deadlines: Vec<Option<DateTime<Utc>>> =
            ordered.iter().map(|a| a.end.rescued_deadline()).collect();
        let applied: Vec<LeaseRef> = sqlx::query_as!(
            LeaseRef,
            r#"WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::job_state[], $4::bytea[],
                                      $5::bigint[], $6::jsonb[], $7::int[], $8::text[],
                                      $9::timestamptz[], $10::attempt_outcome[], $11::text[],
                                      $12::text[], $13::bigint[], $14::bigint[], $15::text[],
                                      $16::bigint[], $17::text[], $18::bigint[], $19::bigint[],
                                      $20::timestamptz[])
                      AS i(job_id, lease_token, next_state, output, retry_delay_ms, last_error,
                           attempt, worker_id, started_at, outcome, error_kind, error_message,
                           fuel_consumed, duration_us, logs, logs_dropped, requests,
                           requests_dropped, memory_bytes, rescued_deadline)
             ),
             finished AS (
                 UPDATE jobs j
                 SET state = i.next_state,
                     output = i.output,
                     run_at = CASE WHEN i.next_state = 'retrying'
                                   THEN now() + i.retry_delay_ms * interval '1 millisecond'
                                   ELSE j.run_at END,
                     last_error = COALESCE(i.last_error, j.last_error),
                     finished_at = CASE WHEN i.next_state = 'retrying' THEN NULL ELSE now() END,
                     lease_expires_at = NULL,
                     updated_at = now()
                 FROM input i
                 WHERE j.id = i.job_id AND j.state = 'running' AND j.lease_token = i.lease_token
                   -- A rescue also needs the deadline it found passed
                   -- unchanged: a worker that confirmed its lease since
                   -- moved it, however long ago the rescuer read it.
                   AND (i.outcome <> 'lease_expired' OR j.lease_expires_at = i.rescued_deadline)
                 RETURNING j.id, j.lease_token, j.queue, j.state
             ),
             logged AS (
                 INSERT INTO job_transition_log (queue, from_state, to_state, jobs)
                 SELECT queue, 'running', state, count(*) FROM finished GROUP BY queue, state
             ),
             -- The worker's report of an attempt a cancel ended: its guest
             -- has stopped, so the place it held under its queue's limits
             -- is free (`cancel_if_unfinished`). Not a rescue's: a rescuer
             -- cannot know that. A row another transaction holds is left
             -- (it is being deleted, or lapses by itself): this statement
             -- never waits on one, so it adds no lock order to the jobs'.
             released AS (
                 DELETE FROM stopping_attempts s
                 WHERE (s.job_id, s.lease_token) IN (
                     SELECT h.job_id, h.lease_token
                     FROM stopping_attempts h
                     JOIN input i ON i.job_id = h.job_id AND i.lease_token = h.lease_token
                     WHERE i.outcome <> 'lease_expired'
                     FOR UPDATE OF h SKIP LOCKED)
             ),
             stale AS MATERIALIZED (
                 SELECT i.job_id, i.lease_token, i.requests, i.requests_dropped
                 FROM input i
                 WHERE i.requests <> '[]' AND NOT EXISTS (
                     SELECT 1 FROM finished f WHERE f.id = i.job_id AND f.lease_token = i.lease_token)
             ),
             stale_requests AS (
                 UPDATE job_attempts a
                 SET requests = s.requests::jsonb, requests_dropped = s.requests_dropped
                 FROM stale s
                 WHERE a.job_id = s.job_id AND a.lease_token = s.lease_token AND a.requests = '[]'
             )
             INSERT INTO job_attempts (job_id, lease_token, attempt, worker_id, started_at,
                                       outcome, error_kind, error_message, fuel_consumed,
                                       duration_us, logs, logs_dropped, requests,
                                       requests_dropped, memory_bytes)
             SELECT i.job_id, i.lease_token, i.attempt, i.worker_id, i.started_at, i.outcome,
                    i.error_kind, i.error_message, i.fuel_consumed, i.duration_us, i.logs::jsonb,
                    i.logs_dropped, i.requests::jsonb, i.requests_dropped, i.memory_bytes
             FROM input i JOIN finished f ON f.id = i.job_id AND f.lease_token = i.lease_token
             RETURNING job_id, lease_token"#,
            &job_ids,
            &tokens,
            &next_states as &[JobState],
            &outputs as &[Option<&[u8]>],
            &retry_delays as &[Option<i64>],
            &last_errors as &[Option<serde_json::Value>],
            &numbers,
            &workers as &[&str],
            &started,
            &outcomes as &[AttemptOutcome],
            &kinds as &[Option<&str>],
            &messages as &[Option<&str>],
            &fuel as &[Option<i64>],
            &durations as &[Option<i64>],
            &logs as &[&str],
            &dropped,
            &requests as &[&str],
            &requests_dropped,
            &memory as &[Option<i64>],
            &rescued_deadlines as &[Option<DateTime<Utc>>]
        )
        .fetch_all(connection.statements())
        .await?;
        Ok(attempts
            .iter()
            .map(|a| {
                if applied.contains(&a.lease) {
                    Transition::Applied
                } else {
                    Transition::Stale
                }
            })
            .collect())
    }

    /// Which of `leases` are still current (the job is running under that
    /// token), changing nothing: what a worker's heartbeat asks of the
    /// attempts it holds, to stop those a cancel or a rescue ended whose
    /// revocation never reached Redis (`Heartbeat::stop_ended`).
    pub async fn still_running(&self, leases: &[LeaseRef]) -> StoreResult<Vec<LeaseRef>> {
        super::statement("still_running");
        let ids: Vec<Uuid> = leases.iter().map(|l| l.job_id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.lease_token).collect();
        Ok(sqlx::query_as!(
            LeaseRef,
            r#"SELECT j.id AS job_id, j.lease_token AS "lease_token!"
             FROM jobs j JOIN unnest($1::uuid[], $2::bigint[]) AS l(id, token)
               ON j.id = l.id AND j.lease_token = l.token
             WHERE j.state = 'running'"#,
            &ids,
            &tokens,
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Which of `leases` are still current (the job is running under that
    /// token), pushing each one's `lease_expires_at` out to at least `ttl`
    /// from now (locking the jobs in id order, `in_lock_order`). A worker asks this when Redis lost its lease keys, before
    /// it writes them back and extends its grants by `ttl`: a rescue needs
    /// the deadline it found passed unchanged
    /// ([`Store::finish_if_lease_matches`]), so one that read a key missing
    /// before cannot end an attempt confirmed since, and one that commits
    /// first makes the confirmation fail.
    pub async fn confirm_leases(
        &self,
        leases: &[LeaseRef],
        ttl: Duration,
    ) -> StoreResult<Vec<LeaseRef>> {
        super::statement("confirm_leases");
        let leases = super::in_lock_order(leases, |lease| lease.job_id);
        let ids: Vec<Uuid> = leases.iter().map(|l| l.job_id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.lease_token).collect();
        Ok(sqlx::query_as!(
            LeaseRef,
            r#"UPDATE jobs j
             SET lease_expires_at = GREATEST(j.lease_expires_at,
                                             now() + $3 * interval '1 millisecond')
             FROM unnest($1::uuid[], $2::bigint[]) AS l(id, token)
             WHERE j.id = l.id AND j.lease_token = l.token AND j.state = 'running'
             RETURNING j.id AS job_id, j.lease_token AS "lease_token!""#,
            &ids,
            &tokens,
            millis(ttl) as f64
        )
        .fetch_all(self.pool())
        .await?)
    }
}
