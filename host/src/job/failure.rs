//! What an attempt can end with: the stable [`FailureKind`] codes stored in
//! `job_attempts.error_kind`, and a [`Failure`] with its message and whether
//! another attempt may help. Users alert on the codes and scripts match
//! them, so a variant is never renamed. Keep in sync with the table in
//! `docs/failure-semantics.md`.

use std::fmt;

use super::FieldError;

/// What stopped an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The task returned an error (`task-error`).
    GuestError,
    /// The attempt ran past its wall-clock `timeout_ms`.
    Timeout,
    /// The attempt used up its `fuel` (CPU budget).
    FuelExhausted,
    /// The guest tried to grow its memory past `memory_limit_bytes`.
    MemoryLimit,
    /// The guest overflowed the WebAssembly stack (e.g. runaway recursion).
    StackOverflow,
    /// The guest panicked (a Rust panic aborts with a trap after reporting
    /// its message). Not retried: a bug does not fix itself.
    Panic,
    /// Any other WebAssembly trap (unreachable, out-of-bounds access,
    /// division by zero, …).
    Trap,
    /// The task's output exceeded the server's output limit.
    OutputTooLarge,
    /// The worker lost the job's lease (it was cancelled, or the worker could
    /// not renew it) and stopped the attempt so that no two attempts run at
    /// once.
    LeaseLost,
    /// The worker vanished and the rescuer ended the attempt.
    LeaseExpired,
    /// A user cancelled the job while this attempt ran.
    Cancelled,
    /// The module could not be loaded or instantiated on the worker.
    ModuleUnavailable,
    /// The job asked for more than the worker that claimed it can grant
    /// (a memory limit over the worker's `--max-memory-limit-bytes`: the API
    /// and the worker were configured differently). Retried: another
    /// worker may grant it.
    WorkerLimitExceeded,
    /// The worker failed while running the attempt (a bug in TaskFlow, not
    /// in the task); the attempt's slot was freed and the worker kept
    /// serving.
    HostError,
    /// What the job's queue grants (hosts, configuration, secrets) could
    /// not be read, or its secrets not opened (the worker lacks the
    /// `TASKFLOW_SECRET_KEY` they were sealed with). Retried: the operator
    /// can fix it.
    GrantsUnavailable,
    /// PostgreSQL refused to store what the attempt produced (its output,
    /// log or message held a value it cannot store); the attempt is recorded
    /// without them.
    OutcomeRejected,
}

impl FailureKind {
    /// The stable code stored in `job_attempts.error_kind`.
    pub fn code(self) -> &'static str {
        match self {
            FailureKind::GuestError => "guest_error",
            FailureKind::Timeout => "timeout",
            FailureKind::FuelExhausted => "fuel_exhausted",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::Panic => "panic",
            FailureKind::Trap => "trap",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::LeaseLost => "lease_lost",
            FailureKind::LeaseExpired => "lease_expired",
            FailureKind::Cancelled => "cancelled",
            FailureKind::ModuleUnavailable => "module_unavailable",
            FailureKind::WorkerLimitExceeded => "worker_limit_exceeded",
            FailureKind::HostError => "host_error",
            FailureKind::GrantsUnavailable => "grants_unavailable",
            FailureKind::OutcomeRejected => "outcome_rejected",
        }
    }
}

/// Longest failure code read back from a client, in bytes; every
/// [`FailureKind::code`] is far shorter.
const MAX_FAILURE_CODE_BYTES: usize = 64;

/// Checks that `code`, as a client names a failure kind (the console's
/// dead-letter groups), has the shape of a [`FailureKind::code`]: lowercase
/// letters and underscores. A code of a kind no attempt ended with simply
/// matches nothing; text that is not a code (a NUL, which PostgreSQL cannot
/// compare) is refused before it reaches a statement.
///
/// # Errors
///
/// Empty, longer than 64 bytes, or another character.
pub fn check_failure_code(field: &str, code: &str) -> Result<(), FieldError> {
    let shaped = !code.is_empty()
        && code.len() <= MAX_FAILURE_CODE_BYTES
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if shaped {
        Ok(())
    } else {
        Err(FieldError::invalid(
            field,
            format!(
                "must be an error kind such as guest_error: lowercase letters and underscores, \
                 at most {MAX_FAILURE_CODE_BYTES} bytes"
            ),
        ))
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A failed attempt: what stopped it, a message, and whether another attempt
/// may help. A guest error says so itself and a panic is never retried; every
/// other failure (a sandbox limit, a trap, a lost lease) is retried until the
/// job runs out of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What stopped the attempt.
    pub kind: FailureKind,
    /// Details for whoever reads the attempt record.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl Failure {
    /// A retryable failure of `kind`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kinds_code_has_the_shape_clients_may_send_and_nothing_else_does() {
        for kind in [
            FailureKind::GuestError,
            FailureKind::WorkerLimitExceeded,
            FailureKind::OutcomeRejected,
        ] {
            assert_eq!(check_failure_code("kind", kind.code()), Ok(()));
        }
        for code in ["", "\0", "trap\0", "Trap", "guest-error", &"a".repeat(65)] {
            let error = check_failure_code("kind", code).unwrap_err();
            assert_eq!(error.field, "kind", "{code:?}");
        }
    }
}
