//! Two workers draining the same queue never run a job twice.

use std::collections::HashMap;

use serde_json::json;
use taskflow::api::types::{SubmitBatch, SubmitJob};
use taskflow::job::JobState;
use taskflow::store::JobFilter;

use crate::support::{TestApp, eventually};

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_racing_on_a_thousand_jobs_run_each_exactly_once() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    app.spawn_worker("w1");
    app.spawn_worker("w2");
    let jobs: Vec<SubmitJob> = (0..1000)
        .map(|i| SubmitJob::new(module.clone(), json!({"name": format!("job {i}")})))
        .collect();
    app.client
        .submit_batch(&SubmitBatch { jobs })
        .await
        .unwrap();

    let store = app.store();
    eventually(std::time::Duration::from_secs(120), || async {
        let done = store.count_jobs_in(JobState::Succeeded).await.unwrap();
        (done == 1000).then_some(())
    })
    .await;

    let rows = store
        .list_jobs(&JobFilter {
            limit: 1000,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1000);
    assert!(
        rows.iter().all(|job| job.attempt == 1),
        "every job was claimed once"
    );
    let attempts = store.attempts_per_job().await.unwrap();
    assert_eq!(attempts.len(), 1000);
    assert!(
        attempts.values().all(|count| *count == 1),
        "every job ran exactly once"
    );
    let per_worker = rows
        .iter()
        .fold(HashMap::<&str, usize>::new(), |mut counts, job| {
            *counts
                .entry(job.worker_id.as_deref().unwrap_or("none"))
                .or_default() += 1;
            counts
        });
    assert_eq!(
        per_worker.len(),
        2,
        "both workers took part: {per_worker:?}"
    );
    let sample = app.client.get_job(rows[0].id).await.unwrap();
    assert_eq!(sample.state, JobState::Succeeded);
    app.finish().await;
}
