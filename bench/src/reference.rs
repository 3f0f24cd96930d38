//! The physical limit every rate is compared with, measured in the same
//! run, so a ratio holds on any machine: PostgreSQL's one-row INSERT, each
//! its own commit (one WAL flush each, as a submission's), from one
//! connection and from 32 (`Store::reference_inserts`). On a fresh
//! database of its own, while no deployment runs. Beside it, the API's own
//! statement without the API ([`store_submissions`]), which tells the cost
//! of what a submission writes from the cost of serving it over HTTP.

use std::time::{Duration, Instant};

use taskflow::api::types::SubmitJob;
use taskflow::job::{ModuleNames, SubmissionLimits};
use taskflow::store::{Store, Submitter};
use taskflow_testkit::ScratchDatabase;

use super::cluster::Target;
use super::usage::Servers;

/// How long each reference runs.
const REFERENCE_DURATION: Duration = Duration::from_secs(3);

/// What the reference measured.
pub struct Reference {
    /// One-row INSERT + COMMIT per second.
    pub per_second: f64,
    /// PostgreSQL's CPU time per INSERT + COMMIT, in microseconds (all its
    /// processes: the backends, the WAL writer…).
    pub postgres_cpu_micros: f64,
    /// Write-ahead log written per INSERT + COMMIT, in bytes.
    pub wal_bytes: f64,
}

/// One-row INSERT + COMMIT from `connections` connections.
pub async fn inserts(target: &Target, connections: usize) -> anyhow::Result<Reference> {
    let database = ScratchDatabase::create(
        &target.database_url,
        "taskflow_bench_reference",
        u32::try_from(connections)?,
    )
    .await?;
    let store = database.store();
    let (before, wal_before) = (Servers::read(), store.wal_bytes_written().await?);
    let committed = store
        .reference_inserts(connections, REFERENCE_DURATION)
        .await;
    let (postgres, _) = Servers::read().since(&before);
    let wal = store.wal_bytes_written().await? - wal_before;
    database.drop_database().await?;
    let committed = committed?;
    Ok(Reference {
        per_second: committed as f64 / REFERENCE_DURATION.as_secs_f64(),
        postgres_cpu_micros: postgres.cpu_micros_per(usize::try_from(committed)?),
        wal_bytes: wal as f64 / committed as f64,
    })
}

/// Submissions of `job` made one after another straight through the
/// store's [`Submitter`] from this process, each alone and committed before
/// the next: the statement and commit a sequential client's submission
/// costs, without HTTP and without the API. Jobs per second.
pub async fn store_submissions(store: &Store, job: &SubmitJob) -> anyhow::Result<f64> {
    let (limits, names) = (SubmissionLimits::default(), ModuleNames::new());
    let submitter = Submitter::spawn(store.clone());
    let started = Instant::now();
    let mut submitted = 0_u32;
    while started.elapsed() < REFERENCE_DURATION {
        let job = job.clone().into_spec()?.resolve(&limits, &names)?;
        submitter.submit(job).await?;
        submitted += 1;
    }
    Ok(f64::from(submitted) / started.elapsed().as_secs_f64())
}
