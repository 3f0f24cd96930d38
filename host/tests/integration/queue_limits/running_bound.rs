//! `max_running` against the upper bound of running jobs a queue's row
//! keeps (`running_bound`, store/claim.rs): a claim the bound leaves room
//! for does not count, and the limit holds all the same.

use serde_json::json;

use super::{claim, jobs_keyed, limited_store, running};
use crate::support::success;

#[tokio::test(flavor = "multi_thread")]
async fn claims_that_take_the_bound_still_never_overrun_max_running() {
    let (app, store) = limited_store(json!({"max_running": 12}), jobs_keyed(&[None; 30])).await;
    // The first claim counts; the next two fit under the bound (4 + 4 and
    // 8 + 4 of 12); the fourth does not, counts 12 and takes none.
    let mut taken = Vec::new();
    let mut claimed = Vec::new();
    for _ in 0..4 {
        let jobs = claim(&store, "w1", 4).await;
        taken.push(jobs.len());
        claimed.extend(jobs);
    }
    assert_eq!(taken, [4, 4, 4, 0]);
    assert_eq!(running(&store).await, 12);

    // Five attempts end: the bound still says 12, so the next claims count
    // and take exactly the five places.
    let ended: Vec<_> = claimed
        .iter()
        .take(5)
        .map(|job| success(job, "w1", b"{}"))
        .collect();
    store.finish_if_lease_matches(&ended).await.unwrap();
    let taken: Vec<_> = [
        claim(&store, "w2", 4).await.len(),
        claim(&store, "w2", 4).await.len(),
        claim(&store, "w2", 4).await.len(),
    ]
    .into();
    assert_eq!(taken, [4, 1, 0]);
    assert_eq!(running(&store).await, 12);
    app.finish().await;
}
