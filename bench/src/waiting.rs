//! Clients waiting on jobs (`GET /v1/jobs/{id}?wait=`, api/jobs.rs
//! `get_one`): how soon a waiting client hears that its job finished, and
//! what a thousand waiting clients cost the API.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde_json::json;
use taskflow::api::types::{SubmitBatch, SubmitJob};
use taskflow::job::JobState;
use taskflow_testkit::percentile;
use uuid::Uuid;

use super::Figure;
use super::cluster::{Deployment, Target};
use super::scenarios::{job, wait_succeeded, warm_deployment};

/// How long each measured job runs: long enough for its client to be
/// waiting before it finishes, short enough for hundreds in seconds.
const JOB_MS: u64 = 50;

/// Latency over `samples` jobs, each waited on by its own request, then the
/// API's memory with `waiters` requests waiting at once.
pub(crate) async fn long_poll(
    target: &Target,
    samples: usize,
    waiters: usize,
) -> anyhow::Result<Vec<Figure>> {
    let (deployment, module) = warm_deployment(target, 1, 2, "misbehave").await?;
    for _ in 0..8 {
        deployment.client.submit(&sleeping(&module)).await?;
    }
    wait_succeeded(deployment.store(), 8, "warming up").await?;
    let mut latencies = finish_to_answer(&deployment, &module, samples).await?;
    latencies.sort_by(f64::total_cmp);
    let memory = memory_of_waiting(&deployment, &module, waiters).await?;
    deployment.stop().await?;
    Ok(vec![
        Figure::new(
            "a job's finish → its waiting client's answer, p50",
            percentile(&latencies, 50.0),
            "ms",
            "≤ 5",
        ),
        Figure::new(
            "a job's finish → its waiting client's answer, p99",
            percentile(&latencies, 99.0),
            "ms",
            "report",
        ),
        Figure::new(
            "API memory added by the waiting clients",
            memory / f64::from(1 << 20),
            "MiB",
            "≤ 64 for 1,000",
        ),
        Figure::new("waiting clients", waiters as f64, "clients", "report"),
    ])
}

/// Milliseconds from each job's `finished_at` (PostgreSQL's clock, taken
/// before the finish commits, so the figure errs high) to the moment its
/// waiting request answered (this machine's clock), one job at a time, so
/// the figure is the path's and not a queue's: the job runs [`JOB_MS`],
/// and its client waits from the moment it is submitted.
async fn finish_to_answer(
    deployment: &Deployment,
    module: &str,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let id = deployment.client.submit(&sleeping(module)).await?.job.id;
        let job = deployment
            .client
            .get_job_when_ended(id, Duration::from_secs(30))
            .await?;
        let answered_at = Utc::now();
        anyhow::ensure!(
            job.state == JobState::Succeeded,
            "job {} is {}",
            job.id,
            job.state
        );
        let finished_at = job.finished_at.context("a succeeded job has finished_at")?;
        latencies.push((answered_at - finished_at).as_seconds_f64() * 1000.0);
    }
    Ok(latencies)
}

fn sleeping(module: &str) -> SubmitJob {
    SubmitJob {
        input: Some(json!({"mode": "sleep", "ms": JOB_MS}).into()),
        ..job(module)
    }
}

/// Bytes the API's resident memory grew by with `waiters` requests waiting
/// on jobs that do not end meanwhile.
async fn memory_of_waiting(
    deployment: &Deployment,
    module: &str,
    waiters: usize,
) -> anyhow::Result<f64> {
    let far = Utc::now() + chrono::Duration::hours(1);
    let mut ids = Vec::with_capacity(waiters);
    while ids.len() < waiters {
        let round = (waiters - ids.len()).min(1000);
        ids.extend(submit_due_at(deployment, module, round, far).await?);
    }
    let before = deployment.api_rss_bytes().context("the API's memory")?;
    let client = deployment.new_client();
    let waiting: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let client = client.clone();
            tokio::spawn(
                async move { client.get_job_when_ended(id, Duration::from_secs(60)).await },
            )
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while deployment
        .api_gauge("taskflow_api_waiting_requests")
        .await?
        < waiters as f64
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{waiters} requests were not all waiting within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = deployment.api_rss_bytes().context("the API's memory")?;
    for request in waiting {
        request.abort();
    }
    Ok(during.saturating_sub(before) as f64)
}

async fn submit_due_at(
    deployment: &Deployment,
    module: &str,
    count: usize,
    run_at: chrono::DateTime<Utc>,
) -> anyhow::Result<Vec<Uuid>> {
    let jobs = vec![
        SubmitJob {
            run_at: Some(run_at),
            ..job(module)
        };
        count
    ];
    let submitted = deployment
        .client
        .submit_batch(&SubmitBatch { jobs })
        .await?;
    Ok(submitted.jobs.into_iter().map(|entry| entry.id).collect())
}
