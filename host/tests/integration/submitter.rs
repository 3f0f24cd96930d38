//! The store's group-commit writer (`store/submitter.rs`) and its insert
//! (`store/submit.rs`) against a real PostgreSQL: one refused submission
//! among grouped ones, lone writes whose caller stops waiting, and a lone
//! job stored as it would be in a group.

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use sqlx::{Connection, PgConnection};
use taskflow::job::{JobState, NewJob, TraceContext};
use taskflow::store::JobDetail;
use uuid::Uuid;

use crate::support::{TestApp, new_job, stored_module, test_database};

#[tokio::test(flavor = "multi_thread")]
async fn a_submission_postgres_refuses_fails_alone_in_its_group() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let submitter = taskflow::store::Submitter::spawn(app.store().clone());
    // Past validation's reach: a job only the database can refuse.
    let job = |run_at| NewJob {
        run_at,
        ..new_job(&module)
    };
    let refused = "-10000-01-01T00:00:00Z".parse().unwrap();
    let submissions = (0..40).map(|i| {
        let job = job((i == 20).then_some(refused));
        let submitter = &submitter;
        async move { (i, submitter.submit(job).await) }
    });
    for (i, result) in futures::future::join_all(submissions).await {
        match result {
            Ok(submitted) => assert_ne!(i, 20, "{submitted:?}"),
            Err(error) => {
                assert_eq!(i, 20, "{error:?}");
                assert!(error.is_refusal(), "{error:?}");
                let answer = taskflow::api::ApiError::from(error);
                assert_eq!(answer.status, StatusCode::BAD_REQUEST);
                assert_eq!(answer.code, "invalid_value");
            }
        }
    }
    assert_eq!(app.job_count().await, 39);
    // Its writers keep a connection of the test database's pool until the
    // submitter is gone; closing the pool waits for them.
    drop(submitter);
    app.finish().await;
}

/// A lone submission is written from its caller's task; a caller that stops
/// waiting (its client went away) drops the write wherever it is, here just
/// after its statement was sent. The next submission on that connection
/// must get its own answer, not the abandoned statement's.
#[tokio::test(flavor = "multi_thread")]
async fn after_an_abandoned_lone_write_the_next_submission_gets_its_own_answer() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let submitter = taskflow::store::Submitter::spawn(app.store().clone());
    let warm = new_job(&module);
    assert_eq!(
        submitter.submit(warm.clone()).await.unwrap().job.id,
        warm.id
    );
    let mut abandoned_writes = 0;
    for _ in 0..20 {
        let job = new_job(&module);
        let mut abandoned = Box::pin(submitter.submit(job.clone()));
        match futures::poll!(abandoned.as_mut()) {
            std::task::Poll::Pending => abandoned_writes += 1,
            // This thread was preempted between sending the statement and
            // reading the socket: the answer was there on the first read.
            std::task::Poll::Ready(written) => assert_eq!(written.unwrap().job.id, job.id),
        }
        drop(abandoned);
        let next = new_job(&module);
        let submitted = submitter.submit(next.clone()).await.unwrap();
        assert_eq!(submitted.job.id, next.id);
        assert!(submitted.created);
    }
    assert!(abandoned_writes > 0, "every write ended within one poll");
    let count = app.job_count().await;
    assert!((21..=41).contains(&count), "{count} jobs");
    drop(submitter);
    app.finish().await;
}

