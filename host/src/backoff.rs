//! The retry schedule: deterministic exponential backoff with jitter.
//!
//! After failed attempt `n` (counting from 1 since the job was submitted or
//! last requeued), the next attempt waits
//!
//! ```text
//! exp(n)   = min(base · 2^(n-1), max)
//! delay(n) = exp(n) + exp(n) · j(job, n) / 4      where j ∈ [0, 1)
//! ```
//!
//! `j` is derived from a SHA-256 of the job id and `n`, so jitter spreads the
//! retries of jobs that failed together (no thundering herd against a
//! recovering dependency) while one job always gets the same schedule: an
//! operator can predict it and a test can assert it. With the defaults
//! (`base` 1 s, `max` 1 h) the delays are about 1 s, 2 s, 4 s, 8 s, … up to an
//! hour, each up to a quarter longer.

use std::time::Duration;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::RetryPolicy;
use crate::job::AfterFailure;

/// Where a job goes after a failed attempt: `dead` if the failure is not
/// retryable or `attempts_used` (this one included, counted since the last
/// user retry) reached `max_attempts`; otherwise `retrying` after
/// [`retry_delay`].
pub fn after_failure(
    policy: &RetryPolicy,
    job_id: Uuid,
    attempts_used: u32,
    max_attempts: u32,
    retryable: bool,
) -> AfterFailure {
    if !retryable || attempts_used >= max_attempts {
        AfterFailure::Dead
    } else {
        AfterFailure::Retry {
            delay: retry_delay(policy, job_id, attempts_used),
        }
    }
}

/// Delay before the attempt after failed attempt `failed_attempt` (1-based).
pub fn retry_delay(policy: &RetryPolicy, job_id: Uuid, failed_attempt: u32) -> Duration {
    let doublings = failed_attempt.saturating_sub(1).min(63);
    let exponential = policy
        .backoff_base
        .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .unwrap_or(Duration::MAX)
        .min(policy.backoff_max);
    exponential + exponential.mul_f64(jitter_fraction(job_id, failed_attempt) / 4.0)
}

/// A number in `[0, 1)` that depends only on the job and the attempt.
fn jitter_fraction(job_id: Uuid, attempt: u32) -> f64 {
    let digest = Sha256::new()
        .chain_update(job_id.as_bytes())
        .chain_update(attempt.to_be_bytes())
        .finalize();
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("digest has 32 bytes"));
    // 53 bits fill an f64 mantissa exactly, so the result is uniform in [0, 1).
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            backoff_base: Duration::from_millis(base_ms),
            backoff_max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn delays_double_until_the_cap_and_jitter_stays_within_a_quarter() {
        let policy = policy(1000, 10_000);
        let job = Uuid::now_v7();
        let expected_floor = [1000, 2000, 4000, 8000, 10_000, 10_000];
        for (index, floor) in expected_floor.into_iter().enumerate() {
            let delay = retry_delay(&policy, job, index as u32 + 1).as_millis() as u64;
            assert!(
                (floor..floor + floor / 4).contains(&delay),
                "attempt {}: {delay} ms outside [{floor}, {})",
                index + 1,
                floor + floor / 4
            );
        }
    }

    #[test]
    fn the_same_job_always_gets_the_same_schedule() {
        let policy = policy(500, 60_000);
        let job = Uuid::now_v7();
        let first: Vec<_> = (1..10).map(|n| retry_delay(&policy, job, n)).collect();
        let again: Vec<_> = (1..10).map(|n| retry_delay(&policy, job, n)).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn different_jobs_get_different_jitter() {
        let policy = policy(1000, 60_000);
        let delays: std::collections::HashSet<_> = (0..50)
            .map(|_| retry_delay(&policy, Uuid::new_v4(), 1))
            .collect();
        assert!(delays.len() > 40, "jitter barely varies: {delays:?}");
    }

    #[test]
    fn failures_retry_until_attempts_run_out_unless_not_retryable() {
        let policy = policy(1000, 60_000);
        let job = Uuid::now_v7();
        assert!(matches!(
            after_failure(&policy, job, 1, 3, true),
            AfterFailure::Retry { .. }
        ));
        assert!(matches!(
            after_failure(&policy, job, 2, 3, true),
            AfterFailure::Retry { .. }
        ));
        assert_eq!(after_failure(&policy, job, 3, 3, true), AfterFailure::Dead);
        assert_eq!(after_failure(&policy, job, 1, 3, false), AfterFailure::Dead);
        assert_eq!(
            after_failure(&policy, job, 2, 3, true),
            AfterFailure::Retry {
                delay: retry_delay(&policy, job, 2)
            }
        );
    }

    #[test]
    fn huge_attempt_numbers_saturate_at_the_cap() {
        let policy = policy(1000, 3_600_000);
        let delay = retry_delay(&policy, Uuid::nil(), u32::MAX);
        assert!(delay >= Duration::from_secs(3600) && delay < Duration::from_secs(4500));
    }
}
