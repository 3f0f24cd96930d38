//! Shared test setup: a fresh PostgreSQL database and Redis key prefix per
//! test, the real API on an ephemeral port, real workers, real plugins.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use taskflow::cli::server::{Backends, api_state, spawn_api, spawn_worker};
use taskflow::client::Client;
use taskflow::config::{
    ApiConfig, ApiLimits, CompileConfig, Connections, ExecutionLimits, LeaseConfig, RetryPolicy,
    WorkerConfig,
};
use taskflow::queue::SecretKey;
use taskflow::store::{DatabasePooler, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod browser;
mod components;
mod http;
mod jobs;
mod processes;
mod store;

pub use components::TaskWorld;
pub use http::assert_api_error;
pub use jobs::{assert_state, failing_every_attempt, keyed, single_attempt, tree};
pub use processes::{ApiProcess, TcpProxy, WorkerProcess, accepted_connections};
pub use store::{finished, lease_lapses, new_job, rescue, store_with_jobs, stored_module, success};
pub use taskflow_testkit::{
    BIG_BODY_BYTES, PgBouncer, ScratchDatabase as TestDb, TestServers, plugin_path, redis_url,
};

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
    /// The key queue secrets are sealed with; `None` stores none.
    pub secret_key: Option<SecretKey>,
    /// The Redis (or Redis Cluster) the API and workers use.
    pub redis_url: String,
    /// A PgBouncer in transaction mode the API and workers reach
    /// PostgreSQL through (`DatabasePooler::Transaction`); `None` connects
    /// them directly. The test's own store ([`TestApp::store`]) is direct.
    pub pgbouncer: Option<Arc<PgBouncer>>,
}

/// The key tests seal secrets with (base64 of 32 bytes).
pub const TEST_SECRET_KEY: &str = "dGFza2Zsb3cgdGVzdCBrZXk6IG5vdCBzZWNyZXQhISE=";

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
            secret_key: Some(SecretKey::parse(TEST_SECRET_KEY).expect("a valid key")),
            redis_url: redis_url(),
            pgbouncer: None,
        }
    }
}

