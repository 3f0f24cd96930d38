//! The store's executors, [`&Pool`](super::Pool) and
//! [`Statements`](super::Statements): each statement as it is, directly, or
//! unnamed and inside a transaction through a transaction-mode pooler (the
//! parent module says why); `prepare` and `describe` refused there.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _, TryFutureExt as _, TryStreamExt as _};
use sqlx::postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Connection as _, Describe, Either, Execute, Executor, PgConnection, Postgres};

use super::{DatabasePooler, Pool, Statements};

type Results<'e> = BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>;

/// `query` on `connection`, unnamed and in a transaction where `pooler`
/// needs it (store/pool.rs's module docs say why).
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

/// The methods both executors write alike once their `fetch_many` is
/// written: `fetch_optional` takes its first row, `prepare_with` and
/// `describe` go to `$inner` (an expression over `$this`, the executor)
/// unless the pooler refuses them.
macro_rules! methods_over_fetch_many {
    ($executor:lifetime, |$this:ident| $inner:expr) => {
        fn fetch_optional<'e, 'q: 'e, E>(
            self,
            query: E,
        ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
        where
            $executor: 'e,
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
            $executor: 'e,
        {
            let $this = self;
            prepare_with($inner, $this.pooler, sql, parameters)
        }

        fn describe<'e, 'q: 'e>(
            self,
            sql: &'q str,
        ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
        where
            $executor: 'e,
        {
            let $this = self;
            describe($inner, $this.pooler, sql)
        }
    };
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

    methods_over_fetch_many!('p, |pool| &pool.pool);
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

    methods_over_fetch_many!('c, |statements| statements.connection);
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
pub(super) struct Unnamed<E>(pub(super) E);

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
