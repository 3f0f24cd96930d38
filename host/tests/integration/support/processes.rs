//! Other processes a test talks to, and cuts: a TCP proxy between a process
//! and a server, and `taskflow api` and `taskflow worker` as OS processes
//! of their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use taskflow::client::Client;
use taskflow_testkit::free_port;

use super::{TestApp, eventually};

/// A TCP proxy a test can cut, to simulate a network partition between one
/// process and a server without disturbing anything else on that server.
pub struct TcpProxy {
    pub address: SocketAddr,
    down: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    sever: tokio::sync::watch::Sender<u64>,
    /// Connections being forwarded.
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (sever, _) = tokio::sync::watch::channel(0u64);
        let (accept_down, accept_cut, accept_sever, accept_live) =
            (down.clone(), cut.clone(), sever.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if accept_down.load(Ordering::Acquire) {
                    continue; // dropping the socket refuses the connection
                }
                let mut cuts = accept_cut.subscribe();
                let mut severs = accept_sever.subscribe();
                let live = accept_live.clone();
                live.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let severed = tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                            _ = cuts.changed() => false,
                            _ = severs.changed() => true,
                        };
                        if severed {
                            drop(server);
                            // The client hears nothing, until a cut or
                            // the proxy's end closes its side too.
                            let _ = cuts.changed().await;
                        }
                    }
                    live.fetch_sub(1, Ordering::AcqRel);
                });
            }
        });
        Self {
            address,
            down,
            cut,
            sever,
            live,
        }
    }

    /// Closes the server's side of every open connection and leaves the
    /// client's open and silent: a half-open connection, what a client
    /// keeps when a partition hid the server's FIN (a NAT or load balancer
    /// that dropped an idle flow, a server restarted behind a partition).
    /// New connections are forwarded as usual.
    pub fn sever_silently(&self) {
        self.sever.send_modify(|generation| *generation += 1);
    }

    /// Cuts every open connection and refuses new ones until
    /// [`Self::restore`]; returns once every connection is closed, so the
    /// partition is in force when the test goes on.
    pub async fn cut(&self) {
        self.down.store(true, Ordering::Release);
        self.cut.send_modify(|generation| *generation += 1);
        eventually(Duration::from_secs(10), || async {
            (self.live.load(Ordering::Acquire) == 0).then_some(())
        })
        .await;
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::Release);
    }
}

/// `taskflow api` as an OS process of its own over a test's database and
/// Redis prefix, for tests that measure the process itself (its memory, its
/// file descriptors). Killed when dropped.
pub struct ApiProcess {
    child: std::process::Child,
    pub url: String,
    pub client: Client,
}

impl TestApp {
    /// Starts `taskflow api` with the test's connections and `env` on top.
    pub async fn api_process(&self, env: &[(&str, &str)]) -> ApiProcess {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_taskflow"));
        command
            .arg("api")
            .env("DATABASE_URL", self.db.url())
            .env("REDIS_URL", &self.connections.redis_url)
            .env("TASKFLOW_REDIS_PREFIX", &self.connections.redis_prefix)
            .env("TASKFLOW_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let process = ApiProcess {
            child: command.spawn().expect("the taskflow binary starts"),
            client: Client::new(&url),
            url,
        };
        eventually(Duration::from_secs(30), || async {
            process.client.list_modules(Some(1), None).await.ok()
        })
        .await;
        process
    }
}

impl TestApp {
    /// Starts `taskflow worker` as its own OS process against the test's
    /// database and Redis prefix, with `env` on top and its log (stderr) to
    /// `log`. Kill it to simulate a crash; it is killed when dropped.
    pub fn worker_process(
        &self,
        id: &str,
        env: &[(&str, &str)],
        log: impl Into<std::process::Stdio>,
    ) -> WorkerProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_taskflow"))
            .arg("worker")
            .env("DATABASE_URL", self.db.url())
            .env("REDIS_URL", &self.connections.redis_url)
            .env("TASKFLOW_REDIS_PREFIX", &self.connections.redis_prefix)
            .env("TASKFLOW_LEASE_TTL", "1s")
            .env("TASKFLOW_WORKER_ID", id)
            .env("TASKFLOW_CACHE_DIR", &self.cache_dir)
            .env("TASKFLOW_MAINTENANCE_INTERVAL", "100ms")
            .env("TASKFLOW_LEADER_TERM", "1s")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the taskflow binary starts");
        WorkerProcess(child)
    }
}

/// `taskflow worker` as an OS process of its own
/// ([`TestApp::worker_process`]), killed when dropped, so that a failing
/// test leaves no worker behind.
pub struct WorkerProcess(std::process::Child);

impl std::ops::Deref for WorkerProcess {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for WorkerProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl WorkerProcess {
    /// Sends SIGTERM, as a process manager stops a service.
    pub fn terminate(&self) {
        let pid = rustix::process::Pid::from_child(&self.0);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .expect("the worker process can be signalled");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ApiProcess {
    /// Sends `body` as JSON to `path` with `method`.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        super::http::send_json(&self.url, method, path, body).await
    }

    /// The process's peak resident memory so far, in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        taskflow_testkit::peak_rss_bytes(self.child.id()).expect("the API process is alive")
    }

    /// The process's threads whose name is `name` (as `/proc` shows it:
    /// at most 15 bytes).
    pub fn threads_named(&self, name: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .expect("the API process is alive")
            .filter(|task| {
                let comm = task.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|comm| comm.trim_end() == name)
            })
            .count()
    }

    /// Connections the process has accepted and still holds.
    pub fn accepted_connections(&self) -> usize {
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok());
        accepted_connections(self.child.id(), port.expect("the URL ends in a port"))
    }
}

/// How many TCP connections to local `port` process `pid` holds: its socket
/// descriptors that `/proc/net/tcp{,6}` lists on that port, other than the
/// listener. Connections waiting in the listen backlog have no descriptor
/// yet, and the process's other descriptors (database and Redis
/// connections opened meanwhile) do not count.
pub fn accepted_connections(pid: u32, port: u16) -> usize {
    let sockets: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process is alive")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    const LISTEN: &str = "0A";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|line| {
                    line.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .filter(|fields| {
            // sl local_address rem_address st … uid timeout inode
            let local_port = fields[1].rsplit(':').next();
            local_port.and_then(|hex| u16::from_str_radix(hex, 16).ok()) == Some(port)
                && fields[3] != LISTEN
                && sockets.contains(&fields[9])
        })
        .count()
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
