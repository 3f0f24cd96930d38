//! What the suite checks once the dust settles: every execution recorded by
//! the workers, against every outcome recorded in PostgreSQL.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;
use taskflow_testkit::most_overlapping;
use uuid::Uuid;

/// One execution of guest code, as a worker logged it.
#[derive(Debug, Clone)]
pub struct Execution {
    pub worker: String,
    pub job_id: Uuid,
    pub lease_token: i64,
    pub started: DateTime<Utc>,
    pub ended: Option<DateTime<Utc>>,
    /// How it ended (`succeeded`, `lease_lost`, …), as the worker logged it.
    pub outcome: Option<String>,
}

/// What happened to a worker process, as the suite did it.
#[derive(Debug, Clone, Default)]
pub struct WorkerFate {
    pub killed_at: Option<DateTime<Utc>>,
    pub paused: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// When its host was cut off from Redis, alone or with PostgreSQL
    /// (`--network`): its leases lapse then. Cut off from PostgreSQL only,
    /// it keeps them.
    pub partitioned: Vec<DateTime<Utc>>,
}

impl WorkerFate {
    /// The first moment in `[from, to]` the worker vanished from the
    /// others' view: was killed, paused or partitioned.
    pub fn first_vanished_within(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.killed_at
            .into_iter()
            .chain(self.paused.iter().map(|(stop, _)| *stop))
            .chain(self.partitioned.iter().copied())
            .filter(|at| (from..=to).contains(at))
            .min()
    }
}

/// Executions and stale-outcome warnings read from the workers' JSON logs.
#[derive(Debug, Default)]
pub struct WorkerLogs {
    pub executions: Vec<Execution>,
    pub stale_outcomes: usize,
}

/// Reads `{worker}.log` for each worker.
pub fn read_logs(dir: &Path, workers: &[String]) -> anyhow::Result<WorkerLogs> {
    let mut logs = WorkerLogs::default();
    for worker in workers {
        let text = std::fs::read_to_string(dir.join(format!("{worker}.log")))?;
        let mut open: HashMap<(Uuid, i64), usize> = HashMap::new();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let fields = &event["fields"];
            let message = fields["message"].as_str().unwrap_or_default();
            let timestamp = event["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok());
            let job = fields["job_id"]
                .as_str()
                .and_then(|id| id.parse::<Uuid>().ok());
            let token = fields["lease_token"].as_i64();
            match (message, timestamp, job, token) {
                ("attempt started", Some(at), Some(job_id), Some(lease_token)) => {
                    open.insert((job_id, lease_token), logs.executions.len());
                    logs.executions.push(Execution {
                        worker: worker.clone(),
                        job_id,
                        lease_token,
                        started: at,
                        ended: None,
                        outcome: None,
                    });
                }
                ("attempt ended", Some(at), Some(job_id), Some(lease_token)) => {
                    if let Some(index) = open.remove(&(job_id, lease_token)) {
                        logs.executions[index].ended = Some(at);
                        logs.executions[index].outcome =
                            fields["outcome"].as_str().map(str::to_owned);
                    }
                }
                _ if message.starts_with("lost the lease before the outcome was written") => {
                    logs.stale_outcomes += 1;
                }
                _ => {}
            }
        }
    }
    Ok(logs)
}

/// The stretches of wall time an execution was actually running: from its
/// start to its end (or to its worker's death), minus the time its worker
/// was paused by SIGSTOP (a stopped process executes nothing).
fn running_spans(
    execution: &Execution,
    fate: &WorkerFate,
    now: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let end = execution.ended.or(fate.killed_at).unwrap_or(now);
    let mut spans = vec![(execution.started, end)];
    for &(stop, resume) in &fate.paused {
        spans = spans
            .into_iter()
            .flat_map(|(from, to)| {
                if resume <= from || stop >= to {
                    vec![(from, to)]
                } else {
                    [(from, stop), (resume, to)]
                        .into_iter()
                        .filter(|(a, b)| a < b)
                        .collect()
                }
            })
            .collect();
    }
    spans
}

/// The most executions that ran at one instant: of all jobs, and of the
/// jobs of each concurrency key (`key_of` a job). What a queue's
/// `max_running` and `max_running_per_key` bound.
pub fn most_running(
    logs: &WorkerLogs,
    fates: &HashMap<String, WorkerFate>,
    now: DateTime<Utc>,
    key_of: &HashMap<Uuid, String>,
) -> (usize, HashMap<String, usize>) {
    let mut all = Vec::new();
    let mut by_key: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for execution in &logs.executions {
        let fate = &fates[&execution.worker];
        let spans: Vec<(i64, i64)> =
            running_spans(&stopped_by_its_pause(execution, fate), fate, now)
                .into_iter()
                .map(|(from, to)| (from.timestamp_micros(), to.timestamp_micros()))
                .collect();
        if let Some(key) = key_of.get(&execution.job_id) {
            by_key
                .entry(key.clone())
                .or_default()
                .extend(spans.iter().copied());
        }
        all.extend(spans);
    }
    let per_key = by_key
        .into_iter()
        .map(|(key, spans)| (key, most_overlapping(spans)))
        .collect();
    (most_overlapping(all), per_key)
}

