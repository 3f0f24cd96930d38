//! Subscriptions that notice when they stop hearing Redis.
//!
//! A subscription only reads: it sends no command, so a connection that
//! went half-open (Redis restarted or killed the client behind a partition
//! that hid the FIN, a NAT or load balancer that dropped an idle flow) is
//! never reported as lost. It stays open and silent, and every wake-up or
//! ending published after it is missed until the process restarts. So each
//! subscription also listens on a channel of its own and, every
//! [`PROBE_INTERVAL`], publishes a probe there through the command
//! connection: a probe no subscriber received, one not heard back within
//! [`PROBE_TIMEOUT`], or one that could not be published ends the stream,
//! and the caller subscribes again (`wakeup::listen`, `endings::listen`),
//! waking its waiters once for what it may have missed.

use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::{Instant, Sleep};
use uuid::Uuid;

use super::connection::REDIS_RESPONSE_TIMEOUT;
use super::{Redis, RedisError};

/// How often a quiet or busy subscription checks that it still hears
/// Redis: a lost subscription is noticed within this plus
/// [`PROBE_TIMEOUT`], for one small `PUBLISH` per subscription per
/// interval.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a published probe may take to come back.
const PROBE_TIMEOUT: Duration = REDIS_RESPONSE_TIMEOUT;

impl Redis {
    /// A fresh subscription to `channels`, which yields each message's
    /// payload and ends when the subscription is lost, including silently
    /// (see the module docs).
    pub(super) async fn subscribe(
        &self,
        channels: &[String],
    ) -> Result<BoxStream<'static, Vec<u8>>, RedisError> {
        let probe_channel = self.key(&format!("probe:{}", Uuid::new_v4().simple()));
        let mut all = channels.to_vec();
        all.push(probe_channel.clone());
        let messages = self.deployment.subscribe(&all).await?;
        Ok(probed(messages, self.clone(), probe_channel))
    }

    /// Publishes `payload` on `channel`; how many subscribers received it.
    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<u64, RedisError> {
        let mut connection = self.connection.clone();
        Ok(redis::cmd(self.deployment.publish_command())
            .arg(channel)
            .arg(payload)
            .query_async(&mut connection)
            .await?)
    }
}

/// Where a probed subscription stands.
struct Probing {
    messages: BoxStream<'static, Vec<u8>>,
    redis: Redis,
    channel: String,
    /// When the next probe is due, or when the one out is late.
    deadline: Pin<Box<Sleep>>,
    /// The probe published and not heard back yet.
    awaited: Option<Vec<u8>>,
}

/// `messages` without the probes, ended when a probe fails.
fn probed(
    messages: BoxStream<'static, Vec<u8>>,
    redis: Redis,
    channel: String,
) -> BoxStream<'static, Vec<u8>> {
    let probing = Probing {
        messages,
        redis,
        channel,
        deadline: Box::pin(tokio::time::sleep(PROBE_INTERVAL)),
        awaited: None,
    };
    futures::stream::unfold(probing, |mut probing| async move {
        loop {
            tokio::select! {
                message = probing.messages.next() => {
                    let message = message?;
                    if probing.awaited.as_ref() == Some(&message) {
                        probing.awaited = None;
                        probing.deadline.as_mut().reset(Instant::now() + PROBE_INTERVAL);
                        continue;
                    }
                    return Some((message, probing));
                }
                () = &mut probing.deadline => {
                    if probing.awaited.is_some() {
                        tracing::warn!("a Redis subscription stopped hearing its probes");
                        return None;
                    }
                    let probe = format!("probe:{}", Uuid::new_v4().simple()).into_bytes();
                    match probing.redis.publish(&probing.channel, &probe).await {
                        Ok(0) => {
                            tracing::warn!("Redis no longer knows a subscription");
                            return None;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "cannot probe a Redis subscription");
                            return None;
                        }
                    }
                    probing.awaited = Some(probe);
                    probing.deadline.as_mut().reset(Instant::now() + PROBE_TIMEOUT);
                }
            }
        }
    })
    .boxed()
}
