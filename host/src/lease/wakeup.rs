//! Wake-ups: how an idle worker learns within milliseconds that a job is due.
//!
//! Whoever makes a job `available` (the API on submit or retry, the
//! scheduler when a delayed job falls due) publishes on
//! `{prefix}wake:{queue}` after the commit. Workers subscribe to their
//! queues' channels and claim as soon as a message arrives. A message is only
//! a doorbell; the claim itself reads PostgreSQL, so a lost or duplicated
//! message costs nothing but latency, and workers also poll slowly in case
//! Redis was down when the message was sent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Redis;

/// Publishes wake-ups without making anyone wait for Redis.
///
/// [`Waker::wake`] only queues the queue names; a background task publishes
/// them, one pipelined round trip per burst, with each queue named once per
/// burst however many jobs it received. A request that made a job available
/// answers as soon as its commit is done. Bursts are at least
/// [`PUBLISH_INTERVAL`] apart: a wake-up after a quiet spell goes out at
/// once, and those that follow it closely wait for the interval to end and
/// go out together, so a stream of submissions costs at most one round of
/// `PUBLISH`es per interval, not one per job. If Redis is unreachable the
/// wake-up is logged and dropped: the job is committed, and workers find it
/// by polling.
#[derive(Debug, Clone)]
pub struct Waker {
    sender: mpsc::UnboundedSender<String>,
}

impl Waker {
    /// Starts the publisher task on the current runtime.
    pub fn spawn(redis: Redis) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(publish(redis, receiver));
        Self { sender }
    }

    /// Wakes the workers of each queue in `queues`.
    pub fn wake<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        for queue in queues {
            // Fails only when the runtime is shutting down.
            let _ = self.sender.send(queue.to_owned());
        }
    }
}

/// Most queued wake-ups taken in one burst.
const BURST: usize = 1024;

/// Shortest time between two bursts of `PUBLISH`es.
///
/// Each `PUBLISH` costs the publisher, Redis and every subscribed worker a
/// wake-up; measured on the benchmark machine, publishing once per job took
/// a fifth of the CPU a sequential submission costs (docs/benchmarks.md).
/// An idle worker hears of a job at most this much later, and only while
/// jobs arrive faster than one per interval, when workers are rarely idle.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(1);

async fn publish(redis: Redis, receiver: mpsc::UnboundedReceiver<String>) {
    let mut bursts = Bursts::new(receiver, BURST);
    while let Some(burst) = bursts.next().await {
        let queues: BTreeSet<&str> = burst.iter().map(String::as_str).collect();
        let mut pipe = redis::pipe();
        for queue in queues {
            pipe.cmd(redis.deployment.publish_command())
                .arg(redis.key(&format!("wake:{queue}")))
                .arg("")
                .ignore();
        }
        let mut connection = redis.connection.clone();
        if let Err(error) = pipe.query_async::<()>(&mut connection).await {
            tracing::warn!(%error, "could not publish a wake-up; workers will find the jobs by polling");
        }
    }
}

/// What a channel yields, taken in bursts of at most `burst_max`, bursts
/// at least [`PUBLISH_INTERVAL`] apart: the first after a quiet spell goes
/// out at once, those that follow it closely wait for the interval and go
/// out together.
pub(super) struct Bursts<T> {
    receiver: mpsc::UnboundedReceiver<T>,
    burst: Vec<T>,
    burst_max: usize,
    next_burst: tokio::time::Instant,
}

impl<T> Bursts<T> {
    pub(super) fn new(receiver: mpsc::UnboundedReceiver<T>, burst_max: usize) -> Self {
        Self {
            receiver,
            burst: Vec::with_capacity(burst_max),
            burst_max,
            next_burst: tokio::time::Instant::now(),
        }
    }

    /// The next burst; `None` once every sender is gone.
    pub(super) async fn next(&mut self) -> Option<&[T]> {
        self.burst.clear();
        if self
            .receiver
            .recv_many(&mut self.burst, self.burst_max)
            .await
            == 0
        {
            return None;
        }
        if tokio::time::Instant::now() < self.next_burst {
            tokio::time::sleep_until(self.next_burst).await;
            while self.burst.len() < self.burst_max
                && let Ok(item) = self.receiver.try_recv()
            {
                self.burst.push(item);
            }
        }
        self.next_burst = tokio::time::Instant::now() + PUBLISH_INTERVAL;
        Some(&self.burst)
    }
}

/// Subscribes to wake-ups and turns them into a [`Notify`] permit.
pub struct WakeupListener;

/// Delay before resubscribing after the subscription failed.
pub(super) const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

impl WakeupListener {
    /// Subscribes to the wake-up channels of `queues` in a background task
    /// until `shutdown`, and returns the [`Notify`] it signals. The task
    /// reconnects by itself when Redis goes away, and signals once after
    /// every (re)subscription because messages sent meanwhile are lost.
    pub fn spawn(redis: Redis, queues: &[String], shutdown: CancellationToken) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let channels: Vec<String> = queues
            .iter()
            .map(|queue| redis.key(&format!("wake:{queue}")))
            .collect();
        tokio::spawn(listen(redis, channels, notify.clone(), shutdown));
        notify
    }
}

async fn listen(
    redis: Redis,
    channels: Vec<String>,
    notify: Arc<Notify>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match redis.subscribe(&channels).await {
            Ok(mut messages) => {
                notify.notify_one();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(_) => notify.notify_one(),
                            None => break,
                        },
                        () = shutdown.cancelled() => return,
                    }
                }
                tracing::warn!("wake-up subscription lost; resubscribing");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to wake-ups; polling until Redis is back");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
