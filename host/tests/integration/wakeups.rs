//! Wake-ups, the doorbell idle workers wait on.

use std::time::{Duration, Instant};

use futures::StreamExt;
use taskflow::lease::wakeup::PUBLISH_INTERVAL;
use taskflow::lease::{Redis, Waker};
use uuid::Uuid;

use crate::support::redis_url;

/// A stream of wake-ups is published at most once per interval (each
/// `PUBLISH` wakes Redis and every subscribed worker), and the last one
/// still goes out, so no job waits for a poll.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_wake_ups_is_published_at_most_once_per_interval_and_the_last_goes_out() {
    let prefix = format!("tftest:{}:", Uuid::new_v4().simple());
    let mut pubsub = redis::Client::open(redis_url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(format!("{prefix}wake:q")).await.unwrap();
    let mut messages = pubsub.into_on_message();
    let waker = Waker::spawn(Redis::connect_lazy(&redis_url(), &prefix).unwrap());

    // Far more often than once per interval, from a thread of its own so
    // the spacing does not depend on the runtime's timer resolution.
    let wakes = 200;
    let (started, last_wake) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        for _ in 0..wakes {
            waker.wake(["q"]);
            std::thread::sleep(Duration::from_micros(100));
        }
        (started, Instant::now())
    })
    .await
    .unwrap();

    let mut received = Vec::new();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), messages.next()).await
    {
        received.push(Instant::now());
    }
    let window = last_wake + PUBLISH_INTERVAL - started;
    let allowed = (window.as_secs_f64() / PUBLISH_INTERVAL.as_secs_f64()).ceil() as usize + 1;
    assert!(
        !received.is_empty() && received.len() <= allowed,
        "{wakes} wake-ups over {window:?} made {} messages; at most {allowed} expected",
        received.len()
    );
    assert!(
        received.last().unwrap() >= &last_wake,
        "the wake-ups after the last message were lost"
    );
}
