//! A database of its own on a PostgreSQL server, for one test, one
//! benchmark run or one demo.

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs as _};

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use taskflow::store::{DatabasePooler, Store};
use url::Url;
use uuid::Uuid;

/// A freshly created and migrated database, with a [`Store`] over it.
/// [`ScratchDatabase::drop_database`] removes it with everything in it;
/// so does letting it go without that call (a test that panics, or forgets
/// to), blocking its thread meanwhile, so that no run leaves databases
/// behind on the server.
#[derive(Debug)]
pub struct ScratchDatabase {
    name: String,
    server_url: String,
    url: String,
    store: Store,
    dropped: bool,
}

/// The URL of database `name` on the server of `server_url`: whatever
/// database `server_url` names is replaced, and its credentials and
/// settings (`?sslmode=…`, `?host=` a socket directory, …) are kept.
///
/// # Errors
///
/// If `server_url` is not a URL.
pub fn database_url(server_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = Url::parse(server_url).with_context(|| format!("not a URL: {server_url}"))?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

/// `database_url` with its server replaced by `address`: the same
/// database, credentials and settings, reached through what listens there
/// (a pooler, a proxy). A server named in the settings (`?host=` a
/// socket directory, `?hostaddr=`, `?port=`) is dropped, since it would
/// take precedence over `address`.
///
/// # Errors
///
/// If `database_url` is not a URL, or is one that cannot name a server.
pub fn database_url_through(
    database_url: &str,
    address: impl Into<SocketAddr>,
) -> anyhow::Result<String> {
    let address = address.into();
    let mut url = Url::parse(database_url).with_context(|| format!("not a URL: {database_url}"))?;
    let names_a_server = |key: &str| matches!(key, "host" | "hostaddr" | "port");
    if url.query_pairs().any(|(key, _)| names_a_server(&key)) {
        // Rebuilt only then: re-encoding would change how the other
        // settings are spelt (a space as `+`, which libpq reads as is).
        let settings: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| !names_a_server(key))
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        url.set_query(None);
        if !settings.is_empty() {
            url.query_pairs_mut().extend_pairs(settings);
        }
    }
    url.set_ip_host(address.ip())
        .map_err(|()| anyhow::anyhow!("{database_url} cannot name a server"))?;
    url.set_port(Some(address.port()))
        .map_err(|()| anyhow::anyhow!("{database_url} cannot name a port"))?;
    Ok(url.into())
}

/// The IPv4 address of the server `database_url` names, for something put
/// in front of it to forward to.
///
/// # Errors
///
/// If `database_url` is not a PostgreSQL URL, names a Unix socket, or its
/// host has no IPv4 address.
pub fn server_address(database_url: &str) -> anyhow::Result<SocketAddrV4> {
    let options: PgConnectOptions = database_url.parse()?;
    anyhow::ensure!(
        options.get_socket().is_none(),
        "{database_url} names a Unix socket, not an address"
    );
    let host = options
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    (host, options.get_port())
        .to_socket_addrs()?
        .find_map(|address| match address {
            SocketAddr::V4(address) => Some(address),
            SocketAddr::V6(_) => None,
        })
        .with_context(|| format!("{host} has no IPv4 address"))
}

/// A transaction left open on a connection of its own, holding the locks
/// its statements took ([`ScratchDatabase::begin_held`]): a test's way of
/// standing in another writer's way at a chosen moment.
#[derive(Debug)]
pub struct HeldTransaction {
    connection: PgConnection,
}

impl HeldTransaction {
    /// Runs `sql` (one or more statements) inside the transaction.
    ///
    /// # Errors
    ///
    /// If the server refuses.
    pub async fn execute(&mut self, sql: &str) -> anyhow::Result<()> {
        sqlx::raw_sql(sql)
            .execute(&mut self.connection)
            .await
            .with_context(|| format!("cannot run {sql}"))?;
        Ok(())
    }

