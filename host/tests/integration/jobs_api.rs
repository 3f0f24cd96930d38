//! Jobs over the REST API once submitted: running, batches and pages,
//! schedules, cancel and retry, attempts, health.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use taskflow::api::types::{JobQuery, SubmitBatch, SubmitJob};
use taskflow::client::ClientError;
use taskflow::job::JobState;
use taskflow::store::ClaimPath;

use crate::support::{
    TestApp, assert_state, failing_every_attempt, keyed, new_job, stored_module, tree,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_job_runs_and_its_output_and_log_are_stored() {
    let (app, module) = TestApp::start_running("hello").await;

    let submitted = app.submit(&module, json!({"name": "Ada"})).await;
    assert_eq!(submitted.state, JobState::Available);
    let job = app.wait_final(submitted.id).await;

    assert_state(&job, JobState::Succeeded);
    assert_eq!(tree(&job.output), Some(json!({"greeting": "Hello, Ada!"})));
    assert_eq!(tree(&job.input), Some(json!({"name": "Ada"})));
    assert_eq!(job.attempt, 1);
    assert_eq!(job.worker_id.as_deref(), Some("w1"));
    let usage = job.resource_use.expect("resource use is recorded");
    assert!(usage.fuel_consumed.unwrap() > 0);
    assert!(job.finished_at.is_some());

    let attempts = app.attempts(job.id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_str(), "succeeded");
    assert_eq!(attempts[0].worker_id, "w1");
    assert_eq!(Some(attempts[0].lease_token), job.lease_token);
    let memory = attempts[0].memory_bytes.expect("the guest's peak memory");
    assert!(
        memory >= 64 << 10,
        "at least one page of linear memory: {memory}"
    );
    let log = &attempts[0].logs[0];
    assert_eq!(log["source"], "log");
    assert_eq!(log["level"], "info");
    assert!(
        log["message"]
            .as_str()
            .unwrap()
            .contains(&format!("greeting Ada (job {}, attempt 1)", job.id))
    );

    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_inserted_in_one_transaction_and_listed_with_keyset_pagination() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let jobs: Vec<SubmitJob> = (0..5)
        .map(|i| SubmitJob {
            queue: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
            ..SubmitJob::new(module.clone(), json!({"name": format!("n{i}")}))
        })
        .collect();
    let submitted = app
        .client
        .submit_batch(&SubmitBatch { jobs })
        .await
        .unwrap()
        .jobs;
    assert_eq!(submitted.len(), 5);

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = app
            .client
            .list_jobs(&JobQuery {
                limit: Some(2),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<_> = submitted.iter().map(|s| s.id).collect();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, every job exactly once");

    let even = app
        .client
        .list_jobs(&JobQuery {
            queue: Some("even".into()),
            state: Some(JobState::Available),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(even.jobs.len(), 3);
    assert!(
        even.jobs
            .iter()
            .all(|j| j.queue == "even" && j.input.is_none())
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_scheduled_for_later_waits_for_its_time() {
    let (app, module) = TestApp::start_running("hello").await;
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let job = app
        .submit_with(SubmitJob {
            run_at: Some(run_at),
            ..SubmitJob::new(module, json!({}))
        })
        .await;
    assert_eq!(job.state, JobState::Scheduled);
    let job = app.wait_final(job.id).await;
    assert_state(&job, JobState::Succeeded);
    assert!(
        job.started_at.unwrap() >= run_at,
        "started {:?} before {run_at}",
        job.started_at
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_waiting_and_running_jobs_and_retry_requeues_them() {
    let (app, module) = TestApp::start_with_plugin("misbehave").await;

    // Waiting: no worker yet.
    let waiting = app.submit(&module, json!({"mode": "succeed"})).await;
    let cancelled = app.client.cancel(waiting.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    match app.client.cancel(waiting.id).await {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(code, "invalid_state");
        }
        other => panic!("cancelling twice must conflict, got {other:?}"),
    }

    // Running: a job that would spin for a minute.
    app.spawn_worker("w1");
    let spinning = app.spinning(&module).await;
    assert_eq!(
        app.client.cancel(spinning.id).await.unwrap().state,
        JobState::Cancelled
    );
    let attempts = app.attempts(spinning.id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_str(), "cancelled");

    // The worker notices through its lease, stops the guest and serves the next job.
    let after = app
        .run(&module, json!({"mode": "succeed", "output": {"ok": true}}))
        .await;
    assert_state(&after, JobState::Succeeded);
    assert_eq!(
        app.client.get_job(spinning.id).await.unwrap().state,
        JobState::Cancelled
    );

    // Retry brings the cancelled job back with fresh attempts.
    let requeued = app.client.retry(waiting.id).await.unwrap();
    assert_eq!(requeued.state, JobState::Available);
    let done = app.wait_final(waiting.id).await;
    assert_state(&done, JobState::Succeeded);
    match app.client.retry(waiting.id).await {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, StatusCode::CONFLICT),
        other => panic!("a succeeded job cannot be retried, got {other:?}"),
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_job_is_deleted_with_its_attempts_and_frees_its_idempotency_key() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let keyed = keyed(&module, "order-42", json!({"name": "Ada"}));
    let waiting = app.client.submit(&keyed).await.unwrap().job;
    let conflict = |result: Result<_, ClientError>| match result {
        Err(ClientError::Api {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (status, message) = conflict(app.client.delete_job(waiting.id).await);
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("available"), "{message}");

    app.spawn_worker("w1");
    let done = app.wait_final(waiting.id).await;
    assert_state(&done, JobState::Succeeded);
    assert_eq!(app.attempts(done.id).await.len(), 1);
    let deleted = app.client.delete_job(done.id).await.unwrap();
    assert_eq!((deleted.id, deleted.state), (done.id, JobState::Succeeded));
    for path in [
        format!("/v1/jobs/{}", done.id),
        format!("/v1/jobs/{}/attempts", done.id),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = conflict(app.client.delete_job(done.id).await);
    assert_eq!(status, StatusCode::NOT_FOUND);

    let again = app.client.submit(&keyed).await.unwrap();
    assert!(again.created, "the key ended with its job");
    assert_ne!(again.job.id, done.id);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let app = TestApp::start().await;
    let (_, health) = app.get_json("/healthz").await;
    assert_eq!(health["status"], "ok");
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["postgres"], "ok");
    assert_eq!(ready["redis"], "ok");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_come_in_pages_oldest_first() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let job = app
        .run_with(failing_every_attempt(&module, 5, "again"))
        .await;
    assert_state(&job, JobState::Dead);

    let mut numbers = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/jobs/{}/attempts?limit=2", job.id);
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (_, page) = app.get_json(&path).await;
        let attempts = page["attempts"].as_array().unwrap();
        assert!(attempts.len() <= 2);
        numbers.extend(attempts.iter().map(|a| a["attempt"].as_i64().unwrap()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
    let all = app.attempts(job.id).await;
    assert_eq!(all.len(), 5, "the client follows the pages");

    for query in ["limit=0", "limit=101", "cursor=abc"] {
        let response = app
            .get(&format!("/v1/jobs/{}/attempts?{query}", job.id))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    app.finish().await;
}

/// The API's revocation of a cancelled attempt lasts as long as the TTL the
/// attempt's worker was granted, though the API's own is shorter (1 s
/// here): that worker's round that writes the attempt's first key, up to
/// 5/12 of its TTL away, must still find it, or the attempt would write
/// its key and run on.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancels_revocation_lasts_the_ttl_the_workers_claim_granted() {
    let app = TestApp::start().await;
    let store = app.store();
    let job = new_job(&stored_module(store).await);
    store.insert_jobs(std::slice::from_ref(&job)).await.unwrap();
    let workers_ttl = Duration::from_secs(120);
    let claimed = store
        .claim("default", "w", 1, workers_ttl, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), 1);

    let cancelled = app.client.cancel(job.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let key = format!("lease:{}", job.id);
    assert_eq!(
        app.redis_value(&key).await,
        Some(format!("revoked:{}", claimed[0].lease_token))
    );
    let lasts = app.redis_pttl(&key).await;
    assert!(lasts > workers_ttl / 2, "the marker lasts {lasts:?}");
    app.finish().await;
}
