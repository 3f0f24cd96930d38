//! A PostgreSQL server and a Redis server of a test's own, at a [`Place`]:
//! on loopback or on a host of a [`Network`](crate::Network). The chaos
//! suite crashes and restarts them, which the machine's own servers must
//! never go through; the network bench puts them on hosts of their own.
//!
//! Each waits until it listens from its own host, so the caller may start
//! it from anywhere; to use one on a host, the caller joins the network
//! ([`Network::enter`](crate::Network::enter)).

use std::ffi::OsString;
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{Place, running_as_root, server_programs};

/// A PostgreSQL cluster of a test's own (`initdb`, trust authentication,
/// PostgreSQL's default durability), stopped when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    place: Place,
    address: SocketAddrV4,
}

impl PrivatePostgres {
    /// Creates a cluster in `dir` (made if missing, and handed to the
    /// `postgres` user when running as root, where PostgreSQL runs as that
    /// user) and starts it at `place`.
    ///
    /// # Errors
    ///
    /// If PostgreSQL's server programs are missing or one of them fails.
    pub fn start(dir: &Path, place: Place) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        if running_as_root() {
            let status = Command::new("chown").arg("postgres").arg(dir).status()?;
            anyhow::ensure!(status.success(), "chown postgres {}", dir.display());
        }
        let server = Self {
            bin: server_programs()?,
            dir: dir.to_owned(),
            address: place.free_address(),
            place,
        };
        server.run(
            "initdb",
            &["-D", &server.data(), "--auth=trust", "-U", "postgres", "-N"],
        )?;
        if let Place::On(_) = server.place {
            // initdb admits loopback only; the network is the test's own.
            let rules = Path::new(&server.data()).join("pg_hba.conf");
            let mut text = std::fs::read_to_string(&rules)?;
            let (subnet, bits) = crate::SUBNET;
            text.push_str(&format!("host all all {subnet}/{bits} trust\n"));
            std::fs::write(&rules, text)?;
        }
        server.up()?;
        Ok(server)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@{}/{name}", self.address)
    }

    /// Where the server listens.
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// If `pg_ctl` fails or the port does not open within 30 s.
    pub fn up(&self) -> anyhow::Result<()> {
        // The socket directory is the cluster's own: servers on different
        // hosts may share a port number, never a socket file.
        let options = format!(
            "-p {} -k {} -c listen_addresses={}",
            self.address.port(),
            self.dir.display(),
            self.address.ip()
        );
        let log = self.dir.join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )?;
        wait_for_port(&self.place, self.address, Duration::from_secs(30))
    }

    /// Crashes the server: an `immediate` stop skips the checkpoint, as a
    /// power cut would from PostgreSQL's point of view.
    ///
    /// # Errors
    ///
    /// If `pg_ctl` fails.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )
    }

    /// Stops the server for good (again on drop; stopping twice is
    /// harmless).
    pub fn stop(&self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn data(&self) -> String {
        self.dir.join("pg").to_string_lossy().into_owned()
    }

    /// Runs server program `tool` at the server's place, as the user the
    /// server runs as.
    fn run(&self, tool: &str, arguments: &[&str]) -> anyhow::Result<()> {
        run_as_server_user(
            &self.place,
            self.bin.join(tool).into(),
            arguments.iter().map(OsString::from),
        )
    }
}

/// Runs `program` at `place` as the user PostgreSQL's servers run as
/// (`postgres` when running as root, which PostgreSQL refuses), failing
/// with its output.
pub(crate) fn run_as_server_user(
    place: &Place,
    program: OsString,
    arguments: impl IntoIterator<Item = OsString>,
) -> anyhow::Result<()> {
    let mut command = if running_as_root() {
        let mut command = place.command("runuser");
        command.args(["-u", "postgres", "--"]).arg(&program);
        command
    } else {
        place.command(&program)
    };
    let output = command
        .args(arguments)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.to_string_lossy()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed: {}{}",
        program.to_string_lossy(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis server of a test's own, keeping nothing on disk: a restart
/// loses every key. Killed when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    child: Option<Child>,
    place: Place,
    address: SocketAddrV4,
}

impl PrivateRedis {
    /// Starts a server at `place`.
    ///
    /// # Errors
    ///
    /// If `redis-server` is missing or its port does not open within 10 s.
    pub fn start(place: Place) -> anyhow::Result<Self> {
        let address = place.free_address();
        let mut server = Self {
            child: None,
            place,
            address,
        };
        server.up()?;
        Ok(server)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address)
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddrV4 {
        self.address
    }

    /// Kills the server and, `down_for` later, starts a fresh, empty one on
    /// the same address.
    ///
    /// # Errors
    ///
    /// If the new server does not start.
    pub fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.stop();
        std::thread::sleep(down_for);
        self.up()
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn up(&mut self) -> anyhow::Result<()> {
        let mut command = self.place.command("redis-server");
        command
            .args(["--port", &self.address.port().to_string()])
            .args(["--bind", &self.address.ip().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null());
        if let Place::On(_) = self.place {
            // Off loopback Redis answers only clients on loopback unless
            // told otherwise; the network is the test's own.
            command.args(["--protected-mode", "no"]);
        }
        self.child = Some(command.spawn().context("redis-server not found")?);
        wait_for_port(&self.place, self.address, Duration::from_secs(10))
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something accepts connections on `address` at `place`,
/// trying from a thread on `place` itself.
fn wait_for_port(place: &Place, address: SocketAddrV4, timeout: Duration) -> anyhow::Result<()> {
    match place {
        Place::Loopback => wait_for_port_here(address, timeout),
        Place::On(host) => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    host.enter()?;
                    wait_for_port_here(address, timeout)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }),
    }
}

fn wait_for_port_here(address: SocketAddrV4, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&address.into(), Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {address} after {timeout:?}")
}
