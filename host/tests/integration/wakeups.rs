//! Wake-ups, the doorbell idle workers wait on.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use taskflow::job::JobState;
use taskflow::lease::wakeup::PUBLISH_INTERVAL;
use taskflow::lease::{Redis, Waker};
use uuid::Uuid;

use crate::support::{TcpProxy, TestApp, redis_url};

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

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_is_woken_by_a_submission_rather_than_by_polling() {
    let app = TestApp::start().await;
    let mut config = app.worker_config("w1");
    config.poll_interval = Duration::from_secs(3600);
    app.spawn_worker_with(config);
    let module = app.upload("hello").await;
    // Let the worker find the queue empty and go to sleep.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let job = app.submit(&module, json!({})).await;
        let job = app
            .client
            .wait(job.id, Duration::from_secs(20))
            .await
            .expect("woken, not polled");
        assert_eq!(job.state, JobState::Succeeded);
    }
    app.finish().await;
}

/// A subscription only listens, so a connection that went half-open (the
/// server gone, the client never told) would stay silent for good, and
/// every wake-up after it would be missed until the worker restarts: its
/// jobs would wait for `--poll-interval`. The listener must notice and
/// subscribe again, which wakes the worker once.
#[tokio::test(flavor = "multi_thread")]
async fn a_wake_up_listener_whose_connection_went_half_open_subscribes_again() {
    let redis_address = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("REDIS_URL is redis://host:port");
    let proxy = TcpProxy::start(redis_address).await;
    let prefix = format!("tftest:{}:", Uuid::new_v4().simple());
    let redis = Redis::connect_lazy(&format!("redis://{}", proxy.address), &prefix).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let woken =
        taskflow::lease::wakeup::WakeupListener::spawn(redis, &["q".to_owned()], shutdown.clone());
    tokio::time::timeout(Duration::from_secs(10), woken.notified())
        .await
        .expect("woken once subscribed");

    proxy.sever_silently();
    tokio::time::timeout(Duration::from_secs(30), woken.notified())
        .await
        .expect("the listener noticed it hears nothing and subscribed again");
    shutdown.cancel();
}
