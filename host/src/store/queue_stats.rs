//! What the queue listing shows, read from counters
//! (migrations/20261205000001_queue_counts.sql) rather than by counting
//! jobs: each store statement that inserts, moves or deletes jobs logs, in
//! a CTE of its own, how many it moved between which states, [`Store::fold_job_transitions`] (the
//! counter folder, maintenance/counter_folder.rs) folds the log into
//! `queue_state_counts` and `queue_activity`, and readers add what is not
//! folded yet, so counts are exact as of their snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use super::{QueueRecord, Store, StoreResult};
use crate::job::JobState;
use crate::queue::{Activity, JobCounts, QueueStats};

/// How long `queue_activity` keeps its 10-second buckets: the listing
/// reads the last hour.
const ACTIVITY_KEPT: Duration = Duration::from_secs(2 * 3600);

impl Store {
    /// The stats of queue `name`, or of every queue that has jobs, holds
    /// places of cancelled attempts or had attempts in the last hour
    /// (`None`), by queue. Four statements, reading counters, the unfolded
    /// log, the held places (a table of a few rows) and, for queues with
    /// available jobs, one index entry per distinct priority.
    pub async fn queue_stats(
        &self,
        name: Option<&str>,
    ) -> StoreResult<BTreeMap<String, QueueStats>> {
        let mut stats: BTreeMap<String, QueueStats> = self
            .job_counts(name)
            .await?
            .into_iter()
            .map(|(queue, jobs)| {
                let stats = QueueStats {
                    jobs,
                    ..QueueStats::default()
                };
                (queue, stats)
            })
            .collect();

        super::statement("queue_activity");
        let activity = sqlx::query!(
            r#"SELECT queue AS "queue!", bucket > now() - interval '1 minute' AS "last_minute!",
                      sum(started)::bigint AS "started!", sum(succeeded)::bigint AS "succeeded!",
                      sum(failed)::bigint AS "failed!"
               FROM queue_activity_current
               WHERE bucket > now() - interval '1 hour' AND ($1::text IS NULL OR queue = $1)
               GROUP BY 1, 2"#,
            name
        )
        .fetch_all(self.pool())
        .await?;
        for row in activity {
            let window = Activity {
                started: u64::try_from(row.started).unwrap_or_default(),
                succeeded: u64::try_from(row.succeeded).unwrap_or_default(),
                failed: u64::try_from(row.failed).unwrap_or_default(),
            };
            let queue = stats.entry(row.queue).or_default();
            queue.last_hour += window;
            if row.last_minute {
                queue.last_minute += window;
            }
        }

        for (queue, places) in self.stopping_places(name).await? {
            stats.entry(queue).or_default().stopping = places;
        }

        let waiting: Vec<String> = stats
            .iter()
            .filter(|(_, queue)| queue.jobs.get(JobState::Available) > 0)
            .map(|(name, _)| name.clone())
            .collect();
        for (queue, age) in self.oldest_available_ages(&waiting).await? {
            if let Some(stats) = stats.get_mut(&queue) {
                stats.oldest_available_age = Some(age);
            }
        }
        Ok(stats)
    }

