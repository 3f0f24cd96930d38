//! A TaskFlow deployment for one benchmark: a fresh database on the local
//! PostgreSQL, a fresh Redis key prefix, and the API and workers as separate
//! processes of this same binary, exactly as they run in production.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::migrate::MigrateDatabase;

use crate::client::Client;
use crate::store::Store;

/// Where the benchmark runs and what it runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// PostgreSQL server URL; each deployment creates its own database there.
    pub database_url: String,
    /// Redis URL; each deployment uses its own key prefix.
    pub redis_url: String,
    /// The built plugins (`taskflow_plugin_*.wasm`).
    pub plugin_dir: PathBuf,
    /// Where workers keep compiled modules (shared across deployments, so
    /// compile time stays out of the measurements).
    pub cache_dir: PathBuf,
}

/// A running deployment. Dropping it kills its processes; [`Deployment::stop`]
/// also drops its database.
pub struct Deployment {
    target: Target,
    database: String,
    prefix: String,
    /// Client of the deployment's API.
    pub client: Client,
    api_url: String,
    /// The deployment's database.
    pub store: Store,
    api: Child,
    workers: Vec<Worker>,
}

struct Worker {
    child: Child,
    metrics_port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn database_url(server: &str, name: &str) -> String {
    match server.rfind('/') {
        Some(slash) => format!("{}/{name}", &server[..slash]),
        None => format!("{server}/{name}"),
    }
}

impl Deployment {
    /// Creates the database and starts the API.
    pub async fn start(target: &Target) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("taskflow_bench_{}", &suffix[..12]);
        let url = database_url(&target.database_url, &database);
        sqlx::Postgres::create_database(&url)
            .await
            .context("cannot create the benchmark database")?;
        let store = Store::connect_lazy(&url, 4)?;
        store.migrate().await?;
        let port = free_port()?;
        let api_url = format!("http://127.0.0.1:{port}");
        let mut deployment = Self {
            target: target.clone(),
            prefix: format!("taskflow-bench-{suffix}:"),
            client: Client::new(&api_url),
            api_url,
            store,
            api: Command::new("true").spawn()?,
            workers: Vec::new(),
            database,
        };
        deployment.api =
            deployment.spawn("api", &[("TASKFLOW_LISTEN", format!("127.0.0.1:{port}"))])?;
        for _ in 0..200 {
            if deployment.client.list_modules(Some(1), None).await.is_ok() {
                return Ok(deployment);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the API did not come up")
    }

    /// A client of the deployment's API with connections of its own, for a
    /// client that runs on a runtime of its own.
    pub fn new_client(&self) -> Client {
        Client::new(&self.api_url)
    }

    fn spawn(&self, role: &str, extra: &[(&str, String)]) -> anyhow::Result<Child> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg(role)
            .env(
                "DATABASE_URL",
                database_url(&self.target.database_url, &self.database),
            )
            .env("REDIS_URL", &self.target.redis_url)
            .env("TASKFLOW_REDIS_PREFIX", &self.prefix)
            .env("TASKFLOW_CACHE_DIR", &self.target.cache_dir)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null());
        for (key, value) in extra {
            command.env(key, value);
        }
        Ok(command.spawn()?)
    }

    /// Starts a worker running `concurrency` jobs at once.
    pub fn start_worker(&mut self, concurrency: usize) -> anyhow::Result<()> {
        let metrics_port = free_port()?;
        let child = self.spawn(
            "worker",
            &[
                ("TASKFLOW_WORKER_CONCURRENCY", concurrency.to_string()),
                (
                    "TASKFLOW_WORKER_METRICS_LISTEN",
                    format!("127.0.0.1:{metrics_port}"),
                ),
                (
                    "TASKFLOW_WORKER_ID",
                    format!("bench-{}", self.workers.len() + 1),
                ),
            ],
        )?;
        self.workers.push(Worker {
            child,
            metrics_port,
        });
        Ok(())
    }

    /// Stops the workers gracefully (SIGTERM) and waits for them, so their
    /// PostgreSQL sessions end and flush their statistics.
    pub async fn stop_workers(&mut self) {
        for worker in &self.workers {
            let _ = nix_kill(worker.child.id(), "TERM");
        }
        for mut worker in self.workers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || worker.child.wait()).await;
        }
    }

    /// Uploads `plugins/<name>` and returns its hash.
    pub async fn upload(&self, name: &str) -> anyhow::Result<String> {
        let path = self
            .target
            .plugin_dir
            .join(format!("taskflow_plugin_{name}.wasm"));
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: build the plugins first (scripts/build-plugins)",
                path.display()
            )
        })?;
        Ok(self.client.push_module(bytes).await?.0.hash)
    }

    /// Resident memory of each worker, in KiB.
    pub fn worker_rss_kib(&self) -> Vec<u64> {
        self.workers
            .iter()
            .filter_map(|worker| rss_kib(worker.child.id()))
            .collect()
    }

    /// Database calls the workers have made, by their `/metrics`.
    pub async fn worker_db_calls(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for worker in &self.workers {
            let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", worker.metrics_port))
                .await?
                .text()
                .await?;
            total += text
                .lines()
                .filter(|line| line.starts_with("taskflow_db_calls_total"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        Ok(total)
    }

    /// Transactions committed in this deployment's database so far, as
    /// PostgreSQL's statistics report them.
    pub async fn commits(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.database)
        .fetch_one(self.store.pool())
        .await?)
    }

    /// Statements PostgreSQL has run in this deployment's database so far,
    /// by `pg_stat_statements`; `None` where the server does not load it
    /// (it must be listed in `shared_preload_libraries`, which a stock
    /// server does not do) or the benchmark may not create the extension.
    pub async fn statements(&self) -> Option<i64> {
        let pool = self.store.pool();
        // Created on the first call only: `IF NOT EXISTS` would log a notice
        // on every later one.
        let installed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        if !installed {
            sqlx::query("CREATE EXTENSION pg_stat_statements")
                .execute(pool)
                .await
                .ok()?;
        }
        sqlx::query_scalar::<_, i64>(
            "SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(pool)
        .await
        .ok()
    }

    /// Kills everything and drops the database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_workers().await;
        let _ = self.api.kill();
        let _ = self.api.wait();
        self.store.pool().close().await;
        let admin = sqlx::PgPool::connect(&self.target.database_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        ))
        .execute(&admin)
        .await?;
        Ok(())
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.child.kill();
        }
        let _ = self.api.kill();
    }
}

fn nix_kill(pid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
}

/// Resident set size of a process, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}
