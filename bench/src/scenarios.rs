//! The scenarios: which runs each one ([`run`]), what they share (jobs,
//! progress, waiting, CPU budgets), and the latency and CPU-bound ones.
//! Submissions are in submissions.rs, drains in drains.rs, the rest in a
//! file each. Each returns the figures of one run.

use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use uuid::Uuid;

use taskflow::api::types::{SubmitBatch, SubmitJob};
use taskflow::job::JobState;
use taskflow::store::Store;
use taskflow_testkit::percentile;

use super::cluster::{Deployment, Target};
use super::drains::{drain_beside_reference, drain_limited};
use super::submissions::{submit, submit_batch};
use super::usage::{self, Usage};
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

/// Redis's commands since it had run `before` of them.
pub(crate) async fn redis_commands_since(target: &Target, before: u64) -> anyhow::Result<u64> {
    usage::redis_commands(&target.redis_url)
        .await?
        .checked_sub(before)
        .context("Redis's command counts went back during the scenario: was it restarted?")
}

/// CPU time per unit of work of each process that took part, and of all of
/// them together. Whatever the machine's speed, the work cannot go faster
/// than its [`cores`] seconds of CPU a second allow at that cost.
pub(crate) fn cpu_budget(count: usize, unit: &str, parts: &[(&str, Usage)]) -> Vec<Figure> {
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

/// Enqueue-to-start latency ([`enqueue_to_start`]), and its p50 in units of
/// the time one INSERT + COMMIT takes in the one-connection reference
/// measured around it. The span holds the job insert's commit (`created_at`
/// is its transaction's start) and then the wake-up and the claim, and this
/// kind of machine's commit time drifts within minutes; the ratio shows how
/// much of a drift in the latency the commits explain.
async fn latency(target: &Target, count: usize) -> anyhow::Result<Vec<Figure>> {
    let (latencies, reference) =
        reference::bracket(target, 1, async || enqueue_to_start(target, count).await).await?;
    let p50 = percentile(&latencies, 50.0);
    let [before, after] = [&reference.before, &reference.after].map(|end| 1000.0 / end.per_second);
    let commit_ms = f64::midpoint(before, after);
    let mut figures = vec![
        Figure::new("enqueue→start p50", p50, "ms", "≤ 1.5"),
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
    ];
    figures.extend(reference.figures(1));
    figures.push(Figure::new(
        "enqueue→start p50 / reference time per commit",
        p50 / commit_ms,
        "ratio",
        "report",
    ));
    Ok(figures)
}

/// Submits `count` jobs at 200 a second, each on its own schedule (an open
/// loop: a slow answer does not delay the next submission), and measures
/// from each job's insert to the start of its first attempt. Milliseconds,
/// sorted.
async fn enqueue_to_start(target: &Target, count: usize) -> anyhow::Result<Vec<f64>> {
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
    Ok(latencies)
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
