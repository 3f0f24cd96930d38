//! A TaskFlow deployment for one benchmark: a fresh database on the local
//! PostgreSQL, a fresh Redis key prefix, and the API and workers as separate
//! `taskflow` processes, exactly as they run in production: on this
//! machine, or on hosts of a private network (`network` scenario).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use taskflow::client::Client;
use taskflow::store::Store;
use taskflow_testkit::{Network, PgBouncer, Place, ScratchDatabase, peak_rss_bytes, rss_bytes};

use super::usage::Usage;

/// Where the benchmark runs and what it runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// PostgreSQL server URL; each deployment creates its own database there.
    pub database_url: String,
    /// A PgBouncer in transaction mode in front of that server, through
    /// which the API and workers connect if set.
    pub pgbouncer: Option<Arc<PgBouncer>>,
    /// Redis URL; each deployment uses its own key prefix.
    pub redis_url: String,
    /// The `taskflow` binary the deployment runs.
    pub taskflow: PathBuf,
    /// The built plugins (`taskflow_plugin_*.wasm`).
    pub plugin_dir: PathBuf,
    /// Where workers keep compiled modules (shared across deployments, so
    /// compile time stays out of the measurements).
    pub cache_dir: PathBuf,
    /// Where the API and the workers run.
    pub placement: Placement,
    /// The private network this benchmark runs on, if it was asked for
    /// (the `network` scenario); the benchmark itself is on its client
    /// host.
    pub network: Option<Arc<Network>>,
}

/// Where a deployment's processes run.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The API's place.
    pub api: Place,
    /// Worker `i` runs at `workers[i % len]`; on loopback when empty.
    pub workers: Vec<Place>,
}

impl Placement {
    fn worker(&self, index: usize) -> Place {
        match self.workers.len() {
            0 => Place::Loopback,
            len => self.workers[index % len].clone(),
        }
    }
}

/// A running deployment. Dropping it kills its processes; [`Deployment::stop`]
/// also drops its database.
pub struct Deployment {
    target: Target,
    database: ScratchDatabase,
    prefix: String,
    /// Client of the deployment's API.
    pub client: Client,
    api_url: String,
    api_address: std::net::SocketAddrV4,
    /// The API's token, when it serves off loopback, where it refuses to
    /// run without one.
    token: Option<String>,
    processes: Processes,
}

/// The deployment's processes, killed when dropped.
struct Processes {
    api: Child,
    workers: Vec<Worker>,
}

struct Worker {
    child: Child,
    metrics: std::net::SocketAddrV4,
}

impl Worker {
    /// The text of its `/metrics`.
    async fn metrics(&self) -> reqwest::Result<String> {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await?
            .text()
            .await
    }
}

