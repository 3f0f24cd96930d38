//! Turning an attempt's execution into the outcome record the completer
//! writes: the attempt's end, the job's next state by the retry policy, and
//! a panic while running it recorded as a `host_error`.

use std::panic::AssertUnwindSafe;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;

use crate::backoff;
use crate::config::RetryPolicy;
use crate::job::{AttemptEnd, Failure, FailureKind, TraceContext, Usage, attempts_used};
use crate::sandbox::Execution;
use crate::store::{ClaimedJob, FinishedAttempt, LeaseRef};

/// What the outcome record of an attempt needs to know of its job, kept
/// apart from the job so the record can be written even if running it
/// panicked.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttemptIdentity {
    lease: LeaseRef,
    attempt: i32,
    attempts_used: u32,
    max_attempts: u32,
    started_at: DateTime<Utc>,
    trace: Option<TraceContext>,
}

impl AttemptIdentity {
    /// The identity of `job`'s attempt; `trace` is its job's, if it is
    /// traced.
    pub(super) fn of(job: &ClaimedJob, trace: Option<TraceContext>) -> Self {
        Self {
            lease: job.lease(),
            attempt: job.attempt,
            attempts_used: attempts_used(job.attempt, job.attempt_base),
            max_attempts: job.max_attempts as u32,
            started_at: job.attempted_at,
            trace,
        }
    }
}

/// Awaits an attempt's execution and turns it into the outcome to write.
///
/// A panic while running it (a bug in TaskFlow or in wasmtime, never the
/// guest's doing) ends the attempt as failed with `host_error` instead of
/// killing the task that runs it: otherwise the attempt would stay in
/// [`InFlight`], its lease renewed forever, and its job `running` for good.
/// The slot moved into the execution is freed as the panic unwinds
/// ([`Slot`]'s `Drop`).
pub(super) async fn settle_attempt(
    worker_id: &str,
    retry: &RetryPolicy,
    identity: AttemptIdentity,
    execution: impl Future<Output = Execution>,
) -> FinishedAttempt {
    let execution = match AssertUnwindSafe(execution).catch_unwind().await {
        Ok(execution) => execution,
        Err(panic) => {
            let message = panic_text(&*panic);
            tracing::error!(
                job_id = %identity.lease.job_id, lease_token = identity.lease.lease_token,
                panic = %message, "an attempt panicked in the worker; recording it as failed"
            );
            Execution::failed(Failure::new(
                FailureKind::HostError,
                format!(
                    "the worker failed while running this attempt ({message}); it will be retried"
                ),
            ))
        }
    };
    finished_attempt(worker_id, retry, &identity, execution)
}

/// The message a panic carried.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// The outcome record of an attempt.
fn finished_attempt(
    worker_id: &str,
    retry: &RetryPolicy,
    identity: &AttemptIdentity,
    execution: Execution,
) -> FinishedAttempt {
    let after_failure = |retryable| {
        backoff::after_failure(
            retry,
            identity.lease.job_id,
            identity.attempts_used,
            identity.max_attempts,
            retryable,
        )
    };
    let end = match execution.result {
        Ok(output) => AttemptEnd::Succeeded { output },
        Err(failure) => {
            metrics::counter!("taskflow_attempts_failed_total", "kind" => failure.kind.code())
                .increment(1);
            AttemptEnd::Failed {
                next: after_failure(failure.retryable),
                failure,
            }
        }
    };
    FinishedAttempt {
        lease: identity.lease,
        attempt: identity.attempt,
        worker_id: worker_id.to_owned(),
        started_at: identity.started_at,
        end,
        usage: Some(Usage {
            fuel_consumed: execution.fuel_consumed,
            memory_bytes: execution.memory_bytes,
            duration: execution.duration,
        }),
        log: execution.log.stored(),
        requests: execution.requests.stored(),
        if_refused: after_failure(true),
        trace: identity.trace,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::worker::Capacity;

    #[tokio::test]
    async fn a_panic_inside_an_attempt_ends_it_as_a_host_error_and_frees_its_slot() {
        let capacity = Capacity::new(1);
        let slot = capacity.claim().slot().await;
        assert_eq!(capacity.free_slots(), 0);
        let identity = AttemptIdentity {
            lease: LeaseRef {
                job_id: uuid::Uuid::now_v7(),
                lease_token: 7,
            },
            attempt: 1,
            attempts_used: 1,
            max_attempts: 3,
            started_at: Utc::now(),
            trace: None,
        };
        let retry = RetryPolicy {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        };
        let panicking = async move {
            let _slot = slot;
            if identity.attempt > 0 {
                panic!("boom");
            }
            Execution::failed(Failure::new(FailureKind::Trap, "unreachable"))
        };
        let finished = settle_attempt("w1", &retry, identity, panicking).await;
        let (kind, message) = finished.end.error().expect("a failure");
        assert_eq!(kind, FailureKind::HostError);
        assert!(message.contains("boom"));
        assert!(
            finished.end.retry_delay().is_some(),
            "retried: {:?}",
            finished.end
        );
        assert_eq!(finished.lease, identity.lease);
        assert_eq!(capacity.free_slots(), 1, "the slot came back");
    }
}