    /// Returns once `statements` statements of other connections to the
    /// same database wait for a lock, as ones blocked by this transaction
    /// (or by each other) do.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached, or fewer wait for ten seconds.
    pub async fn until_waiting(&mut self, statements: i64) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // Inside a transaction, PostgreSQL keeps showing the activity it
            // read first, until told to read it again.
            sqlx::query("SELECT pg_stat_clear_snapshot()")
                .execute(&mut self.connection)
                .await?;
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut self.connection)
            .await?;
            if waiting >= statements {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{waiting} statements wait for a lock, not {statements}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Commits the transaction.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached or refuses.
    pub async fn commit(self) -> anyhow::Result<()> {
        self.end("COMMIT").await
    }

    /// Rolls the transaction back.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached.
    pub async fn release(self) -> anyhow::Result<()> {
        self.end("ROLLBACK").await
    }

    async fn end(mut self, how: &str) -> anyhow::Result<()> {
        sqlx::raw_sql(how).execute(&mut self.connection).await?;
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
        let database = Self::create_unmigrated(server_url, prefix, max_connections).await?;
        database.store.migrate().await?;
        Ok(database)
    }

    /// As [`ScratchDatabase::create`], without migrating it: for tests of
    /// migrating itself.
    ///
    /// # Errors
    ///
    /// If `prefix` is not lowercase ASCII letters, digits and `_`, or the
    /// server refuses.
    pub async fn create_unmigrated(
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
        let url = database_url(server_url, &name)?;
        let store = Store::connect_lazy(&url, max_connections, DatabasePooler::None)?;
        Ok(Self {
            name,
            server_url: server_url.to_owned(),
            url,
            store,
            dropped: false,
        })
    }

    /// Takes `table`'s `ACCESS EXCLUSIVE` lock in a transaction of its own
    /// and holds it until [`HeldTransaction::release`]: every statement that
    /// touches the table waits meanwhile, as behind a long migration.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached or `table` does not exist.
    pub async fn lock_table(&self, table: &str) -> anyhow::Result<HeldTransaction> {
        self.begin_held(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            .await
    }

    /// Opens a transaction on a connection of its own, runs `sql` in it,
    /// and leaves it open until [`HeldTransaction::commit`] or
    /// [`HeldTransaction::release`].
    ///
    /// # Errors
    ///
    /// If the server cannot be reached or refuses `sql`.
    pub async fn begin_held(&self, sql: &str) -> anyhow::Result<HeldTransaction> {
        let mut held = HeldTransaction {
            connection: PgConnection::connect(&self.url).await?,
        };
        held.execute("BEGIN").await?;
        held.execute(sql).await?;
        Ok(held)
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
    pub async fn drop_database(mut self) -> anyhow::Result<()> {
        self.store.close().await;
        self.dropped = true;
        drop_database(&self.server_url, &self.name).await
    }
}

impl Drop for ScratchDatabase {
    /// Drops the database if [`ScratchDatabase::drop_database`] did not,
    /// from a thread of its own: a drop cannot wait for a future, and may
    /// run on a runtime that is shutting down or in a panicking test.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        let dropping = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a runtime")?
                .block_on(drop_database(&server_url, &name))
        });
        match dropping.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("{error:#}"),
            Err(_) => eprintln!("dropping database {} panicked", self.name),
        }
    }
}

/// `DROP DATABASE {name}`, disconnecting anyone still connected.
async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(server_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot drop database {name}"))?;
    admin.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_through_another_address_keeps_its_database_credentials_and_settings() {
        let through = database_url_through(
            "postgres://u:p%40ss@db.example:5432/jobs?sslmode=disable&application_name=t",
            SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 6000),
        )
        .unwrap();
        let options: PgConnectOptions = through.parse().unwrap();
        assert_eq!(
            (options.get_host(), options.get_port()),
            ("127.0.0.1", 6000)
        );
        assert_eq!(options.get_username(), "u");
        assert_eq!(options.get_database(), Some("jobs"));
        assert!(through.contains("u:p%40ss@"), "{through}");
        assert!(through.contains("sslmode=disable"), "{through}");
        assert!(through.contains("application_name=t"), "{through}");
        assert_eq!(options.get_application_name(), Some("t"));
    }

    #[test]
    fn a_socket_url_through_an_address_names_only_that_address() {
        let through = database_url_through(
            "postgres:///jobs?host=/var/run/postgresql&port=5433&options=-c%20work_mem%3D8MB",
            SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 6000),
        )
        .unwrap();
        let options: PgConnectOptions = through.parse().unwrap();
        assert_eq!(options.get_socket(), None, "{through}");
        assert_eq!(
            (options.get_host(), options.get_port()),
            ("127.0.0.1", 6000)
        );
        assert_eq!(options.get_database(), Some("jobs"));
        assert_eq!(options.get_options(), Some("-c work_mem=8MB"), "{through}");
    }

    #[test]
    fn a_socket_url_has_no_server_address() {
        assert!(server_address("postgres:///jobs?host=/var/run/postgresql").is_err());
        assert_eq!(
            server_address("postgres://u@127.0.0.1:5433/jobs").unwrap(),
            SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 5433)
        );
    }

    #[test]
    fn the_database_of_a_server_url_is_replaced() {
        assert_eq!(
            database_url("postgres://u@h:5432/postgres", "t1").unwrap(),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            database_url("postgres://u@h:5432", "t1").unwrap(),
            "postgres://u@h:5432/t1"
        );
    }

    #[test]
    fn replacing_the_database_keeps_the_urls_settings() {
        assert_eq!(
            database_url(
                "postgres://u:p%40ss@h:5432/postgres?sslmode=require&application_name=ci",
                "t1"
            )
            .unwrap(),
            "postgres://u:p%40ss@h:5432/t1?sslmode=require&application_name=ci"
        );
        assert_eq!(
            database_url("postgres:///postgres?host=/var/run/postgresql", "t1").unwrap(),
            "postgres:///t1?host=/var/run/postgresql"
        );
    }
}
