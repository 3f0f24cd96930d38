//! The rescuer's statements: running jobs whose lease may be gone, and
//! moving the deadline of those Redis still shows alive. Rescuing itself is
//! [`Store::finish_if_lease_matches`] with a `lease_expired` outcome.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{LeaseRef, Store, StoreResult, from_millis, millis};

/// A running job whose lease the rescuer should check.
#[derive(Debug, Clone)]
pub struct RunningLease {
    /// The job.
    pub job_id: Uuid,
    /// Fencing token of the running attempt.
    pub lease_token: i64,
    /// Attempt number.
    pub attempt: i32,
    /// See [`ClaimedJob::attempt_base`].
    pub attempt_base: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Worker holding the lease.
    pub worker_id: String,
    /// When the attempt started.
    pub attempted_at: DateTime<Utc>,
    /// Its lease's deadline, passed when read; a rescue decided on it
    /// applies only while it is unchanged (`AttemptEnd::LeaseExpired`).
    pub lease_expires_at: DateTime<Utc>,
    /// The lease TTL its claim granted, in ms (NULL if claimed before it was
    /// recorded).
    pub lease_ttl_ms: Option<i64>,
}

impl RunningLease {
    /// This attempt's lease.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef {
            job_id: self.job_id,
            lease_token: self.lease_token,
        }
    }

    /// The lease TTL its claim granted, if recorded.
    pub fn lease_ttl(&self) -> Option<Duration> {
        self.lease_ttl_ms.map(from_millis)
    }
}

impl Store {
    /// Running jobs whose `lease_expires_at` has passed, oldest first: the
    /// rescuer asks Redis whether their leases are still alive. Served by
    /// `jobs_lease_idx`.
    ///
    /// Only attempts whose claim granted a TTL of at most `keys_kept_for`
    /// (how long Redis has kept its keys, [`Leases::redis_age`]): a worker
    /// restores its keys at its next heartbeat round, so after Redis lost
    /// them a missing key proves nothing until its own TTL has passed too.
    /// Filtered here, not after, so that such leases never fill the batch
    /// ahead of others.
    ///
    /// [`Leases::redis_age`]: crate::lease::Leases::redis_age
    pub async fn running_past_lease(
        &self,
        limit: usize,
        keys_kept_for: Duration,
    ) -> StoreResult<Vec<RunningLease>> {
        super::statement("running_past_lease");
        Ok(sqlx::query_as!(
            RunningLease,
            // Every claim sets these and nothing clears them: a running job has them.
            r#"SELECT id AS job_id, lease_token AS "lease_token!", attempt, attempt_base,
                    max_attempts, worker_id AS "worker_id!", attempted_at AS "attempted_at!",
                    lease_expires_at AS "lease_expires_at!", lease_ttl_ms
             FROM jobs
             WHERE state = 'running' AND lease_expires_at < now()
               AND (lease_ttl_ms IS NULL OR lease_ttl_ms <= $2)
             ORDER BY lease_expires_at
             LIMIT $1"#,
            limit as i64,
            millis(keys_kept_for)
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Moves `lease_expires_at` of leases Redis confirmed alive to when
    /// their Redis key expires unless renewed, so the rescuer looks again
    /// exactly when the lease could next be gone.
    ///
    /// Guard: `state = 'running' AND lease_token = <token>`. Rows are
    /// locked in job id order (`in_lock_order`).
    pub async fn extend_leases_if_token_matches(
        &self,
        leases: &[(LeaseRef, Duration)],
    ) -> StoreResult<u64> {
        if leases.is_empty() {
            return Ok(0);
        }
        super::statement("extend_leases_if_token_matches");
        let leases = super::in_lock_order(leases, |(lease, _)| lease.job_id);
        let ids: Vec<Uuid> = leases.iter().map(|(l, _)| l.job_id).collect();
        let tokens: Vec<i64> = leases.iter().map(|(l, _)| l.lease_token).collect();
        let expire_in_ms: Vec<i64> = leases.iter().map(|(_, until)| millis(*until)).collect();
        Ok(sqlx::query!(
            "UPDATE jobs j
             SET lease_expires_at = now() + l.ms * interval '1 millisecond'
             FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS l(id, token, ms)
             WHERE j.id = l.id AND j.state = 'running' AND j.lease_token = l.token",
            &ids,
            &tokens,
            &expire_in_ms
        )
        .execute(self.pool())
        .await?
        .rows_affected())
    }
}
