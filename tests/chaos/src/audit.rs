//! The audit after the run: every submitted job in PostgreSQL exactly once
//! and succeeded, no two executions of a job overlapping, no outcome written
//! under a stale token, and how long rescues took. It reads PostgreSQL with
//! statements of its own, not through `taskflow::store`: it checks what the
//! store claims, so it must not depend on the code it checks.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use taskflow_testkit::{most_overlapping, percentile};
use uuid::Uuid;

use crate::Chaos;
use crate::analysis::{self, Overlap};

/// The report printed and written at the end.
#[derive(Debug, Serialize)]
pub struct Report {
    pub jobs_submitted: usize,
    pub jobs_in_database: i64,
    pub jobs_succeeded: i64,
    pub lost: usize,
    pub duplicates: i64,
    pub submit_retries: usize,
    pub executions: usize,
    pub overlapping_pairs: usize,
    pub overlaps: Vec<Overlap>,
    pub fencing_violations: i64,
    /// Successes PostgreSQL accepted that no worker's log shows: no
    /// execution by the attempt's worker, of that job, under that token,
    /// ended `succeeded` (`analysis::unlogged_successes`).
    pub unlogged_successes: usize,
    /// Queues and states whose count by the queue counters (the listing's,
    /// migrations/20261205000001_queue_counts.sql) differs from a count of
    /// the rows.
    pub counter_mismatches: i64,
    pub stale_outcomes_rejected: usize,
    pub rescued: usize,
    pub rescue_p50_ms: f64,
    pub rescue_max_ms: f64,
    pub faults: HashMap<&'static str, usize>,
    pub duration_s: f64,
    /// The queue's limits, when the run set them, and the most running at
    /// once that the workers' logs and the attempt records show.
    pub limits: Option<LimitsSeen>,
}

/// A run with `--max-running` or `--max-running-per-key`: what the limits
/// were and the most running at once, by the workers' own execution events
/// (less the time a worker was stopped) and by PostgreSQL's attempt records.
#[derive(Debug, Serialize)]
pub struct LimitsSeen {
    pub max_running: Option<u32>,
    pub max_running_per_key: Option<u32>,
    pub most_running_executions: usize,
    pub most_running_records: usize,
    pub most_running_per_key_executions: usize,
    pub most_running_per_key_records: usize,
}

impl LimitsSeen {
    fn held(&self) -> bool {
        let within = |limit: Option<u32>, seen: usize| limit.is_none_or(|n| seen <= n as usize);
        within(self.max_running, self.most_running_executions)
            && within(self.max_running, self.most_running_records)
            && within(
                self.max_running_per_key,
                self.most_running_per_key_executions,
            )
            && within(self.max_running_per_key, self.most_running_per_key_records)
    }
}

impl Report {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.overlapping_pairs == 0
            && self.fencing_violations == 0
            && self.unlogged_successes == 0
            && self.counter_mismatches == 0
            && self.jobs_succeeded as usize == self.jobs_submitted
            && self.limits.as_ref().is_none_or(LimitsSeen::held)
    }
}

