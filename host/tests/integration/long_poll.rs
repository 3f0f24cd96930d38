//! `GET /v1/jobs/{id}?wait=`: the answer comes when the job ends (worker,
//! cancel), or at the deadline with the job as it is; bad waits are 400s
//! naming the field (api/jobs.rs `get_one`, lease/endings.rs).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use taskflow::api::types::{JobView, SubmitJob};
use taskflow::job::JobState;

use crate::support::{TestApp, assert_api_error, eventually};

/// Far longer than any job here takes: an answer well before it came from
/// the job's end, not from the deadline.
const LONG_WAIT: &str = "50s";

async fn get_waiting(app: &TestApp, id: uuid::Uuid, wait: &str) -> (JobView, Duration) {
    let started = Instant::now();
    let (status, body) = app.get_json(&format!("/v1/jobs/{id}?wait={wait}")).await;
    assert_eq!(status, 200, "{body}");
    (
        serde_json::from_value(body).expect("a job"),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_waiting_read_answers_when_a_worker_finishes_the_job() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let job = app
        .submit_with(SubmitJob::new(&module, json!({"mode": "sleep", "ms": 300})))
        .await;
    let (ended, took) = get_waiting(&app, job.id, LONG_WAIT).await;
    assert_eq!(ended.state, JobState::Succeeded);
    assert!(took < Duration::from_secs(25), "answered after {took:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_wait_begun_while_the_worker_publishes_to_nobody_still_answers_within_seconds() {
    let (app, module) = TestApp::start_running("misbehave").await;
    // A job that ends while nobody waits (watched through PostgreSQL, not
    // by waiting): the worker's announcer finds no subscriber and pauses
    // (lease/endings.rs, `UNHEARD_PAUSE`).
    let unwatched = app.submit(&module, json!({"mode": "succeed"})).await.id;
    eventually(Duration::from_secs(20), || async {
        let job = app.store().get_job(unwatched).await.unwrap()?;
        job.job.state.is_final().then_some(())
    })
    .await;
    // A wait begins and its job ends inside that pause: the ending is not
    // published, and the watcher's catch-up answers it instead of the
    // deadline.
    let job = app
        .submit_with(SubmitJob::new(&module, json!({"mode": "sleep", "ms": 100})))
        .await;
    let (ended, took) = get_waiting(&app, job.id, LONG_WAIT).await;
    assert_eq!(ended.state, JobState::Succeeded);
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_cancel_answers_a_waiting_read_at_once() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let job = app.submit(&module, json!({"name": "x"})).await;
    let waiting = {
        let url = format!("{}/v1/jobs/{}?wait={LONG_WAIT}", app.url, job.id);
        tokio::spawn(async move {
            let started = Instant::now();
            let job: JobView = reqwest::get(url)
                .await
                .expect("answer")
                .json()
                .await
                .expect("a job");
            (job, started.elapsed())
        })
    };
    // The read is waiting (no worker runs the job) when the cancel comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    app.client.cancel(job.id).await.expect("cancelled");
    let (ended, took) = waiting.await.expect("the read ends");
    assert_eq!(ended.state, JobState::Cancelled);
    assert!(took < Duration::from_secs(25), "answered after {took:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_waiting_read_of_a_job_that_does_not_end_answers_at_its_deadline() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let job = app.submit(&module, json!({"name": "x"})).await;
    let (as_it_is, took) = get_waiting(&app, job.id, "400ms").await;
    assert_eq!(as_it_is.state, JobState::Available);
    assert!(
        took >= Duration::from_millis(400),
        "answered after {took:?}"
    );
    // The client's wait gives up the same way, with the job as it is.
    let job = app
        .client
        .get_job_when_ended(job.id, Duration::from_millis(200))
        .await
        .expect("the job");
    assert_eq!(job.state, JobState::Available);
    app.finish().await;
}

#[tokio::test]
async fn a_wait_that_is_not_a_duration_or_too_long_is_refused_naming_it() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let job = app.submit(&module, json!({"name": "x"})).await;
    // The last two would overflow inside humantime (crate::duration's
    // docs); it reads the last's digits across the spaces as one number.
    for wait in [
        "soon",
        "-1s",
        "61s",
        "1h",
        "18446744073709551615s1000ms",
        "1844674407%203709551615s%201000ms",
    ] {
        let answer = app
            .get_json(&format!("/v1/jobs/{}?wait={wait}", job.id))
            .await;
        assert_api_error(
            wait,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "wait",
        );
        assert_eq!(answer.1["error"]["field"], "wait", "{wait}: {}", answer.1);
    }
    let (status, body) = app.get_json(&format!("/v1/jobs/{}?wait=0s", job.id)).await;
    assert_eq!(
        (status.as_u16(), &body["state"]),
        (200, &json!("available"))
    );
    app.finish().await;
}
