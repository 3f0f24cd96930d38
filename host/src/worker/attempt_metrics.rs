//! What a worker's `/metrics` says of its attempts, per queue: how they
//! ended, how long they ran, how much fuel they burned and how long their
//! jobs waited to start. The handles are registered once per queue the
//! worker serves, so recording an attempt builds no label set.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use metrics::{Counter, Histogram};

use crate::job::AttemptOutcome;
use crate::store::FinishedAttempt;

/// The attempt metrics of each queue a worker serves.
#[derive(Debug)]
pub(super) struct AttemptMetrics {
    by_queue: HashMap<String, QueueMetrics>,
}

#[derive(Debug)]
struct QueueMetrics {
    /// `taskflow_attempts_total{queue, outcome}`, in `AttemptOutcome::ALL`
    /// order.
    ended: [Counter; AttemptOutcome::ALL.len()],
    duration: Histogram,
    fuel: Histogram,
    start_delay: Histogram,
}

impl AttemptMetrics {
    /// Registers the metrics of `queues`.
    pub(super) fn new(queues: &[String]) -> Self {
        let by_queue = queues
            .iter()
            .map(|queue| {
                let metrics = QueueMetrics {
                    ended: AttemptOutcome::ALL.map(|outcome| {
                        metrics::counter!("taskflow_attempts_total",
                            "queue" => queue.clone(), "outcome" => outcome.as_str())
                    }),
                    duration: metrics::histogram!("taskflow_attempt_duration_seconds",
                        "queue" => queue.clone()),
                    fuel: metrics::histogram!("taskflow_attempt_fuel", "queue" => queue.clone()),
                    start_delay: metrics::histogram!("taskflow_job_start_delay_seconds",
                        "queue" => queue.clone()),
                };
                (queue.clone(), metrics)
            })
            .collect();
        Self { by_queue }
    }

    /// Records that an attempt of a job of `queue` due at `due_at` started:
    /// how long past its due time (its enqueue, for a job submitted to run
    /// at once) it waited for a worker.
    pub(super) fn started(&self, queue: &str, due_at: DateTime<Utc>, started_at: DateTime<Utc>) {
        if let Some(metrics) = self.by_queue.get(queue) {
            let waited = (started_at - due_at).to_std().unwrap_or_default();
            metrics.start_delay.record(waited.as_secs_f64());
        }
    }

    /// Records how an attempt of `queue` ended and what it used.
    pub(super) fn ended(&self, queue: &str, attempt: &FinishedAttempt) {
        let Some(metrics) = self.by_queue.get(queue) else {
            return;
        };
        let outcome = attempt.end.outcome();
        if let Some(index) = AttemptOutcome::ALL.iter().position(|o| *o == outcome) {
            metrics.ended[index].increment(1);
        }
        if let Some(usage) = &attempt.usage {
            metrics.duration.record(usage.duration.as_secs_f64());
            metrics.fuel.record(usage.fuel_consumed as f64);
        }
    }
}