    /// The places under their limits that queue `name`, or every queue
    /// (`None`), still holds for cancelled attempts (`stopping_attempts`),
    /// counted as the limits count them (`running_or_reserved`, migrations/20261221000001).
    async fn stopping_places(&self, name: Option<&str>) -> StoreResult<Vec<(String, u64)>> {
        super::statement("stopping_places");
        let rows = sqlx::query!(
            r#"SELECT queue AS "queue!", count(*) AS "places!"
               FROM stopping_attempts
               WHERE held_until > now() AND ($1::text IS NULL OR queue = $1)
               GROUP BY queue"#,
            name
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.queue, u64::try_from(row.places).unwrap_or_default()))
            .collect())
    }

    /// Every queue configured or holding jobs (or with attempts in the last
    /// hour), by name, with its stats: what `GET /v1/queues` and the
    /// console's overview and queue pages list. A queue never configured
    /// comes as [`QueueRecord::unconfigured`].
    pub async fn queues_with_stats(&self) -> StoreResult<Vec<(QueueRecord, QueueStats)>> {
        let mut stats = self.queue_stats(None).await?;
        let mut records: BTreeMap<String, QueueRecord> = self
            .list_queues()
            .await?
            .into_iter()
            .map(|record| (record.name.clone(), record))
            .collect();
        for name in stats.keys() {
            records
                .entry(name.clone())
                .or_insert_with(|| QueueRecord::unconfigured(name));
        }
        Ok(records
            .into_values()
            .map(|record| {
                let stats = stats.remove(&record.name).unwrap_or_default();
                (record, stats)
            })
            .collect())
    }

    /// Attempt starts, successes and failures of all queues together in
    /// each minute of the last hour that had any, oldest first.
    pub async fn activity_by_minute(&self) -> StoreResult<Vec<(DateTime<Utc>, Activity)>> {
        super::statement("activity_by_minute");
        let rows = sqlx::query!(
            r#"SELECT date_trunc('minute', bucket) AS "minute!",
                      sum(started)::bigint AS "started!", sum(succeeded)::bigint AS "succeeded!",
                      sum(failed)::bigint AS "failed!"
               FROM queue_activity_current
               WHERE bucket > now() - interval '1 hour'
               GROUP BY 1 ORDER BY 1"#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let activity = Activity {
                    started: u64::try_from(row.started).unwrap_or_default(),
                    succeeded: u64::try_from(row.succeeded).unwrap_or_default(),
                    failed: u64::try_from(row.failed).unwrap_or_default(),
                };
                (row.minute, activity)
            })
            .collect())
    }

    /// The jobs per state of queue `name`, or of every queue that has jobs
    /// (`None`): one statement over the counters and the unfolded log, for
    /// callers that need no more of [`Store::queue_stats`].
    pub async fn job_counts(&self, name: Option<&str>) -> StoreResult<BTreeMap<String, JobCounts>> {
        super::statement("queue_state_counts");
        let rows = sqlx::query!(
            r#"SELECT queue AS "queue!", state AS "state!: JobState",
                      sum(jobs)::bigint AS "jobs!"
               FROM (SELECT queue, state, jobs FROM queue_state_counts
                     UNION ALL
                     SELECT l.queue, d.state, d.jobs FROM job_transition_log l,
                            state_deltas(l.from_state, l.to_state, l.jobs) d) counts
               WHERE $1::text IS NULL OR queue = $1
               GROUP BY queue, state"#,
            name
        )
        .fetch_all(self.pool())
        .await?;
        let mut counts: BTreeMap<String, JobCounts> = BTreeMap::new();
        for row in rows.into_iter().filter(|row| row.jobs != 0) {
            let jobs = u64::try_from(row.jobs).unwrap_or_default();
            counts.entry(row.queue).or_default().set(row.state, jobs);
        }
        Ok(counts)
    }

    /// How long the job due longest in each of `queues` has waited. The
    /// claim index orders a queue's jobs by priority first, so this reads
    /// its first entry for each distinct priority (a loose index scan).
    async fn oldest_available_ages(
        &self,
        queues: &[String],
    ) -> StoreResult<Vec<(String, Duration)>> {
        super::statement("oldest_available_ages");
        let rows = sqlx::query!(
            r#"SELECT q.queue AS "queue!", oldest.age_ms AS "age_ms!"
               FROM unnest($1::text[]) AS q(queue)
               CROSS JOIN LATERAL (
                   WITH RECURSIVE heads AS (
                       (SELECT j.priority, j.run_at FROM jobs j
                        WHERE j.state = 'available' AND j.queue = q.queue
                        ORDER BY j.priority DESC, j.run_at LIMIT 1)
                       UNION ALL
                       SELECT next.priority, next.run_at FROM heads h CROSS JOIN LATERAL (
                           SELECT j.priority, j.run_at FROM jobs j
                           WHERE j.state = 'available' AND j.queue = q.queue
                             AND j.priority < h.priority
                           ORDER BY j.priority DESC, j.run_at LIMIT 1) next
                   )
                   SELECT GREATEST(EXTRACT(EPOCH FROM now() - min(run_at)) * 1000, 0)::bigint
                          AS age_ms
                   FROM heads
               ) oldest
               WHERE oldest.age_ms IS NOT NULL"#,
            queues
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.queue, Duration::from_millis(row.age_ms.unsigned_abs())))
            .collect())
    }

    /// Folds the transition log into the counters, and forgets activity
    /// older than [`ACTIVITY_KEPT`] and queues left without jobs. Returns
    /// how many log entries it folded. Safe beside a second folder: a log
    /// entry is deleted, and so counted, once.
    pub async fn fold_job_transitions(&self) -> StoreResult<u64> {
        super::statement("fold_job_transitions");
        let mut tx = self.pool().begin().await?;
        let folded = sqlx::query_scalar!(
            r#"WITH folded AS (
                   DELETE FROM job_transition_log
                   RETURNING queue, from_state, to_state, jobs, at
               ),
               counted AS (
                   INSERT INTO queue_state_counts (queue, state, jobs)
                   SELECT f.queue, d.state, sum(d.jobs)
                   FROM folded f, state_deltas(f.from_state, f.to_state, f.jobs) d
                   GROUP BY f.queue, d.state
                   ON CONFLICT (queue, state)
                   DO UPDATE SET jobs = queue_state_counts.jobs + EXCLUDED.jobs
               ),
               active AS (
                   INSERT INTO queue_activity (queue, bucket, started, succeeded, failed)
                   SELECT f.queue, date_bin('10 seconds', f.at, timestamptz 'epoch'),
                          sum(a.started), sum(a.succeeded), sum(a.failed)
                   FROM folded f, attempt_activity(f.from_state, f.to_state, f.jobs) a
                   WHERE a.started + a.succeeded + a.failed > 0
                   GROUP BY 1, 2
                   ON CONFLICT (queue, bucket)
                   DO UPDATE SET started = queue_activity.started + EXCLUDED.started,
                                 succeeded = queue_activity.succeeded + EXCLUDED.succeeded,
                                 failed = queue_activity.failed + EXCLUDED.failed
               )
               SELECT count(*) AS "folded!" FROM folded"#
        )
        .fetch_one(tx.statements())
        .await?;
        sqlx::query!("DELETE FROM queue_state_counts WHERE jobs = 0")
            .execute(tx.statements())
            .await?;
        forget_old_activity(FORGET_OLD_ACTIVITY)
            .execute(tx.statements())
            .await?;
        tx.commit().await?;
        Ok(folded.unsigned_abs())
    }

    /// PostgreSQL's plan for the fold's deletion of old activity, one line
    /// per row of `EXPLAIN`: what the test of its index use reads.
    pub async fn explain_forget_old_activity(&self) -> StoreResult<String> {
        super::statement("explain_forget_old_activity");
        let explain = format!("EXPLAIN {FORGET_OLD_ACTIVITY}");
        let lines = forget_old_activity(&explain)
            .try_map(|row| <(String,) as sqlx::FromRow<_>>::from_row(&row))
            .fetch_all(self.pool())
            .await?;
        Ok(super::plan_text(lines))
    }
}

/// Forgets the buckets older than [`ACTIVITY_KEPT`], reading the index on
/// `bucket` (migration `20261219000001`), not the table: the folder runs it
/// every maintenance interval.
const FORGET_OLD_ACTIVITY: &str =
    "DELETE FROM queue_activity WHERE bucket < now() - $1 * interval '1 second'";

/// `sql` ([`FORGET_OLD_ACTIVITY`], or a statement around it) with its
/// argument.
fn forget_old_activity(sql: &str) -> Query<'_, Postgres, PgArguments> {
    sqlx::query(sql).bind(ACTIVITY_KEPT.as_secs_f64())
}
