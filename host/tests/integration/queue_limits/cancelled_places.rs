//! A cancelled attempt keeps its place under `max_running` and
//! `max_running_per_key` until its guest has surely stopped: until its
//! worker reports it (a `Stale` outcome, `Store::finish_if_lease_matches`),
//! or one lease TTL after the cancel if no report comes
//! (`Store::cancel_if_unfinished`), when the pruner may delete it
//! (`Store::forget_lapsed_places`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use taskflow::maintenance::{Pruner, Service};
use taskflow::store::{ClaimedJob, Store, Transition};

use super::{TTL, claim, jobs_keyed, limited_store};
use crate::support::{lease_lapses, rescue, success};

/// The limits each test runs under, with the keys of its two jobs: one
/// place for the queue, or one per key for two jobs of the same key.
fn one_place() -> [(serde_json::Value, [Option<&'static str>; 2]); 2] {
    [
        (json!({"max_running": 1}), [None, None]),
        (json!({"max_running_per_key": 1}), [Some("k"), Some("k")]),
    ]
}

/// The rows of `stopping_attempts`, lapsed or not.
async fn held_places(admin: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stopping_attempts")
        .fetch_one(admin)
        .await
        .unwrap()
}

/// The places the queue's stats show as held by stopping attempts.
async fn stopping(store: &Store) -> u64 {
    store.queue_stats(Some("default")).await.unwrap()["default"].stopping
}

/// Cancels `job` as an API with the tests' lease TTL does.
async fn cancel(store: &Store, job: &ClaimedJob) {
    store
        .cancel_if_unfinished(job.id, "cancelled", TTL)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_attempt_holds_its_place_until_its_worker_reports_it() {
    for (limits, keys) in one_place() {
        let (app, store) = limited_store(limits.clone(), jobs_keyed(&keys)).await;
        let first = claim(&store, "w1", 2).await;
        assert_eq!(first.len(), 1, "{limits}: one place");
        let deadline = lease_lapses(&store, &first[0]).await;
        cancel(&store, &first[0]).await;
        assert!(
            claim(&store, "w2", 1).await.is_empty(),
            "{limits}: the cancelled guest may still run"
        );
        assert_eq!(stopping(&store).await, 1, "{limits}");

        // A rescuer that read the lease as lapsed before the cancel is
        // fenced out too, but it does not know the guest stopped.
        let rescued = store
            .finish_if_lease_matches(&[rescue(&first[0], "w1", deadline)])
            .await
            .unwrap();
        assert!(matches!(rescued[..], [Transition::Stale]), "{limits}");
        assert!(
            claim(&store, "w2", 1).await.is_empty(),
            "{limits}: a rescue's report frees no place"
        );
        assert_eq!(stopping(&store).await, 1, "{limits}");

        let reported = store
            .finish_if_lease_matches(&[success(&first[0], "w1", b"{}")])
            .await
            .unwrap();
        assert!(matches!(reported[..], [Transition::Stale]), "{limits}");
        assert_eq!(
            claim(&store, "w2", 1).await.len(),
            1,
            "{limits}: the worker's report frees the place"
        );
        assert_eq!(stopping(&store).await, 0, "{limits}");
        app.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_attempt_that_no_worker_reports_holds_its_place_one_ttl() {
    for (limits, keys) in one_place() {
        let (app, store) = limited_store(limits.clone(), jobs_keyed(&keys)).await;
        let first = claim(&store, "w1", 2).await;
        assert_eq!(first.len(), 1, "{limits}: one place");
        // The cancel's own TTL is shorter than the one the claim granted,
        // which therefore sets how long the place is held.
        let cancelled = store
            .cancel_if_unfinished(first[0].id, "cancelled", Duration::from_millis(100))
            .await
            .unwrap();
        let mut admin = PgConnection::connect(app.db.url()).await.unwrap();
        let held_until: DateTime<Utc> =
            sqlx::query_scalar("SELECT held_until FROM stopping_attempts")
                .fetch_one(&mut admin)
                .await
                .unwrap();
        assert_eq!(
            held_until,
            cancelled.job.finished_at.unwrap() + TTL,
            "{limits}"
        );
        assert!(
            claim(&store, "w2", 1).await.is_empty(),
            "{limits}: the cancelled guest may still run"
        );

        // That moment comes with no report: the place counts no more, and
        // the pruner deletes it.
        sqlx::query("UPDATE stopping_attempts SET held_until = now()")
            .execute(&mut admin)
            .await
            .unwrap();
        assert_eq!(claim(&store, "w2", 1).await.len(), 1, "{limits}: lapsed");
        assert_eq!(held_places(&mut admin).await, 1, "{limits}");
        assert_eq!(
            stopping(&store).await,
            0,
            "{limits}: a lapsed place is not shown"
        );
        Pruner::new(store.clone()).run_once().await.unwrap();
        assert_eq!(held_places(&mut admin).await, 0, "{limits}");
        app.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_attempt_holds_only_its_own_keys_place() {
    let jobs = jobs_keyed(&[Some("k"), Some("k"), Some("j")]);
    let j = jobs[2].id;
    let (app, store) = limited_store(json!({"max_running_per_key": 1}), jobs).await;
    let first = claim(&store, "w1", 1).await;
    assert_eq!(first.len(), 1);
    assert_ne!(first[0].id, j, "the claim takes the oldest job, one of k");
    cancel(&store, &first[0]).await;

    let next: Vec<_> = claim(&store, "w2", 3)
        .await
        .iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(next, [j], "k's place is held, j's is free");
    app.finish().await;
}
