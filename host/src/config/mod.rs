//! Every knob TaskFlow has, in one place, as plain structs: what the
//! library (`cli/server.rs`, the tests, an embedder) is configured with.
//! Each `Default` is the fast, safe configuration. `validate` functions run
//! at startup and reject combinations that cannot work.
//!
//! The command line is a layer on top (`cli/flags.rs`): one flag with an
//! environment-variable twin per field (`DATABASE_URL`, `REDIS_URL`, and
//! `TASKFLOW_*` for the rest), whose defaults are these.

mod api;
mod limits;
mod worker;

use std::time::Duration;

use crate::store::DatabasePooler;

pub use api::ApiConfig;
pub use limits::{ApiLimits, ExecutionLimits};
pub use worker::{CompileConfig, WorkerConfig};

/// A configuration that cannot work, reported before anything starts.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The longest a duration flag may be when TaskFlow adds it to
/// PostgreSQL's `now()` (a retry's `run_at`, a lease's deadline, a
/// leadership's term): longer than any sensible setting and far below what
/// a timestamp holds, so a typo fails at start-up, not in every statement.
pub const MAX_TIMESTAMP_OFFSET: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Refuses `value` of `flag` past [`MAX_TIMESTAMP_OFFSET`].
fn check_timestamp_offset(flag: &str, value: Duration) -> Result<(), ConfigError> {
    check(value <= MAX_TIMESTAMP_OFFSET, || {
        format!(
            "{flag} must be at most {} days",
            MAX_TIMESTAMP_OFFSET.as_secs() / (24 * 3600)
        )
    })
}

fn check(ok: bool, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError(message()))
    }
}

/// Where PostgreSQL and Redis live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    /// PostgreSQL connection URL. `taskflow migrate`, `api` and `dev` create
    /// the database if it is missing and apply migrations (through
    /// `database_migration_url` if set).
    pub database_url: String,

    /// What `database_url` reaches PostgreSQL through. Behind a pooler in
    /// transaction mode (PgBouncer's `pool_mode = transaction`) every
    /// statement must be sent unnamed inside a transaction, which costs
    /// round trips; direct connections and session pools need nothing
    /// (ADR 007, `store/pool.rs`).
    pub database_pooler: DatabasePooler,

    /// A direct (or session-pooled) URL of the same database for creating
    /// it and applying migrations, which hold an advisory lock across
    /// transactions and so cannot go through a transaction-mode pooler.
    /// Needed where `database_pooler` is `transaction` and the process
    /// migrates (`taskflow api`, `migrate`, `dev`).
    pub database_migration_url: Option<String>,

    /// Most PostgreSQL connections in this process's pool. Too low and
    /// requests queue for a connection; too high and PostgreSQL spends
    /// memory and context switches on idle backends. A worker opens one
    /// more, of its own, for its claims
    /// ([`Store::single_connection`](crate::store::Store::single_connection)).
    pub database_max_connections: u32,

    /// Redis connection URL. Redis only coordinates (leases, wake-ups): it
    /// may be flushed or restarted at any time without losing a job.
    pub redis_url: String,

    /// Prefix of every Redis key and channel TaskFlow uses, so several
    /// deployments (or test runs) can share one Redis.
    pub redis_prefix: String,
}

impl Connections {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.database_max_connections >= 2, || {
            "--database-max-connections must be at least 2".into()
        })
    }

    /// Where to create the database and apply migrations.
    pub fn migration_url(&self) -> Result<&str, ConfigError> {
        match (&self.database_migration_url, self.database_pooler) {
            (Some(url), _) => Ok(url),
            (None, DatabasePooler::None) => Ok(&self.database_url),
            (None, DatabasePooler::Transaction) => Err(ConfigError::new(
                "--database-pooler transaction needs --database-migration-url, a direct or \
                 session-pooled URL of the same database: migrations hold an advisory lock \
                 across transactions, which a transaction-mode pooler cannot keep",
            )),
        }
    }
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/taskflow".to_owned(),
            database_pooler: DatabasePooler::None,
            database_migration_url: None,
            database_max_connections: 16,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_prefix: "taskflow:".to_owned(),
        }
    }
}

/// The retry schedule of failed attempts (`host/src/backoff.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the second attempt. Each further attempt doubles it.
    pub backoff_base: Duration,

    /// Longest delay between two attempts.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.backoff_base <= self.backoff_max, || {
            "--backoff-base must be at most --backoff-max".into()
        })?;
        check_timestamp_offset("--backoff-max", self.backoff_max)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60 * 60),
        }
    }
}

/// How leases behave; shared by workers (which hold them) and the rescuer
/// (which recovers them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease lives without renewal. A worker renews its leases
    /// every third of this, and a dead worker's jobs are rescued about this
    /// long after it stopped. Too low and a worker stalled by a long pause
    /// loses its jobs (they are safely re-run, but the work is wasted); too
    /// high and a crashed worker's jobs wait that long.
    pub lease_ttl: Duration,
}

impl LeaseConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.lease_ttl >= Duration::from_millis(300), || {
            "--lease-ttl must be at least 300ms".into()
        })?;
        check_timestamp_offset("--lease-ttl", self.lease_ttl)
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_pooler_needs_a_migration_url_and_a_direct_url_does_not() {
        let direct = Connections::default();
        assert_eq!(direct.migration_url().unwrap(), direct.database_url);

        let pooled = Connections {
            database_pooler: DatabasePooler::Transaction,
            ..Connections::default()
        };
        assert!(pooled.migration_url().is_err());

        let session = "postgres://postgres@db:5432/taskflow".to_owned();
        let migrating = Connections {
            database_migration_url: Some(session.clone()),
            ..pooled
        };
        assert_eq!(migrating.migration_url().unwrap(), session);
    }

    /// These durations are added to PostgreSQL's `now()` (a retry's
    /// `run_at`, a lease's deadline, a leadership's term): one past what a
    /// timestamp holds made every such statement fail at run time, not the
    /// flag at start-up.
    #[test]
    fn durations_added_to_timestamps_are_refused_past_ten_years() {
        let ages = crate::duration::parse("300000y").unwrap();
        let retry = RetryPolicy {
            backoff_max: ages,
            ..RetryPolicy::default()
        };
        assert!(retry.validate().is_err());
        let lease = LeaseConfig { lease_ttl: ages };
        assert!(lease.validate().is_err());
        let worker = WorkerConfig {
            leader_term: ages,
            ..WorkerConfig::default()
        };
        assert!(worker.validate().is_err());
        let decade = crate::duration::parse("3650d").unwrap();
        assert!(LeaseConfig { lease_ttl: decade }.validate().is_ok());
    }

    #[test]
    fn pooler_modes_parse_from_their_names_and_nothing_else() {
        for pooler in [DatabasePooler::None, DatabasePooler::Transaction] {
            assert_eq!(
                pooler.to_string().parse::<DatabasePooler>().unwrap(),
                pooler
            );
        }
        assert!("session".parse::<DatabasePooler>().is_err());
    }
}
