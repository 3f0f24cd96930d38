//! The limited claim in two steps (store/claim.rs,
//! migrations/20261213000001_claim_reservations.sql): places reserved under
//! the queue's row lock, then claimed without it. Each test stops a claim
//! between its steps, as a worker that stalls or dies there does, and
//! checks that the limits hold all the same.

use std::time::Duration;

use serde_json::json;
use taskflow::store::{
    CLAIMS_PER_RESERVATION, ClaimPath, OpenReservation, RESERVATION_EXPIRY, Reservation, Store,
};
use taskflow_testkit::HeldTransaction;
use tokio::task::JoinHandle;

use super::{TTL, claim, held_at_its_lease_tokens, jobs_keyed, limited_store, running};
use crate::support::TestApp;

/// Reserves places for claims of up to `limit` jobs of `default`.
async fn reserve_for(store: &Store, limit: usize) -> OpenReservation {
    match store.reserve_places("default", limit, None).await.unwrap() {
        Reservation::Places(reservation) => reservation,
        other => panic!("reserved no places: {other:?}"),
    }
}

/// The reservation's id, for a claim of up to `limit` jobs.
async fn reserve(store: &Store, limit: usize) -> i64 {
    reserve_for(store, limit).await.id
}

/// Claims every place `reservation` has left.
async fn claim_reserved(store: &Store, reservation: i64) -> usize {
    claim_up_to(store, reservation, 1_000).await
}

async fn claim_up_to(store: &Store, reservation: i64, limit: usize) -> usize {
    store
        .claim_reserved(reservation, "stalled", limit, TTL)
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
        "its places are used"
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
    // Room for the two reservations' three places each, and no more.
    let (app, store) = limited_store(json!({"max_running": 6}), jobs_keyed(&[None; 10])).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn far_from_its_limits_a_reservation_serves_several_claims_until_one_comes_back_short() {
    let (app, store) = limited_store(json!({"max_running": 1000}), jobs_keyed(&[None; 23])).await;
    let claims = CLAIMS_PER_RESERVATION as usize;
    let ahead = reserve_for(&store, 5).await;
    assert_eq!(ahead.left, 5 * claims, "places for several claims");
    for _ in 0..claims {
        assert_eq!(claim_up_to(&store, ahead.id, 5).await, 5);
    }
    assert_eq!(
        claim_up_to(&store, ahead.id, 5).await,
        0,
        "its places are used"
    );

    // Through the store's claim: the reservation is carried in the path.
    let first = store
        .claim("default", "w1", 2, TTL, ClaimPath::Limited(None))
        .await
        .unwrap();
    assert_eq!(first.jobs.len(), 2);
    let ClaimPath::Limited(Some(open)) = first.next_path else {
        panic!("no reservation left open: {:?}", first.next_path);
    };
    assert_eq!(open.left, 2 * claims - 2);
    let short = store
        .claim("default", "w1", 2, TTL, first.next_path)
        .await
        .unwrap();
    assert_eq!(short.jobs.len(), 1, "one job was left");
    assert_eq!(
        short.next_path,
        ClaimPath::Limited(None),
        "a short claim closes its reservation"
    );
    store.insert_jobs(&jobs_keyed(&[None; 3])).await.unwrap();
    assert_eq!(
        claim_up_to(&store, open.id, 2).await,
        0,
        "a closed reservation serves no claim"
    );
    assert_eq!(running(&store).await, 5 * claims as i64 + 3);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_its_open_reservation_cannot_fill_takes_all_its_jobs_from_a_new_one() {
    let (app, store) = limited_store(json!({"max_running": 1000}), jobs_keyed(&[None; 30])).await;
    let claims = CLAIMS_PER_RESERVATION as usize;
    let mut path = ClaimPath::Limited(None);
    for _ in 1..claims {
        path = store
            .claim("default", "w1", 4, TTL, path)
            .await
            .unwrap()
            .next_path;
    }
    let ClaimPath::Limited(Some(open)) = path else {
        panic!("no reservation left open: {path:?}");
    };
    assert_eq!(open.left, 4, "places for one more claim of four");

    let bigger = store.claim("default", "w1", 6, TTL, path).await.unwrap();
    assert_eq!(bigger.jobs.len(), 6);
    let ClaimPath::Limited(Some(new)) = bigger.next_path else {
        panic!("no reservation left open: {:?}", bigger.next_path);
    };
    assert_ne!(new.id, open.id);
    assert_eq!(
        new.left,
        6 * claims - 6,
        "one new reservation, for claims of six, served the whole claim"
    );
    assert_eq!(
        claim_up_to(&store, open.id, 4).await,
        0,
        "the reservation it outgrew is closed"
    );
    assert_eq!(running(&store).await, 4 * (claims as i64 - 1) + 6);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn near_its_limits_a_reservation_takes_only_what_its_claim_asks() {
    let (app, store) = limited_store(json!({"max_running": 8}), jobs_keyed(&[None; 20])).await;
    // Places for several claims would take more than half of the eight.
    let first = reserve_for(&store, 5).await;
    assert_eq!(first.left, 5);
    let second = reserve_for(&store, 5).await;
    assert_eq!(second.left, 3, "what the limit leaves");
    assert_eq!(claim_reserved(&store, first.id).await, 5);
    assert_eq!(claim_reserved(&store, second.id).await, 3);
    assert_eq!(running(&store).await, 8);
    app.finish().await;
}
