//! Retention: the pruner deletes finished jobs once their queue's
//! retention for their state has passed, and nothing else.

use std::time::Duration;

use serde_json::json;
use taskflow::job::{AfterFailure, AttemptEnd, Failure, FailureKind, JobState, NewJob};
use taskflow::maintenance::pruner::{BATCH_SIZE, PAUSE_BETWEEN_BATCHES};
use taskflow::maintenance::{Pruner, Service};
use taskflow::store::{ClaimPath, FillerJobs, JobRecord, Pruned, Store, StoreError};
use taskflow_testkit::HeldTransaction;
use uuid::Uuid;

use crate::support::{TestApp, TestDb, new_job, stored_module, success, test_database};

const TTL: Duration = Duration::from_secs(30);

/// One job of `queue` brought to the finished `state`; its id.
async fn finished_job(store: &Store, queue: &str, state: JobState, key: Option<&str>) -> Uuid {
    let job = NewJob {
        queue: queue.into(),
        idempotency_key: key.map(str::to_owned),
        ..new_job(&"a".repeat(64))
    };
    store.insert_jobs(std::slice::from_ref(&job)).await.unwrap();
    if state == JobState::Cancelled {
        store
            .cancel_if_unfinished(job.id, "cancelled", TTL)
            .await
            .unwrap();
        return job.id;
    }
    let claimed = store
        .claim(queue, "w1", 1, TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), 1);
    let mut outcome = success(&claimed[0], "w1", b"{}");
    if state == JobState::Dead {
        outcome.end = AttemptEnd::Failed {
            failure: Failure::new(FailureKind::GuestError, "no"),
            next: AfterFailure::Dead,
        };
    }
    store.finish_if_lease_matches(&[outcome]).await.unwrap();
    job.id
}

/// A test database holding the module [`finished_job`] names.
async fn database_with_module() -> (TestDb, Store) {
    let db = test_database().await;
    let store = db.store().clone();
    store
        .insert_module(&"a".repeat(64), b"\0asm")
        .await
        .unwrap();
    (db, store)
}

/// What a user's delete of job `id` answers when it started while `writer`
/// held the job's row, and `writer` then committed.
async fn delete_behind(
    mut writer: HeldTransaction,
    store: &Store,
    id: Uuid,
) -> Result<JobRecord, StoreError> {
    let delete = tokio::spawn({
        let store = store.clone();
        async move { store.delete_if_finished(id).await }
    });
    writer.until_waiting(1).await.unwrap();
    writer.commit().await.unwrap();
    delete.await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pruner_deletes_exactly_the_expired_jobs_of_each_state_and_frees_their_keys() {
    let app = TestApp::start().await;
    let store = app.store().clone();
    store
        .insert_module(&"a".repeat(64), b"\0asm")
        .await
        .unwrap();
    let (status, short) = app
        .put_json(
            "/v1/queues/short",
            &json!({"retention": {"succeeded": "1s", "dead": "forever", "cancelled": "1s"}})
                .to_string(),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{short}");
    assert_eq!(
        short["retention"],
        json!({"succeeded": "1s", "dead": "forever", "cancelled": "1s"})
    );

    let mut old = Vec::new();
    for queue in ["short", "kept"] {
        for state in [JobState::Succeeded, JobState::Dead, JobState::Cancelled] {
            let key = (queue == "short" && state == JobState::Succeeded).then_some("once");
            old.push((queue, state, finished_job(&store, queue, state, key).await));
        }
    }
    let unfinished = new_job(&"a".repeat(64));
    store
        .insert_jobs(&[NewJob {
            queue: "short".into(),
            ..unfinished.clone()
        }])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = [
        finished_job(&store, "short", JobState::Succeeded, None).await,
        finished_job(&store, "short", JobState::Cancelled, None).await,
    ];
    let attempts_before = store.count_attempts().await.unwrap();

    let pruned = Pruner::new(store.clone()).prune().await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            succeeded: 1,
            dead: 0,
            cancelled: 1
        }
    );
    for (queue, state, id) in old {
        let expired = queue == "short" && state != JobState::Dead;
        let exists = store.get_job(id).await.unwrap().is_some();
        assert_eq!(exists, !expired, "{queue} {state}");
    }
    for id in fresh.into_iter().chain([unfinished.id]) {
        assert!(store.get_job(id).await.unwrap().is_some());
    }
    // The succeeded job's attempt went with it; the cancelled one had none.
    assert_eq!(store.count_attempts().await.unwrap(), attempts_before - 1);
    assert_eq!(
        Pruner::new(store.clone()).prune().await.unwrap(),
        Pruned::default()
    );

    // Its idempotency key ended with it.
    let again = NewJob {
        queue: "short".into(),
        idempotency_key: Some("once".into()),
        ..new_job(&"a".repeat(64))
    };
    let submitted = store.insert_jobs(&[again]).await.unwrap();
    assert!(submitted[0].created);
    app.finish().await;
}

