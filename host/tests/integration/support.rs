//! Shared test setup: a fresh PostgreSQL database and Redis key prefix per
//! test, the real API on an ephemeral port, real workers, real plugins.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use taskflow::api::types::{JobView, SubmitJob};
use taskflow::cli::server::{Backends, api_state, spawn_api, spawn_worker};
use taskflow::client::Client;
use taskflow::config::{
    ApiConfig, ApiLimits, CompileConfig, Connections, ExecutionLimits, LeaseConfig, RetryPolicy,
    WorkerConfig,
};
use taskflow::job::{AfterFailure, AttemptEnd, AttemptLog, NewJob};
use taskflow::store::{ClaimedJob, FinishedAttempt, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use taskflow_testkit::{ScratchDatabase as TestDb, free_port, plugin_path, redis_url};

/// A component built from `plugins/<name>` by `scripts/build-plugins`.
pub fn plugin(name: &str) -> Vec<u8> {
    let path = plugin_path(name);
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; build the plugins first with scripts/build-plugins",
            path.display()
        )
    })
}

/// A database of its own for one test, migrated, on the server of
/// `DATABASE_URL`.
pub async fn test_database() -> TestDb {
    TestDb::create(&taskflow_testkit::server_database_url(), "taskflow_test", 8)
        .await
        .expect("PostgreSQL is reachable and lets us create databases")
}

/// Settings a test may change before the app starts.
pub struct TestOptions {
    pub limits: ApiLimits,
    pub execution: ExecutionLimits,
    pub lease_ttl: Duration,
    pub retry: RetryPolicy,
    /// SHA-256 of accepted API tokens; empty leaves the API open.
    pub api_token_sha256: Vec<String>,
    /// How the API and the workers compile.
    pub compile: CompileConfig,
}

/// Compile settings for tests: the defaults, with the `taskflow` binary as
/// the compiler (this test binary is not it).
pub fn compile_config() -> CompileConfig {
    CompileConfig {
        compiler: Some(PathBuf::from(env!("CARGO_BIN_EXE_taskflow"))),
        ..CompileConfig::default()
    }
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            compile: compile_config(),
            limits: ApiLimits::default(),
            execution: ExecutionLimits::default(),
            lease_ttl: Duration::from_secs(1),
            retry: RetryPolicy {
                backoff_base: Duration::from_millis(50),
                backoff_max: Duration::from_secs(1),
            },
            api_token_sha256: Vec::new(),
        }
    }
}

/// A running API (and, on demand, workers) over a fresh database and Redis
/// prefix.
pub struct TestApp {
    pub db: TestDb,
    pub connections: Connections,
    pub backends: Backends,
    pub client: Client,
    pub url: String,
    pub limits: ApiLimits,
    pub execution: ExecutionLimits,
    pub retry: RetryPolicy,
    pub compile: CompileConfig,
    pub cache_dir: PathBuf,
    shutdown: CancellationToken,
    api: JoinHandle<std::io::Result<()>>,
}

/// A worker started by a test.
pub struct TestWorker {
    pub id: String,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

impl TestWorker {
    /// Stops claiming, lets running attempts finish, and waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("worker task ends cleanly");
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(TestOptions::default()).await
    }

    pub async fn start_with(options: TestOptions) -> Self {
        Self::start_with_api(options, |_| {}).await
    }

    /// Starts with API settings adjusted by `configure`.
    pub async fn start_with_api(
        options: TestOptions,
        configure: impl FnOnce(&mut ApiConfig),
    ) -> Self {
        let db = test_database().await;
        let connections = Connections {
            database_url: db.url().to_owned(),
            database_max_connections: 16,
            redis_url: redis_url(),
            redis_prefix: format!("tftest:{}:", Uuid::new_v4().simple()),
        };
        let lease = LeaseConfig {
            lease_ttl: options.lease_ttl,
        };
        let backends = Backends::connect(&connections, &lease).expect("valid connections");
        let mut api_config = ApiConfig {
            listen: "127.0.0.1:0".into(),
            api_token_sha256: options.api_token_sha256.clone(),
            ..ApiConfig::default()
        };
        configure(&mut api_config);
        let state = api_state(
            &backends,
            options.limits.clone(),
            api_config,
            &options.compile,
        )
        .expect("valid API config");
        let shutdown = CancellationToken::new();
        let (address, api) = spawn_api(state, shutdown.clone()).await.expect("API binds");
        let url = format!("http://{address}");
        Self {
            client: Client::new(&url),
            url,
            db,
            connections,
            backends,
            limits: options.limits,
            execution: options.execution,
            compile: options.compile,
            retry: options.retry,
            cache_dir: std::env::temp_dir()
                .join(format!("taskflow-test-cache-{}", Uuid::new_v4().simple())),
            shutdown,
            api,
        }
    }

