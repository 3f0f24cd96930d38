//! A queue's pause and limits (queue/limits.rs, store/claim.rs): the claim
//! statements call by call, then workers against them. The same limits
//! under crashes, SIGSTOP and a Redis FLUSHALL are checked by the chaos
//! suite (`taskflow-chaos --max-running`, in scripts/test).

mod cancelled_places;
mod reservations;
mod running_bound;
mod settings_during_claims;

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use taskflow::api::types::SubmitJob;
use taskflow::job::{JobState, NewJob};
use taskflow::store::{AttemptSpan, ClaimPath, Store};
use taskflow_testkit::{HeldTransaction, most_in_window, most_overlapping};
use tokio::task::JoinHandle;

use crate::support::{
    TestApp, assert_api_error, assert_state, eventually, new_job, success, test_database,
};

const TTL: Duration = Duration::from_secs(30);

/// A store holding `jobs` on queue `default`, limited by `limits` (the body
/// of `PUT /v1/queues/default`).
async fn limited_store(limits: serde_json::Value, jobs: Vec<NewJob>) -> (TestApp, Store) {
    let app = TestApp::start().await;
    app.set_default_queue(limits).await;
    let store = app.store().clone();
    store
        .insert_module(&jobs[0].module_hash, b"\0asm")
        .await
        .ok();
    store.insert_jobs(&jobs).await.unwrap();
    (app, store)
}

fn jobs_keyed(keys: &[Option<&str>]) -> Vec<NewJob> {
    let module = "a".repeat(64);
    keys.iter()
        .map(|key| NewJob {
            concurrency_key: key.map(str::to_owned),
            ..new_job(&module)
        })
        .collect()
}

async fn claim(store: &Store, worker: &str, limit: usize) -> Vec<taskflow::store::ClaimedJob> {
    store
        .claim("default", worker, limit, TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs
}

/// How many jobs run now.
async fn running(store: &Store) -> i64 {
    store.count_jobs_in(JobState::Running).await.unwrap()
}

/// Runs `claim` in a task, held at its first `nextval('lease_tokens')`
/// (after its snapshot and its row locks, before it starts a job): the
/// returned transaction's `ALTER SEQUENCE` makes it wait until that
/// transaction ends.
async fn held_at_its_lease_tokens<T: Send + 'static>(
    app: &TestApp,
    claim: impl Future<Output = T> + Send + 'static,
) -> (HeldTransaction, JoinHandle<T>) {
    let mut tokens = app
        .db
        .begin_held("ALTER SEQUENCE lease_tokens INCREMENT BY 1")
        .await
        .unwrap();
    let claim = tokio::spawn(claim);
    tokens.until_waiting(1).await.unwrap();
    (tokens, claim)
}

