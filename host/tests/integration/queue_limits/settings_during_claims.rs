//! A queue limited or paused while a worker's plain claim is under way
//! (`plain_claim_may_take` in store/claim.rs). The plain claim's statement
//! takes its snapshot before it can know of the change, so the change must
//! wait for it: otherwise a limited claim counting in between misses the
//! plain claim's jobs, and both start theirs.

use std::future::Future;
use std::pin::Pin;

use serde_json::json;
use taskflow::store::{ClaimPath, ClaimedJob, Store};
use taskflow_testkit::HeldTransaction;
use tokio::task::JoinHandle;

use super::{TTL, claim, held_at_its_lease_tokens, jobs_keyed, limited_store, running};
use crate::support::TestApp;

/// Six unlimited jobs on `default`, and a worker's plain claim of three of
/// them held after its snapshot and its row locks, before its commit: the
/// held transaction's `ALTER SEQUENCE` makes the claim's first
/// `nextval('lease_tokens')` wait.
async fn a_held_plain_claim() -> (TestApp, Store, HeldTransaction, JoinHandle<Vec<ClaimedJob>>) {
    let (app, store) = limited_store(json!({}), jobs_keyed(&[None; 6])).await;
    let claimer = store.clone();
    let (tokens, plain) =
        held_at_its_lease_tokens(&app, async move { claim(&claimer, "plain", 3).await }).await;
    (app, store, tokens, plain)
}

/// Runs `change` of the queue's settings while a plain claim is held, and
/// checks that it waits for the claim, then lets both finish.
async fn change_waits_for_the_plain_claim<F: Future<Output = ()>>(
    tokens: &mut HeldTransaction,
    change: F,
) -> Pin<Box<F>> {
    let mut change = Box::pin(change);
    tokio::select! {
        () = &mut change => panic!(
            "the change committed before a plain claim that cannot see it: \
             a limited claim counting now would miss the plain claim's jobs"
        ),
        waited = tokens.until_waiting(2) => waited.unwrap(),
    }
    change
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_set_during_a_plain_claim_waits_for_it_and_counts_its_jobs() {
    let (app, store, mut tokens, plain) = a_held_plain_claim().await;
    let limit = app.set_default_queue(json!({"max_running": 3}));
    let limit = change_waits_for_the_plain_claim(&mut tokens, limit).await;
    tokens.commit().await.unwrap();
    limit.await;

    assert_eq!(plain.await.unwrap().len(), 3, "the plain claim came first");
    let after = store
        .claim("default", "limited", 3, TTL, ClaimPath::Limited(None))
        .await
        .unwrap();
    assert!(after.jobs.is_empty(), "the limit's three places are taken");
    assert!(after.next_path.is_limited());
    assert_eq!(running(&store).await, 3);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_during_a_plain_claim_waits_for_it_and_no_claim_starts_after() {
    let (app, store, mut tokens, plain) = a_held_plain_claim().await;
    let pause = async {
        store.set_queue_paused("default", true).await.unwrap();
    };
    let pause = change_waits_for_the_plain_claim(&mut tokens, pause).await;
    tokens.commit().await.unwrap();
    pause.await;

    assert_eq!(plain.await.unwrap().len(), 3, "the plain claim came first");
    for path in [ClaimPath::Plain, ClaimPath::Limited(None)] {
        let after = store.claim("default", "after", 3, TTL, path).await.unwrap();
        assert!(
            after.jobs.is_empty(),
            "{path:?} claimed from a paused queue"
        );
    }
    assert_eq!(running(&store).await, 3);
    app.finish().await;
}