/// An execution that lost its lease while its worker was stopped ran no
/// guest code after the stop but for the one epoch tick (5 ms) it takes to
/// notice on resume (docs/failure-semantics.md, "Worker paused past its
/// lease"); its "attempt ended" event comes later, after the unwinding. So
/// it counts as running until the stop, not until that event.
fn stopped_by_its_pause(execution: &Execution, fate: &WorkerFate) -> Execution {
    let mut execution = execution.clone();
    if execution.outcome.as_deref() == Some("lease_lost")
        && let Some(ended) = execution.ended
        && let Some(&(stop, _)) = fate
            .paused
            .iter()
            .find(|&&(stop, resume)| execution.started < stop && resume <= ended)
    {
        execution.ended = Some(stop);
    }
    execution
}

/// A pair of executions of the same job that ran at the same time.
#[derive(Debug, Clone, Serialize)]
pub struct Overlap {
    pub job_id: Uuid,
    pub tokens: (i64, i64),
    pub workers: (String, String),
    pub overlap_ms: f64,
}

/// Every pair of executions of one job whose running spans intersect.
pub fn overlaps(
    logs: &WorkerLogs,
    fates: &HashMap<String, WorkerFate>,
    now: DateTime<Utc>,
) -> Vec<Overlap> {
    let mut by_job: HashMap<Uuid, Vec<&Execution>> = HashMap::new();
    for execution in &logs.executions {
        by_job.entry(execution.job_id).or_default().push(execution);
    }
    let mut found = Vec::new();
    for (job_id, executions) in by_job {
        for (i, a) in executions.iter().enumerate() {
            for b in &executions[i + 1..] {
                let spans_a = running_spans(a, &fates[&a.worker], now);
                let spans_b = running_spans(b, &fates[&b.worker], now);
                let shared: i64 = spans_a
                    .iter()
                    .flat_map(|x| spans_b.iter().map(move |y| (x, y)))
                    .map(|(x, y)| {
                        (x.1.min(y.1) - x.0.max(y.0))
                            .num_microseconds()
                            .unwrap_or(0)
                            .max(0)
                    })
                    .sum();
                if shared > 0 {
                    found.push(Overlap {
                        job_id,
                        tokens: (a.lease_token, b.lease_token),
                        workers: (a.worker.clone(), b.worker.clone()),
                        overlap_ms: shared as f64 / 1000.0,
                    });
                }
            }
        }
    }
    found
}

/// A success PostgreSQL accepted, as its attempt record has it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AcceptedSuccess {
    pub job_id: Uuid,
    pub lease_token: i64,
    pub worker_id: String,
}

