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

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _, TryFutureExt as _, TryStreamExt as _};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow, PgStatement, PgTypeInfo,
};
use sqlx::{Connection as _, Describe, Either, Execute, Executor, PgConnection, PgPool, Postgres};

use crate::job::{AttemptOutcome, JobState};

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

    pub(crate) async fn close(&self) {
        self.pool.close().await;
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

type Results<'e> = BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>;

/// `query` on `connection`, unnamed and in a transaction where `pooler`
/// needs it (the module's comment says why).
fn fetch_many<'e, 'q: 'e, E>(
    connection: &'e mut PgConnection,
    pooler: DatabasePooler,
    begin: &str,
    query: E,
) -> Results<'e>
where
    E: 'q + Execute<'q, Postgres>,
{
    match pooler {
        DatabasePooler::None => connection.fetch_many(query),
        DatabasePooler::Transaction if connection.is_in_transaction() => {
            connection.fetch_many(Unnamed(query))
        }
        DatabasePooler::Transaction => {
            let begin = begin.to_owned();
            async move {
                let mut tx = connection.begin_with(begin).await?;
                let results: Vec<_> = tx.fetch_many(Unnamed(query)).try_collect().await?;
                tx.commit().await?;
                Ok(futures::stream::iter(results.into_iter().map(Ok)))
            }
            .try_flatten_stream()
            .boxed()
        }
    }
}

/// The first row of `results`, read to their end as sqlx's own
/// `fetch_optional` does: an error after the first row (a deferred
/// constraint) still fails the statement.
fn first_row(results: Results<'_>) -> BoxFuture<'_, Result<Option<PgRow>, sqlx::Error>> {
    results
        .try_filter_map(|result| futures::future::ok(result.right()))
        .try_collect::<Vec<_>>()
        .map_ok(|rows| rows.into_iter().next())
        .boxed()
}

impl<'p> Executor<'p> for &'p Pool {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> Results<'e>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.pooler {
            DatabasePooler::None => self.pool.fetch_many(query),
            DatabasePooler::Transaction => async move {
                let mut connection = self.pool.acquire().await?;
                let results: Vec<_> = fetch_many(&mut connection, self.pooler, &self.begin, query)
                    .try_collect()
                    .await?;
                Ok(futures::stream::iter(results.into_iter().map(Ok)))
            }
            .try_flatten_stream()
            .boxed(),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        first_row(self.fetch_many(query))
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        prepare_with(&self.pool, self.pooler, sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        describe(&self.pool, self.pooler, sql)
    }
}

impl<'c> Executor<'c> for Statements<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> Results<'e>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        fetch_many(self.connection, self.pooler, self.begin, query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        first_row(self.fetch_many(query))
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        prepare_with(self.connection, self.pooler, sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        describe(self.connection, self.pooler, sql)
    }
}

/// `inner`'s prepared statement for `sql`; refused through a
/// transaction-mode pooler ([`named_statement_refused`]).
fn prepare_with<'e, 'q: 'e, X: Executor<'e, Database = Postgres>>(
    inner: X,
    pooler: DatabasePooler,
    sql: &'q str,
    parameters: &'e [PgTypeInfo],
) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>> {
    match pooler {
        DatabasePooler::None => inner.prepare_with(sql, parameters),
        DatabasePooler::Transaction => named_statement_refused(),
    }
}

/// `inner`'s description of `sql`; refused through a transaction-mode
/// pooler, as describing prepares.
fn describe<'e, 'q: 'e, X: Executor<'e, Database = Postgres>>(
    inner: X,
    pooler: DatabasePooler,
    sql: &'q str,
) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>> {
    match pooler {
        DatabasePooler::None => inner.describe(sql),
        DatabasePooler::Transaction => named_statement_refused(),
    }
}

/// What `prepare` and `describe` answer through a transaction-mode pooler:
/// sqlx would prepare a named statement that outlives the transaction on
/// a server connection other clients share. The store calls neither.
fn named_statement_refused<'e, T: Send + 'e>() -> BoxFuture<'e, Result<T, sqlx::Error>> {
    futures::future::ready(Err(sqlx::Error::Configuration(
        "prepared statements cannot be kept through a transaction-mode pooler".into(),
    )))
    .boxed()
}

/// `query`, sent as an unnamed statement: prepared and run in one
/// transaction, never cached, so no later transaction on another server
/// connection expects it.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement<'q>> {
        self.0.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}
