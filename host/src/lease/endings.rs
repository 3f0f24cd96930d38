//! Endings: how a client waiting on a job (`GET /v1/jobs/{id}?wait=30s`)
//! hears within milliseconds that it ended, without a database connection
//! per waiting client.
//!
//! Whoever commits a job's end (a worker's completer, the rescuer, the API
//! on cancel) announces it on `{prefix}ended` after the commit
//! ([`EndingAnnouncer`]); each API process subscribes once
//! ([`EndingWatcher`]) and wakes the requests waiting on those jobs, which
//! then read the job from PostgreSQL. As with wake-ups (wakeup.rs), a
//! message is only a doorbell: a lost one costs latency, never a wrong
//! answer, and the watcher wakes every waiter after each (re)subscription,
//! since messages sent while it was away are lost.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt;
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::Redis;
use super::wakeup::{RESUBSCRIBE_DELAY, publish_in_bursts, subscribe};

/// The channel, under the deployment's key prefix.
fn channel(redis: &Redis) -> String {
    redis.key("ended")
}

/// Most job ids announced in one message.
const BURST: usize = 4096;

/// Publishes the ids of jobs that ended without making anyone wait for
/// Redis: [`EndingAnnouncer::announce`] queues them; a background task
/// publishes each burst as one message of 16-byte ids, bursts at least
/// [`PUBLISH_INTERVAL`](super::wakeup::PUBLISH_INTERVAL) apart, so a drain of thousands of jobs a second
/// costs a few hundred `PUBLISH`es, not one per job.
#[derive(Debug, Clone)]
pub struct EndingAnnouncer {
    sender: mpsc::UnboundedSender<Uuid>,
}

impl EndingAnnouncer {
    /// Starts the publisher task on the current runtime.
    pub fn spawn(redis: Redis) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(publish(redis, receiver));
        Self { sender }
    }

    /// Announces that each job of `ids` reached a final state.
    pub fn announce(&self, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            // Fails only when the runtime is shutting down.
            let _ = self.sender.send(id);
        }
    }
}

async fn publish(redis: Redis, receiver: mpsc::UnboundedReceiver<Uuid>) {
    let what = "job endings; clients waiting on them answer at their deadline";
    publish_in_bursts(redis, receiver, BURST, what, |redis, burst| {
        let message: Vec<u8> = burst.iter().flat_map(|id| *id.as_bytes()).collect();
        let mut pipe = redis::pipe();
        pipe.publish(channel(redis), message).ignore();
        pipe
    })
    .await;
}

/// Wakes the requests waiting on jobs when their endings are announced.
/// Its subscription ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct EndingWatcher {
    waiters: Arc<Waiters>,
    _subscription: Arc<DropGuard>,
}

impl EndingWatcher {
    /// Subscribes to endings in a background task, resubscribing whenever
    /// Redis goes away, until the watcher is dropped.
    pub fn spawn(redis: Redis) -> Self {
        let waiters = Arc::new(Waiters::default());
        let stop = CancellationToken::new();
        tokio::spawn(listen(redis, Arc::downgrade(&waiters), stop.clone()));
        Self {
            waiters,
            _subscription: Arc::new(stop.drop_guard()),
        }
    }

    /// Starts waiting on `id`: the returned [`Watch`] is woken whenever an
    /// ending of `id` may have been announced.
    pub fn watch(&self, id: Uuid) -> Watch {
        self.waiters.watch(id)
    }
}

/// The jobs requests wait on, each with the [`Notify`] that wakes them.
#[derive(Debug, Default)]
struct Waiters {
    by_job: Mutex<HashMap<Uuid, Waiting>>,
}

/// The requests waiting on one job.
#[derive(Debug)]
struct Waiting {
    ended: Arc<Notify>,
    requests: usize,
}

impl Waiters {
    fn watch(self: &Arc<Self>, id: Uuid) -> Watch {
        let mut by_job = self.by_job.lock().expect("not poisoned");
        let entry = by_job.entry(id).or_insert_with(|| Waiting {
            ended: Arc::new(Notify::new()),
            requests: 0,
        });
        entry.requests += 1;
        metrics::gauge!("taskflow_api_waiting_requests").increment(1);
        Watch {
            id,
            ended: entry.ended.clone(),
            waiters: self.clone(),
        }
    }

