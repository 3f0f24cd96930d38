//! Drain scenarios: queued no-op jobs drained by two workers, alone, beside
//! the reference, and alternately with and without queue limits.

use std::time::{Duration, Instant};

use anyhow::Context;

use taskflow::api::types::{PutQueue, SubmitBatch, SubmitJob};
use taskflow::queue::RateSpec;
use taskflow_testkit::median;

use super::Figure;
use super::cluster::{Deployment, Target};
use super::scenarios::{
    cores, cpu_budget, job, redis_commands_since, wait_succeeded, warm_deployment,
};
use super::usage::{self, Servers};
use super::{operations, reference};

/// What a drain runs against.
#[derive(Debug, Clone, Default)]
pub(crate) struct DrainSetup {
    /// Settings of the drained queue.
    pub limits: Option<PutQueue>,
    /// Finished jobs past their retention, on queue [`EXPIRED_QUEUE`], for
    /// the pruner to delete while the drain runs.
    pub expired_jobs: u64,
}

/// The queue of [`DrainSetup::expired_jobs`].
pub(crate) const EXPIRED_QUEUE: &str = "archive";

/// A drain's figures, and its rate for comparisons.
pub(crate) struct Drained {
    pub figures: Vec<Figure>,
    pub jobs_per_second: f64,
    /// PostgreSQL commits per drained job (every client's).
    pub commits_per_job: f64,
    /// The workers' store calls per drained job, in all and by statement.
    pub calls_per_job: WorkerCalls,
    /// CPU time per drained job, in microseconds: the workers' and
    /// PostgreSQL's (every process of it).
    pub cpu_micros_per_job: CpuPerJob,
    /// How fast the pruner deleted [`DrainSetup::expired_jobs`].
    pub pruning: Option<PruneRates>,
}

/// The workers' store calls (from their `taskflow_db_calls_total`), in all
/// and of the statements that a limited claim changes: claims, the
/// reservations before them, and the completions that follow.
#[derive(Clone, Copy)]
pub(crate) struct WorkerCalls {
    pub all: f64,
    /// Claim statements of either path (`claim_*`).
    pub claims: f64,
    /// A limited claim's first step (`reserve_claim_places`).
    pub reservations: f64,
    /// Batches of outcomes written (`finish_if_lease_matches`).
    pub completions: f64,
}

