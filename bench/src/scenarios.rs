//! The scenarios. Each returns the figures of one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use uuid::Uuid;

use taskflow::api::types::{PutQueue, RateBody, SubmitBatch, SubmitJob};
use taskflow::client::{Client, ClientError};
use taskflow::job::JobState;
use taskflow::store::Store;
use taskflow_testkit::percentile;

use super::cluster::{Deployment, Target};
use super::usage::{self, Servers, Usage};
use super::{Figure, Scenario};
use super::{in_process, operations, reference, waiting};

/// Runs one scenario once.
pub async fn run(scenario: Scenario, target: &Target, scale: f64) -> anyhow::Result<Vec<Figure>> {
    let scaled = |n: usize| ((n as f64 * scale).round() as usize).max(1);
    match scenario {
        Scenario::All => unreachable!("expanded by the caller"),
        Scenario::Submit => Ok(submit(target, scaled(20_000), 1).await?.figures),
        Scenario::SubmitConcurrent => Ok(submit(target, scaled(20_000), 32).await?.figures),
        Scenario::SubmitBatch => submit_batch(target, scaled(100)).await,
        Scenario::Drain => drain_beside_reference(target, scaled(20_000)).await,
        Scenario::DrainLimited => drain_limited(target, scaled(20_000)).await,
        Scenario::Latency => latency(target, scaled(4_000)).await,
        Scenario::Sandbox => in_process::sandbox(target, scaled(20_000)).await,
        Scenario::Cache => in_process::cache(target).await,
        Scenario::Cpu => cpu(target, scaled(200)).await,
        Scenario::Http => super::http::http(target, scaled(2_000), scaled(2_000)).await,
        Scenario::ListQueues => operations::list_queues(target, scaled(10_000_000)).await,
        Scenario::LongPoll => waiting::long_poll(target, scaled(200), scaled(1_000)).await,
        Scenario::PruneDrain => {
            operations::prune_while_draining(target, scaled(20_000), scaled(1_000_000)).await
        }
        Scenario::Fleet => super::fleet::fleet(target, scaled(100), scaled(20_000)).await,
        Scenario::Network => super::network::network(target, scaled(20_000), scaled(1_000)).await,
    }
}

pub(crate) fn job(module: &str) -> SubmitJob {
    SubmitJob {
        module: module.to_owned(),
        input: Some(json!({}).into()),
        ..SubmitJob::default()
    }
}

pub(crate) fn progress(length: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(length as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} {{per_sec}}"))
            .expect("a valid template"),
    );
    bar
}

