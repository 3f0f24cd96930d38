//! `fleet`: a hundred workers against one PostgreSQL, the connection budget
//! of docs/scaling.md measured (issue 16). Directly, each worker's pool
//! would open connections of its own and a stock `max_connections = 100`
//! would not hold them; through `--pgbouncer` they share its server
//! connections. The scenario drains no-op jobs with one slot per worker,
//! so that every worker claims and writes outcomes, and samples how many
//! connections PostgreSQL has open to the database meanwhile.

use std::time::Duration;

use anyhow::Context as _;

use taskflow::api::types::{SubmitBatch, SubmitJob};

use super::Figure;
use super::cluster::Target;
use super::scenarios::{job, wait_succeeded, warm_deployment};

/// Most workers the scenario starts without a pooler in front of
/// PostgreSQL: a hundred direct pools would exceed a stock server's
/// `max_connections` and fail for that reason alone.
const MOST_DIRECT_WORKERS: usize = 10;

/// Starts `workers` workers of one slot each and drains `count` jobs.
pub async fn fleet(target: &Target, workers: usize, count: usize) -> anyhow::Result<Vec<Figure>> {
    anyhow::ensure!(
        target.pgbouncer.is_some() || workers <= MOST_DIRECT_WORKERS,
        "fleet with {workers} workers needs --pgbouncer: direct, their connections exceed \
         what a stock PostgreSQL allows"
    );
    let (deployment, module) = warm_deployment(target, workers, 1, "noop").await?;
    let store = deployment.store();
    let (open_before, max_connections) = store.connections_open().await?;
    // Every job falls due at the same moment, so the workers drain a
    // backlog that is all in place, as in the drain scenario.
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let mut remaining = count;
    while remaining > 0 {
        let size = remaining.min(1000);
        let due = SubmitJob {
            run_at: Some(run_at),
            ..job(&module)
        };
        deployment
            .client
            .submit_batch(&SubmitBatch {
                jobs: vec![due; size],
            })
            .await?;
        remaining -= size;
    }
    let mut peak = open_before;
    {
        let wait = wait_succeeded(store, count, "draining with the fleet");
        tokio::pin!(wait);
        loop {
            tokio::select! {
                result = &mut wait => { result?; break; }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    peak = peak.max(store.connections_open().await?.0);
                }
            }
        }
    }
    let drained_s = store
        .drained_seconds_after(run_at)
        .await?
        .context("no job was drained")?;
    deployment.stop().await?;
    Ok(vec![
        Figure::new("workers", workers as f64, "processes", "report"),
        Figure::new(
            "PostgreSQL max_connections",
            max_connections as f64,
            "connections",
            "report",
        ),
        Figure::new(
            "connections open to the database, peak (the benchmark's own included)",
            peak as f64,
            "connections",
            "< max_connections",
        ),
        Figure::new("drained", count as f64 / drained_s, "jobs/s", "report"),
    ])
}
