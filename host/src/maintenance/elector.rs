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
//! There are two leaderships ([`Office`]), each with an elector of its own
//! in every worker:
//!
//! - [`Office::Maintenance`]: the scheduler, the pruner and the counter
//!   folder, which need PostgreSQL alone, so they go on while Redis is down
//!   (retries and scheduled jobs keep starting, the counter log keeps being
//!   folded);
//! - [`Office::Rescue`]: the rescuer, which cannot tell a dead worker from a
//!   live one without Redis. A worker stands for it only while it can reach
//!   Redis, since a leader cut off from Redis would hold up every rescue for
//!   as long as its partition lasts, and a leader whose Redis stops
//!   answering resigns.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lease::Redis;
use crate::store::Store;

/// The name of [`Office::Maintenance`] in `maintenance_leader`.
pub const MAINTENANCE: &str = "maintenance";

/// The name of [`Office::Rescue`] in `maintenance_leader`.
pub const RESCUE: &str = "rescue";

/// A leadership, and what a worker needs to stand for it.
#[derive(Debug, Clone)]
pub enum Office {
    /// The services that need PostgreSQL alone.
    Maintenance,
    /// The rescuer: a worker stands only while this Redis answers.
    Rescue(Redis),
}

impl Office {
    /// Its name in `maintenance_leader`.
    pub fn name(&self) -> &'static str {
        match self {
            Office::Maintenance => MAINTENANCE,
            Office::Rescue(_) => RESCUE,
        }
    }
}

/// How long a leader's term lasts unless renewed, by default. A dead
/// leader's services stop for up to this long; too short and a leader
/// briefly slowed (a long garbage collection of PostgreSQL's, a busy
/// machine) loses its term for nothing.
pub const TERM_DEFAULT: Duration = Duration::from_secs(5);

/// Runs elections for one worker; see the [module docs](self).
#[derive(Debug)]
pub struct Elector {
    store: Store,
    office: Office,
    candidate: String,
    term: Duration,
    leading_until: watch::Sender<Option<Instant>>,
}

/// Whether this process leads, as its [`Elector`] last learned.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<Option<Instant>>);

impl Elector {
    /// An elector of `office` for the worker named `candidate`, with terms
    /// of `term`.
    pub fn new(store: Store, office: Office, candidate: String, term: Duration) -> Self {
        Self {
            store,
            office,
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
            && let Err(error) = self
                .store
                .resign_leader(self.office.name(), &self.candidate)
                .await
        {
            tracing::warn!(%error, office = self.office.name(), "could not resign as leader; the term runs out");
        }
    }

    /// One election: asks for a term (or its renewal) and records the
    /// answer. If PostgreSQL does not answer, the current term, if any, runs
    /// out on its own.
    pub async fn run_once(&self) {
        if let Office::Rescue(redis) = &self.office
            && let Err(error) = redis.ping().await
        {
            if self.leading_until.borrow().is_some() {
                tracing::warn!(%error, worker_id = %self.candidate, "cannot reach Redis; resigning as rescue leader");
            }
            self.resign().await;
            return;
        }
        let office = self.office.name();
        let asked = Instant::now();
        let won = self
            .store
            .elect_or_renew_leader(office, &self.candidate, self.term)
            .await;
        let was_leading = self.leading_until.borrow().is_some();
        match won {
            Ok(true) => {
                if !was_leading {
                    tracing::info!(worker_id = %self.candidate, office, "elected leader");
                }
                self.leading_until.send_replace(Some(asked + self.term));
            }
            Ok(false) => {
                if was_leading {
                    tracing::info!(worker_id = %self.candidate, office, "no longer leader");
                }
                self.leading_until.send_replace(None);
            }
            Err(error) => tracing::warn!(%error, office, "election failed"),
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