/// Waits until `count` jobs of queue `default` (where the scenarios submit)
/// have succeeded, read from the queue counters (one statement, no scan), so
/// polling every 20 ms costs the drain next to nothing however many jobs the tables hold.
pub(crate) async fn wait_succeeded(store: &Store, count: usize, what: &str) -> anyhow::Result<()> {
    let bar = progress(count, what);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = store.job_counts(Some("default")).await?;
        let done: u64 = counts
            .values()
            .map(|jobs| jobs.get(JobState::Succeeded))
            .sum();
        bar.set_position(done as u64);
        if done as usize >= count {
            bar.finish_and_clear();
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: only {done} of {count} jobs succeeded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `clients` clients at once, each making its share of `requests`
/// calls of `request` and moving `bar` by `step` after each, and returns how
/// long they took together.
///
/// Each client is a thread of its own with its own single-threaded runtime
/// and connection, as separate client programs would be. On the benchmark's
/// shared multi-threaded runtime every response hopped between its threads,
/// which cost the sequential client a tenth of its rate (docs/benchmarks.md).
async fn run_clients<F, Fut, T>(
    deployment: &Deployment,
    clients: usize,
    requests: usize,
    (bar, step): (&ProgressBar, u64),
    request: F,
) -> anyhow::Result<Duration>
where
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (api, request, bar) = (deployment.new_client(), request.clone(), bar.clone());
            let share = requests / clients + usize::from(client < requests % clients);
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async {
                        for _ in 0..share {
                            request(api.clone()).await?;
                            bar.inc(step);
                        }
                        anyhow::Ok(())
                    })
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        threads.into_iter().try_for_each(|thread| {
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
    .await??;
    Ok(started.elapsed())
}

/// Submissions' figures, and their rate and reference for comparisons.
pub(crate) struct Submitted {
    pub figures: Vec<Figure>,
    pub jobs_per_second: f64,
    /// One-row INSERT + COMMIT per second from as many connections.
    pub reference_per_second: f64,
}

/// `count` single-job submissions from `clients` concurrent clients, beside
/// the reference of as many connections, and what the API spent on each.
pub(crate) async fn submit(
    target: &Target,
    count: usize,
    clients: usize,
) -> anyhow::Result<Submitted> {
    let reference = reference::inserts(target, clients).await?;
    let deployment = Deployment::start(target).await?;
    let module = deployment.upload("noop").await?;
    let bar = progress(count, "submitting");
    let submission = job(&module);
    let job = Arc::new(submission.clone());
    let (before, servers_before, client_before) =
        (deployment.api_usage(), Servers::read(), usage::own());
    let redis_before = usage::redis_commands(&target.redis_url).await?;
    let elapsed = run_clients(&deployment, clients, count, (&bar, 1), move |api| {
        let job = job.clone();
        async move { api.submit(&job).await }
    })
    .await?;
    let api = deployment.api_usage().since(before);
    let (postgres, redis) = Servers::read().since(&servers_before);
    let client = usage::own().since(client_before);
    let redis_calls = redis_commands_since(target, redis_before).await?;
    let rate = count as f64 / elapsed.as_secs_f64();
    bar.finish_and_clear();
    let without_http = if clients == 1 {
        Some(reference::store_submissions(deployment.store(), &submission).await?)
    } else {
        None
    };
    deployment.stop().await?;
    let (ratio_target, switches_target) = if clients == 1 {
        ("≥ 0.75", "≤ 2")
    } else {
        ("≥ 1.0", "report")
    };
    let mut figures = vec![
        Figure::new("submitted", rate, "jobs/s", "report"),
        Figure::new(
            format!(
                "reference: one-row INSERT + COMMIT, {clients} connection{}",
                if clients == 1 { "" } else { "s" }
            ),
            reference.per_second,
            "tps",
            "report",
        ),
        Figure::new(
            "submitted / reference",
            rate / reference.per_second,
            "ratio",
            ratio_target,
        ),
        Figure::new(
            "reference: PostgreSQL CPU per INSERT + COMMIT",
            reference.postgres_cpu_micros,
            "µs",
            "report",
        ),
        Figure::new(
            "API context switches per request",
            api.switches_per(count),
            "switches",
            switches_target,
        ),
        Figure::new(
            "Redis commands per request",
            redis_calls as f64 / count as f64,
            "commands",
            "report",
        ),
    ];
    if let Some(without_http) = without_http {
        figures.extend([
            Figure::new(
                "the same jobs straight through the store, no HTTP",
                without_http,
                "jobs/s",
                "report",
            ),
            Figure::new(
                "store alone / reference",
                without_http / reference.per_second,
                "ratio",
                "report",
            ),
            Figure::new(
                "submitted / store alone",
                rate / without_http,
                "ratio",
                "report",
            ),
        ]);
    }
    figures.extend(cpu_budget(
        count,
        "request",
        &[
            ("API", api),
            ("PostgreSQL", postgres),
            ("Redis", redis),
            ("client", client),
        ],
    ));
    Ok(Submitted {
        figures,
        jobs_per_second: rate,
        reference_per_second: reference.per_second,
    })
}

/// Redis's commands since it had run `before` of them.
async fn redis_commands_since(target: &Target, before: u64) -> anyhow::Result<u64> {
    usage::redis_commands(&target.redis_url)
        .await?
        .checked_sub(before)
        .context("Redis's command counts went back during the scenario: was it restarted?")
}

/// CPU time per unit of work of each process that took part, and of all of
/// them together. Whatever the machine's speed, the work cannot go faster
/// than its [`cores`] seconds of CPU a second allow at that cost.
fn cpu_budget(count: usize, unit: &str, parts: &[(&str, Usage)]) -> Vec<Figure> {
    let mut figures: Vec<Figure> = parts
        .iter()
        .map(|(who, usage)| {
            Figure::new(
                format!("{who} CPU per {unit}"),
                usage.cpu_micros_per(count),
                "µs",
                "report",
            )
        })
        .collect();
    let total: f64 = figures.iter().map(|figure| figure.value).sum();
    figures.push(Figure::new(
        format!("CPU per {unit}, all of them"),
        total,
        "µs",
        "report",
    ));
    figures.push(Figure::new(
        format!("{unit}s/s the machine's CPU allows at that"),
        cores() as f64 * 1e6 / total,
        "/s",
        "report",
    ));
    figures
}

/// The machine's cores.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `requests` batch submissions of 1,000 jobs each: from one client, one
/// after another, then from two clients at once (one per core).
async fn submit_batch(target: &Target, requests: usize) -> anyhow::Result<Vec<Figure>> {
    let deployment = Deployment::start(target).await?;
    let module = deployment.upload("noop").await?;
    let batch = Arc::new(SubmitBatch {
        jobs: vec![job(&module); 1000],
    });
    let mut rates = Vec::new();
    for clients in [1, 2] {
        let bar = progress(
            requests * 1000,
            &format!("submitting ({clients} client(s))"),
        );
        let batch = batch.clone();
        let elapsed = run_clients(&deployment, clients, requests, (&bar, 1000), move |api| {
            let batch = batch.clone();
            async move { api.submit_batch(&batch).await }
        })
        .await?;
        rates.push((requests * 1000) as f64 / elapsed.as_secs_f64());
        bar.finish_and_clear();
    }
    deployment.stop().await?;
    Ok(vec![
        Figure::new("submitted, 1 client", rates[0], "jobs/s", "≥ 100000"),
        Figure::new("submitted, 2 clients", rates[1], "jobs/s", "≥ 100000"),
    ])
}

/// Starts the API and `workers` workers, each running `concurrency` jobs at
/// once, uploads `plugin`, and returns once every worker is up.
pub(crate) async fn warm_deployment(
    target: &Target,
    workers: usize,
    concurrency: usize,
    plugin: &str,
) -> anyhow::Result<(Deployment, String)> {
    let mut deployment = Deployment::start(target).await?;
    let module = deployment.upload(plugin).await?;
    for _ in 0..workers {
        deployment.start_worker(concurrency)?;
    }
    deployment.wait_for_workers().await?;
    Ok((deployment, module))
}

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
    /// The workers' store calls per drained job.
    pub calls_per_job: f64,
    /// The workers' claims per drained job.
    pub claims_per_job: f64,
    /// How fast the pruner deleted [`DrainSetup::expired_jobs`].
    pub pruning: Option<PruneRates>,
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
        rate: Some(RateBody {
            limit: 10_000_000,
            period: "1s".into(),
        }),
        ..PutQueue::default()
    }
}

