//! The physical limit every rate is compared with, measured in the same
//! run, so a ratio holds on any machine: PostgreSQL's one-row INSERT, each
//! its own commit (one WAL flush each, as a submission's), from one
//! connection and from 32 (`Store::reference_inserts`). On a fresh
//! database of its own, while no deployment runs. Beside it, for a lone
//! submission, the job's own row written by a plain INSERT ([`job_rows`])
//! and the API's own statement without the API ([`store_submissions`]):
//! together they tell what the row costs, what TaskFlow's statement adds
//! to it, and what serving it over HTTP adds to that.

use std::time::{Duration, Instant};

use taskflow::api::types::SubmitJob;
use taskflow::job::{ModuleNames, SubmissionLimits};
use taskflow::store::{Store, Submitter};
use taskflow_testkit::ScratchDatabase;

use super::cluster::Target;
use super::scenarios::job;
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
    let connections_u32 = u32::try_from(connections)?;
    measure(
        target,
        "taskflow_bench_reference",
        connections_u32,
        async |store| {
            store
                .reference_inserts(connections, REFERENCE_DURATION)
                .await
        },
    )
    .await
}

/// `job`'s own row written again and again by a plain INSERT + COMMIT from
/// one connection (`Store::reference_job_rows`): what PostgreSQL makes of
/// a job's row before TaskFlow's statement and the API add anything, and
/// so how much of the distance to the one-row reference is the row itself
/// (docs/benchmarks.md, "What a submission costs PostgreSQL, part by
/// part").
///
/// The job is the benchmark's ([`job`]), naming a module by a hash that was
/// never uploaded: `jobs` does not check it, and any hash makes a row of
/// the same size.
pub async fn job_rows(target: &Target) -> anyhow::Result<Reference> {
    let job = job(&"0".repeat(64))
        .into_spec()?
        .resolve(&SubmissionLimits::default(), &ModuleNames::new())?;
    measure(target, "taskflow_bench_job_rows", 1, async |store| {
        store.reference_job_rows(&job, REFERENCE_DURATION).await
    })
    .await
}

/// Runs `commits` (which returns how many it committed in
/// [`REFERENCE_DURATION`]) on a fresh database of its own, with
/// `connections` connections, and what PostgreSQL spent on it.
async fn measure(
    target: &Target,
    prefix: &str,
    connections: u32,
    commits: impl AsyncFnOnce(&Store) -> taskflow::store::StoreResult<u64>,
) -> anyhow::Result<Reference> {
    let database = ScratchDatabase::create(&target.database_url, prefix, connections).await?;
    let store = database.store();
    let (before, wal_before) = (Servers::read(), store.wal_bytes_written().await?);
    let committed = commits(store).await;
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
