//! A cancelled attempt keeps its place under `max_running` and
//! `max_running_per_key` until its guest has surely stopped: until its
//! worker reports it (a `Stale` outcome, `Store::finish_if_lease_matches`),
//! or one lease TTL after the cancel if no report comes
//! (`Store::cancel_if_unfinished`), when the pruner may delete it
//! (`Store::forget_lapsed_places`).

use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, PgConnection};
use taskflow::maintenance::Pruner;
use taskflow::store::{ClaimPath, Store, Transition};

use super::{TTL, claim, jobs_keyed, limited_store};
use crate::support::{TestApp, eventually, lease_lapses, rescue, success};

/// The limits each test runs under, with the keys of its two jobs: one
/// place for the queue, or one per key for two jobs of the same key.
fn one_place() -> [(serde_json::Value, [Option<&'static str>; 2]); 2] {
    [
        (json!({"max_running": 1}), [None, None]),
        (json!({"max_running_per_key": 1}), [Some("k"), Some("k")]),
    ]
}

/// The rows of `stopping_attempts`, lapsed or not.
async fn held_places(app: &TestApp) -> i64 {
    let mut admin = PgConnection::connect(app.db.url()).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM stopping_attempts")
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

async fn cancel(store: &Store, job: &taskflow::store::ClaimedJob, own_ttl: Duration) {
    store
        .cancel_if_unfinished(job.id, "cancelled", own_ttl)
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
        cancel(&store, &first[0], TTL).await;
        assert!(
            claim(&store, "w2", 1).await.is_empty(),
            "{limits}: the cancelled guest may still run"
        );

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
        app.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_attempt_that_no_worker_reports_holds_its_place_one_ttl() {
    // The claim grants a short TTL; the cancel's own is shorter still, so
    // the claim's sets how long the place is held.
    let granted = Duration::from_millis(1500);
    for (limits, keys) in one_place() {
        let (app, store) = limited_store(limits.clone(), jobs_keyed(&keys)).await;
        let first = store
            .claim("default", "w1", 2, granted, ClaimPath::Plain)
            .await
            .unwrap()
            .jobs;
        assert_eq!(first.len(), 1, "{limits}: one place");
        let cancelled_at = tokio::time::Instant::now();
        cancel(&store, &first[0], Duration::from_millis(100)).await;
        assert!(
            claim(&store, "w2", 1).await.is_empty(),
            "{limits}: the cancelled guest may still run"
        );

        eventually(Duration::from_secs(10), || async {
            (!claim(&store, "w2", 1).await.is_empty()).then_some(())
        })
        .await;
        assert!(
            cancelled_at.elapsed() >= granted,
            "{limits}: freed after {:?}, before the TTL the claim granted",
            cancelled_at.elapsed()
        );

        // The lapsed place counts no more, and the pruner deletes it.
        assert_eq!(held_places(&app).await, 1, "{limits}");
        Pruner::new(store.clone()).prune().await.unwrap();
        assert_eq!(held_places(&app).await, 0, "{limits}");
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
    cancel(&store, &first[0], TTL).await;

    let next: Vec<_> = claim(&store, "w2", 3)
        .await
        .iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(next, [j], "k's place is held, j's is free");
    app.finish().await;
}