/// How many pairs of drains (without limits, then with) the limited drain
/// runs.
const LIMITED_DRAIN_PAIRS: usize = 5;

/// Drains without limits and with [`limits_far_above_the_drain`],
/// alternating, [`LIMITED_DRAIN_PAIRS`] times, and reports the median of
/// the pairs' ratios (each pair ran back to back, so a machine whose speed
/// drifts between pairs, as shared machines' does by tens of percent within
/// minutes, moves both sides of a ratio alike), the lowest and highest
/// ratio, the best rate of each side, and the machine-independent counts
/// of the last pair.
async fn drain_limited(target: &Target, count: usize) -> anyhow::Result<Vec<Figure>> {
    let mut unlimited = Vec::new();
    let mut limited = Vec::new();
    let mut last = None;
    for _ in 0..LIMITED_DRAIN_PAIRS {
        let without = drain(target, count, &DrainSetup::default()).await?;
        unlimited.push(without.jobs_per_second);
        let limited_setup = DrainSetup {
            limits: Some(limits_far_above_the_drain()),
            ..DrainSetup::default()
        };
        let with_limits = drain(target, count, &limited_setup).await?;
        limited.push(with_limits.jobs_per_second);
        last = Some((without, with_limits));
    }
    let mut ratios: Vec<f64> = limited.iter().zip(&unlimited).map(|(l, u)| l / u).collect();
    ratios.sort_by(f64::total_cmp);
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
            without.calls_per_job,
            "calls",
            "report",
        ),
        Figure::new(
            "worker database calls per job, limited",
            with_limits.calls_per_job,
            "calls",
            "report",
        ),
        Figure::new(
            "worker claims per job, no limits",
            without.claims_per_job,
            "calls",
            "report",
        ),
        Figure::new(
            "worker claims per job, limited",
            with_limits.claims_per_job,
            "calls",
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
            percentile(&ratios, 50.0),
            "ratio",
            "≥ 0.9",
        ),
    ])
}