    #[cfg(test)]
    fn jobs_watched(&self) -> usize {
        self.by_job.lock().expect("not poisoned").len()
    }

    fn wake(&self, ids: impl Iterator<Item = Uuid>) {
        let by_job = self.by_job.lock().expect("not poisoned");
        for id in ids {
            if let Some(entry) = by_job.get(&id) {
                entry.ended.notify_waiters();
            }
        }
    }

    fn wake_all(&self) {
        let by_job = self.by_job.lock().expect("not poisoned");
        for entry in by_job.values() {
            entry.ended.notify_waiters();
        }
    }

    fn forget(&self, id: Uuid) {
        metrics::gauge!("taskflow_api_waiting_requests").decrement(1);
        let mut by_job = self.by_job.lock().expect("not poisoned");
        if let Some(entry) = by_job.get_mut(&id) {
            entry.requests -= 1;
            if entry.requests == 0 {
                by_job.remove(&id);
            }
        }
    }
}

/// The subscription: wakes the waiters of each announced job, and all of
/// them after each (re)subscription, until `stop` or the waiters are gone.
async fn listen(redis: Redis, waiters: Weak<Waiters>, stop: CancellationToken) {
    let channels = [channel(&redis)];
    while !stop.is_cancelled() {
        match subscribe(&redis, &channels).await {
            Ok(mut pubsub) => {
                let Some(all) = waiters.upgrade() else { return };
                all.wake_all();
                drop(all);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match (message, waiters.upgrade()) {
                            (Some(message), Some(waiters)) => {
                                waiters.wake(ids_in(message.get_payload_bytes()));
                            }
                            (None, _) => break,
                            (_, None) => return,
                        },
                        () = stop.cancelled() => return,
                    }
                }
                tracing::warn!("ending subscription lost; resubscribing");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to job endings; waiting clients answer at their deadline until Redis is back");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The job ids of one announcement; a trailing partial id is ignored.
fn ids_in(payload: &[u8]) -> impl Iterator<Item = Uuid> + '_ {
    payload
        .chunks_exact(16)
        .map(|bytes| Uuid::from_bytes(bytes.try_into().expect("chunks of 16")))
}

/// A request's wait on one job; dropping it stops the wait.
#[derive(Debug)]
pub struct Watch {
    id: Uuid,
    ended: Arc<Notify>,
    waiters: Arc<Waiters>,
}

impl Watch {
    /// The next wake-up for this job, armed now: take it before reading
    /// the job, await it after, so an ending announced in between is not
    /// missed.
    pub fn next_wakeup(&self) -> Pin<Box<Notified<'_>>> {
        let mut wakeup = Box::pin(self.ended.notified());
        wakeup.as_mut().enable();
        wakeup
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.waiters.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_is_its_ids_in_order() {
        let ids = [Uuid::now_v7(), Uuid::now_v7()];
        let mut payload: Vec<u8> = ids.iter().flat_map(|id| *id.as_bytes()).collect();
        payload.push(7);
        assert_eq!(ids_in(&payload).collect::<Vec<_>>(), ids);
    }

    #[tokio::test]
    async fn a_watch_is_woken_by_its_job_only_and_forgotten_when_dropped() {
        let waiters = Arc::new(Waiters::default());
        let id = Uuid::now_v7();
        let watch = waiters.watch(id);
        let other = waiters.watch(Uuid::now_v7());
        let wakeup = watch.next_wakeup();
        let other_wakeup = other.next_wakeup();
        waiters.wake([id].into_iter());
        wakeup.await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), other_wakeup)
                .await
                .is_err(),
            "another job's ending woke it"
        );
        drop(watch);
        assert_eq!(waiters.jobs_watched(), 1);
        drop(other);
        assert_eq!(waiters.jobs_watched(), 0);
    }
}
