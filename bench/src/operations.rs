//! Scenarios of an installation run for months: the queue listing over a
//! jobs table of millions, and the pruner deleting a backlog of expired
//! jobs while workers drain at full speed.

use std::time::{Duration, Instant};

use anyhow::Context;
use taskflow::job::JobState;
use taskflow::queue::JobCounts;
use taskflow::store::{FillerJobs, Store};
use taskflow_testkit::percentile;

use super::Figure;
use super::cluster::{Deployment, Target};
use super::drains::{DrainSetup, EXPIRED_QUEUE, drain};

/// How many queues the listing's jobs are spread over.
const QUEUES: usize = 20;

/// Most jobs one filler statement inserts.
const CHUNK: u64 = 500_000;

/// How many listings each measurement times.
const LISTINGS: usize = 200;

/// What the listing's big table holds, per queue: mostly history, as a
/// queue run for weeks does.
const MIX: [(JobState, f64); 5] = [
    (JobState::Succeeded, 0.95),
    (JobState::Dead, 0.03),
    (JobState::Cancelled, 0.01),
    (JobState::Available, 0.005),
    (JobState::Scheduled, 0.005),
];

/// `GET /v1/queues` timed with the same [`QUEUES`] queues holding 1,000
/// jobs, then `total`; the ratio of the two shows whether a listing's cost
/// grows with the table.
pub(crate) async fn list_queues(target: &Target, total: usize) -> anyhow::Result<Vec<Figure>> {
    let deployment = Deployment::start(target).await?;
    let module = deployment.upload("noop").await?;
    let small = 1000.min(total);
    let mut inserted = fill(&deployment, &module, small).await?;
    let (few, _) = time_listings(&deployment).await?;
    inserted += fill(&deployment, &module, total - small).await?;
    deployment.store().fold_job_transitions().await?;
    deployment.store().vacuum_jobs().await?;
    let (many, statements) = time_listings(&deployment).await?;
    let scrapes = time_scrapes(&deployment).await?;
    let console = time_console_pages(&deployment, &module).await?;
    let listed = deployment.client.list_queues().await?;
    let counted: u64 = listed.queues.iter().map(|q| q.stats.jobs.total()).sum();
    anyhow::ensure!(
        counted == inserted,
        "the listing counts {counted} jobs of {inserted}"
    );
    deployment.stop().await?;
    let mut figures = vec![
        Figure::new(
            "listing, 1,000 jobs, p50",
            percentile(&few, 50.0),
            "ms",
            "report",
        ),
        Figure::new(
            "listing, all jobs, p50",
            percentile(&many, 50.0),
            "ms",
            "≤ 50",
        ),
        Figure::new(
            "listing, all jobs, p99",
            percentile(&many, 99.0),
            "ms",
            "report",
        ),
        Figure::new(
            "/metrics scrape (queue gauges from the counters), all jobs, p50",
            percentile(&scrapes, 50.0),
            "ms",
            "≤ 20",
        ),
        Figure::new(
            "all / 1,000 jobs, p50",
            percentile(&many, 50.0) / percentile(&few, 50.0),
            "ratio",
            "report",
        ),
    ];
    figures.extend(console);
    if let Some(statements) = statements {
        figures.push(Figure::new(
            "statements per listing",
            statements,
            "statements",
            "report",
        ));
    }
    Ok(figures)
}

/// Inserts about `total` jobs spread evenly over [`QUEUES`] queues in the
/// proportions of [`MIX`]; how many exactly.
async fn fill(deployment: &Deployment, module: &str, total: usize) -> anyhow::Result<u64> {
    let per_queue = total as u64 / QUEUES as u64;
    let bar = super::scenarios::progress(total, "inserting jobs");
    let mut inserted = 0;
    for queue in 0..QUEUES {
        let queue = format!("queue-{queue:02}");
        for (state, share) in MIX {
            let mut left = (per_queue as f64 * share).round() as u64;
            while left > 0 {
                let count = left.min(CHUNK);
                let jobs = FillerJobs {
                    module_hash: module,
                    queue: &queue,
                    state,
                    count,
                    age: Duration::from_secs(3600),
                    priorities: 3,
                };
                deployment.store().insert_filler_jobs(&jobs).await?;
                left -= count;
                inserted += count;
                bar.inc(count);
            }
        }
    }
    bar.finish_and_clear();
    Ok(inserted)
}

