//! A PgBouncer of its own, in transaction mode, on a free loopback port in
//! front of the tests' PostgreSQL: Debian's `pgbouncer` (1.18, which keeps
//! no prepared statements across transactions), started from a directory of
//! its own and killed when dropped. Run as root, it runs as the `postgres`
//! user, since PgBouncer refuses to run as root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use tempfile::TempDir;

use crate::{database_url_through, free_port, running_as_root};

/// A running PgBouncer; see the [module docs](self).
#[derive(Debug)]
pub struct PgBouncer {
    dir: TempDir,
    port: u16,
    process: Child,
}

impl PgBouncer {
    /// Starts PgBouncer in transaction mode in front of the PostgreSQL
    /// server of `server_url`, with at most `server_connections`
    /// connections to it per database: few, so that consecutive
    /// transactions of one client land on different server connections.
    ///
    /// # Errors
    ///
    /// If `pgbouncer` is not installed or does not start listening within
    /// 10 s (its log is in the error).
    pub fn start(server_url: &str, server_connections: u32) -> anyhow::Result<Self> {
        let server: PgConnectOptions = server_url.parse()?;
        let dir = tempfile::Builder::new()
            .prefix("taskflow-pgbouncer-")
            .tempdir()?;
        let port = free_port();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, format!("\"{}\" \"\"\n", server.get_username()))?;
        // `extra_float_digits` is a startup parameter sqlx always sends and
        // PgBouncer refuses unless told to ignore it (ADR 007).
        let settings = format!(
            "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             default_pool_size = {server_connections}\nmax_client_conn = 2000\n\
             ignore_startup_parameters = extra_float_digits\n\
             idle_transaction_timeout = 60\n\
             logfile = {log}\nlog_connections = 0\nlog_disconnections = 0\n",
            host = server.get_host(),
            server_port = server.get_port(),
            users = users.display(),
            log = dir.path().join("pgbouncer.log").display(),
        );
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(&config, settings)?;
        let mut command = if running_as_root() {
            let owner = std::fs::metadata("/var/lib/postgresql")
                .context("no postgres user to run PgBouncer as")?;
            std::os::unix::fs::chown(dir.path(), Some(owner.uid()), Some(owner.gid()))?;
            // setpriv execs PgBouncer in its own place, so killing the child
            // kills PgBouncer (runuser would stay between them).
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={}", owner.uid()))
                .arg(format!("--regid={}", owner.gid()))
                .arg("--clear-groups")
                .arg(program());
            command
        } else {
            Command::new(program())
        };
        let process = command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run pgbouncer (Debian package pgbouncer)")?;
        let mut bouncer = Self { dir, port, process };
        bouncer.until_listening()?;
        Ok(bouncer)
    }

    /// `database_url` with its server replaced by this PgBouncer: the same
    /// database and user, through the pooler.
    ///
    /// # Errors
    ///
    /// If `database_url` is not a URL that can name a server.
    pub fn url_for(&self, database_url: &str) -> anyhow::Result<String> {
        database_url_through(
            database_url,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port),
        )
    }

    /// The environment of a `taskflow` process that reaches
    /// `database_url`'s database through this PgBouncer: `DATABASE_URL`
    /// through it, the pooler mode, and `database_url` itself for
    /// migrations, which need a session (ADR 007).
    ///
    /// # Errors
    ///
    /// If `database_url` is not a URL that can name a server.
    pub fn taskflow_env(&self, database_url: &str) -> anyhow::Result<[(&'static str, String); 3]> {
        Ok([
            ("DATABASE_URL", self.url_for(database_url)?),
            ("TASKFLOW_DATABASE_POOLER", "transaction".to_owned()),
            ("TASKFLOW_DATABASE_MIGRATION_URL", database_url.to_owned()),
        ])
    }

    fn until_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let log = || std::fs::read_to_string(self.dir.path().join("pgbouncer.log"));
            if let Some(status) = self.process.try_wait()? {
                anyhow::bail!("pgbouncer exited ({status}): {}", log().unwrap_or_default());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "pgbouncer is not listening on {} after 10 s: {}",
                self.port,
                log().unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Debian installs PgBouncer in /usr/sbin, which a user's PATH may lack.
fn program() -> &'static str {
    const DEBIAN: &str = "/usr/sbin/pgbouncer";
    if std::path::Path::new(DEBIAN).exists() {
        DEBIAN
    } else {
        "pgbouncer"
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
