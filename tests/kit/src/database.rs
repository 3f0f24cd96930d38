//! A database of its own on a PostgreSQL server, for one test, one
//! benchmark run or one demo.

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};
use taskflow::store::{DatabasePooler, Store};
use uuid::Uuid;

/// A freshly created and migrated database, with a [`Store`] over it.
/// [`ScratchDatabase::drop_database`] removes it with everything in it;
/// one left behind by a failed test is harmless (its name is unique).
#[derive(Debug)]
pub struct ScratchDatabase {
    name: String,
    server_url: String,
    url: String,
    store: Store,
}

/// The URL of database `name` on the server of `server_url` (whatever
/// database `server_url` names is replaced).
pub fn database_url(server_url: &str, name: &str) -> String {
    match server_url.rfind('/') {
        Some(slash) if slash > server_url.find("//").map_or(0, |at| at + 1) => {
            format!("{}/{name}", &server_url[..slash])
        }
        _ => format!("{server_url}/{name}"),
    }
}

/// A table lock held by [`ScratchDatabase::lock_table`].
#[derive(Debug)]
pub struct HeldLock {
    connection: PgConnection,
}

impl HeldLock {
    /// Ends the lock's transaction.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached.
    pub async fn release(mut self) -> anyhow::Result<()> {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut self.connection)
            .await?;
        Ok(self.connection.close().await?)
    }
}

impl ScratchDatabase {
    /// Creates `{prefix}_{random}` on the server of `server_url`, migrates
    /// it, and opens a store of `max_connections` over it.
    ///
    /// # Errors
    ///
    /// If `prefix` is not lowercase ASCII letters, digits and `_`, or the
    /// server refuses.
    pub async fn create(
        server_url: &str,
        prefix: &str,
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "a database prefix is lowercase letters, digits and _: {prefix:?}"
        );
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(server_url)
            .await
            .with_context(|| format!("cannot reach PostgreSQL at {server_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        admin.close().await?;
        let url = database_url(server_url, &name);
        let store = Store::connect_lazy(&url, max_connections, DatabasePooler::None)?;
        store.migrate().await?;
        Ok(Self {
            name,
            server_url: server_url.to_owned(),
            url,
            store,
        })
    }

    /// Takes `table`'s `ACCESS EXCLUSIVE` lock in a transaction of its own
    /// and holds it until [`HeldLock::release`]: every statement that
    /// touches the table waits meanwhile, as behind a long migration.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached or `table` does not exist.
    pub async fn lock_table(&self, table: &str) -> anyhow::Result<HeldLock> {
        let mut connection = PgConnection::connect(&self.url).await?;
        sqlx::raw_sql(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        ))
        .execute(&mut connection)
        .await
        .with_context(|| format!("cannot lock {table}"))?;
        Ok(HeldLock { connection })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, for processes that connect on their own.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store over it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Closes the store and drops the database, disconnecting anyone still
    /// connected.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached or refuses.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.store.close().await;
        let mut admin = PgConnection::connect(&self.server_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot drop database {}", self.name))?;
        admin.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_server_url_is_replaced() {
        assert_eq!(
            database_url("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            database_url("postgres://u@h:5432", "t1"),
            "postgres://u@h:5432/t1"
        );
    }
}