/// The drain of `count` no-op jobs, and its rate over the one-connection
/// reference measured just before.
async fn drain_beside_reference(target: &Target, count: usize) -> anyhow::Result<Vec<Figure>> {
    let reference = reference::inserts(target, 1).await?;
    let drained = drain(target, count, &DrainSetup::default()).await?;
    let mut figures = drained.figures;
    figures.extend([
        Figure::new(
            "reference: one-row INSERT + COMMIT, 1 connection",
            reference.per_second,
            "tps",
            "report",
        ),
        Figure::new(
            "drained / reference",
            drained.jobs_per_second / reference.per_second,
            "ratio",
            "≥ 5",
        ),
    ]);
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
    let (commits_before, calls_before, claims_before, statements_before) = (
        deployment.store().commits().await?,
        deployment.worker_db_calls().await?,
        deployment.worker_db_calls_of("claim").await?,
        deployment.store().statements_run().await,
    );
    // Nothing starts before the jobs fall due: the pruner's rate is
    // measured over the drain itself.
    let until_due = (run_at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_due).await;
    let expired_before = operations::expired_left(deployment.store()).await?;
    let (api_before, workers_before, servers_before) = (
        deployment.api_usage(),
        deployment.workers_usage(),
        Servers::read(),
    );
    let redis_before = usage::redis_commands(&target.redis_url).await?;
    let drain_started = Instant::now();
    let mut peak_rss_bytes = 0;
    {
        let wait = wait_succeeded(deployment.store(), warmup + count, "draining");
        tokio::pin!(wait);
        loop {
            tokio::select! {
                result = &mut wait => { result?; break; }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let rss = deployment.worker_rss_bytes().into_iter().max().unwrap_or(0);
                    peak_rss_bytes = peak_rss_bytes.max(rss);
                }
            }
        }
    }
    let drained_s = deployment
        .store()
        .drained_seconds_after(run_at)
        .await?
        .context("no job was drained")?;
    let api = deployment.api_usage().since(api_before);
    let workers = deployment.workers_usage().since(workers_before);
    let (postgres, redis) = Servers::read().since(&servers_before);
    let redis_calls = redis_commands_since(target, redis_before).await?;
    let calls = deployment.worker_db_calls().await? - calls_before;
    let claims = deployment.worker_db_calls_of("claim").await? - claims_before;
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
    let statements = deployment.store().statements_run().await;
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
            calls as f64 / count as f64,
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
        calls_per_job: calls as f64 / count as f64,
        claims_per_job: claims as f64 / count as f64,
        pruning,
    })
}

