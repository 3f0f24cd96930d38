//! How the store's statements reach PostgreSQL: directly, or through a
//! connection pooler in transaction mode (ADR 007).
//!
//! Directly, sqlx prepares each statement once per connection under a name
//! (`sqlx_s_N`) and caches it. A transaction-mode pooler (PgBouncer before
//! 1.21) hands each transaction whichever server connection is free, so a
//! name prepared on one server may be missing on the next or name another
//! statement there, and a statement sent outside a transaction may be parsed
//! on one server and bound on another. In [`DatabasePooler::Transaction`]
//! mode the store therefore sends every statement unnamed and inside a
//! transaction: its own ([`Pool::begin`]), or one opened around the
//! statement alone. The store's statements go through the types here and
//! nowhere else: none of them hands out a bare connection on which a named
//! statement could be sent.
//!
//! sqlx itself still sends named statements of its own: the first time a
//! connection meets one of TaskFlow's enum types (store/codec.rs) it looks
//! the type up. Through the pooler, each new connection therefore makes
//! those lookups up front in one transaction that deallocates its
//! statements before it ends ([`prime_type_caches`]), and keeps no
//! statement cache, so a name is never reused.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, Executor, PgConnection, PgPool, Postgres};

use crate::job::{AttemptOutcome, JobState};

mod executor;

use executor::Unnamed;

/// What sits between TaskFlow and PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DatabasePooler {
    /// Nothing, or a pooler in session mode: a client connection keeps one
    /// server connection, so statements are prepared once and cached.
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer's `pool_mode = transaction`):
    /// every statement is sent unnamed inside a transaction. Costs a
    /// `BEGIN`, a prepare and a `COMMIT` round trip per statement that runs
    /// outside the store's own transactions.
    Transaction,
}

impl DatabasePooler {
    /// Its name in settings (`TASKFLOW_DATABASE_POOLER`).
    pub fn as_str(self) -> &'static str {
        match self {
            DatabasePooler::None => "none",
            DatabasePooler::Transaction => "transaction",
        }
    }
}

/// A setting that names no [`DatabasePooler`].
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a pooler mode: use none or transaction")]
pub struct UnknownPooler(String);

impl FromStr for DatabasePooler {
    type Err = UnknownPooler;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [DatabasePooler::None, DatabasePooler::Transaction]
            .into_iter()
            .find(|pooler| pooler.as_str() == text)
            .ok_or_else(|| UnknownPooler(text.to_owned()))
    }
}

impl fmt::Display for DatabasePooler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The store's connections, and how statements must be sent on them.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pool: PgPool,
    pooler: DatabasePooler,
    /// What opens a transaction: `BEGIN`, plus the `SET LOCAL`s a pool
    /// needs where a pooler would refuse them as startup options
    /// (`Store::replica`).
    begin: Cow<'static, str>,
}

impl Pool {
    /// A pool of at most `max_connections` to `options`, connecting on
    /// first use, whose transactions open with `begin`.
    pub(crate) fn connect_lazy(
        options: PgConnectOptions,
        max_connections: u32,
        pooler: DatabasePooler,
        begin: Cow<'static, str>,
    ) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // No ping before each use: that is a round trip per statement. A
            // connection that broke fails its statement, which the callers
            // retry, and the pool replaces it.
            .test_before_acquire(false);
        let pool = match pooler {
            DatabasePooler::None => pool.connect_lazy_with(options),
            DatabasePooler::Transaction => pool
                .after_connect(|connection, _| Box::pin(prime_type_caches(connection)))
                .connect_lazy_with(options.statement_cache_capacity(0)),
        };
        Self {
            pool,
            pooler,
            begin,
        }
    }

    /// A pool of one connection, with this one's options, pooler and
    /// `begin`.
    pub(crate) fn single_connection(&self) -> Self {
        Self::connect_lazy(
            (*self.pool.connect_options()).clone(),
            1,
            self.pooler,
            self.begin.clone(),
        )
    }

    pub(crate) fn pooler(&self) -> DatabasePooler {
        self.pooler
    }

    pub(crate) fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// The pool itself, for what needs a session (migrations); `None`
    /// through a transaction-mode pooler, which keeps none.
    pub(crate) fn with_sessions(&self) -> Option<&PgPool> {
        (self.pooler == DatabasePooler::None).then_some(&self.pool)
    }

    /// Closes every connection, waiting for those in use to come back.
    ///
    /// sqlx 0.8's `Pool::close` alone can return with one still open
    /// (launchbadge/sqlx#3217, fixed by launchbadge/sqlx#3952 after 0.8.6):
    /// a dropped connection goes back in a task of its own, which pings the
    /// server first, and one that set off before the pool was closed and
    /// arrives after `close` emptied the idle queue stays there, open, for
    /// as long as the pool lives. Every connection that comes back once the
    /// pool is closed is closed instead, so closing again until none is
    /// left catches those few.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
        while self.pool.size() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.pool.close().await;
        }
    }

    pub(crate) async fn acquire(&self) -> Result<Connection, sqlx::Error> {
        Ok(Connection {
            inner: self.pool.acquire().await?,
            pooler: self.pooler,
            begin: self.begin.clone(),
        })
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static>, sqlx::Error> {
        Ok(Transaction {
            inner: self.pool.begin_with(self.begin.clone()).await?,
            pooler: self.pooler,
        })
    }
}

