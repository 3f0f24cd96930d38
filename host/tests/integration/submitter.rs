//! The store's group-commit writer (`store/submitter.rs`) against a real
//! PostgreSQL: one refused submission among grouped ones, and lone writes
//! whose caller stops waiting.

use reqwest::StatusCode;
use taskflow::job::NewJob;

use crate::support::{TestApp, new_job};

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