impl WorkerCalls {
    async fn read(deployment: &Deployment) -> anyhow::Result<Self> {
        let calls = deployment.worker_db_calls().await?;
        Ok(Self {
            all: calls.all() as f64,
            claims: calls.of("claim") as f64,
            reservations: calls.of("reserve") as f64,
            completions: calls.of("finish") as f64,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            all: self.all - before.all,
            claims: self.claims - before.claims,
            reservations: self.reservations - before.reservations,
            completions: self.completions - before.completions,
        }
    }

    fn per_job(&self, jobs: usize) -> Self {
        let jobs = jobs as f64;
        Self {
            all: self.all / jobs,
            claims: self.claims / jobs,
            reservations: self.reservations / jobs,
            completions: self.completions / jobs,
        }
    }
}

/// Where a drained job's CPU time went, in microseconds.
#[derive(Clone, Copy)]
pub(crate) struct CpuPerJob {
    pub workers: f64,
    pub postgres: f64,
}

impl CpuPerJob {
    /// The workers' and PostgreSQL's together.
    pub fn total(&self) -> f64 {
        self.workers + self.postgres
    }
}

/// Expired jobs deleted per second.
pub(crate) struct PruneRates {
    /// While the drain ran.
    pub while_draining: f64,
    /// After it, with the workers idle.
    pub alone: f64,
}

/// The limits of the limited drain: far above what two workers can run at
/// once (each claims at most its slots plus 256 ahead) or start in a second.
fn limits_far_above_the_drain() -> PutQueue {
    PutQueue {
        max_running: Some(10_000),
        rate: Some(RateSpec {
            limit: 10_000_000,
            period: "1s".into(),
        }),
        ..PutQueue::default()
    }
}

/// How many pairs of drains (one without limits, one with) the limited
/// drain runs.
const LIMITED_DRAIN_PAIRS: usize = 6;

/// Drains without limits and with [`limits_far_above_the_drain`],
/// [`LIMITED_DRAIN_PAIRS`] times, and reports the median of the pairs'
/// ratios (each pair ran back to back, so a machine whose speed drifts
/// between pairs, as shared machines' does by tens of percent within
/// minutes, moves both sides of a ratio alike), the lowest and highest
/// ratio, the best rate of each side, the median ratio of their CPU per
/// job, and the machine-independent counts of the last pair.
///
/// Which side runs first alternates from pair to pair: the second drain of
/// a pair meets what the first left behind (autovacuum of its scratch
/// database, a checkpoint of its WAL), and a fixed order charged that to
/// the limited side every time.
pub(crate) async fn drain_limited(target: &Target, count: usize) -> anyhow::Result<Vec<Figure>> {
    let mut unlimited = Vec::new();
    let mut limited = Vec::new();
    let mut last = None;
    let unlimited_setup = DrainSetup::default();
    let limited_setup = DrainSetup {
        limits: Some(limits_far_above_the_drain()),
        ..DrainSetup::default()
    };
    let mut cpu_ratios = Vec::new();
    for pair in 0..LIMITED_DRAIN_PAIRS {
        let (without, with_limits) = if pair % 2 == 0 {
            let without = drain(target, count, &unlimited_setup).await?;
            (without, drain(target, count, &limited_setup).await?)
        } else {
            let with_limits = drain(target, count, &limited_setup).await?;
            (drain(target, count, &unlimited_setup).await?, with_limits)
        };
        unlimited.push(without.jobs_per_second);
        limited.push(with_limits.jobs_per_second);
        cpu_ratios
            .push(without.cpu_micros_per_job.total() / with_limits.cpu_micros_per_job.total());
        last = Some((without, with_limits));
    }
    let mut ratios: Vec<f64> = limited.iter().zip(&unlimited).map(|(l, u)| l / u).collect();
    ratios.sort_by(f64::total_cmp);
    cpu_ratios.sort_by(f64::total_cmp);
    let (without, with_limits) = last.context("the drains ran")?;
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    Ok(vec![
        Figure::new(
            "commits per job, no limits",
            without.commits_per_job,
            "commits",
            "report",
        ),
        Figure::new(
            "commits per job, limited",
            with_limits.commits_per_job,
            "commits",
            "report",
        ),
        Figure::new(
            "worker database calls per job, no limits",
            without.calls_per_job.all,
            "calls",
            "report",
        ),
        Figure::new(
            "worker database calls per job, limited",
            with_limits.calls_per_job.all,
            "calls",
            "report",
        ),
        Figure::new(
            "worker claims per job, no limits",
            without.calls_per_job.claims,
            "calls",
            "report",
        ),
        Figure::new(
            "worker claims per job, limited",
            with_limits.calls_per_job.claims,
            "calls",
            "report",
        ),
        Figure::new(
            "worker reservations per job, limited",
            with_limits.calls_per_job.reservations,
            "calls",
            "report",
        ),
        Figure::new(
            "worker completion statements per job, no limits",
            without.calls_per_job.completions,
            "calls",
            "report",
        ),
        Figure::new(
            "worker completion statements per job, limited",
            with_limits.calls_per_job.completions,
            "calls",
            "report",
        ),
        Figure::new(
            "workers' CPU per job, no limits",
            without.cpu_micros_per_job.workers,
            "µs",
            "report",
        ),
        Figure::new(
            "workers' CPU per job, limited",
            with_limits.cpu_micros_per_job.workers,
            "µs",
            "report",
        ),
        Figure::new(
            "PostgreSQL CPU per job, no limits",
            without.cpu_micros_per_job.postgres,
            "µs",
            "report",
        ),
        Figure::new(
            "PostgreSQL CPU per job, limited",
            with_limits.cpu_micros_per_job.postgres,
            "µs",
            "report",
        ),
        Figure::new(
            "drained, no limits (best)",
            best(&unlimited),
            "jobs/s",
            "report",
        ),
        Figure::new(
            "drained, max_running and rate set (best)",
            best(&limited),
            "jobs/s",
            "report",
        ),
        Figure::new(
            "limited / unlimited, lowest pair",
            ratios[0],
            "ratio",
            "report",
        ),
        Figure::new(
            "limited / unlimited, highest pair",
            ratios[ratios.len() - 1],
            "ratio",
            "report",
        ),
        Figure::new(
            "limited / unlimited, median of the pairs",
            median(&ratios),
            "ratio",
            "≥ 0.9",
        ),
        // What the ratio of rates tends to where the drain is bound by CPU,
        // as on two cores: it moves far less with the machine's noise.
        Figure::new(
            "CPU per job (workers + PostgreSQL), unlimited / limited, median of the pairs",
            median(&cpu_ratios),
            "ratio",
            "report",
        ),
    ])
}

/// Sleeps until `at` by the wall clock (at once if it has passed): the
/// moments a drain waits for are PostgreSQL `run_at` times.
async fn sleep_until(at: chrono::DateTime<chrono::Utc>) {
    let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
}

/// The drain of `count` no-op jobs, and its rate over the one-connection
/// reference measured around it.
pub(crate) async fn drain_beside_reference(
    target: &Target,
    count: usize,
) -> anyhow::Result<Vec<Figure>> {
    let (drained, reference) = reference::bracket(target, 1, async || {
        drain(target, count, &DrainSetup::default()).await
    })
    .await?;
    let mut figures = drained.figures;
    figures.extend(reference.figures(1));
    figures.push(Figure::new(
        "drained / reference",
        drained.jobs_per_second / reference.mean().per_second,
        "ratio",
        "≥ 5",
    ));
    Ok(figures)
}

/// Queues `count` no-op jobs as `setup` says, then lets two workers drain
/// them.
pub(crate) async fn drain(
    target: &Target,
    count: usize,
    setup: &DrainSetup,
) -> anyhow::Result<Drained> {
    let (mut deployment, module) = warm_deployment(target, 2, cores(), "noop").await?;
    if let Some(limits) = &setup.limits {
        deployment.client.put_queue("default", limits).await?;
    }
    if setup.expired_jobs > 0 {
        operations::insert_expired(deployment.store(), &module, setup.expired_jobs).await?;
        // As a table that has held them for days would be: vacuumed, so
        // autovacuum's pass over the fresh rows does not run during the drain.
        deployment.store().vacuum_jobs().await?;
    }
    let warmup = 8;
    for _ in 0..warmup {
        deployment.client.submit(&job(&module)).await?;
    }
    wait_succeeded(deployment.store(), warmup, "warming up").await?;

    // Every job falls due at the same moment, so the drain starts with the
    // whole backlog in place and the workers already warm.
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let mut remaining = count;
    while remaining > 0 {
        let size = remaining.min(1000);
        let jobs = vec![
            SubmitJob {
                run_at: Some(run_at),
                ..job(&module)
            };
            size
        ];
        deployment
            .client
            .submit_batch(&SubmitBatch { jobs })
            .await?;
        remaining -= size;
    }
    // The counts start just before the jobs fall due, so that the idle
    // workers' polls meanwhile (every 100 ms for a limited queue, every
    // second otherwise) are not counted as the drain's.
    sleep_until(run_at - chrono::Duration::milliseconds(100)).await;
    let (commits_before, wal_before, calls_before, statements_before) = (
        deployment.store().commits().await?,
        deployment.store().wal_bytes_written().await?,
        WorkerCalls::read(&deployment).await?,
        deployment.store().statements_run().await,
    );
    // Nothing starts before the jobs fall due: the pruner's rate is
    // measured over the drain itself.
    sleep_until(run_at).await;
    let expired_before = operations::expired_left(deployment.store()).await?;
    let (api_before, workers_before, servers_before) = (
        deployment.api_usage(),
        deployment.workers_usage(),
        Servers::read(),
    );
    let redis_before = usage::redis_commands(&target.redis_url).await?;
    let drain_started = Instant::now();
    wait_succeeded(deployment.store(), warmup + count, "draining").await?;
    // The kernel's high-water mark over each worker's life (its warm-up
    // too): a sample every 100 ms missed short peaks, and read 0 when the
    // drain was shorter than one.
    let peak_rss_bytes = deployment
        .worker_peak_rss_bytes()
        .into_iter()
        .max()
        .context("the workers' peak memory")?;
    let drained_s = deployment
        .store()
        .drained_seconds_after(run_at)
        .await?
        .context("no job was drained")?;
    let api = deployment.api_usage().since(api_before);
    let workers = deployment.workers_usage().since(workers_before);
    let (postgres, redis) = Servers::read().since(&servers_before);
    let redis_calls = redis_commands_since(target, redis_before).await?;
    let calls = WorkerCalls::read(&deployment)
        .await?
        .since(&calls_before)
        .per_job(count);
    let pruning = if setup.expired_jobs > 0 {
        let while_draining = (expired_before - operations::expired_left(deployment.store()).await?)
            as f64
            / drain_started.elapsed().as_secs_f64();
        let alone = operations::prune_rate_alone(deployment.store()).await?;
        Some(PruneRates {
            while_draining,
            alone,
        })
    } else {
        None
    };
    deployment.stop_workers().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let commits = deployment.store().commits().await? - commits_before;
    let wal = deployment.store().wal_bytes_written().await? - wal_before;
    let statements = deployment.store().statements_run().await;
    let table_bytes_per_job = deployment.store().jobs_table_bytes().await? as f64
        / deployment.store().count_jobs().await?.max(1) as f64;
    let peak_mib = peak_rss_bytes as f64 / f64::from(1 << 20);
    deployment.stop().await?;
    let mut figures = vec![
        Figure::new("drained", count as f64 / drained_s, "jobs/s", "report"),
        Figure::new(
            "PostgreSQL commits per job",
            commits as f64 / count as f64,
            "commits",
            "≤ 0.1",
        ),
        Figure::new(
            "WAL bytes per job",
            wal as f64 / count as f64,
            "bytes",
            "report",
        ),
        Figure::new(
            "jobs table bytes per job, after the drain",
            table_bytes_per_job,
            "bytes",
            "report",
        ),
    ];
    // Every statement of the database in the window: the workers', and the
    // benchmark's own progress polls (a few dozen).
    if let (Some(before), Some(after)) = (statements_before, statements) {
        figures.push(Figure::new(
            "PostgreSQL statements per job",
            (after - before) as f64 / count as f64,
            "statements",
            "report",
        ));
    }
    figures.extend([
        Figure::new(
            "worker database calls per job",
            calls.all,
            "calls",
            "report",
        ),
        Figure::new(
            "Redis commands per job",
            redis_calls as f64 / count as f64,
            "commands",
            "report",
        ),
        Figure::new("worker peak RSS", peak_mib, "MiB", "≤ 150"),
        Figure::new(
            "context switches per job, API + workers",
            (api.switches + workers.switches) as f64 / count as f64,
            "switches",
            "≤ 0.5",
        ),
    ]);
    figures.extend(cpu_budget(
        count,
        "job",
        &[
            ("workers'", workers),
            ("API", api),
            ("PostgreSQL", postgres),
            ("Redis", redis),
        ],
    ));
    Ok(Drained {
        figures,
        jobs_per_second: count as f64 / drained_s,
        commits_per_job: commits as f64 / count as f64,
        calls_per_job: calls,
        cpu_micros_per_job: CpuPerJob {
            workers: workers.cpu_micros_per(count),
            postgres: postgres.cpu_micros_per(count),
        },
        pruning,
    })
}
