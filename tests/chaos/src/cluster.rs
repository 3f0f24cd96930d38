//! The TaskFlow processes under test, each a real OS process the suite can
//! kill, pause and restart, and the link through which a worker on
//! loopback reaches Redis. PostgreSQL and Redis are the testkit's
//! `PrivatePostgres` and `PrivateRedis`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use taskflow_testkit::Place;

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
    /// Where it runs.
    pub place: Place,
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
    /// Starts `taskflow <role>` named `name` at `place` with extra
    /// environment.
    pub fn spawn(
        &self,
        role: &str,
        name: &str,
        place: &Place,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Taskflow> {
        let log = self.dir.join(format!("{name}.log"));
        let mut command = place.command(&self.binary);
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
            place: place.clone(),
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
// not leave processes running behind it.

impl Drop for Taskflow {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.kill();
        }
    }
}
