//! The processes under test, each a real OS process the suite can kill,
//! pause and restart: a private PostgreSQL cluster, a private Redis, the
//! TaskFlow API and workers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use taskflow_testkit::free_port;

fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port} after {timeout:?}")
}

/// A PostgreSQL cluster of our own, on its own port, so it can be crashed
/// without disturbing anything else on the machine.
pub struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// Creates (initdb, trust auth) and starts a cluster under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL server binaries not found under /usr/lib/postgresql")?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .context("no initdb under /usr/lib/postgresql/*/bin")?;
        // PostgreSQL refuses to run as root; CI runs as root.
        let as_postgres = nix::unistd::geteuid().is_root();
        let data = dir.join("pg");
        std::fs::create_dir_all(dir)?;
        if as_postgres {
            Command::new("chown")
                .args(["postgres", dir.to_str().unwrap()])
                .status()?;
        }
        let cluster = Self {
            bin,
            log: dir.join("pg.log"),
            data,
            port: free_port(),
            as_postgres,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "--auth=trust",
                "-U",
                "postgres",
                "-N",
            ],
        )?;
        cluster.up()?;
        Ok(cluster)
    }

    /// The URL of database `name` in this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command.args(args).current_dir("/").output()?;
        if !output.status.success() {
            bail!(
                "{tool} {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) -> anyhow::Result<()> {
        let options = format!("-p {} -k /tmp -c listen_addresses=127.0.0.1", self.port);
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )?;
        wait_for_port(self.port, Duration::from_secs(30))
    }

    /// Crashes the server: `immediate` shutdown skips the checkpoint, like a
    /// power cut from PostgreSQL's point of view.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// Stops the server for good (again on drop; stopping twice is harmless).
    pub fn stop(&self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }
}

/// A Redis server of our own, without persistence: a restart loses every key.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> anyhow::Result<Self> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("redis-server not found")?;
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(Self { child, port })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts a fresh, empty one on the same port.
    pub fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.stop();
        std::thread::sleep(down_for);
        let fresh = Self::start_on(self.port)?;
        let _old = std::mem::replace(self, fresh);
        Ok(())
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One worker's way to Redis: a TCP proxy the suite can turn into a black
/// hole, as a partition that drops packets does: nothing is forwarded any
/// more, nothing is closed, so the worker learns of it only from its own
/// timeouts. When the partition heals, the connections it held are closed
/// and new ones are forwarded again.
pub struct RedisLink {
    pub port: u16,
    black_hole: tokio::sync::watch::Sender<bool>,
}

impl RedisLink {
    /// A link to the Redis on `redis_port`. Must be called on the runtime.
    pub fn start(redis_port: u16) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (black_hole, _) = tokio::sync::watch::channel(false);
        let state = black_hole.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, redis_port, state.subscribe()));
            }
        });
        Ok(Self { port, black_hole })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding, holding every connection open.
    pub fn black_hole(&self) {
        self.black_hole.send_replace(true);
    }

    /// What heals the link (closes the held connections and forwards new
    /// ones) when set to `false`.
    pub fn heal_handle(&self) -> tokio::sync::watch::Sender<bool> {
        self.black_hole.clone()
    }
}

/// Forwards one connection until either side closes it, or holds it,
/// unread, while the link is a black hole.
async fn forward(
    mut client: tokio::net::TcpStream,
    redis_port: u16,
    black_hole: tokio::sync::watch::Receiver<bool>,
) {
    if !*black_hole.borrow() {
        let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else {
            return;
        };
        let mut falls_in = black_hole.clone();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            _ = falls_in.wait_for(|on| *on) => {}
        }
    }
    // Held open, unread, until the partition heals; dropping both ends then
    // closes them.
    let mut heals = black_hole;
    let _ = heals.wait_for(|on| !*on).await;
}

/// A `taskflow api` or `taskflow worker` process, logging JSON to
/// `{name}.log` in the run's directory.
pub struct Taskflow {
    child: Child,
    pub name: String,
}

/// What every TaskFlow process of the suite shares.
#[derive(Clone)]
pub struct TaskflowSetup {
    pub binary: PathBuf,
    pub redis_url: String,
    pub dir: PathBuf,
    /// Every setting but Redis's, `DATABASE_URL` included (through a
    /// PgBouncer with `--pgbouncer`).
    pub env: Vec<(String, String)>,
}

impl TaskflowSetup {
    /// Starts `taskflow <role>` named `name` with extra environment.
    pub fn spawn(
        &self,
        role: &str,
        name: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Taskflow> {
        let log = self.dir.join(format!("{name}.log"));
        let mut command = Command::new(&self.binary);
        command
            .arg(role)
            .env("REDIS_URL", &self.redis_url)
            .env("TASKFLOW_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,taskflow::attempt=debug")
            .stdout(Stdio::null())
            .stderr(File::options().create(true).append(true).open(&log)?);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for (key, value) in extra {
            command.env(key, value);
        }
        Ok(Taskflow {
            child: command.spawn()?,
            name: name.to_owned(),
        })
    }
}

impl Taskflow {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(self.pid(), signal)?;
        Ok(())
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill();
    }
}

// Whatever happens to the suite (a failed check, an error, a panic), it must
// not leave servers running behind it.

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Taskflow {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.kill();
        }
    }
}