    pub fn store(&self) -> &Store {
        self.db.store()
    }

    /// Worker settings suited to tests: fast polling, maintenance and elections.
    pub fn worker_config(&self, id: &str) -> WorkerConfig {
        WorkerConfig {
            worker_id: Some(id.to_owned()),
            queues: vec!["default".into()],
            concurrency: Some(2),
            cache_dir: Some(self.cache_dir.clone()),
            poll_interval: Duration::from_millis(500),
            maintenance_interval: Duration::from_millis(100),
            leader_term: Duration::from_secs(1),
            metrics_listen: None,
        }
    }

    pub fn spawn_worker(&self, id: &str) -> TestWorker {
        self.spawn_worker_with(self.worker_config(id))
    }

    pub fn spawn_worker_with(&self, config: WorkerConfig) -> TestWorker {
        self.spawn_worker_on(&self.backends, config)
    }

    /// Starts a worker whose PostgreSQL traffic goes to `database_url`
    /// (e.g. through a [`TcpProxy`]) instead of the test database directly.
    pub fn spawn_worker_via(&self, database_url: &str, id: &str) -> TestWorker {
        self.spawn_worker_on(&self.backends_via(database_url), self.worker_config(id))
    }

    /// Starts a second API whose PostgreSQL traffic goes to `database_url`
    /// (e.g. through a [`TcpProxy`]), and returns a client of it. It stops
    /// with the test.
    pub async fn spawn_api_via(&self, database_url: &str) -> Client {
        let backends = self.backends_via(database_url);
        let config = ApiConfig {
            listen: "127.0.0.1:0".into(),
            ..ApiConfig::default()
        };
        let state = api_state(&backends, self.limits.clone(), config, &self.compile)
            .expect("valid API config");
        let (address, _) = spawn_api(state, self.shutdown.child_token())
            .await
            .expect("API binds");
        Client::new(&format!("http://{address}"))
    }

    /// The test's backends, but with PostgreSQL at `database_url`.
    fn backends_via(&self, database_url: &str) -> Backends {
        let connections = Connections {
            database_url: database_url.to_owned(),
            ..self.connections.clone()
        };
        let lease = LeaseConfig {
            lease_ttl: self.backends.leases.ttl(),
        };
        Backends::connect(&connections, &lease).expect("valid connections")
    }

    fn spawn_worker_on(&self, backends: &Backends, config: WorkerConfig) -> TestWorker {
        let shutdown = self.shutdown.child_token();
        let id = config.worker_id.clone().expect("test workers are named");
        let handle = spawn_worker(
            backends,
            config,
            &self.execution,
            &self.compile,
            &self.retry,
            shutdown.clone(),
        )
        .expect("worker starts");
        TestWorker {
            id,
            shutdown,
            handle,
        }
    }

    /// Uploads a plugin and returns its hash.
    pub async fn upload(&self, name: &str) -> String {
        self.client
            .push_module(plugin(name))
            .await
            .expect("plugin uploads")
            .0
            .hash
    }

    /// Submits a job of `module` with JSON `input` and default options.
    pub async fn submit(&self, module: &str, input: Value) -> JobView {
        self.submit_with(SubmitJob {
            module: module.into(),
            input: Some(input.into()),
            ..Default::default()
        })
        .await
    }

    pub async fn submit_with(&self, job: SubmitJob) -> JobView {
        self.client.submit(&job).await.expect("job submits").job
    }

