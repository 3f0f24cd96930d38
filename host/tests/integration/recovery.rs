//! Recovery from failures: a worker process killed mid-job, Redis losing
//! every key mid-run, a Redis Cluster failing over, and PostgreSQL
//! unreachable from a worker or the API. The Redis cases run against one
//! server and again against a private Redis Cluster.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use taskflow::api::types::SubmitJob;
use taskflow::client::ClientError;
use taskflow::config::WorkerConfig;
use taskflow::job::JobState;
use taskflow_testkit::{RedisCluster, database_url_through, server_address};
use uuid::Uuid;

use crate::support::{TcpProxy, TestApp, TestOptions, assert_state, eventually};

/// A private Redis Cluster: `masters` masters with `replicas_per_master`
/// replicas each.
async fn redis_cluster(masters: usize, replicas_per_master: usize) -> RedisCluster {
    tokio::task::spawn_blocking(move || RedisCluster::start(masters, replicas_per_master))
        .await
        .unwrap()
        .expect("a Redis Cluster starts")
}

/// Test settings with the API and workers on `cluster`.
fn on_cluster(cluster: &RedisCluster) -> TestOptions {
    TestOptions {
        redis_url: cluster.url(),
        ..TestOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_worker_process_was_killed_is_rescued_after_its_lease_expires() {
    a_killed_workers_job_is_rescued(TestOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_worker_process_was_killed_is_rescued_on_a_redis_cluster() {
    let cluster = redis_cluster(3, 0).await;
    a_killed_workers_job_is_rescued(on_cluster(&cluster)).await;
}

async fn a_killed_workers_job_is_rescued(options: TestOptions) {
    let app = TestApp::start_with(options).await;
    let module = app.upload("misbehave").await;
    let mut doomed = app.worker_process("doomed", &[], Stdio::null());
    let job = app
        .submit(&module, json!({"mode": "sleep", "ms": 2000}))
        .await;
    eventually(Duration::from_secs(30), || async {
        let job = app.client.get_job(job.id).await.unwrap();
        (job.state == JobState::Running && job.worker_id.as_deref() == Some("doomed")).then_some(())
    })
    .await;

    doomed.kill().expect("SIGKILL the worker");
    doomed.wait().unwrap();
    let killed_at = chrono::Utc::now();
    app.spawn_worker("survivor");

    let job = app.wait_final(job.id).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(job.worker_id.as_deref(), Some("survivor"));
    let attempts = app.attempts(job.id).await;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome.as_str(), "lease_expired");
    assert_eq!(attempts[0].worker_id, "doomed");
    assert!(
        attempts[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("doomed")
    );
    assert_eq!(attempts[1].outcome.as_str(), "succeeded");
    let rescue_after = (attempts[0].finished_at - killed_at)
        .to_std()
        .unwrap_or_default();
    assert!(
        rescue_after < Duration::from_secs(5),
        "rescued {rescue_after:?} after the kill; the lease TTL is 1 s"
    );
    app.finish().await;
}

/// SIGTERM drains: the worker runs the attempt it holds to its end, writes
/// its outcome and exits 0. A second SIGTERM during the drain exits at once
/// with 130, as the docs promise of "a second signal" (process managers
/// send SIGTERM again, not SIGINT).
#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_worker_finishes_its_job_first_and_a_second_signal_exits_at_once() {
    let app = TestApp::start().await;
    let module = app.upload("misbehave").await;
    let running_on = |worker: &'static str, job: Uuid| {
        let app = &app;
        async move {
            eventually(Duration::from_secs(30), || async {
                let job = app.client.get_job(job).await.unwrap();
                (job.state == JobState::Running && job.worker_id.as_deref() == Some(worker))
                    .then_some(())
            })
            .await
        }
    };

    let mut drained = app.worker_process("drained", &[], Stdio::null());
    let job = app
        .submit(&module, json!({"mode": "sleep", "ms": 1500}))
        .await;
    running_on("drained", job.id).await;
    drained.terminate();
    let status = tokio::task::spawn_blocking(move || drained.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "a drained worker exits 0");
    let job = app.client.get_job(job.id).await.unwrap();
    assert_state(&job, JobState::Succeeded);
    assert_eq!(job.worker_id.as_deref(), Some("drained"));

    let mut forced = app.worker_process("forced", &[], Stdio::null());
    let job = app
        .submit(&module, json!({"mode": "sleep", "ms": 60_000}))
        .await;
    running_on("forced", job.id).await;
    forced.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        forced.try_wait().unwrap().is_none(),
        "the first signal drains"
    );
    let signalled = Instant::now();
    forced.terminate();
    let status = loop {
        if let Some(status) = forced.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "still draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(130), "after {:?}", signalled.elapsed());
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_job_still_finishes_exactly_once_when_redis_loses_its_keys_mid_run() {
    every_job_finishes_once_through_flushes(TestOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_job_still_finishes_exactly_once_when_a_redis_cluster_loses_its_keys_mid_run() {
    let cluster = redis_cluster(3, 0).await;
    every_job_finishes_once_through_flushes(on_cluster(&cluster)).await;
}

async fn every_job_finishes_once_through_flushes(options: TestOptions) {
    let app = TestApp::start_with(options).await;
    let module = app.upload("misbehave").await;
    app.spawn_worker("w1");
    app.spawn_worker("w2");
    let ids = app
        .submit_many(&module, json!({"mode": "sleep", "ms": 15}), 200)
        .await;

    let started = Instant::now();
    let mut flushes = 0;
    while started.elapsed() < Duration::from_secs(60) {
        let done = app
            .store()
            .count_jobs_in(JobState::Succeeded)
            .await
            .unwrap();
        if done == ids.len() as i64 {
            break;
        }
        if app.flush_redis().await > 0 {
            flushes += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        flushes >= 2,
        "the run should span several flushes (had {flushes})"
    );

    let attempts: HashMap<Uuid, i64> = app.store().attempts_per_job().await.unwrap();
    for id in &ids {
        let job = app.client.get_job(*id).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "job {id}");
        assert_eq!(
            attempts.get(id),
            Some(&1),
            "job {id} ran more than once: live leases were restored, not rescued"
        );
    }
    app.finish().await;
}

/// A master of a Redis Cluster is killed while jobs run: its replica takes
/// over within seconds, and since that is shorter than a lease nothing is
/// lost, no attempt is ended, long jobs keep their leases through it,
/// wake-ups and endings still arrive afterwards (the subscriptions moved to
/// the promoted replica), and the API is ready though a node is still down.
/// Then a graceful failover hands the slot back, and wake-ups still arrive.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_cluster_failover_shorter_than_a_lease_costs_no_attempt() {
    let mut cluster = redis_cluster(3, 1).await;
    let app = TestApp::start_with(TestOptions {
        lease_ttl: Duration::from_secs(10),
        ..on_cluster(&cluster)
    })
    .await;
    let module = app.upload("misbehave").await;
    for id in ["w1", "w2"] {
        let mut config = app.worker_config(id);
        config.concurrency = Some(4);
        // Only a wake-up starts a job soon: a subscription not restored
        // after the failover shows as a job waiting an hour.
        config.poll_interval = Duration::from_secs(3600);
        app.spawn_worker_with(config);
    }
    // Jobs longer than a lease, which only heartbeats keep alive, and a
    // stream of short ones.
    let mut ids = app
        .submit_many(&module, json!({"mode": "sleep", "ms": 12_000}), 2)
        .await;
    ids.extend(
        app.submit_many(&module, json!({"mode": "sleep", "ms": 50}), 200)
            .await,
    );
    eventually(Duration::from_secs(30), || async {
        let done = app
            .store()
            .count_jobs_in(JobState::Succeeded)
            .await
            .unwrap();
        (done >= 20).then_some(())
    })
    .await;

    let killed = cluster
        .kill_master_of(&app.redis_key("epoch"))
        .expect("kill the master of TaskFlow's slot");
    tokio::task::block_in_place(|| cluster.until_healthy()).expect("a replica takes over");

    eventually(Duration::from_secs(60), || async {
        let done = app
            .store()
            .count_jobs_in(JobState::Succeeded)
            .await
            .unwrap();
        (done == ids.len() as i64).then_some(())
    })
    .await;
    let attempts: HashMap<Uuid, i64> = app.store().attempts_per_job().await.unwrap();
    for id in &ids {
        assert_eq!(
            attempts.get(id),
            Some(&1),
            "job {id} lost an attempt to the failover"
        );
    }
    // The API is ready again: the dead node holds none of TaskFlow's keys.
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    // A job submitted now starts on its wake-up, and its waiting client
    // hears of its end.
    succeeds_on_its_wake_up(&app, &module, "woken after the failover, not polled").await;

    // The old master comes back as a replica and takes over again
    // gracefully (`CLUSTER FAILOVER`): its successor stays up and drops
    // the subscriptions with an unsubscribe instead of a disconnection.
    tokio::task::block_in_place(|| {
        cluster.restart(killed)?;
        cluster.until_healthy()?;
        cluster.fail_over_gracefully(&app.redis_key("epoch"))
    })
    .expect("a graceful failover");
    succeeds_on_its_wake_up(
        &app,
        &module,
        "woken after the graceful failover, not polled",
    )
    .await;
    app.finish().await;
}

/// Submits a job of `module` and waits up to 20 s for it to succeed: with
/// an hour-long poll interval, only a wake-up starts it in time.
async fn succeeds_on_its_wake_up(app: &TestApp, module: &str, expectation: &str) {
    let job = app.submit(module, json!({"mode": "succeed"})).await;
    let job = app
        .client
        .wait(job.id, Duration::from_secs(20))
        .await
        .expect(expectation);
    assert_state(&job, JobState::Succeeded);
}

/// A dead replica holds none of TaskFlow's keys: the API stays ready and
/// maintenance keeps a leader (readiness and the elector both ask Redis,
/// and a worker that cannot reach it refuses to lead).
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_redis_cluster_replica_leaves_the_api_ready_and_a_maintenance_leader() {
    use taskflow::maintenance::elector::RESCUE;
    let mut cluster = redis_cluster(3, 1).await;
    let app = TestApp::start_with(on_cluster(&cluster)).await;
    let module = app.upload("misbehave").await;
    app.spawn_worker("w1");
    eventually(Duration::from_secs(30), || async {
        app.store().current_leader(RESCUE).await.unwrap()
    })
    .await;
    cluster.kill_a_replica().expect("kill a replica");
    // Longer than the cluster's node timeout and than a leader term.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    // A job due in a moment starts only if the leader runs the scheduler.
    let job = app
        .submit_with(SubmitJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::milliseconds(200)),
            ..SubmitJob::new(module, json!({"mode": "succeed"}))
        })
        .await;
    let job = app.wait_final(job.id).await;
    assert_state(&job, JobState::Succeeded);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outcomes_finished_while_postgres_is_unreachable_are_written_once_it_is_back() {
    let (app, module) = TestApp::start_with_plugin("misbehave").await;
    let proxy = TcpProxy::start(server_address(app.db.url()).unwrap().into()).await;
    let proxied_url = database_url_through(app.db.url(), proxy.address).unwrap();
    app.spawn_worker_via(&proxied_url, "partitioned");
    // One job first: the module imports wasi:http, so an attempt reads its
    // queue's grants (worker/grants.rs, cached) before it starts, and one
    // that met the outage below would fail `grants_unavailable` and run
    // again. The outage is for outcomes, which come after.
    let warm_up = app.submit(&module, json!({"mode": "succeed"})).await;
    assert_state(&app.wait_final(warm_up.id).await, JobState::Succeeded);
    let warm_up_attempts = app.store().count_attempts().await.unwrap();

    let ids = app
        .submit_many(&module, json!({"mode": "sleep", "ms": 400}), 6)
        .await;
    // Cut as soon as the worker has claimed jobs, before any (400 ms) job can
    // have finished: every outcome then waits out the outage.
    eventually(Duration::from_secs(30), || async {
        let running = app.store().count_jobs_in(JobState::Running).await.unwrap();
        let written = app.store().count_attempts().await.unwrap() - warm_up_attempts;
        (running > 0 && written == 0).then_some(())
    })
    .await;

    // The claimed attempts finish while the worker cannot reach PostgreSQL.
    proxy.cut().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = app.store().count_attempts().await.unwrap() - warm_up_attempts;
    proxy.restore();

    for id in &ids {
        let job = app.wait_final(*id).await;
        assert_eq!(job.state, JobState::Succeeded, "job {id}");
        assert_eq!(job.attempt, 1, "job {id} was not run again");
    }
    let attempts = app.store().count_attempts().await.unwrap() - warm_up_attempts;
    assert_eq!(attempts, ids.len() as i64);
    assert_eq!(
        written, 0,
        "outcomes finished during the outage waited for PostgreSQL"
    );
    app.finish().await;
}

/// The API's group-commit writers keep their PostgreSQL connections from
/// one submission to the next. A partition breaks them: a submission that
/// meets a broken connection must fail with a retryable error and write
/// nothing, and submissions must succeed again once PostgreSQL is back.
#[tokio::test(flavor = "multi_thread")]
async fn submissions_fail_retryably_while_postgres_is_unreachable_and_succeed_once_it_is_back() {
    let (app, module) = TestApp::start_with_plugin("noop").await;
    let proxy = TcpProxy::start(server_address(app.db.url()).unwrap().into()).await;
    let api = app
        .spawn_api_via(&database_url_through(app.db.url(), proxy.address).unwrap())
        .await;
    let job = SubmitJob::new(module, json!({}));
    let mut accepted = Vec::new();
    for _ in 0..4 {
        accepted.push(api.submit(&job).await.expect("submits").job.id);
    }

    proxy.cut().await;
    for _ in 0..3 {
        match api.submit(&job).await {
            Err(ClientError::Api { status, .. }) => assert_eq!(
                status,
                reqwest::StatusCode::SERVICE_UNAVAILABLE,
                "a submission PostgreSQL cannot take is retryable"
            ),
            other => panic!("submitted during the partition: {other:?}"),
        }
    }
    proxy.restore();

    // A connection that broke while idle may fail the one submission that
    // finds it; the next ones get a fresh connection.
    let mut failures_after = 0;
    while accepted.len() < 8 {
        match api.submit(&job).await {
            Ok(submitted) => accepted.push(submitted.job.id),
            Err(error) => {
                failures_after += 1;
                assert!(
                    failures_after <= 2,
                    "still failing after the partition: {error}"
                );
            }
        }
    }
    let stored = app.store().job_ids().await.unwrap();
    accepted.sort();
    assert_eq!(stored, accepted, "exactly the accepted submissions exist");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_running_for_several_lease_ttls_keeps_its_lease_through_heartbeats() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let job = app.run(&module, json!({"mode": "sleep", "ms": 3500})).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(
        job.attempt, 1,
        "the lease (TTL 1 s) was renewed, never rescued"
    );
    app.finish().await;
}

/// An API that cannot reach Redis still cancels (PostgreSQL is the truth),
/// but writes no revocation: the worker's key keeps the attempt's token and
/// renews. The worker learns of the cancel from PostgreSQL instead
/// (`Heartbeat::stop_ended`) at its next heartbeat round, and stops the
/// guest long before its own end.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_whose_revocation_cannot_reach_redis_still_stops_the_guest() {
    let (app, module) = TestApp::start_with_plugin("misbehave").await;
    app.spawn_worker_with(WorkerConfig {
        concurrency: Some(1),
        ..app.worker_config("w1")
    });
    // Compiled and cached first, so that the spinning attempt takes the
    // only slot as soon as it is claimed, before the next job can.
    let warm_up = app.run(&module, json!({"mode": "succeed"})).await;
    assert_state(&warm_up, JobState::Succeeded);
    let spinning = app.spinning(&module).await;

    let cut_off = app.spawn_api_with_redis("redis://127.0.0.1:1").await;
    let cancelled = cut_off.cancel(spinning.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);

    // The worker's only slot frees once the spinning guest stops.
    let next = app.submit(&module, json!({"mode": "succeed"})).await;
    let done = tokio::time::timeout(Duration::from_secs(20), app.wait_final(next.id))
        .await
        .expect("the cancelled guest stopped, long before its 60 s");
    assert_state(&done, JobState::Succeeded);
    app.finish().await;
}