pub async fn analyse(
    database: &sqlx::PgPool,
    dir: &std::path::Path,
    chaos: &Chaos,
    ids: &[Uuid],
    submit_retries: usize,
    started: Instant,
    limits: Option<(Option<u32>, Option<u32>)>,
) -> anyhow::Result<Report> {
    let names: Vec<String> = chaos.fates.keys().cloned().collect();
    let logs = analysis::read_logs(dir, &names)?;
    let now: DateTime<Utc> = Utc::now();
    let overlaps = analysis::overlaps(&logs, &chaos.fates, now);

    let (jobs_in_database, jobs_succeeded): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE state = 'succeeded') FROM jobs")
            .fetch_one(database)
            .await?;
    let distinct_ids = ids.iter().collect::<std::collections::HashSet<_>>().len();
    let accepted: Vec<analysis::AcceptedSuccess> = sqlx::query_as(
        "SELECT a.job_id, a.lease_token, a.worker_id FROM job_attempts a
         WHERE a.outcome = 'succeeded'",
    )
    .fetch_all(database)
    .await?;
    let unlogged = analysis::unlogged_successes(&logs, &accepted);
    for success in unlogged.iter().take(10) {
        eprintln!("an accepted success no worker logged: {success:?}");
    }
    let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(database)
        .await?;
    // A job's accepted outcome must come from the attempt holding its current
    // token, which must be the largest token any of its attempts held.
    let fencing_violations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j
         WHERE j.state = 'succeeded' AND (
             NOT EXISTS (SELECT 1 FROM job_attempts a
                         WHERE a.job_id = j.id AND a.outcome = 'succeeded' AND a.lease_token = j.lease_token)
             OR (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id AND a.outcome = 'succeeded') <> 1
             OR j.lease_token < (SELECT max(lease_token) FROM job_attempts a WHERE a.job_id = j.id))",
    )
    .fetch_one(database)
    .await?;

    // The counters survive the faults: crashes roll back a statement and
    // its log rows together.
    let counter_mismatches: i64 = sqlx::query_scalar(
        "WITH kept AS (
             SELECT queue, state, sum(jobs) AS jobs FROM (
                 SELECT queue, state, jobs FROM queue_state_counts
                 UNION ALL
                 SELECT queue, to_state, jobs FROM job_transition_log WHERE to_state IS NOT NULL
                 UNION ALL
                 SELECT queue, from_state, -jobs FROM job_transition_log
                 WHERE from_state IS NOT NULL) logged
             GROUP BY queue, state HAVING sum(jobs) <> 0),
         counted AS (SELECT queue, state, count(*) AS jobs FROM jobs GROUP BY queue, state)
         SELECT count(*) FROM kept FULL JOIN counted USING (queue, state)
         WHERE kept.jobs IS DISTINCT FROM counted.jobs",
    )
    .fetch_one(database)
    .await?;

    // Every attempt the rescuer ended, timed from the moment its worker
    // vanished (was killed, paused past its lease or partitioned) while the
    // attempt ran; rescues after Redis lost its keys, with no such fault,
    // are not timed.
    let rescues: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT worker_id, started_at, finished_at FROM job_attempts \
         WHERE outcome = 'lease_expired'",
    )
    .fetch_all(database)
    .await?;
    let mut rescue_ms = Vec::new();
    for (worker, started, rescued) in &rescues {
        if let Some(vanished) = chaos.fates[worker].first_vanished_within(*started, *rescued) {
            rescue_ms.push((*rescued - vanished).num_milliseconds() as f64);
        }
    }
    rescue_ms.sort_by(f64::total_cmp);
    let limits = match limits {
        Some((max_running, max_running_per_key)) => Some(
            limits_seen(
                database,
                &logs,
                chaos,
                now,
                max_running,
                max_running_per_key,
            )
            .await?,
        ),
        None => None,
    };
    let rescue_percentile = |p| {
        if rescue_ms.is_empty() {
            0.0
        } else {
            percentile(&rescue_ms, p)
        }
    };
    Ok(Report {
        jobs_submitted: ids.len(),
        jobs_in_database,
        jobs_succeeded,
        lost: ids.len() - found.len(),
        // Jobs no submission accounts for: every client resubmits with
        // its key until it is answered, and each answer names one job.
        duplicates: jobs_in_database - distinct_ids as i64,
        submit_retries,
        executions: logs.executions.len(),
        overlapping_pairs: overlaps.len(),
        overlaps,
        fencing_violations,
        unlogged_successes: unlogged.len(),
        counter_mismatches,
        stale_outcomes_rejected: logs.stale_outcomes,
        rescued: rescue_ms.len(),
        rescue_p50_ms: rescue_percentile(50.0),
        rescue_max_ms: rescue_percentile(100.0),
        faults: chaos.faults.clone(),
        duration_s: started.elapsed().as_secs_f64(),
        limits,
    })
}

async fn limits_seen(
    database: &sqlx::PgPool,
    logs: &analysis::WorkerLogs,
    chaos: &Chaos,
    now: DateTime<Utc>,
    max_running: Option<u32>,
    max_running_per_key: Option<u32>,
) -> anyhow::Result<LimitsSeen> {
    let keys: HashMap<Uuid, String> =
        sqlx::query_as("SELECT id, concurrency_key FROM jobs WHERE concurrency_key IS NOT NULL")
            .fetch_all(database)
            .await?
            .into_iter()
            .collect();
    let (most_running_executions, per_key) = analysis::most_running(logs, &chaos.fates, now, &keys);
    let records: Vec<(Option<String>, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT j.concurrency_key, a.started_at, a.finished_at
         FROM job_attempts a JOIN jobs j ON j.id = a.job_id",
    )
    .fetch_all(database)
    .await?;
    let span = |(_, from, to): &(Option<String>, DateTime<Utc>, DateTime<Utc>)| {
        (from.timestamp_micros(), to.timestamp_micros())
    };
    let mut records_by_key: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for record in &records {
        if let Some(key) = &record.0 {
            records_by_key.entry(key).or_default().push(span(record));
        }
    }
    Ok(LimitsSeen {
        max_running,
        max_running_per_key,
        most_running_executions,
        most_running_records: most_overlapping(records.iter().map(span)),
        most_running_per_key_executions: per_key.into_values().max().unwrap_or(0),
        most_running_per_key_records: records_by_key
            .into_values()
            .map(most_overlapping)
            .max()
            .unwrap_or(0),
    })
}
