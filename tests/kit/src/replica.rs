//! A PostgreSQL primary and a streaming replica of it, of their own, for
//! the tests of the API's read replica (`--database-read-url`). They run
//! from a directory of their own on free loopback ports, so nothing of the
//! machine's PostgreSQL (its settings, its `pg_hba.conf`) changes, and stop
//! when dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use crate::private_servers::run_as_server_user;
use crate::{Place, free_port, server_programs};

/// A primary and its streaming replica, both started.
#[derive(Debug)]
pub struct ReplicatedPostgres {
    dir: PathBuf,
    bin: PathBuf,
    primary_url: String,
    replica_url: String,
}

impl ReplicatedPostgres {
    /// Makes a primary with `initdb`, copies it with `pg_basebackup` into a
    /// standby that streams from it, and starts both. Run as root, the
    /// servers run as the `postgres` user, which PostgreSQL requires.
    ///
    /// # Errors
    ///
    /// If PostgreSQL's server programs are not installed or one of them
    /// fails (its output is in the error).
    pub fn start() -> anyhow::Result<Self> {
        let bin = server_programs()?;
        let dir =
            std::env::temp_dir().join(format!("taskflow-replica-{}", Uuid::new_v4().simple()));
        let (primary_port, replica_port) = (free_port(), free_port());
        let servers = Self {
            primary_url: format!("postgres://postgres@127.0.0.1:{primary_port}/postgres"),
            replica_url: format!("postgres://postgres@127.0.0.1:{replica_port}/postgres"),
            dir,
            bin,
        };
        servers.make_primary(primary_port)?;
        servers.make_replica(primary_port, replica_port)?;
        Ok(servers)
    }

    /// The primary's URL (database `postgres`).
    pub fn primary_url(&self) -> &str {
        &self.primary_url
    }

    /// The replica's URL (database `postgres`).
    pub fn replica_url(&self) -> &str {
        &self.replica_url
    }