fn spans_overlapping(spans: &[AttemptSpan]) -> usize {
    most_overlapping(spans.iter().map(|span| {
        (
            span.started_at.timestamp_micros(),
            span.finished_at.timestamp_micros(),
        )
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_racing_for_the_last_slots_never_overrun_max_running() {
    let (app, store) = limited_store(json!({"max_running": 3}), jobs_keyed(&[None; 40])).await;
    // Sixteen workers claim at once, half of them still on the plain path
    // (as a worker that has not seen the limit yet is).
    let claims = (0..16).map(|i| {
        let store = store.clone();
        async move {
            let path = if i % 2 == 0 {
                ClaimPath::Plain
            } else {
                ClaimPath::Limited(None)
            };
            store
                .claim("default", &format!("w{i}"), 5, TTL, path)
                .await
                .unwrap()
        }
    });
    let claimed: Vec<_> = join_all(claims).await;
    assert_eq!(claimed.iter().map(|c| c.jobs.len()).sum::<usize>(), 3);
    assert!(claimed.iter().all(|c| c.next_path.is_limited()));
    assert_eq!(running(&store).await, 3);

    // A slot comes back when a running attempt ends, and only one.
    let running = claimed.into_iter().flat_map(|c| c.jobs).next().unwrap();
    store
        .finish_if_lease_matches(&[success(&running, "w0", b"{}")])
        .await
        .unwrap();
    assert_eq!(claim(&store, "w1", 5).await.len(), 1);
    assert!(claim(&store, "w2", 5).await.is_empty());

    // Lifting the limit lets the plain path claim again.
    app.set_default_queue(json!({})).await;
    let claimed = store
        .claim("default", "w3", 5, TTL, ClaimPath::Limited(None))
        .await
        .unwrap();
    assert_eq!(
        (claimed.jobs.len(), claimed.next_path),
        (5, ClaimPath::Plain)
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_at_its_limit_does_not_hold_back_the_keys_behind_it() {
    // Twenty jobs of tenant a come first; b's and the keyless job wait
    // behind them.
    let mut keys = vec![Some("a"); 20];
    keys.extend([Some("b"), Some("b"), None]);
    let (app, store) = limited_store(json!({"max_running_per_key": 1}), jobs_keyed(&keys)).await;
    let mut first = Vec::new();
    for job in claim(&store, "w1", 10).await {
        let detail = store.get_job(job.id).await.unwrap().unwrap();
        first.push(detail.job.concurrency_key);
    }
    first.sort();
    assert_eq!(first, [None, Some("a".into()), Some("b".into())]);
    assert!(
        claim(&store, "w2", 10).await.is_empty(),
        "a and b are at their limit and the keyless job is taken"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_admits_its_limit_per_window_and_the_rest_wait_their_turn() {
    let (app, store) = limited_store(
        json!({"rate": {"limit": 5, "period": "1s"}}),
        jobs_keyed(&[None; 12]),
    )
    .await;
    let first = claim(&store, "w1", 10).await;
    assert_eq!(first.len(), 5);
    assert!(
        claim(&store, "w1", 10).await.is_empty(),
        "the window is full"
    );
    // Finishing them frees nothing: a rate counts starts, not running jobs.
    let done: Vec<_> = first.iter().map(|job| success(job, "w1", b"{}")).collect();
    store.finish_if_lease_matches(&done).await.unwrap();
    assert!(claim(&store, "w1", 10).await.is_empty());
    let second = eventually(Duration::from_secs(3), || async {
        Some(claim(&store, "w1", 10).await).filter(|jobs| !jobs.is_empty())
    })
    .await;
    assert_eq!(second.len(), 5);
    assert!(second[0].attempted_at - first[0].attempted_at >= chrono::TimeDelta::seconds(1));
    let last_of_first = first.iter().map(|job| job.id).max();
    let first_of_second = second.iter().map(|job| job.id).min();
    assert!(
        last_of_first < first_of_second,
        "started in submission order"
    );
    app.finish().await;
}

/// A rate's starts are counted in buckets of a twentieth of its period, so
/// a new period renumbers them (`rate_buckets_for_period`, put_queue in
/// store/queues.rs): the starts made before the change count in the new
/// period's windows, for as long as those windows hold them and no longer.
#[tokio::test(flavor = "multi_thread")]
async fn the_starts_before_a_rate_period_change_count_in_the_new_windows() {
    let (app, store) = limited_store(
        json!({"rate": {"limit": 5, "period": "2s"}}),
        jobs_keyed(&[None; 12]),
    )
    .await;
    assert_eq!(claim(&store, "w1", 10).await.len(), 5);
    app.set_default_queue(json!({"rate": {"limit": 5, "period": "1s"}}))
        .await;
    assert!(
        claim(&store, "w1", 10).await.is_empty(),
        "a shorter period's window still holds the starts made under the longer one"
    );
    app.set_default_queue(json!({"rate": {"limit": 5, "period": "2s"}}))
        .await;
    assert!(claim(&store, "w1", 10).await.is_empty());
    let later = eventually(Duration::from_secs(5), || async {
        Some(claim(&store, "w1", 10).await).filter(|jobs| !jobs.is_empty())
    })
    .await;
    assert_eq!(
        later.len(),
        5,
        "the starts leave a longer period's window once older than it"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_queue_accepts_jobs_but_starts_none_until_resumed() {
    let (app, module) = TestApp::start_running("hello").await;
    let (status, paused) = app.post_json("/v1/queues/default/pause", "").await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    let ids = app.submit_many(&module, json!({"name": "paused"}), 5).await;
    // Several dispatch intervals (the test worker polls every 500 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in &ids {
        assert_state(&app.client.get_job(*id).await.unwrap(), JobState::Available);
    }
    let (_, resumed) = app.post_json("/v1/queues/default/resume", "").await;
    assert_eq!(resumed["paused"], false);
    for id in ids {
        assert_state(&app.wait_final(id).await, JobState::Succeeded);
    }
    app.finish().await;
}

/// Three workers of four slots each run `count` jobs (20 ms sleeps of the
/// `misbehave` plugin, job `i` with concurrency key `key_of(i)`) on queue
/// `default`, limited by `limits`; the attempts' spans once every job
/// succeeded.
async fn three_workers_run(
    limits: serde_json::Value,
    key_of: impl Fn(usize) -> Option<String>,
    count: usize,
) -> (TestApp, Vec<AttemptSpan>) {
    let (app, module) = TestApp::start_with_plugin("misbehave").await;
    app.set_default_queue(limits).await;
    for worker in ["w1", "w2", "w3"] {
        let mut config = app.worker_config(worker);
        config.concurrency = Some(4);
        app.spawn_worker_with(config);
    }
    let jobs: Vec<SubmitJob> = (0..count)
        .map(|i| SubmitJob {
            concurrency_key: key_of(i),
            ..SubmitJob::new(&module, json!({"mode": "sleep", "ms": 20}))
        })
        .collect();
    let mut ids = Vec::new();
    for batch in jobs.chunks(60) {
        let submitted = app
            .client
            .submit_batch(&taskflow::api::types::SubmitBatch {
                jobs: batch.to_vec(),
            })
            .await
            .unwrap();
        ids.extend(submitted.jobs.iter().map(|job| job.id));
    }
    for id in &ids {
        assert_state(&app.wait_final(*id).await, JobState::Succeeded);
    }
    let spans = app.store().attempt_spans("default").await.unwrap();
    if spans.len() != count {
        // Which attempts ended otherwise, and why, for whoever reads the failure.
        let mut retried = Vec::new();
        for id in &ids {
            let attempts = app.store().list_attempts(*id, None, 10).await.unwrap();
            let attempts = attempts.unwrap_or_default();
            if attempts.len() > 1 {
                retried.push(format!("{attempts:?}"));
            }
        }
        panic!("{} attempts of {count} jobs: {retried:#?}", spans.len());
    }
    (app, spans)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_never_run_more_than_max_running_and_keys_more_than_theirs() {
    let tenants = ["t1", "t2", "t3", "t4"];
    let (app, spans) = three_workers_run(
        json!({"max_running": 3, "max_running_per_key": 1}),
        |i| Some(tenants[i % tenants.len()].into()),
        120,
    )
    .await;
    assert_eq!(
        spans_overlapping(&spans),
        3,
        "the limit is reached, never passed"
    );
    for tenant in tenants {
        let theirs: Vec<AttemptSpan> = spans
            .iter()
            .filter(|span| span.concurrency_key.as_deref() == Some(tenant))
            .cloned()
            .collect();
        assert_eq!(spans_overlapping(&theirs), 1, "{tenant}");
    }
    app.finish().await;
}

/// With `max_running` alone, a claim takes the running bound when it
/// leaves room for the batch and counts otherwise (store/claim.rs); the
/// other workers test covers only a per-key limit, which counts at every
/// claim. Twelve slots against a limit of eight, freeing one or two at a
/// time, take both turns while jobs start and end.
#[tokio::test(flavor = "multi_thread")]
async fn three_workers_never_run_more_than_max_running_taken_from_the_bound() {
    let (app, spans) = three_workers_run(json!({"max_running": 8}), |_| None, 240).await;
    assert_eq!(
        spans_overlapping(&spans),
        8,
        "the limit is reached, never passed"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_of_twenty_a_second_holds_in_every_window_of_a_thirty_second_run() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    app.set_default_queue(json!({"rate": {"limit": 20, "period": "1s"}}))
        .await;
    app.spawn_worker("w1");
    app.spawn_worker("w2");
    app.submit_many(&module, json!({"name": "rated"}), 700)
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let starts: Vec<i64> = app
        .store()
        .attempt_spans("default")
        .await
        .unwrap()
        .iter()
        .map(|span| span.started_at.timestamp_micros())
        .collect();
    assert!(
        most_in_window(&starts, 1_000_000) <= 20,
        "over the rate: {} starts in one second",
        most_in_window(&starts, 1_000_000)
    );
    // Jobs over the rate wait rather than fail, and the rate is used.
    assert!(starts.len() >= 500, "only {} started in 30 s", starts.len());
    assert_eq!(app.store().count_jobs_in(JobState::Dead).await.unwrap(), 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_round_trip_patch_changes_only_what_it_names_and_bad_ones_name_their_field() {
    let app = TestApp::start().await;
    let settings = json!({
        "allowed_hosts": ["https://api.example.com"],
        "max_running": 3,
        "rate": {"limit": 20, "period": "1m"},
    });
    let (status, put) = app
        .put_json("/v1/queues/default", &settings.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["max_running"], 3);
    assert_eq!(put["rate"], json!({"limit": 20, "period": "1m"}));
    assert_eq!(put["paused"], false);

    let (status, patched) = app
        .send_json(
            reqwest::Method::PATCH,
            "/v1/queues/default",
            r#"{"max_running": null, "max_running_per_key": 2}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["max_running"], serde_json::Value::Null);
    assert_eq!(patched["max_running_per_key"], 2);
    assert_eq!(patched["rate"], put["rate"], "untouched");
    assert_eq!(patched["allowed_hosts"], put["allowed_hosts"], "untouched");

    let cases = [
        (r#"{"max_running": 0}"#, "max_running"),
        (r#"{"max_running": -1}"#, "max_running"),
        (
            r#"{"max_running_per_key": 2147483648}"#,
            "max_running_per_key",
        ),
        (
            r#"{"rate": {"limit": 5, "period": "999ms"}}"#,
            "rate.period",
        ),
        (
            r#"{"rate": {"limit": 5, "period": "18446744073709551615s 1000ms"}}"#,
            "rate.period",
        ),
        (
            r#"{"rate": {"limit": 5, "period": "1844674407 3709551615s 1000ms"}}"#,
            "rate.period",
        ),
        (r#"{"rate": {"limit": 0, "period": "1s"}}"#, "rate.limit"),
        (r#"{"rate": {"limit": 5}}"#, "rate"),
        (
            r#"{"rate": {"limit": 5, "period": "1s", "burst": 2}}"#,
            "rate",
        ),
        (r#"{"max_runing": 3}"#, "max_runing"),
    ];
    for (body, field) in cases {
        for method in [reqwest::Method::PUT, reqwest::Method::PATCH] {
            let answer = app
                .send_json(method.clone(), "/v1/queues/default", body)
                .await;
            assert!(answer.0.is_client_error(), "{method} {body} → {answer:?}");
            let error = &answer.1["error"];
            let named = error["field"].as_str().unwrap_or_default();
            let message = error["message"].as_str().unwrap_or_default();
            assert!(
                named.starts_with(field) || message.contains(field),
                "{method} {body} → {error}"
            );
        }
    }
    assert_api_error(
        "pause of a bad name",
        &app.post_json("/v1/queues/No%20Such/pause", "").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        "must be",
    );
    let (_, unchanged) = app.get_json("/v1/queues/default").await;
    assert_eq!(unchanged, patched, "no bad request changed anything");
    app.finish().await;
}

#[tokio::test]
async fn a_store_without_limits_claims_as_before() {
    let db = test_database().await;
    let store = db.store().clone();
    let jobs = jobs_keyed(&[None; 3]);
    store
        .insert_module(&jobs[0].module_hash, b"\0asm")
        .await
        .ok();
    store.insert_jobs(&jobs).await.unwrap();
    let claimed = store
        .claim("default", "w1", 10, TTL, ClaimPath::Plain)
        .await
        .unwrap();
    assert_eq!(
        (claimed.jobs.len(), claimed.next_path),
        (3, ClaimPath::Plain)
    );
    db.drop_database().await.unwrap();
}