/// A backlog drains batch after batch: a full batch asks for the next pass
/// after a short pause rather than a whole interval, and the short batch
/// that ends the backlog asks for nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_pruner_asks_for_its_next_pass_soon_only_after_a_full_batch() {
    let (db, store) = database_with_module().await;
    let expired = FillerJobs {
        module_hash: &"a".repeat(64),
        queue: "default",
        state: JobState::Succeeded,
        count: BATCH_SIZE as u64 + 5,
        age: Duration::from_secs(8 * 86_400),
        priorities: 1,
    };
    store.insert_filler_jobs(&expired).await.unwrap();
    let pruner = Pruner::new(store.clone());

    assert_eq!(
        pruner.run_once().await.unwrap(),
        Some(PAUSE_BETWEEN_BATCHES)
    );
    assert_eq!(store.job_ids().await.unwrap().len(), 5);
    assert_eq!(pruner.run_once().await.unwrap(), None);
    assert!(store.job_ids().await.unwrap().is_empty());
    db.drop_database().await.unwrap();
}

/// A job the pruner found expired but that finished again before its
/// delete reached it (a user retried it, and it ended at once) is kept:
/// it is no longer what was found expired.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_finished_again_while_the_pruner_read_it_is_kept() {
    let db = test_database().await;
    let store = db.store().clone();
    let module = stored_module(&store).await;
    let old_dead = FillerJobs {
        module_hash: &module,
        queue: "default",
        state: JobState::Dead,
        count: 1,
        age: Duration::from_secs(31 * 86_400),
        priorities: 1,
    };
    store.insert_filler_jobs(&old_dead).await.unwrap();
    let id = store.job_ids().await.unwrap()[0];

    let mut writer = db
        .begin_held(&format!("SELECT 1 FROM jobs WHERE id = '{id}' FOR UPDATE"))
        .await
        .unwrap();
    let pruner = Pruner::new(store.clone());
    let pruning = tokio::spawn(async move { pruner.prune().await });
    writer.until_waiting(1).await.unwrap();
    // What a retry and an immediate cancel leave behind.
    writer
        .execute(&format!(
            "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now()
             WHERE id = '{id}'"
        ))
        .await
        .unwrap();
    writer.commit().await.unwrap();

    assert_eq!(pruning.await.unwrap().unwrap(), Pruned::default());
    let kept = store.get_job(id).await.unwrap().expect("the job is kept");
    assert_eq!(kept.job.state, JobState::Cancelled);
    db.drop_database().await.unwrap();
}

/// A user's delete of a job the pruner deletes first answers that the job
/// does not exist, not that a succeeded job cannot be deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_that_waited_for_the_pruner_finds_the_job_gone() {
    let (db, store) = database_with_module().await;
    let id = finished_job(&store, "default", JobState::Succeeded, None).await;
    let pruner = db
        .begin_held(&format!("DELETE FROM jobs WHERE id = '{id}'"))
        .await
        .unwrap();

    let answer = delete_behind(pruner, &store, id).await;
    assert!(
        matches!(answer, Err(StoreError::JobNotFound(gone)) if gone == id),
        "{answer:?}"
    );
    db.drop_database().await.unwrap();
}

/// A deleted job takes its attempts with it, and only its own: no attempt
/// record outlives its job (`Store::delete_if_finished`).
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_job_takes_its_attempts_with_it() {
    let (db, store) = database_with_module().await;
    let deleted = finished_job(&store, "default", JobState::Dead, None).await;
    let kept = finished_job(&store, "default", JobState::Succeeded, None).await;

    store.delete_if_finished(deleted).await.unwrap();
    let attempts = store.attempts_per_job().await.unwrap();
    assert_eq!(attempts.get(&deleted), None);
    assert_eq!(attempts.get(&kept), Some(&1));
    db.drop_database().await.unwrap();
}