    /// Waits until the replica has applied everything the primary has
    /// written so far: up to the primary's WAL insert position, not its
    /// write position. With `synchronous_commit = off` (these servers) a
    /// commit's record can wait in the primary's WAL buffers for the WAL
    /// writer, and the replica caught up with the write position without
    /// the commit: it went on showing the transaction as running.
    ///
    /// # Errors
    ///
    /// If either server cannot be reached, or the replica has not caught
    /// up within 30 s.
    pub async fn caught_up(&self) -> anyhow::Result<()> {
        let mut primary = PgConnection::connect(&self.primary_url).await?;
        let written: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&mut primary)
            .await?;
        primary.close().await?;
        let mut replica = PgConnection::connect(&self.replica_url).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let behind: bool =
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() < $1::text::pg_lsn")
                    .bind(&written)
                    .fetch_one(&mut replica)
                    .await?;
            if !behind {
                return Ok(replica.close().await?);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the replica has not replayed up to {written} in 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Stops the replica applying what the primary writes, as a replica
    /// that lags does, until [`ReplicatedPostgres::resume_replay`].
    ///
    /// # Errors
    ///
    /// If the replica cannot be reached.
    pub async fn pause_replay(&self) -> anyhow::Result<()> {
        self.on_replica("SELECT pg_wal_replay_pause()").await
    }

    /// Lets the replica catch up again.
    ///
    /// # Errors
    ///
    /// If the replica cannot be reached.
    pub async fn resume_replay(&self) -> anyhow::Result<()> {
        self.on_replica("SELECT pg_wal_replay_resume()").await
    }

    /// Freezes the replica (SIGSTOP to its postmaster and every backend):
    /// it still accepts connections, in the kernel's backlog, and answers
    /// nothing, as a frozen host does, until
    /// [`ReplicatedPostgres::thaw_replica`].
    ///
    /// # Errors
    ///
    /// If its processes cannot be found or signalled.
    pub fn freeze_replica(&self) -> anyhow::Result<()> {
        self.signal_replica("STOP")
    }

    /// Lets a frozen replica go on.
    ///
    /// # Errors
    ///
    /// If its processes cannot be found or signalled.
    pub fn thaw_replica(&self) -> anyhow::Result<()> {
        self.signal_replica("CONT")
    }

    /// Signals the postmaster, which must succeed, then each child, which
    /// may have exited meanwhile.
    fn signal_replica(&self, signal: &str) -> anyhow::Result<()> {
        let pids = self.replica_processes()?;
        for (index, pid) in pids.iter().enumerate() {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .stderr(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(
                index > 0 || status.success(),
                "kill -{signal} {pid} (the replica's postmaster) failed"
            );
        }
        Ok(())
    }

    /// The replica's postmaster (first line of its `postmaster.pid`) and
    /// its children.
    fn replica_processes(&self) -> anyhow::Result<Vec<u32>> {
        let pid_file = std::fs::read_to_string(self.dir.join("replica/postmaster.pid"))?;
        let postmaster: u32 = pid_file
            .lines()
            .next()
            .context("postmaster.pid is empty")?
            .trim()
            .parse()?;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // The parent's pid is the second field after the command name,
            // which is in parentheses and may hold spaces.
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let fields = stat.rsplit_once(')')?.1.to_owned();
                    fields.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Stops the replica at once, as a crash would.
    pub fn stop_replica(&self) {
        self.stop("replica");
    }

    fn stop(&self, server: &str) {
        let data = self.dir.join(server);
        if data.exists() {
            let _ = self.run(
                self.bin.join("pg_ctl"),
                args(["-D", path(&data), "-m", "immediate", "-w", "stop"]),
            );
        }
    }

    async fn on_replica(&self, statement: &str) -> anyhow::Result<()> {
        let mut replica = PgConnection::connect(&self.replica_url).await?;
        sqlx::query(statement).execute(&mut replica).await?;
        replica.close().await?;
        Ok(())
    }

    fn make_primary(&self, port: u16) -> anyhow::Result<()> {
        let primary = self.dir.join("primary");
        self.run("mkdir", [OsString::from("-p"), self.dir.clone().into()])?;
        self.run(
            self.bin.join("initdb"),
            args(["-D", path(&primary), "-U", "postgres", "--auth=trust"]).chain(args([
                "--no-sync",
                "-E",
                "UTF8",
            ])),
        )?;
        // A test server: no durability, small, reachable on loopback only.
        // initdb's pg_hba.conf with --auth=trust admits replication too.
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nshared_buffers = 16MB\nmax_connections = 60\n",
            self.dir.display()
        );
        let config = primary.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&config).context("initdb wrote no settings")?;
        text.push_str(&settings);
        std::fs::write(&config, text)?;
        self.pg_ctl_start(&primary, port)
    }

    fn make_replica(&self, primary_port: u16, port: u16) -> anyhow::Result<()> {
        let replica = self.dir.join("replica");
        self.run(
            self.bin.join("pg_basebackup"),
            args(["-h", "127.0.0.1", "-p", &primary_port.to_string()])
                .chain(args(["-U", "postgres", "-D", path(&replica)]))
                .chain(args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])),
        )?;
        self.pg_ctl_start(&replica, port)
    }

    fn pg_ctl_start(&self, data: &Path, port: u16) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{port}.log"));
        self.run(
            self.bin.join("pg_ctl"),
            args(["-D", path(data), "-l", path(&log), "-w", "-t", "60"]).chain(args([
                "-o",
                &format!("-p {port}"),
                "start",
            ])),
        )
    }

    /// Runs `program` as the user the servers run as.
    fn run(
        &self,
        program: impl Into<OsString>,
        arguments: impl IntoIterator<Item = OsString>,
    ) -> anyhow::Result<()> {
        run_as_server_user(&Place::Loopback, program.into(), arguments)
    }
}

impl Drop for ReplicatedPostgres {
    fn drop(&mut self) {
        // A frozen replica would not hear pg_ctl's signal.
        let _ = self.thaw_replica();
        self.stop("replica");
        self.stop("primary");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn args<'a>(arguments: impl IntoIterator<Item = &'a str>) -> impl Iterator<Item = OsString> {
    arguments.into_iter().map(OsString::from)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