impl TestOptions {
    /// A server started without `TASKFLOW_SECRET_KEY`: it can neither seal
    /// nor open queue secrets.
    pub fn without_secret_key() -> Self {
        Self {
            secret_key: None,
            ..Self::default()
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
    /// Every worker started, so that [`TestApp::finish`] stops those still
    /// running before it drops their database.
    workers: std::sync::Mutex<Vec<WorkerTask>>,
    /// Kept running until the app is dropped.
    _pgbouncer: Option<Arc<PgBouncer>>,
}

/// A worker's task, until someone waits for it to end.
type WorkerTask = Arc<std::sync::Mutex<Option<JoinHandle<()>>>>;

/// A worker started by a test. [`TestApp::finish`] stops it; a test that
/// needs it stopped earlier calls [`TestWorker::stop`].
pub struct TestWorker {
    pub id: String,
    shutdown: CancellationToken,
    task: WorkerTask,
}

impl TestWorker {
    /// Stops claiming, lets running attempts finish, and waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        wait_for(&self.task).await;
    }
}

/// Waits for a worker's task to end, unless someone already did.
async fn wait_for(task: &WorkerTask) {
    let handle = task.lock().expect("not poisoned").take();
    if let Some(handle) = handle {
        handle.await.expect("worker task ends cleanly");
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(TestOptions::default()).await
    }

    /// A default app with `plugin` uploaded and no worker yet; the second
    /// value is the plugin's hash.
    pub async fn start_with_plugin(plugin: &str) -> (Self, String) {
        let app = Self::start().await;
        let module = app.upload(plugin).await;
        (app, module)
    }

    /// A default app with one worker, `w1`, and `plugin` uploaded: where
    /// most tests that run jobs begin. The second value is the plugin's
    /// hash; the worker stops with [`TestApp::finish`].
    pub async fn start_running(plugin: &str) -> (Self, String) {
        let (app, module) = Self::start_with_plugin(plugin).await;
        app.spawn_worker("w1");
        (app, module)
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
        let (database_url, database_pooler) = match &options.pgbouncer {
            Some(bouncer) => (
                bouncer.url_for(db.url()).expect("a PostgreSQL URL"),
                DatabasePooler::Transaction,
            ),
            None => (db.url().to_owned(), DatabasePooler::None),
        };
        let connections = Connections {
            database_url,
            database_pooler,
            database_migration_url: Some(db.url().to_owned()),
            database_max_connections: 16,
            redis_url: options.redis_url.clone(),
            redis_prefix: format!("tftest:{}:", Uuid::new_v4().simple()),
        };
        let lease = LeaseConfig {
            lease_ttl: options.lease_ttl,
        };
        let mut backends = Backends::connect(&connections, &lease).expect("valid connections");
        backends.secret_key = options.secret_key.clone();
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
            workers: Default::default(),
            _pgbouncer: options.pgbouncer,
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
            secret_key: None,
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
        self.spawn_api_on(self.backends_via(database_url)).await
    }

    /// Starts a second API whose Redis is `redis_url` (e.g. an address
    /// nothing listens on), and returns a client of it. It stops with the
    /// test.
    pub async fn spawn_api_with_redis(&self, redis_url: &str) -> Client {
        let connections = Connections {
            redis_url: redis_url.to_owned(),
            ..self.connections.clone()
        };
        self.spawn_api_on(self.backends_on(connections)).await
    }

    async fn spawn_api_on(&self, backends: Backends) -> Client {
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
        self.backends_on(Connections {
            database_url: database_url.to_owned(),
            ..self.connections.clone()
        })
    }

    /// Backends like the test's, over `connections`.
    fn backends_on(&self, connections: Connections) -> Backends {
        let lease = LeaseConfig {
            lease_ttl: self.backends.leases.ttl(),
        };
        let mut backends = Backends::connect(&connections, &lease).expect("valid connections");
        backends.secret_key = self.backends.secret_key.clone();
        backends
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
        let task = Arc::new(std::sync::Mutex::new(Some(handle)));
        self.workers
            .lock()
            .expect("not poisoned")
            .push(Arc::clone(&task));
        TestWorker { id, shutdown, task }
    }

    /// The name of this app's Redis key `suffix` (`epoch`,
    /// `lease:<job>`…), hash tag included on a cluster.
    pub fn redis_key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.backends.leases.redis().prefix())
    }

    /// A raw connection to this app's Redis (or cluster), and the prefix of
    /// its keys there.
    fn redis_connection(&self) -> (taskflow::lease::Connection, String) {
        let redis = self.backends.leases.redis();
        (redis.connection(), redis.prefix().to_owned())
    }

    /// The value of this app's Redis key `suffix`.
    pub async fn redis_value(&self, suffix: &str) -> Option<String> {
        let (mut connection, prefix) = self.redis_connection();
        redis::cmd("GET")
            .arg(format!("{prefix}{suffix}"))
            .query_async(&mut connection)
            .await
            .expect("GET")
    }

    /// How long this app's Redis key `suffix` has left (zero if it has no
    /// expiry or does not exist).
    pub async fn redis_pttl(&self, suffix: &str) -> Duration {
        let (mut connection, prefix) = self.redis_connection();
        let ms: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}{suffix}"))
            .query_async(&mut connection)
            .await
            .expect("PTTL");
        Duration::from_millis(ms.max(0).unsigned_abs())
    }

    /// Deletes every Redis key of this app: what a `FLUSHALL` does to it,
    /// without disturbing tests running alongside.
    pub async fn flush_redis(&self) -> usize {
        let (mut connection, prefix) = self.redis_connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
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

    /// Writes a newer fencing token over job `id`'s lease key, for one
    /// lease TTL: what another worker's claim after a rescue does, so the
    /// holder's next renewal finds its lease lost.
    pub async fn take_over_lease(&self, id: Uuid, newer_token: i64) {
        let (mut connection, prefix) = self.redis_connection();
        let () = redis::cmd("SET")
            .arg(format!("{prefix}lease:{id}"))
            .arg(newer_token)
            .arg("PX")
            .arg(self.backends.leases.ttl().as_millis() as u64)
            .query_async(&mut connection)
            .await
            .expect("SET");
    }

    /// Stops everything (workers first, letting their attempts finish) and
    /// drops the database.
    pub async fn finish(self) {
        self.shutdown.cancel();
        let workers = self.workers.into_inner().expect("not poisoned");
        for task in &workers {
            wait_for(task).await;
        }
        let _ = self.api.await;
        let _ = std::fs::remove_dir_all(&self.cache_dir);
        self.db
            .drop_database()
            .await
            .expect("drop the test database");
    }
}

/// Returns once database `name` has no client connection, nor a parallel
/// worker of one, as seen from `admin`, a connection to another database of
/// the same server. Panics after 30 s.
pub async fn until_no_clients(admin: &mut PgConnection, name: &str) {
    let admin = tokio::sync::Mutex::new(admin);
    eventually(Duration::from_secs(30), || async {
        let clients: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND backend_type IN ('client backend', 'parallel worker')",
        )
        .bind(name)
        .fetch_one(&mut **admin.lock().await)
        .await
        .expect("pg_stat_activity is readable");
        (clients == 0).then_some(())
    })
    .await;
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
