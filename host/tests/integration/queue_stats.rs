//! The queue listing's counts (store/queue_stats.rs): kept by the store
//! statements that move jobs, they equal a count of the rows after every kind of statement
//! that moves jobs, folded or not, and a running cluster shows them at
//! `GET /v1/queues`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, PgConnection};
use taskflow::job::{AfterFailure, AttemptEnd, Failure, FailureKind, JobState, NewJob};
use taskflow::maintenance::{CounterFolder, Service};
use taskflow::queue::{Activity, JobCounts, QueueLimits, QueueSettings, QueueStats};
use taskflow::store::{ClaimPath, Store};

use crate::support::{
    TestApp, lease_lapses, new_job, rescue, stored_module, success, test_database,
};

const TTL: Duration = Duration::from_secs(30);

/// The counters, queue by queue, against a count of the rows.
async fn assert_counts_exact(store: &Store, after: &str) {
    let kept: BTreeMap<String, JobCounts> = store
        .queue_stats(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, stats)| stats.jobs.total() > 0)
        .map(|(queue, stats)| (queue, stats.jobs))
        .collect();
    let counted = store.count_jobs_by_queue().await.unwrap();
    assert_eq!(kept, counted, "after {after}");
}

fn failed(next: AfterFailure) -> AttemptEnd {
    AttemptEnd::Failed {
        failure: Failure::new(FailureKind::GuestError, "no"),
        next,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_equal_the_rows_after_every_statement_that_moves_jobs_folded_or_not() {
    let db = test_database().await;
    let store = db.store();
    let module = stored_module(store).await;
    let on = |queue: &str, run_at| NewJob {
        queue: queue.into(),
        run_at,
        ..new_job(&module)
    };
    let later = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    let mut jobs: Vec<NewJob> = (0..10).map(|_| on("default", None)).collect();
    jobs.extend((0..3).map(|_| on("other", later)));
    jobs.push(on("other", None));
    store.insert_jobs(&jobs).await.unwrap();
    assert_counts_exact(store, "submissions").await;
    // A lone job has an insert of its own (store/submit.rs, `insert_one`).
    store.insert_jobs(&[on("default", None)]).await.unwrap();
    store.insert_jobs(&[on("lone", later)]).await.unwrap();
    assert_counts_exact(store, "lone submissions").await;
    let unknown = NewJob {
        module_hash: "b".repeat(64),
        ..on("default", None)
    };
    store.insert_jobs(&[unknown]).await.unwrap_err();
    assert_counts_exact(store, "a refused submission").await;

    let claimed = store
        .claim("default", "w1", 6, TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), 6);
    assert_counts_exact(store, "a claim").await;
    assert!(store.fold_job_transitions().await.unwrap() > 0);
    assert_counts_exact(store, "a fold").await;

    let retry_now = AfterFailure::Retry {
        delay: Duration::ZERO,
    };
    let deadline = lease_lapses(store, &claimed[4]).await;
    let ends = [
        success(&claimed[0], "w1", b"{}"),
        success(&claimed[1], "w1", b"{}"),
        crate::support::finished(&claimed[2], "w1", failed(retry_now)),
        crate::support::finished(&claimed[3], "w1", failed(AfterFailure::Dead)),
        rescue(&claimed[4], "w1", deadline),
    ];
    store.finish_if_lease_matches(&ends).await.unwrap();
    assert_counts_exact(store, "finishes").await;

    store
        .cancel_if_unfinished(claimed[5].id, "enough", TTL)
        .await
        .unwrap();
    store
        .cancel_if_unfinished(jobs[9].id, "enough", TTL)
        .await
        .unwrap();
    assert_counts_exact(store, "cancels").await;
    store.promote_due(100).await.unwrap();
    assert_counts_exact(store, "promotions").await;
    let limited = QueueSettings {
        limits: QueueLimits {
            max_running: NonZeroU32::new(10),
            ..QueueLimits::default()
        },
        ..QueueSettings::default()
    };
    store
        .put_queue("other", &limited, &BTreeMap::new(), None)
        .await
        .unwrap();
    let on_limited_path = store
        .claim("other", "w1", 5, TTL, ClaimPath::Plain)
        .await
        .unwrap();
    assert!(on_limited_path.next_path.is_limited());
    assert_eq!(on_limited_path.jobs.len(), 1);
    assert_counts_exact(store, "a limited claim").await;
    store.fold_job_transitions().await.unwrap();
    assert_counts_exact(store, "a second fold").await;
    let dead = store.get_job(claimed[3].id).await.unwrap().unwrap().job;
    let kind = dead
        .last_error
        .as_ref()
        .and_then(|error| error.0["kind"].as_str());
    let pass = store
        .requeue_dead_group(&module, kind, chrono::Utc::now(), None, 10)
        .await
        .unwrap();
    assert_eq!(pass.requeued, vec![("default".to_owned(), 1)]);
    assert_counts_exact(store, "a dead-letter group retried").await;
    store
        .cancel_if_unfinished(claimed[3].id, "enough", TTL)
        .await
        .unwrap();
    store
        .requeue_if_finished(claimed[3].id, Duration::from_secs(1))
        .await
        .unwrap();
    assert_counts_exact(store, "a retry by a user").await;
    store.delete_if_finished(claimed[0].id).await.unwrap();
    assert_counts_exact(store, "a deletion").await;

    let stats = store.queue_stats(None).await.unwrap();
    let expected = Activity {
        started: 6,
        succeeded: 2,
        failed: 3,
    };
    assert_eq!(stats["default"].last_minute, expected);
    assert_eq!(stats["default"].last_hour, expected);
    assert_eq!(stats["other"].last_hour.started, 1);
    assert!(stats["default"].oldest_available_age.is_some());
    // `other` holds its scheduled jobs, and none available.
    assert_eq!(stats["other"].jobs.get(JobState::Scheduled), 3);
    assert_eq!(stats["other"].oldest_available_age, None);
    // The folder's pass folds the whole log and asks for no early pass.
    let folder = CounterFolder::new(store.clone());
    assert_eq!(folder.run_once().await.unwrap(), None);
    assert_eq!(store.fold_job_transitions().await.unwrap(), 0);
    // Folded, the same counts (the ages have grown).
    let without_ages = |stats: BTreeMap<String, QueueStats>| {
        let mut stats = stats;
        for queue in stats.values_mut() {
            queue.oldest_available_age = None;
        }
        stats
    };
    assert_eq!(
        without_ages(store.queue_stats(None).await.unwrap()),
        without_ages(stats)
    );
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listing_shows_every_queue_with_its_jobs_activity_and_oldest_waiting_job() {
    let (app, module) = TestApp::start_running("hello").await;
    let (status, _) = app.post_json("/v1/queues/held/pause", "").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    for _ in 0..3 {
        app.submit_with(taskflow::api::types::SubmitJob {
            queue: Some("held".into()),
            ..crate::support::single_attempt(&module, json!({"name": "later"}))
        })
        .await;
    }
    for name in ["a", "b"] {
        let job = app.run(&module, json!({ "name": name })).await;
        assert_eq!(job.state, JobState::Succeeded);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;

    let (status, list) = app.get_json("/v1/queues").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{list}");
    let queues = list["queues"].as_array().unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "held"], "{list}");
    let default = &queues[0]["stats"];
    assert_eq!(default["jobs"]["succeeded"], 2, "{default}");
    assert_eq!(default["jobs"]["available"], 0, "{default}");
    assert_eq!(default["oldest_available_age_ms"], json!(null));
    for window in ["last_minute", "last_hour"] {
        assert_eq!(
            default[window],
            json!({"started": 2, "succeeded": 2, "failed": 0}),
            "{default}"
        );
    }
    let held = &queues[1];
    assert_eq!(held["paused"], true);
    assert_eq!(held["stats"]["jobs"]["available"], 3, "{held}");
    assert!(held["stats"]["oldest_available_age_ms"].as_u64().unwrap() >= 20);
    let (_, one) = app.get_json("/v1/queues/held").await;
    assert_eq!(one["stats"]["jobs"], held["stats"]["jobs"]);
    assert!(
        one["stats"]["oldest_available_age_ms"].as_u64()
            >= held["stats"]["oldest_available_age_ms"].as_u64()
    );

    // The same counters, as /metrics shows them to Prometheus.
    taskflow::telemetry::prometheus();
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"taskflow_queue_jobs{queue="held",state="available"} 3"#,
        r#"taskflow_queue_jobs{queue="default",state="succeeded"} 2"#,
        r#"taskflow_queue_jobs{queue="default",state="available"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    let oldest: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"taskflow_queue_oldest_available_seconds{queue="held"} "#))
        .expect("the held queue's oldest job")
        .parse()
        .unwrap();
    assert!(oldest >= 0.02, "{oldest}");
    app.finish().await;
}

/// A running job cancelled keeps its place under the queue's limits until
/// its guest stops (`Store::cancel_if_unfinished`): the listing, the
/// scrape and the console show that place as `stopping`, so a full queue
/// that starts nothing says why, until the worker reports the guest
/// stopped.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_running_job_shows_as_stopping_until_its_worker_reports_it() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    taskflow::telemetry::prometheus();
    let job = app.submit(&module, json!({})).await;
    let claimed = app
        .store()
        .claim("default", "w1", 1, TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), 1);
    app.client.cancel(job.id).await.unwrap();

    let (_, queue) = app.get_json("/v1/queues/default").await;
    let stats = &queue["stats"];
    assert_eq!(stats["jobs"]["running"], 0, "{stats}");
    assert_eq!(stats["jobs"]["cancelled"], 1, "{stats}");
    assert_eq!(stats["stopping"], 1, "{stats}");
    let stopping = r#"taskflow_queue_stopping{queue="default"} "#;
    let gauge = |metrics: String| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(stopping).map(str::to_owned))
    };
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(gauge(metrics).as_deref(), Some("1"));
    for page in ["/ui", "/ui/queues"] {
        let html = app.get(page).await.text().await.unwrap();
        assert!(html.contains("0 + 1 stopping"), "{page}:\n{html}");
    }

    app.store()
        .finish_if_lease_matches(&[success(&claimed[0], "w1", b"{}")])
        .await
        .unwrap();
    let (_, queue) = app.get_json("/v1/queues/default").await;
    assert_eq!(queue["stats"]["stopping"], 0, "{queue}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(gauge(metrics).as_deref(), Some("0"));
    for page in ["/ui", "/ui/queues"] {
        let html = app.get(page).await.text().await.unwrap();
        assert!(!html.contains("1 stopping"), "{page}:\n{html}");
    }
    app.finish().await;
}

