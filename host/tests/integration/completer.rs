//! The worker's outcome writer against a real PostgreSQL: what it does with
//! an outcome PostgreSQL refuses to store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskflow::job::{AfterFailure, AttemptLog, JobState};
use taskflow::lease::{Leases, Redis};
use taskflow::store::ClaimPath;
use taskflow::telemetry::Traces;
use taskflow::worker::{Completer, InFlight};
use uuid::Uuid;

use crate::support::{redis_url, store_with_jobs, success};

#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_postgres_refuses_is_recorded_as_failed_and_the_others_are_written() {
    let (db, _) = store_with_jobs(3).await;
    let store = db.store().clone();
    let claimed = store
        .claim(
            "default",
            "w1",
            3,
            Duration::from_secs(30),
            ClaimPath::Plain,
        )
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), 3);
    let redis = Redis::connect_lazy(
        &redis_url(),
        &format!("tftest:{}:", Uuid::new_v4().simple()),
    )
    .unwrap();
    let in_flight = InFlight::default();
    let until = Instant::now() + Duration::from_secs(30);
    for job in &claimed {
        in_flight.register(job.lease(), until);
    }
    let (completer, writer) = Completer::spawn(
        store.clone(),
        Leases::new(redis, Duration::from_secs(30)),
        in_flight.clone(),
        Arc::default(),
        Traces::default(),
    );
    // The middle outcome's log holds an escaped NUL, which jsonb cannot
    // store: PostgreSQL refuses it (SQLSTATE 22P05) whichever batch it is in.
    let mut refused = success(&claimed[1], "w1", b"lost");
    refused.log = AttemptLog {
        lines_json: r#"[{"source":"log","message":"a NUL \u0000 in jsonb"}]"#.into(),
        kept: 1,
        dropped: 0,
    };
    refused.if_refused = AfterFailure::Retry {
        delay: Duration::from_secs(60),
    };
    completer.submit(success(&claimed[0], "w1", b"first"));
    completer.submit(refused);
    completer.submit(success(&claimed[2], "w1", b"third"));
    drop(completer);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer does not retry a refused outcome forever")
        .unwrap();
    assert!(in_flight.is_empty(), "every attempt is settled");

    for (job, output) in [(&claimed[0], b"first"), (&claimed[2], b"third")] {
        let detail = store.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(detail.job.state, JobState::Succeeded);
        assert_eq!(detail.output.as_deref(), Some(&output[..]));
    }
    let detail = store.get_job(claimed[1].id).await.unwrap().unwrap();
    assert_eq!(
        detail.job.state,
        JobState::Retrying,
        "its fallback next state"
    );
    assert_eq!(detail.output, None);
    let attempts = store
        .list_attempts(claimed[1].id, None, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts.len(), 1);
    let error = attempts[0].end.error().expect("a failure");
    assert_eq!(error.kind, "outcome_rejected");
    assert!(error.message.contains("22P05"), "{}", error.message);
    assert_eq!(
        attempts[0].logs_dropped, 1,
        "its log line is counted, not kept"
    );
    db.drop_database().await.unwrap();
}