/// A lone job has a statement of its own (`insert_one` in store/submit.rs;
/// a group's is `insert_many`): every column it writes, and the answer it
/// builds from its `RETURNING`, must be what a group's statement gives the
/// same job.
#[tokio::test(flavor = "multi_thread")]
async fn a_lone_job_is_stored_as_the_same_job_in_a_group_is() {
    let db = test_database().await;
    let store = db.store();
    let module = stored_module(store).await;
    let every_field = NewJob {
        queue: "other".into(),
        priority: -3,
        input: vec![0, 1, 2, 255],
        max_attempts: 2,
        timeout_ms: 77,
        fuel: 12_345,
        memory_limit_bytes: 1 << 22,
        run_at: Some(Utc::now() + chrono::Duration::hours(1)),
        idempotency_key: Some("key".into()),
        request_fingerprint: Some(vec![7; 32]),
        concurrency_key: Some("tenant-1".into()),
        trace: Some(
            TraceContext::parse_traceparent(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .unwrap(),
        ),
        ..new_job(&module)
    };
    for template in [new_job(&module), every_field] {
        let copy = |suffix: &str| NewJob {
            id: Uuid::now_v7(),
            idempotency_key: template
                .idempotency_key
                .as_ref()
                .map(|k| format!("{k}-{suffix}")),
            ..template.clone()
        };
        let (alone, grouped) = (copy("alone"), copy("grouped"));
        let answered = store
            .insert_jobs(std::slice::from_ref(&alone))
            .await
            .unwrap();
        store
            .insert_jobs(&[grouped.clone(), new_job(&module)])
            .await
            .unwrap();
        let stored_alone = store.get_job(alone.id).await.unwrap().unwrap();
        let stored_grouped = store.get_job(grouped.id).await.unwrap().unwrap();
        assert_eq!(
            format!("{:?}", answered[0].job),
            format!("{:?}", stored_alone.job)
        );
        assert_eq!(comparable(stored_alone), comparable(stored_grouped));

        // The fingerprint was stored: the same request again is answered
        // with the job it created.
        if alone.idempotency_key.is_some() {
            let again = NewJob {
                id: Uuid::now_v7(),
                ..alone.clone()
            };
            let answered = store.insert_jobs(&[again]).await.unwrap();
            assert!(!answered[0].created);
            assert_eq!(answered[0].job.id, alone.id);
        }
    }
    db.drop_database().await.unwrap();
}

/// Two batches that carry the same idempotency keys in opposite orders
/// (two clients retrying the same pair, two API instances' groups): each
/// insert waits at a key the other has written and not committed. Written
/// in their own order, the batches deadlocked and one failed after
/// `deadlock_timeout`; written in key order, the second waits for the
/// first and is answered with its jobs.
#[tokio::test(flavor = "multi_thread")]
async fn batches_with_the_same_keys_in_opposite_orders_do_not_deadlock() {
    let db = test_database().await;
    let store = db.store();
    let module = stored_module(store).await;
    let mut admin = PgConnection::connect(db.url()).await.unwrap();
    for sql in [
        // Each row takes a while to insert, so the two batches overlap.
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql
         AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$",
        "CREATE TRIGGER slow_row BEFORE INSERT ON jobs
         FOR EACH ROW EXECUTE FUNCTION slow_row()",
    ] {
        sqlx::query(sql).execute(&mut admin).await.unwrap();
    }
    let keyed = |key: &str| NewJob {
        idempotency_key: Some(key.into()),
        request_fingerprint: Some(key.as_bytes().to_vec()),
        ..new_job(&module)
    };
    let forward = [keyed("a"), keyed("b")];
    let backward = [keyed("b"), keyed("a")];
    let (forward_answer, backward_answer) =
        tokio::join!(store.insert_jobs(&forward), store.insert_jobs(&backward));
    let (forward_answer, backward_answer) = (forward_answer.unwrap(), backward_answer.unwrap());
    // Whichever committed first created both; the other was given them.
    let created = |answer: &[taskflow::store::Submitted]| {
        answer.iter().filter(|submitted| submitted.created).count()
    };
    let mut created = [created(&forward_answer), created(&backward_answer)];
    created.sort();
    assert_eq!(created, [0, 2]);
    let owner = |answer: &[taskflow::store::Submitted], key: &str| {
        answer
            .iter()
            .find(|submitted| submitted.job.idempotency_key.as_deref() == Some(key))
            .map(|submitted| submitted.job.id)
    };
    for key in ["a", "b"] {
        assert_eq!(owner(&forward_answer, key), owner(&backward_answer, key));
    }
    db.drop_database().await.unwrap();
}

/// The benchmark's second reference (`Store::reference_job_rows`) writes
/// the row a submission of the same job writes, no more and no less: its
/// rate is meant to tell what the row itself costs PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn the_job_row_reference_writes_the_row_a_submission_writes() {
    let db = test_database().await;
    let store = db.store();
    let module = stored_module(store).await;
    let job = NewJob {
        input: vec![9, 8, 7],
        concurrency_key: Some("tenant-2".into()),
        ..new_job(&module)
    };
    let submitted = store.insert_jobs(std::slice::from_ref(&job)).await.unwrap();
    let written = store
        .reference_job_rows(&job, std::time::Duration::from_millis(50))
        .await
        .unwrap();
    assert!(written > 0);

    let stored = store
        .list_jobs(&taskflow::store::JobFilter {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len() as u64, written + 1);
    let submission = comparable(store.get_job(submitted[0].job.id).await.unwrap().unwrap());
    for record in stored.iter().filter(|r| r.id != job.id) {
        let row = store.get_job(record.id).await.unwrap().unwrap();
        assert_eq!(comparable(row), submission);
    }
    db.drop_database().await.unwrap();
}

/// A stored job without what differs between two submissions of the same
/// job: its id, key and the time it was inserted (a due job's `run_at` is
/// that time).
fn comparable(detail: JobDetail) -> String {
    let mut job = detail.job;
    let inserted = job.created_at;
    assert_eq!(job.updated_at, inserted, "{job:?}");
    if job.state == JobState::Available {
        assert_eq!(job.run_at, inserted, "{job:?}");
        job.run_at = DateTime::UNIX_EPOCH;
    }
    job.id = Uuid::nil();
    job.idempotency_key = None;
    job.created_at = DateTime::UNIX_EPOCH;
    job.updated_at = DateTime::UNIX_EPOCH;
    format!("{job:?} {:?} {:?}", detail.input, detail.output)
}