/// Makes sqlx look up TaskFlow's enum types (store/codec.rs) on a new
/// connection, in a transaction that then deallocates the named statements
/// sqlx used for it, so that none is left on a server connection another
/// client may be given. Every lookup a statement could need later is made
/// here: its types as parameters and as result columns.
///
/// (The executor's own methods are called, not `Query::fetch_one`: a future
/// of that generic `async fn` is not `Send` for every lifetime, which
/// `after_connect` needs.)
async fn prime_type_caches(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut tx = connection.begin().await?;
    let lookups = sqlx::query(
        "SELECT $1::job_state AS state, $2::job_state[] AS states,
                $3::attempt_outcome AS outcome, $4::attempt_outcome[] AS outcomes",
    )
    .bind(JobState::Available)
    .bind(vec![JobState::Available])
    .bind(AttemptOutcome::Succeeded)
    .bind(vec![AttemptOutcome::Succeeded]);
    tx.as_mut().fetch_one(Unnamed(lookups)).await?;
    tx.as_mut().execute("DEALLOCATE ALL").await?;
    tx.commit().await
}

/// A connection taken from the pool for several statements.
#[derive(Debug)]
pub(crate) struct Connection {
    inner: PoolConnection<Postgres>,
    pooler: DatabasePooler,
    begin: Cow<'static, str>,
}

impl Connection {
    /// Statements on this connection, each committing on its own.
    pub(crate) fn statements(&mut self) -> Statements<'_> {
        Statements {
            connection: &mut self.inner,
            pooler: self.pooler,
            begin: &self.begin,
        }
    }

    pub(crate) async fn begin(&mut self) -> Result<Transaction<'_>, sqlx::Error> {
        Ok(Transaction {
            inner: self.inner.begin_with(self.begin.clone()).await?,
            pooler: self.pooler,
        })
    }

    /// Closes the connection when dropped instead of pooling it.
    pub(crate) fn close_on_drop(&mut self) {
        self.inner.close_on_drop();
    }
}

/// A transaction of the store's; rolled back if dropped uncommitted.
#[derive(Debug)]
pub(crate) struct Transaction<'c> {
    inner: sqlx::Transaction<'c, Postgres>,
    pooler: DatabasePooler,
}

impl Transaction<'_> {
    /// Statements inside this transaction.
    pub(crate) fn statements(&mut self) -> Statements<'_> {
        Statements {
            connection: &mut self.inner,
            pooler: self.pooler,
            begin: "BEGIN",
        }
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }
}

/// Statements on one connection, sent as its pooler needs: an executor
/// (`.fetch_all(tx.statements())`). Inside a transaction each is one
/// statement of it; outside, each commits on its own.
#[derive(Debug)]
pub(crate) struct Statements<'c> {
    connection: &'c mut PgConnection,
    pooler: DatabasePooler,
    /// What opens the transaction of a statement made outside one; unused
    /// inside one (a [`Transaction`]'s statements).
    begin: &'c str,
}

impl Statements<'_> {
    /// The same statements again, for a function that sends several.
    pub(crate) fn reborrow(&mut self) -> Statements<'_> {
        Statements {
            connection: self.connection,
            pooler: self.pooler,
            begin: self.begin,
        }
    }
}
