//! The store's group-commit writer (`store/submitter.rs`) against a real
//! PostgreSQL: one refused submission among grouped ones.

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
