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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{REDIS_RESPONSE_TIMEOUT, Redis, RedisError};

/// Publishes wake-ups.
#[derive(Debug, Clone)]
pub struct Waker {
    redis: Redis,
}

impl Waker {
    /// A waker publishing through `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Wakes the workers of each distinct queue in `queues`, in one round trip.
    pub async fn wake<'a>(
        &self,
        queues: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), RedisError> {
        let queues: BTreeSet<&str> = queues.into_iter().collect();
        if queues.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for queue in queues {
            pipe.publish(self.redis.key(&format!("wake:{queue}")), "")
                .ignore();
        }
        let mut connection = self.redis.connection.clone();
        let () = pipe.query_async(&mut connection).await?;
        Ok(())
    }

    /// Wakes the workers of `queues`, logging rather than failing if Redis is
    /// unreachable: the job is already committed and workers will find it
    /// by polling.
    pub async fn wake_or_log<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        if let Err(error) = self.wake(queues).await {
            tracing::warn!(%error, "could not publish a wake-up; workers will find the job by polling");
        }
    }
}

/// Subscribes to wake-ups and turns them into a [`Notify`] permit.
pub struct WakeupListener;

/// Delay before resubscribing after the subscription failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

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
        match subscribe(&redis, &channels).await {
            Ok(mut pubsub) => {
                notify.notify_one();
                let mut messages = pubsub.on_message();
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

async fn subscribe(redis: &Redis, channels: &[String]) -> Result<redis::aio::PubSub, RedisError> {
    let connect = async {
        let mut pubsub = redis.client.get_async_pubsub().await?;
        for channel in channels {
            pubsub.subscribe(channel).await?;
        }
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(REDIS_RESPONSE_TIMEOUT, connect).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RedisError(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out subscribing",
        )))),
    }
}
