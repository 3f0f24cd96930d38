//! The physical limit every rate is compared with, measured in the same
//! run, so a ratio holds on any machine: PostgreSQL's one-row INSERT, each
//! its own commit (one WAL flush each, as a submission's), from one
//! connection and from 32 (`Store::reference_inserts`). On a fresh
//! database of its own, while no deployment runs.

use std::time::Duration;

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
}

/// One-row INSERT + COMMIT from `connections` connections.
pub async fn inserts(target: &Target, connections: usize) -> anyhow::Result<Reference> {
    let database = ScratchDatabase::create(
        &target.database_url,
        "taskflow_bench_reference",
        u32::try_from(connections)?,
    )
    .await?;
    let before = Servers::read();
    let committed = database
        .store()
        .reference_inserts(connections, REFERENCE_DURATION)
        .await;
    let (postgres, _) = Servers::read().since(&before);
    database.drop_database().await?;
    let committed = committed?;
    Ok(Reference {
        per_second: committed as f64 / REFERENCE_DURATION.as_secs_f64(),
        postgres_cpu_micros: postgres.cpu_micros_per(usize::try_from(committed)?),
    })
}
