//! A store with jobs in it, and the outcome records of their attempts, for
//! tests that play the store's statements one by one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use taskflow::job::{AfterFailure, AttemptEnd, AttemptLog, AttemptRequests, NewJob};
use taskflow::store::{ClaimedJob, FinishedAttempt, Store};
use uuid::Uuid;

use super::{TestDb, test_database};

/// A database of its own holding `count` available jobs of one module
/// (whose bytes are never run), for tests that play the store's statements.
pub async fn store_with_jobs(count: usize) -> (TestDb, Vec<Uuid>) {
    let db = test_database().await;
    let store = db.store();
    let hash = stored_module(store).await;
    let jobs: Vec<NewJob> = (0..count).map(|_| new_job(&hash)).collect();
    store.insert_jobs(&jobs).await.unwrap();
    (db, jobs.iter().map(|job| job.id).collect())
}

/// Stores a module whose bytes are never run, for jobs to name, and
/// returns its hash.
pub async fn stored_module(store: &Store) -> String {
    use sha2::Digest;
    let bytes = b"not run by these tests".to_vec();
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    store.insert_module(&hash, &bytes).await.unwrap();
    hash
}

/// A job of `module_hash` with small limits, as the store takes it (past
/// the API's checks).
pub fn new_job(module_hash: &str) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        module_hash: module_hash.to_owned(),
        queue: "default".into(),
        priority: 0,
        input: b"{}".to_vec(),
        max_attempts: 5,
        timeout_ms: 1000,
        fuel: 1000,
        memory_limit_bytes: 1 << 20,
        run_at: None,
        idempotency_key: None,
        concurrency_key: None,
        request_fingerprint: None,
        trace: None,
    }
}

/// The outcome record of `job`'s attempt on `worker`, ending as `end`.
pub fn finished(job: &ClaimedJob, worker: &str, end: AttemptEnd) -> FinishedAttempt {
    FinishedAttempt {
        lease: job.lease(),
        attempt: job.attempt,
        worker_id: worker.into(),
        started_at: job.attempted_at,
        end,
        usage: None,
        log: AttemptLog::empty(),
        requests: AttemptRequests::none(),
        if_refused: AfterFailure::Dead,
        trace: None,
    }
}

/// A successful outcome of `job`'s attempt with `output`.
pub fn success(job: &ClaimedJob, worker: &str, output: &[u8]) -> FinishedAttempt {
    finished(
        job,
        worker,
        AttemptEnd::Succeeded {
            output: output.to_vec(),
        },
    )
}

/// Moves the deadline of `job`'s lease to now, as if its worker had
/// stopped renewing it, and returns it as the rescuer then reads it
/// (`Store::running_past_lease`): a rescue applies only on that deadline
/// (`Store::finish_if_lease_matches`).
pub async fn lease_lapses(store: &Store, job: &ClaimedJob) -> DateTime<Utc> {
    let updated = store
        .extend_leases_if_token_matches(&[(job.lease(), Duration::ZERO)])
        .await
        .unwrap();
    assert_eq!(updated, 1, "the job runs under this lease");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let past = store.running_past_lease(1000, Duration::MAX).await.unwrap();
    past.iter()
        .find(|running| running.lease() == job.lease())
        .expect("the lease is past its deadline")
        .lease_expires_at
}

/// A rescue of `job`'s attempt on `worker`, decided on its lease's
/// `deadline` (see [`lease_lapses`]), retried at once.
pub fn rescue(job: &ClaimedJob, worker: &str, deadline: DateTime<Utc>) -> FinishedAttempt {
    finished(
        job,
        worker,
        AttemptEnd::LeaseExpired {
            message: format!("{worker} vanished"),
            next: AfterFailure::Retry {
                delay: Duration::ZERO,
            },
            deadline,
        },
    )
}
