//! The physical limit every rate is compared with, measured in the same
//! run, so a ratio holds on any machine: PostgreSQL's one-row INSERT, each
//! its own commit (one WAL flush each, as a submission's), from one
//! connection and from 32 (`Store::reference_inserts`). On a fresh
//! database of its own, while no deployment runs.

use std::time::Duration;

use taskflow_testkit::ScratchDatabase;

use super::cluster::Target;

/// How long each reference runs.
const REFERENCE_DURATION: Duration = Duration::from_secs(3);

/// One-row INSERT + COMMIT per second from `connections` connections.
pub async fn inserts_per_second(target: &Target, connections: usize) -> anyhow::Result<f64> {
    let database = ScratchDatabase::create(
        &target.database_url,
        "taskflow_bench_reference",
        u32::try_from(connections)?,
    )
    .await?;
    let committed = database
        .store()
        .reference_inserts(connections, REFERENCE_DURATION)
        .await;
    database.drop_database().await?;
    Ok(committed? as f64 / REFERENCE_DURATION.as_secs_f64())
}
