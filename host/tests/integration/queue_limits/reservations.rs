//! The limited claim in two steps (store/claim.rs,
//! migrations/20261213000001_claim_reservations.sql): places reserved under
//! the queue's row lock, then claimed without it. Each test stops a claim
//! between its steps, as a worker that stalls or dies there does, and
//! checks that the limits hold all the same.

use std::time::Duration;

use serde_json::json;
use taskflow::store::{RESERVATION_EXPIRY, Reservation, Store};
use taskflow_testkit::HeldTransaction;
use tokio::task::JoinHandle;

use super::{TTL, claim, held_at_its_lease_tokens, jobs_keyed, limited_store, running};
use crate::support::TestApp;

/// Reserves places for a claim of up to `limit` jobs of `default`.
async fn reserve(store: &Store, limit: usize) -> i64 {
    match store.reserve_places("default", limit).await.unwrap() {
        Reservation::Places(reservation) => reservation,
        other => panic!("reserved no places: {other:?}"),
    }
}

async fn claim_reserved(store: &Store, reservation: i64) -> usize {
    store
        .claim_reserved(reservation, "stalled", TTL)
        .await
        .unwrap()
        .len()
}

/// The claim of `reservation`, held after it has locked its reservation and
/// before it starts any job: the held transaction's `ALTER SEQUENCE` makes
/// its first `nextval('lease_tokens')` wait until the transaction ends.
async fn a_held_claim(
    app: &TestApp,
    store: &Store,
    reservation: i64,
) -> (HeldTransaction, JoinHandle<usize>) {
    let store = store.clone();
    held_at_its_lease_tokens(
        app,
        async move { claim_reserved(&store, reservation).await },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_count_sees_the_places_of_a_reservation_not_yet_claimed() {
    let (app, store) = limited_store(json!({"max_running": 3}), jobs_keyed(&[None; 10])).await;
    let stalled = reserve(&store, 2).await;
    // Two places are in the bound, which leaves no room for a claim of
    // five: it counts, and finds no job running but two places reserved.
    assert_eq!(claim(&store, "w2", 5).await.len(), 1);
    assert_eq!(claim_reserved(&store, stalled).await, 2);
    assert_eq!(
        claim_reserved(&store, stalled).await,
        0,
        "one claim per reservation"
    );
    assert_eq!(running(&store).await, 3);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_left_unclaimed_expires_and_its_places_come_back() {
    let (app, store) = limited_store(json!({"max_running": 3}), jobs_keyed(&[None; 10])).await;
    let stalled = reserve(&store, 3).await;
    assert!(
        claim(&store, "w2", 3).await.is_empty(),
        "all places reserved"
    );
    tokio::time::sleep(RESERVATION_EXPIRY + Duration::from_millis(100)).await;
    assert_eq!(
        claim_reserved(&store, stalled).await,
        0,
        "a claim after its reservation's expiry starts nothing"
    );
    assert_eq!(
        claim(&store, "w2", 3).await.len(),
        3,
        "the places came back"
    );
    assert_eq!(claim_reserved(&store, stalled).await, 0);
    assert_eq!(running(&store).await, 3);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_does_not_wait_for_a_claim_that_holds_an_expired_reservation() {
    let (app, store) = limited_store(json!({"max_running": 3}), jobs_keyed(&[None; 10])).await;
    let slow = reserve(&store, 3).await;
    // The claim takes up its reservation in time, then is held until long
    // after the reservation has expired.
    let (mut tokens, slow_claim) = a_held_claim(&app, &store, slow).await;
    tokio::time::sleep(RESERVATION_EXPIRY + Duration::from_millis(100)).await;

    // The next reservation leaves it unfolded, counted as three places.
    tokio::select! {
        taken = claim(&store, "w2", 3) => assert!(taken.is_empty(), "took {}", taken.len()),
        waited = tokens.until_waiting(2) => panic!(
            "a reservation waited for a claim under way, holding the queue's row: {waited:?}"
        ),
    }
    tokens.commit().await.unwrap();
    assert_eq!(slow_claim.await.unwrap(), 3);
    assert!(claim(&store, "w2", 3).await.is_empty());
    assert_eq!(running(&store).await, 3);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_places_a_claim_did_not_use_return_to_the_rate() {
    let (app, store) = limited_store(
        json!({"rate": {"limit": 5, "period": "60s"}}),
        jobs_keyed(&[None; 3]),
    )
    .await;
    // Both reservations see three jobs waiting; the first claim takes them
    // all, so the second's two places go unused.
    let first = reserve(&store, 3).await;
    let second = reserve(&store, 3).await;
    assert_eq!(claim_reserved(&store, first).await, 3);
    assert_eq!(claim_reserved(&store, second).await, 0);

    store.insert_jobs(&jobs_keyed(&[None; 4])).await.unwrap();
    assert_eq!(
        claim(&store, "w3", 5).await.len(),
        2,
        "three starts of five: the unused places are back"
    );
    assert!(
        claim(&store, "w3", 5).await.is_empty(),
        "the window is full"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_waits_for_a_reserved_claim_under_way_and_revokes_the_other_reservations() {
    let (app, store) = limited_store(json!({"max_running": 10}), jobs_keyed(&[None; 10])).await;
    let under_way = reserve(&store, 3).await;
    let revoked = reserve(&store, 3).await;
    let (mut tokens, claim) = a_held_claim(&app, &store, under_way).await;

    let mut pause = Box::pin(store.set_queue_paused("default", true));
    tokio::select! {
        paused = &mut pause => panic!(
            "the pause committed before a claim under way: {paused:?}"
        ),
        waited = tokens.until_waiting(2) => waited.unwrap(),
    }
    tokens.commit().await.unwrap();
    assert_eq!(claim.await.unwrap(), 3, "the claim under way finishes");
    pause.await.unwrap();
    assert_eq!(
        claim_reserved(&store, revoked).await,
        0,
        "no claim starts a job after the pause"
    );
    assert_eq!(running(&store).await, 3);
    app.finish().await;
}