/// A queue whose last job is gone drops out of the counters, and its
/// gauges out of `/metrics`: neither the last count they were given, nor a
/// 0 kept in the process's recorder for as long as it runs (one set of
/// series for every queue that ever existed).
#[tokio::test(flavor = "multi_thread")]
async fn the_gauges_of_a_queue_whose_jobs_are_all_gone_leave_the_scrape() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    taskflow::telemetry::prometheus();
    let job = app
        .submit_with(taskflow::api::types::SubmitJob {
            queue: Some("fleeting".into()),
            ..taskflow::api::types::SubmitJob::new(module, json!({}))
        })
        .await;
    app.client.cancel(job.id).await.unwrap();
    let cancelled = r#"taskflow_queue_jobs{queue="fleeting",state="cancelled"}"#;
    let scrape = || async { app.get("/metrics").await.text().await.unwrap() };
    let gauge = |metrics: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(cancelled))
            .map(|value| value.trim().to_owned())
    };
    assert_eq!(gauge(&scrape().await).as_deref(), Some("1"));

    app.client.delete_job(job.id).await.unwrap();
    // Folded, the queue's counts are gone, and so are its series.
    app.store().fold_job_transitions().await.unwrap();
    let metrics = scrape().await;
    assert!(
        !metrics.contains(r#"queue="fleeting""#),
        "the queue's series are gone:\n{metrics}"
    );
    app.finish().await;
}