/// The accepted successes no worker logged: no execution by that worker,
/// of that job, under that token, ended `succeeded`. The fencing check
/// reads PostgreSQL alone, whose rows the code under test writes; this one
/// holds them against what the workers did, so an outcome written under
/// another attempt's token (or by nobody's execution) is caught. It also
/// fails a run whose logs could not be read, where the overlap check would
/// find nothing to compare.
pub fn unlogged_successes<'a>(
    logs: &WorkerLogs,
    accepted: &'a [AcceptedSuccess],
) -> Vec<&'a AcceptedSuccess> {
    let logged: std::collections::HashSet<(&str, Uuid, i64)> = logs
        .executions
        .iter()
        .filter(|execution| execution.outcome.as_deref() == Some("succeeded"))
        .map(|execution| {
            (
                execution.worker.as_str(),
                execution.job_id,
                execution.lease_token,
            )
        })
        .collect();
    accepted
        .iter()
        .filter(|success| {
            !logged.contains(&(
                success.worker_id.as_str(),
                success.job_id,
                success.lease_token,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_000_000 + ms).unwrap()
    }

    fn execution(worker: &str, token: i64, start: i64, end: Option<i64>) -> Execution {
        Execution {
            worker: worker.into(),
            job_id: Uuid::nil(),
            lease_token: token,
            started: at(start),
            ended: end.map(at),
            outcome: None,
        }
    }

    #[test]
    fn a_lease_lost_in_a_pause_ends_the_execution_at_the_stop_for_the_limits() {
        let mut zombie = execution("zombie", 1, 0, Some(10_040));
        zombie.outcome = Some("lease_lost".into());
        let keyed = |job: u128| {
            let mut e = execution("healthy", 2 + job as i64, 10_000, Some(10_100));
            e.job_id = Uuid::from_u128(job + 1);
            e
        };
        let logs = WorkerLogs {
            executions: vec![zombie.clone(), keyed(0)],
            stale_outcomes: 0,
        };
        let mut fates = HashMap::new();
        let paused = WorkerFate {
            paused: vec![(at(100), at(10_000))],
            ..WorkerFate::default()
        };
        fates.insert("zombie".to_owned(), paused);
        fates.insert("healthy".to_owned(), WorkerFate::default());
        let keys = HashMap::new();
        assert_eq!(most_running(&logs, &fates, at(20_000), &keys).0, 1);
        // Any other ending after the resume counts in full.
        zombie.outcome = Some("succeeded".into());
        let logs = WorkerLogs {
            executions: vec![zombie, keyed(0)],
            stale_outcomes: 0,
        };
        assert_eq!(most_running(&logs, &fates, at(20_000), &keys).0, 2);
    }

    #[test]
    fn a_paused_worker_does_not_overlap_while_stopped_but_does_after_resuming() {
        let logs = WorkerLogs {
            executions: vec![
                execution("zombie", 1, 0, Some(10_010)),
                execution("healthy", 2, 3_000, Some(4_000)),
            ],
            stale_outcomes: 0,
        };
        let mut fates = HashMap::new();
        fates.insert(
            "zombie".to_owned(),
            WorkerFate {
                paused: vec![(at(100), at(10_000))],
                ..WorkerFate::default()
            },
        );
        fates.insert("healthy".to_owned(), WorkerFate::default());
        assert!(overlaps(&logs, &fates, at(20_000)).is_empty());

        let late = WorkerLogs {
            executions: vec![
                execution("zombie", 1, 0, Some(10_010)),
                execution("healthy", 2, 3_000, Some(10_005)),
            ],
            stale_outcomes: 0,
        };
        let found = overlaps(&late, &fates, at(20_000));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].overlap_ms, 5.0);
    }

    #[test]
    fn a_killed_worker_stops_executing_when_it_dies() {
        let logs = WorkerLogs {
            executions: vec![
                execution("dead", 1, 0, None),
                execution("alive", 2, 2_000, Some(3_000)),
            ],
            stale_outcomes: 0,
        };
        let mut fates = HashMap::new();
        fates.insert(
            "dead".to_owned(),
            WorkerFate {
                killed_at: Some(at(1_000)),
                ..WorkerFate::default()
            },
        );
        fates.insert("alive".to_owned(), WorkerFate::default());
        assert!(overlaps(&logs, &fates, at(5_000)).is_empty());
    }

    #[test]
    fn a_rescue_is_timed_from_the_first_fault_while_its_attempt_ran() {
        let fate = WorkerFate {
            killed_at: Some(at(30_000)),
            paused: vec![(at(1_000), at(7_000))],
            partitioned: vec![at(21_000), at(12_000)],
        };
        // A pause long over when the attempt began does not count: a later
        // rescue of it had another cause.
        assert_eq!(fate.first_vanished_within(at(8_000), at(11_000)), None);
        assert_eq!(
            fate.first_vanished_within(at(8_000), at(25_000)),
            Some(at(12_000))
        );
        assert_eq!(
            fate.first_vanished_within(at(0), at(3_000)),
            Some(at(1_000))
        );
        assert_eq!(
            fate.first_vanished_within(at(22_000), at(31_000)),
            Some(at(30_000))
        );
    }
    #[test]
    fn a_success_no_worker_logged_under_its_token_is_caught() {
        let mut a = execution("a", 5, 0, Some(10));
        a.outcome = Some("succeeded".into());
        let logs = WorkerLogs {
            executions: vec![a],
            stale_outcomes: 0,
        };
        let accepted = |worker: &str, token| AcceptedSuccess {
            job_id: Uuid::nil(),
            lease_token: token,
            worker_id: worker.into(),
        };
        let good = [accepted("a", 5)];
        assert!(unlogged_successes(&logs, &good).is_empty());
        // Worker a's late success written under the job's newer token 6.
        let wrong_token = [accepted("a", 6)];
        assert_eq!(unlogged_successes(&logs, &wrong_token), [&wrong_token[0]]);
        let wrong_worker = [accepted("b", 5)];
        assert_eq!(unlogged_successes(&logs, &wrong_worker).len(), 1);
        let unread = WorkerLogs::default();
        assert_eq!(
            unlogged_successes(&unread, &good).len(),
            1,
            "no logs, no pass"
        );
    }
}