/// [`LISTINGS`] scrapes of the API's `/metrics` one after another, which
/// read the queue counters as the listing does: their latencies in ms,
/// sorted.
async fn time_scrapes(deployment: &Deployment) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(LISTINGS);
    for _ in 0..LISTINGS {
        let started = Instant::now();
        deployment.api_metrics().await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// Requests per console page timed.
const PAGE_VIEWS: usize = 50;

/// Each console page over the whole table, [`PAGE_VIEWS`] times one after
/// another in one session (the API is open, so the first page opens it):
/// p50 and p99 per page, in ms. The pages that list jobs are read with the
/// filters that reach the most rows: none (the newest), dead jobs (3 % of
/// the table), one queue of 20, the module every job runs, and one no job
/// runs (its search reads its whole bound).
async fn time_console_pages(deployment: &Deployment, module: &str) -> anyhow::Result<Vec<Figure>> {
    let (_, session) = deployment.console_page("/ui", None).await?;
    let session = session.context("the open console sets a session cookie")?;
    let newest = deployment
        .store()
        .list_jobs(&taskflow::store::JobFilter {
            limit: 1,
            ..Default::default()
        })
        .await?;
    let job = newest.first().context("the table has jobs")?.id;
    let pages = [
        ("overview", "/ui".to_owned()),
        ("jobs", "/ui/jobs".to_owned()),
        ("jobs, dead", "/ui/jobs?state=dead".to_owned()),
        ("jobs, one queue", "/ui/jobs?queue=queue-07".to_owned()),
        ("jobs, by module", format!("/ui/jobs?module={module}")),
        // The worst case of a bounded search: nothing matches, so the
        // page reads its whole bound, then where it stopped.
        (
            "jobs, a module without jobs",
            format!("/ui/jobs?module={}", "0".repeat(64)),
        ),
        ("job", format!("/ui/jobs/{job}")),
        ("dead letters", "/ui/dead-letters".to_owned()),
        ("modules", "/ui/modules".to_owned()),
        ("queues", "/ui/queues".to_owned()),
    ];
    let mut figures = Vec::new();
    for (name, path) in pages {
        let mut latencies = Vec::with_capacity(PAGE_VIEWS);
        for _ in 0..PAGE_VIEWS {
            let started = Instant::now();
            let (body, _) = deployment.console_page(&path, Some(&session)).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(body.contains("</main>"), "{path} did not render a page");
        }
        latencies.sort_by(f64::total_cmp);
        figures.push(Figure::new(
            format!("console page {name}, all jobs, p50"),
            percentile(&latencies, 50.0),
            "ms",
            "≤ 100",
        ));
        figures.push(Figure::new(
            format!("console page {name}, all jobs, p99"),
            percentile(&latencies, 99.0),
            "ms",
            "report",
        ));
    }
    Ok(figures)
}

/// [`LISTINGS`] listings one after another: their latencies in ms, sorted,
/// and PostgreSQL's statements per listing where it counts them.
async fn time_listings(deployment: &Deployment) -> anyhow::Result<(Vec<f64>, Option<f64>)> {
    let statements_before = deployment.store().statements_run().await;
    let mut latencies = Vec::with_capacity(LISTINGS);
    for _ in 0..LISTINGS {
        let started = Instant::now();
        deployment.client.list_queues().await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let statements_after = deployment.store().statements_run().await;
    latencies.sort_by(f64::total_cmp);
    // Less the two statements that read the count.
    let per_listing = statements_before
        .zip(statements_after)
        .map(|(before, after)| (after - before - 2) as f64 / LISTINGS as f64);
    Ok((latencies, per_listing))
}

/// The drain of `count` jobs, alternately alone and while the pruner
/// deletes `expired` jobs past their retention, twice each.
pub(crate) async fn prune_while_draining(
    target: &Target,
    count: usize,
    expired: usize,
) -> anyhow::Result<Vec<Figure>> {
    let (mut alone, mut pruning, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        alone.push(
            drain(target, count, &DrainSetup::default())
                .await?
                .jobs_per_second,
        );
        let setup = DrainSetup {
            expired_jobs: expired as u64,
            ..DrainSetup::default()
        };
        let drained = drain(target, count, &setup).await?;
        pruning.push(drained.jobs_per_second);
        rates.push(drained.pruning.context("the pruner's rates")?);
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    let last = rates.last().context("two drains ran")?;
    Ok(vec![
        Figure::new(
            "drained, alone (best of 2)",
            best(&alone),
            "jobs/s",
            "report",
        ),
        Figure::new(
            "drained, while pruning (best of 2)",
            best(&pruning),
            "jobs/s",
            "report",
        ),
        Figure::new(
            "while pruning / alone",
            best(&pruning) / best(&alone),
            "ratio",
            "≥ 0.9",
        ),
        Figure::new(
            "pruned, while draining",
            last.while_draining,
            "jobs/s",
            "report",
        ),
        Figure::new("pruned, workers idle", last.alone, "jobs/s", "report"),
    ])
}

/// Inserts `count` succeeded jobs on [`EXPIRED_QUEUE`], finished 30 days
/// ago: past the default retention of 7.
pub(crate) async fn insert_expired(store: &Store, module: &str, count: u64) -> anyhow::Result<()> {
    let mut left = count;
    while left > 0 {
        let chunk = left.min(CHUNK);
        let jobs = FillerJobs {
            module_hash: module,
            queue: EXPIRED_QUEUE,
            state: JobState::Succeeded,
            count: chunk,
            age: Duration::from_secs(30 * 86_400),
            priorities: 1,
        };
        store.insert_filler_jobs(&jobs).await?;
        left -= chunk;
    }
    Ok(())
}

/// Jobs left on [`EXPIRED_QUEUE`], from the queue counters (no scan).
pub(crate) async fn expired_left(store: &Store) -> anyhow::Result<u64> {
    let counts = store.job_counts(Some(EXPIRED_QUEUE)).await?;
    Ok(counts.values().map(JobCounts::total).sum())
}

/// Waits (up to 5 minutes) for the pruner to delete what is left on
/// [`EXPIRED_QUEUE`]: its rate, in jobs per second.
pub(crate) async fn prune_rate_alone(store: &Store) -> anyhow::Result<f64> {
    let (started, left) = (Instant::now(), expired_left(store).await?);
    let mut now_left = left;
    while now_left > 0 && started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now_left = expired_left(store).await?;
    }
    Ok((left - now_left) as f64 / started.elapsed().as_secs_f64())
}