impl Deployment {
    /// Creates the database and starts the API.
    pub async fn start(target: &Target) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let database = ScratchDatabase::create(&target.database_url, "taskflow_bench", 4)
            .await
            .context("cannot create the benchmark database")?;
        let api_address = target.placement.api.free_address();
        let api_url = format!("http://{api_address}");
        let (token, token_sha256) = match target.placement.api {
            Place::Loopback => (None, None),
            Place::On(_) => {
                let (token, hash) = taskflow::api::auth::create_token();
                (Some(token), Some(hash))
            }
        };
        let mut deployment = Self {
            target: target.clone(),
            prefix: format!("taskflow-bench-{suffix}:"),
            client: Client::new(&api_url).with_token(token.clone()),
            api_url,
            api_address,
            token,
            processes: Processes {
                api: Command::new("true").spawn()?,
                workers: Vec::new(),
            },
            database,
        };
        let mut settings = vec![("TASKFLOW_LISTEN", api_address.to_string())];
        settings.extend(token_sha256.map(|hash| ("TASKFLOW_API_TOKEN_SHA256", hash)));
        deployment.processes.api = deployment.spawn("api", &target.placement.api, &settings)?;
        for _ in 0..200 {
            if deployment.client.list_modules(Some(1), None).await.is_ok() {
                return Ok(deployment);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the API did not come up")
    }

    /// The deployment's database.
    pub fn store(&self) -> &Store {
        self.database.store()
    }

    /// A client of the deployment's API with connections of its own, for a
    /// client that runs on a runtime of its own.
    pub fn new_client(&self) -> Client {
        Client::new(&self.api_url).with_token(self.token.clone())
    }

    /// Where the API listens and the token it wants, if any: for a client
    /// that speaks HTTP itself.
    pub fn api_endpoint(&self) -> (std::net::SocketAddrV4, Option<&str>) {
        (self.api_address, self.token.as_deref())
    }

    fn spawn(&self, role: &str, place: &Place, extra: &[(&str, String)]) -> anyhow::Result<Child> {
        let mut command = place.command(&self.target.taskflow);
        let database_env = match &self.target.pgbouncer {
            Some(bouncer) => bouncer.taskflow_env(self.database.url())?.to_vec(),
            None => vec![("DATABASE_URL", self.database.url().to_owned())],
        };
        command.envs(database_env);
        command
            .arg(role)
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
        let place = self.target.placement.worker(self.processes.workers.len());
        let metrics = place.free_address();
        let child = self.spawn(
            "worker",
            &place,
            &[
                ("TASKFLOW_WORKER_CONCURRENCY", concurrency.to_string()),
                ("TASKFLOW_WORKER_METRICS_LISTEN", metrics.to_string()),
                (
                    "TASKFLOW_WORKER_ID",
                    format!("bench-{}", self.processes.workers.len() + 1),
                ),
            ],
        )?;
        self.processes.workers.push(Worker { child, metrics });
        Ok(())
    }

    /// Stops the workers gracefully (SIGTERM) and waits for them, so their
    /// PostgreSQL sessions end and flush their statistics.
    pub async fn stop_workers(&mut self) {
        for worker in &self.processes.workers {
            let _ = nix_kill(worker.child.id(), "TERM");
        }
        for mut worker in self.processes.workers.drain(..) {
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

    /// What the API process has spent so far.
    pub fn api_usage(&self) -> Usage {
        Usage::of([self.processes.api.id()])
    }

    /// What the workers have spent so far, together.
    pub fn workers_usage(&self) -> Usage {
        Usage::of(
            self.processes
                .workers
                .iter()
                .map(|worker| worker.child.id()),
        )
    }

    /// Resident memory of the API process, in bytes.
    pub fn api_rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.processes.api.id())
    }

    /// The API's `/metrics`, as a scraper reads it.
    pub async fn api_metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.api_url))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// A console page, `path` under the API (`/ui/jobs`), sent with
    /// `cookie` (`name=value`) when given; its status, body and the
    /// session cookie it set, if any.
    pub async fn console_page(
        &self,
        path: &str,
        cookie: Option<&str>,
    ) -> anyhow::Result<(String, Option<String>)> {
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.api_url));
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        let response = request.send().await?.error_for_status()?;
        let session = response
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(str::to_owned);
        Ok((response.text().await?, session))
    }

    /// The value of `gauge` on the API's `/metrics` (0 before it is set).
    pub async fn api_gauge(&self, gauge: &str) -> anyhow::Result<f64> {
        Ok(self
            .api_metrics()
            .await?
            .lines()
            .find_map(|line| line.strip_prefix(gauge)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0))
    }

    /// The peak resident memory of each worker so far (`VmHWM`), in bytes.
    pub fn worker_peak_rss_bytes(&self) -> Vec<u64> {
        self.processes
            .workers
            .iter()
            .filter_map(|worker| peak_rss_bytes(worker.child.id()))
            .collect()
    }

    /// Waits until every worker serves its `/metrics`, i.e. has started
    /// (a figure read from a worker still starting would fail the run).
    pub async fn wait_for_workers(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for worker in &self.processes.workers {
            while worker.metrics().await.is_err() {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "a worker did not serve /metrics within 30 s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The database calls the workers have made so far, read from one
    /// fetch of each worker's `/metrics`.
    pub async fn worker_db_calls(&self) -> anyhow::Result<DbCalls> {
        let mut metrics = Vec::with_capacity(self.processes.workers.len());
        for worker in &self.processes.workers {
            metrics.push(worker.metrics().await?);
        }
        Ok(DbCalls { metrics })
    }

    /// Kills everything and drops the database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_workers().await;
        let _ = self.processes.api.kill();
        let _ = self.processes.api.wait();
        self.database.drop_database().await
    }
}

impl Drop for Processes {
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

/// The workers' `taskflow_db_calls_total`, as their `/metrics` gave it.
pub struct DbCalls {
    metrics: Vec<String>,
}

impl DbCalls {
    /// Calls of every store function.
    pub fn all(&self) -> u64 {
        self.of("")
    }

    /// Calls of the store functions whose names start with `prefix`
    /// (`claim`: every claim statement).
    pub fn of(&self, prefix: &str) -> u64 {
        let series = format!("taskflow_db_calls_total{{statement=\"{prefix}");
        self.metrics
            .iter()
            .flat_map(|text| text.lines())
            .filter(|line| line.starts_with(&series))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}
