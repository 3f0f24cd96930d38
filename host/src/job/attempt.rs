//! How an attempt ends, as one value that cannot contradict itself.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::failure::{Failure, FailureKind};
use super::state::{AttemptOutcome, JobState};

/// How an attempt ended and where its job goes next. A success carries its
/// output and nothing else; a failure its reason and the job's next state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The task returned this output; the job is `succeeded`.
    Succeeded {
        /// The output bytes.
        output: Vec<u8>,
    },
    /// The task failed, or the sandbox or the worker stopped it.
    Failed {
        /// Why.
        failure: Failure,
        /// Where the job goes.
        next: AfterFailure,
    },
    /// The worker stopped renewing its lease and the rescuer ended the
    /// attempt (always retryable).
    LeaseExpired {
        /// Which worker vanished, for whoever reads the record.
        message: String,
        /// Where the job goes.
        next: AfterFailure,
        /// The lease's deadline (`lease_expires_at`) the rescuer found
        /// passed. The rescue applies only while the job's deadline is still
        /// this one: a worker that confirmed its lease since moved it
        /// (`Store::confirm_leases`), however long the rescuer took.
        deadline: DateTime<Utc>,
    },
}

/// Where a job goes after a failed attempt (`backoff::after_failure`, `host/src/backoff.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// It runs again after this backoff.
    Retry {
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// It failed for good: the dead-letter state.
    Dead,
}

impl AttemptEnd {
    /// The attempt record's outcome.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            AttemptEnd::Succeeded { .. } => AttemptOutcome::Succeeded,
            AttemptEnd::Failed { .. } => AttemptOutcome::Failed,
            AttemptEnd::LeaseExpired { .. } => AttemptOutcome::LeaseExpired,
        }
    }

    /// The job's state once the attempt is recorded.
    pub fn next_state(&self) -> JobState {
        match self.after_failure() {
            None => JobState::Succeeded,
            Some(AfterFailure::Retry { .. }) => JobState::Retrying,
            Some(AfterFailure::Dead) => JobState::Dead,
        }
    }

    /// The output of a success.
    pub fn output(&self) -> Option<&[u8]> {
        match self {
            AttemptEnd::Succeeded { output } => Some(output),
            _ => None,
        }
    }

    /// The failure code and message of anything but a success.
    pub fn error(&self) -> Option<(FailureKind, &str)> {
        match self {
            AttemptEnd::Succeeded { .. } => None,
            AttemptEnd::Failed { failure, .. } => Some((failure.kind, &failure.message)),
            AttemptEnd::LeaseExpired { message, .. } => Some((FailureKind::LeaseExpired, message)),
        }
    }

    /// Where the job goes after anything but a success.
    pub fn after_failure(&self) -> Option<AfterFailure> {
        match self {
            AttemptEnd::Succeeded { .. } => None,
            AttemptEnd::Failed { next, .. } | AttemptEnd::LeaseExpired { next, .. } => Some(*next),
        }
    }

    /// The lease deadline a rescue was decided on.
    pub fn rescued_deadline(&self) -> Option<DateTime<Utc>> {
        match self {
            AttemptEnd::LeaseExpired { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The backoff before the next attempt, if the job is retried.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self.after_failure() {
            Some(AfterFailure::Retry { delay }) => Some(delay),
            _ => None,
        }
    }
}

/// How many of its allowed attempts a job has used: `attempt` counts every
/// attempt over its life, `attempt_base` was `attempt` at the last user
/// retry (which grants a fresh allowance). The attempt that is running, if
/// any, is included.
pub fn attempts_used(attempt: i32, attempt_base: i32) -> u32 {
    u32::try_from(attempt.saturating_sub(attempt_base)).unwrap_or(0)
}

/// What an attempt may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// CPU budget in fuel units.
    pub fuel: u64,
    /// Limit on the sum of the guest's linear memories.
    pub memory_bytes: u64,
}

