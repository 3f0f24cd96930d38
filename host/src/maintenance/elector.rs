//! The elector: which worker process runs the maintenance services.
//!
//! Every worker runs an [`Elector`]. Every third of a term it asks
//! PostgreSQL to make it the leader, or to renew its term if it already is
//! ([`Store::elect_or_renew_leader`]); the row in `maintenance_leader` lets
//! one worker at a time hold a term. The winner's [`Leadership`] says it
//! leads until (the moment it sent the request + the term), measured on its
//! own clock: a leader that stalls (a pause, a partition from PostgreSQL)
//! stops leading on its own when the term would have run out, at the same
//! time as another worker may be elected. A leader that shuts down resigns,
//! so the next is elected within a third of a term; one that dies is
//! replaced when its term runs out.
//!
//! Two leaders can overlap only by the time a stalled one takes to run a
//! pass it had begun; every maintenance statement is guarded and skips
//! locked rows, so that costs duplicate work, never a wrong result.
//!
//! A worker stands only while it can reach Redis too: the rescuer cannot
//! tell a dead worker from a live one without it, so a leader cut off from
//! Redis would hold up every rescue for as long as its partition lasts. A
//! leader whose Redis stops answering resigns.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lease::Redis;
use crate::store::Store;

/// The name of the maintenance leadership in `maintenance_leader`.
pub const LEADERSHIP: &str = "maintenance";

/// How long a leader's term lasts unless renewed, by default. A dead
/// leader's services stop for up to this long; too short and a leader
/// briefly slowed (a long garbage collection of PostgreSQL's, a busy
/// machine) loses its term for nothing.
pub const TERM_DEFAULT: Duration = Duration::from_secs(5);

/// Runs elections for one worker; see the [module docs](self).
#[derive(Debug)]
pub struct Elector {
    store: Store,
    redis: Redis,
    candidate: String,
    term: Duration,
    leading_until: watch::Sender<Option<Instant>>,
}

/// Whether this process leads, as its [`Elector`] last learned.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<Option<Instant>>);

impl Elector {
    /// An elector for the worker named `candidate`, with terms of `term`,
    /// standing while `redis` answers.
    pub fn new(store: Store, redis: Redis, candidate: String, term: Duration) -> Self {
        Self {
            store,
            redis,
            candidate,
            term,
            leading_until: watch::Sender::new(None),
        }
    }

    /// What the services of this process follow.
    pub fn leadership(&self) -> Leadership {
        Leadership(self.leading_until.subscribe())
    }

    /// Holds elections until `shutdown`, then resigns if leading.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            self.run_once().await;
            tokio::select! {
                () = tokio::time::sleep(self.term / 3) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.resign().await;
    }

    /// Stops leading, and ends the term in PostgreSQL so that the next
    /// worker need not wait for it to run out.
    async fn resign(&self) {
        if self.leading_until.send_replace(None).is_some()
            && let Err(error) = self.store.resign_leader(LEADERSHIP, &self.candidate).await
        {
            tracing::warn!(%error, "could not resign as maintenance leader; the term runs out");
        }
    }

    /// One election: asks for a term (or its renewal) and records the
    /// answer. If PostgreSQL does not answer, the current term, if any, runs
    /// out on its own.
    pub async fn run_once(&self) {
        if let Err(error) = self.redis.ping().await {
            if self.leading_until.borrow().is_some() {
                tracing::warn!(%error, worker_id = %self.candidate, "cannot reach Redis; resigning as maintenance leader");
            }
            self.resign().await;
            return;
        }
        let asked = Instant::now();
        let won = self
            .store
            .elect_or_renew_leader(LEADERSHIP, &self.candidate, self.term)
            .await;
        let was_leading = self.leading_until.borrow().is_some();
        match won {
            Ok(true) => {
                if !was_leading {
                    tracing::info!(worker_id = %self.candidate, "elected maintenance leader");
                }
                self.leading_until.send_replace(Some(asked + self.term));
            }
            Ok(false) => {
                if was_leading {
                    tracing::info!(worker_id = %self.candidate, "no longer maintenance leader");
                }
                self.leading_until.send_replace(None);
            }
            Err(error) => tracing::warn!(%error, "maintenance election failed"),
        }
    }
}

impl Leadership {
    /// Whether this process leads now.
    pub fn is_leading(&self) -> bool {
        self.0.borrow().is_some_and(|until| Instant::now() < until)
    }

    /// Resolves once this process leads.
    pub async fn acquired(&mut self) {
        while !self.is_leading() {
            // An election changes the term; a lapsed term changes nothing
            // until the next election, a third of a term away.
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
