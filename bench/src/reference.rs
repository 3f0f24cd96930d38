//! The physical limit every rate is compared with, measured in the same
//! run, so a ratio holds on any machine: PostgreSQL's one-row INSERT, each
//! its own commit (one WAL flush each, as a submission's), from one
//! connection and from 32 (`Store::reference_inserts`). On a fresh
//! database of its own, while no deployment runs: just before the scenario
//! and again just after it ([`bracket`]), because this kind of machine's
//! commit rate drifts by tens of percent within minutes. Beside it, for a lone
//! submission, the job's own row written by a plain INSERT ([`job_rows`])
//! and the API's own statement without the API ([`store_submissions`]):
//! together they tell what the row costs, what TaskFlow's statement adds
//! to it, and what serving it over HTTP adds to that.

use std::time::{Duration, Instant};

use taskflow::api::types::SubmitJob;
use taskflow::job::{ModuleNames, SubmissionLimits};
use taskflow::store::{Store, Submitter};
use taskflow_testkit::ScratchDatabase;

use super::Figure;
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

impl Reference {
    /// The mean of `self` and `other`, figure by figure.
    fn mean(&self, other: &Self) -> Self {
        Self {
            per_second: f64::midpoint(self.per_second, other.per_second),
            postgres_cpu_micros: f64::midpoint(self.postgres_cpu_micros, other.postgres_cpu_micros),
            wal_bytes: f64::midpoint(self.wal_bytes, other.wal_bytes),
        }
    }
}

/// The reference measured just before a scenario and again just after it.
pub struct Bracket {
    /// Before the scenario.
    pub before: Reference,
    /// After it.
    pub after: Reference,
}

impl Bracket {
    /// What the scenario is compared with: the mean of both measurements.
    /// A machine whose commits sped up or slowed down while the scenario
    /// ran moves both ends, and a rate measured between them is compared
    /// with the middle rather than with whichever end came first
    /// (docs/benchmarks.md, "The reference before and after, on stop 48's
    /// machine").
    pub fn mean(&self) -> Reference {
        self.before.mean(&self.after)
    }

    /// The reference's rate after the scenario over its rate before: far
    /// from 1, the machine changed speed during the run and its ratios are
    /// less sure than usual.
    pub fn drift(&self) -> f64 {
        self.after.per_second / self.before.per_second
    }

    /// The figures every bracketed scenario reports: the mean it is
    /// compared with, and how far the two ends lay apart.
    pub fn figures(&self, connections: usize) -> [Figure; 2] {
        let plural = if connections == 1 { "" } else { "s" };
        [
            Figure::new(
                format!("reference: one-row INSERT + COMMIT, {connections} connection{plural}"),
                self.mean().per_second,
                "tps",
                "report",
            ),
            Figure::new(
                "reference after the scenario / before it",
                self.drift(),
                "ratio",
                "report",
            ),
        ]
    }
}

/// Runs `scenario` between two measurements of the one-row reference from
/// `connections` connections.
pub async fn bracket<T>(
    target: &Target,
    connections: usize,
    scenario: impl AsyncFnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Bracket)> {
    let before = inserts(target, connections).await?;
    let outcome = scenario().await?;
    let after = inserts(target, connections).await?;
    Ok((outcome, Bracket { before, after }))
}

/// One-row INSERT + COMMIT from `connections` connections.
async fn inserts(target: &Target, connections: usize) -> anyhow::Result<Reference> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(per_second: f64) -> Reference {
        Reference {
            per_second,
            postgres_cpu_micros: per_second / 100.0,
            wal_bytes: 200.0,
        }
    }

    #[test]
    fn a_bracket_compares_with_the_mean_of_its_ends_and_reports_their_drift() {
        let bracket = Bracket {
            before: reference(4_000.0),
            after: reference(2_000.0),
        };
        let mean = bracket.mean();
        assert_eq!(mean.per_second, 3_000.0);
        assert_eq!(mean.postgres_cpu_micros, 30.0);
        let [rate, drift] = bracket.figures(32);
        assert_eq!(
            rate.name,
            "reference: one-row INSERT + COMMIT, 32 connections"
        );
        assert_eq!(rate.value, 3_000.0);
        assert_eq!(drift.value, 0.5);
        assert_eq!(
            bracket.figures(1)[0].name,
            "reference: one-row INSERT + COMMIT, 1 connection"
        );
    }
}