impl AttemptLimits {
    /// The limits a job's columns hold (`timeout_ms`, `fuel`,
    /// `memory_limit_bytes`), which [`JobSpec::resolve`](super::JobSpec::resolve)
    /// keeps positive; a negative one, never stored, would read as 0.
    pub fn from_columns(timeout_ms: i32, fuel: i64, memory_limit_bytes: i64) -> Self {
        Self {
            timeout: Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)),
            fuel: u64::try_from(fuel).unwrap_or(0),
            memory_bytes: u64::try_from(memory_limit_bytes).unwrap_or(0),
        }
    }
}

/// What a finished attempt consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Fuel (instructions, roughly) consumed.
    pub fuel_consumed: u64,
    /// Peak linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall time from instantiation to the end of the call.
    pub duration: Duration,
}

/// An attempt's outbound requests ready to store: their records as the
/// text of a JSON array (`sandbox/outbound/audit.rs`), and how many more
/// were made than kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRequests {
    /// The kept records.
    pub records_json: String,
    /// Requests made past the per-attempt bound on records.
    pub dropped: u64,
}

impl AttemptRequests {
    /// No requests.
    pub fn none() -> Self {
        Self {
            records_json: "[]".to_owned(),
            dropped: 0,
        }
    }
}

/// A captured log ready to store: its lines as the text of a JSON array
/// (NUL characters already replaced, `sandbox/capture.rs`), and how many
/// lines were kept and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptLog {
    /// The kept lines, a JSON array of `{source, level?, message}`.
    pub lines_json: String,
    /// Lines in `lines_json`.
    pub kept: u64,
    /// Lines dropped past the log limit.
    pub dropped: u64,
}

impl AttemptLog {
    /// No lines.
    pub fn empty() -> Self {
        Self {
            lines_json: "[]".to_owned(),
            kept: 0,
            dropped: 0,
        }
    }

    /// This log with every line dropped (when PostgreSQL refused to store
    /// it), still counting them.
    pub fn discarded(&self) -> Self {
        Self {
            lines_json: "[]".to_owned(),
            kept: 0,
            dropped: self.dropped.saturating_add(self.kept),
        }
    }
}

/// How a recorded attempt ended (`job_attempts`): a success with nothing
/// more, any other outcome with the error that ended it. The columns it is
/// read from could pair a success with an error; this cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedEnd {
    /// The task returned an output.
    Succeeded,
    /// The task failed, or the sandbox or the worker stopped it.
    Failed(RecordedError),
    /// The rescuer ended it after its worker stopped renewing the lease.
    LeaseExpired(RecordedError),
    /// A user cancelled the job while it ran.
    Cancelled(RecordedError),
}

/// The error that ended a recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedError {
    /// A [`FailureKind`] code, `lease_expired` or `cancelled`.
    pub kind: String,
    /// For a person.
    pub message: String,
}

impl RecordedEnd {
    /// The end the columns `outcome`, `error_kind` and `error_message`
    /// record. Every statement that records an attempt writes an error
    /// with each outcome but a success, and none with a success
    /// (store/execution.rs, store/actions.rs); a row written otherwise
    /// reads as its outcome, with an empty kind or message where it has
    /// none.
    pub fn from_columns(
        outcome: AttemptOutcome,
        kind: Option<String>,
        message: Option<String>,
    ) -> Self {
        let error = || RecordedError {
            kind: kind.unwrap_or_default(),
            message: message.unwrap_or_default(),
        };
        match outcome {
            AttemptOutcome::Succeeded => RecordedEnd::Succeeded,
            AttemptOutcome::Failed => RecordedEnd::Failed(error()),
            AttemptOutcome::LeaseExpired => RecordedEnd::LeaseExpired(error()),
            AttemptOutcome::Cancelled => RecordedEnd::Cancelled(error()),
        }
    }