/// A dead job that was requeued, run and finished again while a delete of
/// it waited for its row is deleted with all its attempts, the one recorded
/// after the delete's statement began too: the attempts are deleted by a
/// statement that starts once the job's row is the delete's.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_finished_again_while_its_delete_waited_leaves_no_attempt() {
    let (db, store) = database_with_module().await;
    let id = finished_job(&store, "default", JobState::Dead, None).await;
    // What a requeue, a claim and the attempt's end leave behind, held
    // uncommitted until the delete waits for the row.
    let finisher = db
        .begin_held(&format!(
            "UPDATE jobs SET state = 'succeeded', attempt = attempt + 1,
                 lease_token = nextval('lease_tokens'), finished_at = now(), updated_at = now()
             WHERE id = '{id}';
             INSERT INTO job_attempts (job_id, lease_token, attempt, worker_id, started_at, outcome)
             SELECT id, lease_token, attempt, 'w2', now(), 'succeeded' FROM jobs WHERE id = '{id}'"
        ))
        .await
        .unwrap();

    delete_behind(finisher, &store, id).await.unwrap();
    assert!(store.get_job(id).await.unwrap().is_none());
    assert_eq!(store.attempts_per_job().await.unwrap().get(&id), None);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pruner_reads_the_retention_index_not_the_table() {
    let db = test_database().await;
    let store = db.store();
    let module = stored_module(store).await;
    for queue in ["archive", "kept"] {
        let jobs = FillerJobs {
            module_hash: &module,
            queue,
            state: JobState::Succeeded,
            count: 50_000,
            age: Duration::from_secs(30 * 86_400),
            priorities: 1,
        };
        store.insert_filler_jobs(&jobs).await.unwrap();
    }
    store.vacuum_jobs().await.unwrap();
    // Served by the index, a pass reads what it deletes, in the index's
    // order; otherwise it reads and sorts every finished job of a queue.
    let plan = store.explain_prune_finished(1000).await.unwrap();
    assert!(!plan.contains("Sort"), "{plan}");
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_is_checked_and_defaults_are_shown() {
    let app = TestApp::start().await;
    let (_, never) = app.get_json("/v1/queues/anything").await;
    assert_eq!(
        never["retention"],
        json!({"succeeded": "7days", "dead": "30days", "cancelled": "30days"})
    );
    for (body, field) in [
        (
            json!({"retention": {"succeeded": "soon"}}),
            "retention.succeeded",
        ),
        (json!({"retention": {"dead": "1.5s"}}), "retention.dead"),
        (
            json!({"retention": {"dead": "18446744073709551615s 1000ms"}}),
            "retention.dead",
        ),
        (
            json!({"retention": {"succeeded": "1844674407 3709551615s 1000ms"}}),
            "retention.succeeded",
        ),
        (
            json!({"retention": {"cancelled": "3651days"}}),
            "retention.cancelled",
        ),
        (json!({"retention": {"running": "1d"}}), "retention"),
    ] {
        let (status, answer) = app.put_json("/v1/queues/default", &body.to_string()).await;
        assert!(status.is_client_error(), "{body} → {answer}");
        let error = &answer["error"];
        let named = error["field"].as_str().unwrap_or_default();
        assert!(
            named.starts_with(field) || error["message"].as_str().unwrap().contains(field),
            "{body} → {error}"
        );
    }
    // A PATCH changes the states it names and keeps the others.
    app.put_json(
        "/v1/queues/default",
        &json!({"retention": {"dead": "forever"}}).to_string(),
    )
    .await;
    let (_, patched) = app
        .send_json(
            reqwest::Method::PATCH,
            "/v1/queues/default",
            &json!({"retention": {"succeeded": "1h"}}).to_string(),
        )
        .await;
    assert_eq!(
        patched["retention"],
        json!({"succeeded": "1h", "dead": "forever", "cancelled": "30days"})
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_job_disappears_once_its_retention_passes_on_a_running_cluster() {
    let (app, module) = TestApp::start_running("hello").await;
    app.set_default_queue(json!({"retention": {"succeeded": "1s"}}))
        .await;
    let job = app.run(&module, json!({"name": "brief"})).await;
    assert_eq!(job.state, JobState::Succeeded);
    // The worker's elected maintenance runs the pruner every 100 ms here.
    crate::support::eventually(Duration::from_secs(10), || async {
        let (status, _) = app.get_json(&format!("/v1/jobs/{}", job.id)).await;
        (status == reqwest::StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    app.finish().await;
}
