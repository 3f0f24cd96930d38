//! The API's read replica (`--database-read-url`) against a real streaming
//! replica: which routes read it, that a client still finds the job it
//! just created while the replica lags, and that a replica that fails (not
//! yet migrated, frozen, or down) sends reads to the primary.

use std::time::Duration;

use serde_json::json;
use taskflow::api::replica::REST_AFTER_FAILURE;
use taskflow::api::types::{JobQuery, SubmitJob};
use taskflow::job::JobState;
use taskflow_testkit::{ReplicatedPostgres, database_url};
use uuid::Uuid;

use crate::support::{TestApp, eventually, plugin};

#[tokio::test(flavor = "multi_thread")]
async fn lists_read_the_replica_while_a_client_finds_its_new_job_and_waits_read_the_primary() {
    let postgres = ReplicatedPostgres::start().expect("a primary and a replica start");
    let app = TestApp::start().await;
    let primary = database_url(postgres.primary_url(), "taskflow").unwrap();
    let replica = database_url(postgres.replica_url(), "taskflow").unwrap();
    let api = app
        .api_process(&[
            ("DATABASE_URL", primary.as_str()),
            ("TASKFLOW_DATABASE_READ_URL", replica.as_str()),
        ])
        .await;
    let client = &api.client;
    let (module, _) = client.push_module(plugin("hello")).await.unwrap();
    let job = || SubmitJob::new(module.hash.clone(), json!({"name": "replica"}));
    let listed = || async {
        let page = client.list_jobs(&JobQuery::default()).await.unwrap();
        page.jobs
            .into_iter()
            .map(|job| job.id)
            .collect::<Vec<Uuid>>()
    };

    let first = client.submit(&job()).await.unwrap().job.id;
    postgres.caught_up().await.unwrap();

    postgres.pause_replay().await.unwrap();
    let lagging = client.submit(&job()).await.unwrap().job.id;
    assert_eq!(
        client.get_job(lagging).await.unwrap().state,
        JobState::Available,
        "the replica has not got it: read from the primary"
    );
    assert!(client.attempts(lagging).await.unwrap().attempts.is_empty());
    assert_eq!(listed().await, vec![first], "the list is the replica's");

    client.cancel(first).await.unwrap();
    assert_eq!(
        client.get_job(first).await.unwrap().state,
        JobState::Available,
        "a job the replica has is read from it, a state behind"
    );
    let waited = client
        .get_job_when_ended(first, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        waited.state,
        JobState::Cancelled,
        "a wait reads the primary"
    );

    postgres.resume_replay().await.unwrap();
    eventually(Duration::from_secs(30), || async {
        (listed().await == vec![lagging, first]
            && client.get_job(first).await.unwrap().state == JobState::Cancelled)
            .then_some(())
    })
    .await;

    postgres.freeze_replica().unwrap();
    for _ in 0..2 {
        let answer = tokio::time::timeout(Duration::from_secs(30), listed())
            .await
            .expect("a frozen replica does not hold the API's reads");
        assert_eq!(answer, vec![lagging, first], "the primary answers");
    }
    assert_eq!(fallbacks(&api.url, "timed_out").await, 1);
    assert_eq!(
        fallbacks(&api.url, "resting").await,
        1,
        "after a timeout the replica is left alone"
    );
    postgres.thaw_replica().unwrap();

    tokio::time::sleep(REST_AFTER_FAILURE).await;
    postgres.stop_replica();
    assert_eq!(
        listed().await,
        vec![lagging, first],
        "with the replica down, the primary answers"
    );
    assert_eq!(fallbacks(&api.url, "failed").await, 1);
    drop(api);
    app.finish().await;
}

/// How many reads the API at `url` made on the primary for `reason`
/// (`taskflow_replica_fallbacks_total` on its `/metrics`).
async fn fallbacks(url: &str, reason: &str) -> u64 {
    let exposition = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("taskflow_replica_fallbacks_total{{reason=\"{reason}\"}} ");
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |count| count.trim().parse().unwrap())
}