/// Submits `count` jobs at 200 a second, each on its own schedule (an open
/// loop: a slow answer does not delay the next submission), and measures
/// from each job's insert to the start of its first attempt.
async fn latency(target: &Target, count: usize) -> anyhow::Result<Vec<Figure>> {
    let (deployment, module) = warm_deployment(target, 2, cores(), "noop").await?;
    for _ in 0..8 {
        deployment.client.submit(&job(&module)).await?;
    }
    wait_succeeded(deployment.store(), 8, "warming up").await?;
    let bar = progress(count, "submitting at 200/s");
    let started = tokio::time::Instant::now();
    let mut submissions = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(started + Duration::from_millis(5 * i as u64)).await;
        let (api, module, bar) = (deployment.client.clone(), module.clone(), bar.clone());
        submissions.push(tokio::spawn(async move {
            let submitted = api.submit(&job(&module)).await;
            bar.inc(1);
            submitted.map(|s| s.job.id)
        }));
    }
    let mut ids: Vec<Uuid> = Vec::with_capacity(count);
    for submission in submissions {
        ids.push(submission.await??);
    }
    bar.finish_and_clear();
    wait_succeeded(deployment.store(), 8 + count, "finishing").await?;
    let mut latencies: Vec<f64> = deployment
        .store()
        .job_times(&ids)
        .await?
        .into_iter()
        .filter_map(|times| {
            let started = times.attempted_at?;
            Some((started - times.created_at).as_seconds_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    deployment.stop().await?;
    Ok(vec![
        Figure::new(
            "enqueue→start p50",
            percentile(&latencies, 50.0),
            "ms",
            "≤ 1.5",
        ),
        Figure::new(
            "enqueue→start p95",
            percentile(&latencies, 95.0),
            "ms",
            "≤ 4",
        ),
        Figure::new(
            "enqueue→start p99",
            percentile(&latencies, 99.0),
            "ms",
            "≤ 8",
        ),
    ])
}

/// `count` CPU-bound jobs on one single-slot worker, then on two.
async fn cpu(target: &Target, count: usize) -> anyhow::Result<Vec<Figure>> {
    let (mut rates, mut durations) = (Vec::new(), Vec::new());
    for workers in [1, 2] {
        let (deployment, module) = warm_deployment(target, workers, 1, "mandelbrot").await?;
        let render =
            json!({"width": 160, "height": 160, "max_iterations": 2000, "format": "summary"});
        deployment
            .client
            .submit(&SubmitJob {
                input: Some(render.clone().into()),
                ..job(&module)
            })
            .await?;
        wait_succeeded(deployment.store(), 1, "warming up").await?;
        let jobs = vec![
            SubmitJob {
                input: Some(render.into()),
                ..job(&module)
            };
            count
        ];
        deployment
            .client
            .submit_batch(&SubmitBatch { jobs })
            .await?;
        wait_succeeded(
            deployment.store(),
            1 + count,
            &format!("{workers} worker(s)"),
        )
        .await?;
        // From the first attempt's start to the last one's end, by
        // PostgreSQL's clock: the workers' throughput, not the client's.
        let busy_s = deployment
            .store()
            .busy_seconds_after_warm_up()
            .await?
            .context("no job finished after the warm-up")?;
        rates.push(count as f64 / busy_s);
        let mean_ms = deployment
            .store()
            .mean_attempt_ms()
            .await?
            .context("no attempt was recorded")?;
        durations.push(mean_ms);
        deployment.stop().await?;
    }
    Ok(vec![
        Figure::new("1 worker", rates[0], "jobs/s", "report"),
        Figure::new("2 workers", rates[1], "jobs/s", "report"),
        Figure::new("scaling", rates[1] / rates[0], "×", "≥ 1.8"),
        Figure::new("mean attempt, 1 worker", durations[0], "ms", "report"),
        Figure::new("mean attempt, 2 workers", durations[1], "ms", "report"),
    ])
}