    /// Waits (up to a minute) for a job to reach a final state.
    pub async fn wait_final(&self, id: Uuid) -> JobView {
        self.client
            .wait(id, Duration::from_secs(60))
            .await
            .expect("job finishes")
    }

    /// Raw HTTP against the API, for requests the typed client cannot make.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// Deletes every Redis key of this app: what a `FLUSHALL` does to it,
    /// without disturbing tests running alongside.
    pub async fn flush_redis(&self) -> usize {
        let client = redis::Client::open(redis_url()).expect("valid Redis URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is reachable");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.connections.redis_prefix))
            .query_async(&mut connection)
            .await
            .expect("KEYS");
        if !keys.is_empty() {
            let () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await
                .expect("DEL");
        }
        keys.len()
    }

    /// Stops everything and drops the database.
    pub async fn finish(self) {
        self.shutdown.cancel();
        let _ = self.api.await;
        let _ = std::fs::remove_dir_all(&self.cache_dir);
        self.db
            .drop_database()
            .await
            .expect("drop the test database");
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy a test can cut, to simulate a network partition between one
/// process and a server without disturbing anything else on that server.
pub struct TcpProxy {
    pub address: SocketAddr,
    down: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
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
        let (accept_down, accept_cut, accept_live) = (down.clone(), cut.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if accept_down.load(Ordering::Acquire) {
                    continue; // dropping the socket refuses the connection
                }
                let mut cuts = accept_cut.subscribe();
                let live = accept_live.clone();
                live.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cuts.changed() => {}
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
            live,
        }
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

/// A database of its own holding `count` available jobs of one module
/// (whose bytes are never run), for tests that play the store's statements.
pub async fn store_with_jobs(count: usize) -> (TestDb, Vec<Uuid>) {
    use sha2::Digest;
    let db = test_database().await;
    let store = db.store();
    let bytes = b"not run by these tests".to_vec();
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    store.insert_module(&hash, &bytes).await.unwrap();
    let jobs: Vec<NewJob> = (0..count).map(|_| new_job(&hash)).collect();
    store.insert_jobs(&jobs).await.unwrap();
    (db, jobs.iter().map(|job| job.id).collect())
}

/// A job of `module_hash` with small limits, as the store takes it (past
/// the API's checks).
pub fn new_job(module_hash: &str) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        module_hash: module_hash.to_owned(),
        queue: "default".into(),
        priority: 0,
        input: b"{}".to_vec(),
        max_attempts: 5,
        timeout_ms: 1000,
        fuel: 1000,
        memory_limit_bytes: 1 << 20,
        run_at: None,
        idempotency_key: None,
        request_fingerprint: None,
    }
}

/// The outcome record of `job`'s attempt on `worker`, ending as `end`.
pub fn finished(job: &ClaimedJob, worker: &str, end: AttemptEnd) -> FinishedAttempt {
    FinishedAttempt {
        lease: job.lease(),
        attempt: job.attempt,
        worker_id: worker.into(),
        started_at: job.attempted_at,
        end,
        usage: None,
        log: AttemptLog::empty(),
        if_refused: AfterFailure::Dead,
    }
}

/// A successful outcome of `job`'s attempt with `output`.
pub fn success(job: &ClaimedJob, worker: &str, output: &[u8]) -> FinishedAttempt {
    finished(
        job,
        worker,
        AttemptEnd::Succeeded {
            output: output.to_vec(),
        },
    )
}

/// A rescue of `job`'s attempt on `worker`, retried at once.
pub fn rescue(job: &ClaimedJob, worker: &str) -> FinishedAttempt {
    finished(
        job,
        worker,
        AttemptEnd::LeaseExpired {
            message: format!("{worker} vanished"),
            next: AfterFailure::Retry {
                delay: Duration::ZERO,
            },
        },
    )
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

impl ApiProcess {
    /// The process's peak resident memory so far, in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        taskflow_testkit::peak_rss_bytes(self.child.id()).expect("the API process is alive")
    }

    /// File descriptors the process has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the API process is alive")
            .count()
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
