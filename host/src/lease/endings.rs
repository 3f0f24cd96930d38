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
//!
//! Nobody pays for endings nobody waits on. A watcher is subscribed only
//! while requests wait (and [`LINGER`] after the last one), and an
//! announcer whose `PUBLISH` reached no subscriber drops what it is handed
//! for [`UNHEARD_PAUSE`], then tries again: a worker draining thousands of
//! jobs a second with no waiting client publishes about once a second
//! instead of up to a thousand times, and no API process is woken by
//! them. An ending dropped in that pause can only be one a newly
//! subscribed watcher missed, so a watcher wakes all its waiters once more
//! [`CATCH_UP`] after subscribing (each re-reads its job).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::Redis;
use super::wakeup::{Bursts, RESUBSCRIBE_DELAY};

/// The channel, under the deployment's key prefix.
fn channel(redis: &Redis) -> String {
    redis.key("ended")
}

/// Most job ids announced in one message.
const BURST: usize = 4096;

/// How long an announcer whose message reached no subscriber drops
/// endings before it publishes again.
pub const UNHEARD_PAUSE: Duration = Duration::from_secs(1);

/// When a watcher wakes its waiters again after subscribing: once every
/// announcer's [`UNHEARD_PAUSE`] has run out, with a margin.
pub const CATCH_UP: Duration = Duration::from_millis(1200);
const _: () = assert!(CATCH_UP.as_millis() > UNHEARD_PAUSE.as_millis());

/// How long a watcher stays subscribed after its last waiter left, so a
/// steady trickle of waiting clients does not subscribe each time.
pub const LINGER: Duration = Duration::from_secs(10);

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
    let mut audience = Audience::default();
    let mut bursts = Bursts::new(receiver, BURST);
    while let Some(burst) = bursts.next().await {
        if !audience.worth_publishing(Instant::now()) {
            continue;
        }
        let message: Vec<u8> = burst.iter().flat_map(|id| *id.as_bytes()).collect();
        let mut connection = redis.connection.clone();
        let mut command = redis::cmd(redis.deployment.publish_command());
        command.arg(channel(&redis)).arg(message);
        match command.query_async::<u64>(&mut connection).await {
            Ok(subscribers) => audience.heard_by(subscribers, Instant::now()),
            Err(error) => tracing::warn!(
                %error,
                "could not publish job endings; clients waiting on them answer at their deadline"
            ),
        }
    }
}

/// Whether an announcer's messages reach anyone: after one reached no
/// subscriber, none is sent for [`UNHEARD_PAUSE`].
#[derive(Debug, Default)]
struct Audience {
    unheard_until: Option<Instant>,
}

impl Audience {
    fn worth_publishing(&self, now: Instant) -> bool {
        self.unheard_until.is_none_or(|until| now >= until)
    }

    fn heard_by(&mut self, subscribers: u64, now: Instant) {
        self.unheard_until = (subscribers == 0).then_some(now + UNHEARD_PAUSE);
    }
}

/// Wakes the requests waiting on jobs when their endings are announced.
/// Subscribed only while requests wait (see the module docs); its task
/// ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct EndingWatcher {
    waiters: Arc<Waiters>,
    _subscription: Arc<DropGuard>,
}

impl EndingWatcher {
    /// Starts the task that subscribes to endings while requests wait,
    /// resubscribing whenever Redis goes away, until the watcher is
    /// dropped.
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
    /// Signalled when the first request starts waiting.
    first: Notify,
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
        if by_job.is_empty() {
            self.first.notify_one();
        }
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

    fn jobs_watched(&self) -> usize {
        self.by_job.lock().expect("not poisoned").len()
    }

    /// Returns once some request waits.
    async fn until_someone_waits(&self) {
        loop {
            let first = self.first.notified();
            if self.jobs_watched() > 0 {
                return;
            }
            first.await;
        }
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

/// The subscription, held while requests wait: wakes the waiters of each
/// announced job, and all of them after each (re)subscription and again
/// [`CATCH_UP`] later, until `stop` or the waiters are gone.
async fn listen(redis: Redis, waiters: Weak<Waiters>, stop: CancellationToken) {
    let channels = [channel(&redis)];
    loop {
        let Some(all) = waiters.upgrade() else { return };
        tokio::select! {
            () = all.until_someone_waits() => {}
            () = stop.cancelled() => return,
        }
        drop(all);
        match redis.subscribe(&channels).await {
            Ok(messages) => match serve(messages, &waiters, &stop).await {
                Subscription::Idle => continue,
                Subscription::Lost => {
                    tracing::warn!("ending subscription lost; resubscribing");
                }
                Subscription::Over => return,
            },
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

/// How a subscription ended.
enum Subscription {
    /// No request waited for [`LINGER`]: unsubscribed.
    Idle,
    /// Redis went away.
    Lost,
    /// The watcher was dropped or stopped.
    Over,
}

/// Wakes waiters from the subscription's `messages` until nobody has
/// waited for [`LINGER`], Redis goes away, or the watcher ends.
async fn serve(
    mut messages: BoxStream<'static, Vec<u8>>,
    waiters: &Weak<Waiters>,
    stop: &CancellationToken,
) -> Subscription {
    let Some(all) = waiters.upgrade() else {
        return Subscription::Over;
    };
    all.wake_all();
    drop(all);
    let catch_up = tokio::time::sleep(CATCH_UP);
    tokio::pin!(catch_up);
    let mut caught_up = false;
    let mut idle_since: Option<Instant> = None;
    let mut check = tokio::time::interval(LINGER / 10);
    loop {
        tokio::select! {
            message = messages.next() => match (message, waiters.upgrade()) {
                (Some(message), Some(waiters)) => {
                    waiters.wake(ids_in(&message));
                }
                (None, _) => return Subscription::Lost,
                (_, None) => return Subscription::Over,
            },
            () = &mut catch_up, if !caught_up => {
                caught_up = true;
                let Some(all) = waiters.upgrade() else { return Subscription::Over };
                all.wake_all();
            }
            _ = check.tick() => {
                let Some(all) = waiters.upgrade() else { return Subscription::Over };
                if all.jobs_watched() > 0 {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= LINGER {
                    return Subscription::Idle;
                }
            }
            () = stop.cancelled() => return Subscription::Over,
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
    fn an_announcer_nobody_hears_pauses_then_tries_again() {
        let now = Instant::now();
        let mut audience = Audience::default();
        assert!(audience.worth_publishing(now));
        audience.heard_by(0, now);
        assert!(!audience.worth_publishing(now + UNHEARD_PAUSE / 2));
        assert!(audience.worth_publishing(now + UNHEARD_PAUSE));
        audience.heard_by(2, now + UNHEARD_PAUSE);
        assert!(audience.worth_publishing(now + UNHEARD_PAUSE));
    }

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
