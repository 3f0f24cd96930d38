//! Outbound requests in flight when their attempt ends: cancelled, its
//! lease lost, its worker killed. Each is aborted, and the job's next
//! attempt (if any) runs elsewhere without the secret reaching a log.

use std::time::Duration;

use serde_json::json;
use taskflow::job::JobState;
use taskflow::sandbox::OutboundLimits;

use super::{SECRET, assert_secret_nowhere, fetching, start_app, until_a_request_arrives};
use crate::support::{TestServers, assert_state};

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_job_aborts_its_request_in_flight() {
    let servers = TestServers::start().await;
    let (app, worker, job) = fetching(&servers, "/slow").await;
    let started = std::time::Instant::now();
    app.client.cancel(job.id).await.unwrap();
    let job = app.wait_final(job.id).await;
    assert_state(&job, JobState::Cancelled);
    // The cancel writes the attempt's record (the worker's own is fenced
    // out); what shows the request was aborted is that the worker, which
    // waits for its attempts when stopped, stops long before the server
    // would have answered.
    worker.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the attempt ended with the cancel, not with the server's 10 s"
    );
    // The worker's fenced-out write still puts the request on that record.
    let attempts = app.attempts(job.id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_str(), "cancelled");
    let request = &attempts[0].requests[0];
    assert_eq!(
        request["url"],
        format!("http://127.0.0.1:{}/slow", servers.http.port())
    );
    assert_eq!(request["error"], "aborted", "{request}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_lease_aborts_the_request_in_flight_and_the_job_runs_again() {
    let servers = TestServers::start().await;
    let (app, worker, job) = fetching(&servers, "/slow-once").await;
    let running = app.client.get_job(job.id).await.unwrap();
    let token = running
        .lease_token
        .expect("a running job has a lease token");
    let started = std::time::Instant::now();
    app.take_over_lease(job.id, token + 1).await;
    // A stopping worker waits for its attempts; this one's ends when the
    // heartbeat finds the lease taken and the request is aborted, long
    // before the server's 10 s answer.
    worker.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the attempt ended with its lease, not with the server's answer"
    );
    app.spawn_worker("survivor");
    let job = app.wait_final(job.id).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(job.worker_id.as_deref(), Some("survivor"));
    assert_eq!(servers.seen().len(), 2, "the second attempt asked again");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_request_leaves_the_job_to_another_and_never_logs_the_secret() {
    let servers = TestServers::start().await;
    let https = format!("https://localhost:{}", servers.https.port());
    let settings = json!({
        "allowed_hosts": [https],
        "secrets": {"webhook_key": {"value": SECRET, "allowed_hosts": [https]}},
    });
    let app = start_app(&servers, OutboundLimits::default(), settings).await;
    let webhook = app.upload("webhook").await;
    let log_path = app.cache_dir.with_extension("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let ca_file = servers.ca_file.display().to_string();
    let mut doomed = app.worker_process(
        "doomed",
        &[
            ("TASKFLOW_SECRET_KEY", crate::support::TEST_SECRET_KEY),
            ("TASKFLOW_EXTRA_CA_CERTS", &ca_file),
            ("RUST_LOG", "debug"),
        ],
        log,
    );
    let input = json!({"url": format!("{https}/slow-once"), "payload": {"n": 1}});
    let job = app.submit(&webhook, input).await;
    until_a_request_arrives(&servers, Duration::from_secs(30)).await;
    doomed.kill().expect("SIGKILL the worker mid-request");
    doomed.wait().unwrap();
    app.spawn_worker("survivor");
    let job = app.wait_final(job.id).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(job.worker_id.as_deref(), Some("survivor"));
    let attempts = app.attempts(job.id).await;
    assert_eq!(attempts[0].outcome.as_str(), "lease_expired");
    assert_eq!(attempts[1].requests[0]["status"], 200);
    assert_eq!(
        servers.seen().len(),
        2,
        "the request was made again by the second attempt"
    );

    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logged.contains("doomed"),
        "the worker logged at debug level: {logged}"
    );
    assert!(
        !logged.contains(SECRET),
        "the secret reached the worker's log"
    );
    assert_secret_nowhere(&app, &[&job]).await;
    app.finish().await;
}