/// The counter folder forgets activity older than two hours on every pass,
/// so it finds at most one bucket per queue to delete: through the index on
/// `bucket`, not by reading every queue's two hours of buckets.
#[tokio::test(flavor = "multi_thread")]
async fn the_folder_forgets_old_activity_through_the_bucket_index() {
    const QUEUES: i64 = 200;
    const BUCKETS_KEPT: i64 = 720;
    let db = test_database().await;
    let store = db.store();
    let mut admin = PgConnection::connect(db.url()).await.unwrap();
    // Two hours and one bucket per queue; the oldest are 5 s past what the
    // folder keeps, the newest 5 s from it.
    sqlx::query(
        "INSERT INTO queue_activity (queue, bucket, started, succeeded, failed)
         SELECT 'queue-' || q, now() - interval '5 seconds' - b * interval '10 seconds', 1, 1, 0
         FROM generate_series(1, $1) q, generate_series(0, $2) b",
    )
    .bind(QUEUES)
    .bind(BUCKETS_KEPT)
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("ANALYZE queue_activity")
        .execute(&mut admin)
        .await
        .unwrap();

    let plan = store.explain_forget_old_activity().await.unwrap();
    assert!(plan.contains("queue_activity_bucket_idx"), "{plan}");
    store.fold_job_transitions().await.unwrap();
    let (kept,): (i64,) = sqlx::query_as("SELECT count(*) FROM queue_activity")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(kept, QUEUES * BUCKETS_KEPT);
    admin.close().await.unwrap();
    db.drop_database().await.unwrap();
}
