//! Two workers draining the same queue never run a job twice.

use std::collections::HashMap;

use serde_json::json;
use taskflow::api::types::{SubmitBatch, SubmitJob};
use taskflow::job::JobState;
use uuid::Uuid;

use crate::support::{TestApp, eventually};

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_racing_on_a_thousand_jobs_run_each_exactly_once() {
    let app = TestApp::start().await;
    let module = app.upload("hello").await;
    let workers = [app.spawn_worker("w1"), app.spawn_worker("w2")];
    let jobs: Vec<SubmitJob> = (0..1000)
        .map(|i| SubmitJob {
            module: module.clone(),
            input: Some(json!({"name": format!("job {i}")}).into()),
            ..Default::default()
        })
        .collect();
    app.client
        .submit_batch(&SubmitBatch { jobs })
        .await
        .unwrap();

    let pool = app.store().pool();
    eventually(std::time::Duration::from_secs(120), || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(pool)
            .await
            .unwrap();
        (done == 1000).then_some(())
    })
    .await;

    let rows: Vec<(Uuid, i32, String)> = sqlx::query_as("SELECT id, attempt, worker_id FROM jobs")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(
        rows.iter().all(|(_, attempt, _)| *attempt == 1),
        "every job was claimed once"
    );
    let attempt_rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT job_id, count(*) FROM job_attempts GROUP BY job_id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(attempt_rows.len(), 1000);
    assert!(
        attempt_rows.iter().all(|(_, count)| *count == 1),
        "every job ran exactly once"
    );
    let per_worker = rows.iter().fold(
        HashMap::<&str, usize>::new(),
        |mut counts, (_, _, worker)| {
            *counts.entry(worker.as_str()).or_default() += 1;
            counts
        },
    );
    assert_eq!(
        per_worker.len(),
        2,
        "both workers took part: {per_worker:?}"
    );
    assert!(rows.iter().all(|(id, _, _)| !id.is_nil()));
    let sample = app.client.get_job(rows[0].0).await.unwrap();
    assert_eq!(sample.state, JobState::Succeeded);
    for worker in workers {
        worker.stop().await;
    }
    app.finish().await;
}