    /// Its outcome.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            RecordedEnd::Succeeded => AttemptOutcome::Succeeded,
            RecordedEnd::Failed(_) => AttemptOutcome::Failed,
            RecordedEnd::LeaseExpired(_) => AttemptOutcome::LeaseExpired,
            RecordedEnd::Cancelled(_) => AttemptOutcome::Cancelled,
        }
    }

    /// The error that ended it; `None` for a success.
    pub fn error(&self) -> Option<&RecordedError> {
        match self {
            RecordedEnd::Succeeded => None,
            RecordedEnd::Failed(error)
            | RecordedEnd::LeaseExpired(error)
            | RecordedEnd::Cancelled(error) => Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_from_columns_in_their_units_and_never_below_zero() {
        let limits = AttemptLimits::from_columns(1_500, 1 << 40, 64 << 20);
        assert_eq!(limits.timeout, Duration::from_millis(1_500));
        assert_eq!((limits.fuel, limits.memory_bytes), (1 << 40, 64 << 20));
        let negative = AttemptLimits::from_columns(-1, -1, -1);
        assert_eq!(negative.timeout, Duration::ZERO);
        assert_eq!((negative.fuel, negative.memory_bytes), (0, 0));
    }

    #[test]
    fn each_end_names_one_outcome_and_one_next_state() {
        let success = AttemptEnd::Succeeded { output: vec![1] };
        assert_eq!(success.outcome(), AttemptOutcome::Succeeded);
        assert_eq!(success.next_state(), JobState::Succeeded);
        assert_eq!(success.error(), None);
        let retried = AttemptEnd::Failed {
            failure: Failure::new(FailureKind::Trap, "boom"),
            next: AfterFailure::Retry {
                delay: Duration::from_secs(2),
            },
        };
        assert_eq!(retried.outcome(), AttemptOutcome::Failed);
        assert_eq!(retried.next_state(), JobState::Retrying);
        assert_eq!(retried.retry_delay(), Some(Duration::from_secs(2)));
        assert_eq!(retried.error(), Some((FailureKind::Trap, "boom")));
        assert_eq!(retried.output(), None);
        let deadline = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let rescued = AttemptEnd::LeaseExpired {
            message: "gone".into(),
            next: AfterFailure::Dead,
            deadline,
        };
        assert_eq!(retried.rescued_deadline(), None);
        assert_eq!(rescued.rescued_deadline(), Some(deadline));
        assert_eq!(rescued.outcome(), AttemptOutcome::LeaseExpired);
        assert_eq!(rescued.next_state(), JobState::Dead);
        assert_eq!(rescued.error(), Some((FailureKind::LeaseExpired, "gone")));
    }

    #[test]
    fn attempts_used_counts_since_the_last_user_retry_and_never_underflows() {
        assert_eq!(attempts_used(5, 3), 2);
        assert_eq!(attempts_used(1, 0), 1);
        assert_eq!(attempts_used(0, 2), 0);
    }

    #[test]
    fn a_discarded_log_counts_its_lines_as_dropped() {
        let log = AttemptLog {
            lines_json: r#"[{"source":"log","message":"x"}]"#.into(),
            kept: 1,
            dropped: 4,
        };
        assert_eq!(
            log.discarded(),
            AttemptLog {
                lines_json: "[]".into(),
                kept: 0,
                dropped: 5
            }
        );
    }

    #[test]
    fn a_recorded_end_reads_an_error_with_every_outcome_but_a_success() {
        let end = |outcome, kind: Option<&str>| {
            RecordedEnd::from_columns(outcome, kind.map(str::to_owned), Some("why".to_owned()))
        };
        let success = end(AttemptOutcome::Succeeded, Some("stray"));
        assert_eq!(
            (success.outcome(), success.error()),
            (AttemptOutcome::Succeeded, None)
        );
        for outcome in [
            AttemptOutcome::Failed,
            AttemptOutcome::LeaseExpired,
            AttemptOutcome::Cancelled,
        ] {
            let ended = end(outcome, Some("timeout"));
            assert_eq!(ended.outcome(), outcome);
            let error = ended.error().expect("an error");
            assert_eq!(
                (error.kind.as_str(), error.message.as_str()),
                ("timeout", "why")
            );
            let without_kind = end(outcome, None);
            assert_eq!(without_kind.error().map(|e| e.kind.as_str()), Some(""));
        }
    }
}
