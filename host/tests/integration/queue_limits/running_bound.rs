//! `max_running` against the upper bound of running jobs a queue's row
//! keeps (`running_bound`, store/claim.rs): a reservation the bound leaves
//! room for does not count, and the limit holds all the same.

use serde_json::json;
use taskflow::store::{ClaimPath, ClaimedJob, Store};

use super::{TTL, jobs_keyed, limited_store, running};
use crate::support::success;

/// Claims of up to four jobs by `worker`, each carrying the path (and the
/// reservation left open) of the one before, as a worker's do, until one
/// comes back empty; the jobs of each claim.
async fn claims_until_empty(store: &Store, worker: &str) -> Vec<Vec<ClaimedJob>> {
    let mut path = ClaimPath::Plain;
    let mut claims = Vec::new();
    loop {
        let claimed = store.claim("default", worker, 4, TTL, path).await.unwrap();
        if claimed.jobs.is_empty() {
            return claims;
        }
        path = claimed.next_path;
        claims.push(claimed.jobs);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_that_take_the_bound_still_never_overrun_max_running() {
    let (app, store) = limited_store(json!({"max_running": 40}), jobs_keyed(&[None; 60])).await;
    // The first reservation counts and takes places for four claims; the
    // second fits under the bound (16 + 16 of 40) and does not count; later
    // ones count again, and take less as the room shrinks.
    let claims = claims_until_empty(&store, "w1").await;
    assert!(claims.iter().all(|jobs| jobs.len() == 4));
    assert_eq!(claims.len(), 10, "forty jobs in claims of four");
    assert_eq!(running(&store).await, 40);

    // Five attempts end: the bound still says 40, so the next reservations
    // count and take exactly the five places.
    let ended: Vec<_> = claims
        .iter()
        .flatten()
        .take(5)
        .map(|job| success(job, "w1", b"{}"))
        .collect();
    store.finish_if_lease_matches(&ended).await.unwrap();
    let taken: Vec<_> = claims_until_empty(&store, "w2")
        .await
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(taken, [4, 1]);
    assert_eq!(running(&store).await, 40);
    app.finish().await;
}
