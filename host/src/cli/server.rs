//! Assembles the server roles from configuration. The binary and the
//! integration tests build processes through these functions, so tests run
//! exactly what production runs.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ApiArgs, ApiOnlyArgs, CommonArgs, MigrateArgs, WorkerArgs, WorkerOnlyArgs};
use crate::api::auth::TokenHashes;
use crate::api::replica::Replica;
use crate::api::{self, ApiParts, ApiState};
use crate::config::{
    ApiConfig, ApiLimits, CompileConfig, Connections, ExecutionLimits, LeaseConfig, RetryPolicy,
    WorkerConfig,
};
use crate::console;
use crate::lease::{EndingAnnouncer, EndingWatcher, Leases, Redis, Waker};
use crate::maintenance::elector::Office;
use crate::maintenance::{self, CounterFolder, Elector, Pruner, Rescuer, Scheduler};
use crate::queue::{MalformedSecretKey, SecretKey};
use crate::sandbox::Compiler;
use crate::store::{DatabasePooler, Store};
use crate::telemetry::Traces;
use crate::worker::Worker;

/// PostgreSQL and Redis handles shared by a process's roles.
#[derive(Debug, Clone)]
pub struct Backends {
    /// PostgreSQL.
    pub store: Store,
    /// Redis.
    pub redis: Redis,
    /// Leases in Redis.
    pub leases: Leases,
    /// The key queue secrets are sealed with (`TASKFLOW_SECRET_KEY`).
    pub secret_key: Option<SecretKey>,
    /// Where spans go, if anywhere (telemetry/traces.rs).
    pub traces: Traces,
}

impl Backends {
    /// Prepares connections (made lazily, so a process can start while a
    /// dependency restarts).
    pub fn connect(connections: &Connections, lease: &LeaseConfig) -> anyhow::Result<Self> {
        connections.validate()?;
        lease.validate()?;
        let store = Store::connect_lazy(
            &connections.database_url,
            connections.database_max_connections,
            connections.database_pooler,
        )
        .context("invalid DATABASE_URL")?;
        let redis = Redis::connect_lazy(&connections.redis_url, &connections.redis_prefix)
            .context("invalid REDIS_URL")?;
        let leases = Leases::new(redis.clone(), lease.lease_ttl);
        Ok(Self {
            store,
            redis,
            leases,
            secret_key: None,
            traces: Traces::default(),
        })
    }
}

/// Creates the database if it does not exist and applies migrations, over
/// a connection of their own that is closed afterwards.
pub async fn prepare_database(connections: &Connections) -> anyhow::Result<()> {
    let url = connections.migration_url()?;
    if Store::create_database_if_missing(url)
        .await
        .context("cannot reach PostgreSQL (TASKFLOW_DATABASE_MIGRATION_URL, else DATABASE_URL) or create its database")?
    {
        tracing::info!("created the database");
    }
    let store = Store::connect_lazy(url, 2, DatabasePooler::None)?;
    store.migrate().await.context("cannot apply migrations")?;
    store.close().await;
    Ok(())
}

/// The API's state. Uploads are checked by unoptimised compiles in compiler
/// processes: the checks are a worker's, and an unoptimised compile of a
/// large component is several times faster. The API never runs a guest.
pub fn api_state(
    backends: &Backends,
    limits: ApiLimits,
    config: ApiConfig,
    compile: &CompileConfig,
) -> anyhow::Result<ApiState> {
    limits.validate()?;
    config.validate()?;
    let compiler = Compiler::new(compile.compiler_config()?, false);
    let replica = config
        .database_read_url
        .as_deref()
        .map(|url| backends.store.replica(url, api::replica::READ_TIMEOUT))
        .transpose()
        .context("invalid --database-read-url")?;
    Ok(ApiState::new(ApiParts {
        store: backends.store.clone(),
        replica: replica.map(Replica::new),
        redis: backends.redis.clone(),
        leases: backends.leases.clone(),
        waker: Waker::spawn(backends.redis.clone()),
        ending_announcer: EndingAnnouncer::spawn(backends.redis.clone()),
        endings: EndingWatcher::spawn(backends.redis.clone()),
        submitter: crate::store::Submitter::spawn(backends.store.clone()),
        upload_queue: Arc::new(Semaphore::new(
            compile.max_concurrent_compiles + config.max_queued_uploads,
        )),
        compiler,
        budget: crate::api::body::RequestBudget::new(
            config.max_request_bytes_in_flight,
            config.request_body_timeout,
        ),
        tokens: TokenHashes::parse(&config.api_token_sha256)?,
        secret_key: backends.secret_key.clone(),
        traces: backends.traces.clone(),
        limits: Arc::new(limits),
        config: Arc::new(config),
    }))
}

/// Binds the API's listener and serves it in a task until `shutdown`.
///
/// # Errors
///
/// If the address cannot be bound, or if it is not a loopback address while
/// no API token is configured and `--insecure-no-auth` was not given: an
/// open API lets anyone who reaches it upload and run code.
pub async fn spawn_api(
    state: ApiState,
    shutdown: CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(&state.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", state.config.listen))?;
    let address = listener.local_addr()?;
    if state.tokens.is_open() && !address.ip().is_loopback() && !state.config.insecure_no_auth {
        anyhow::bail!(
            "refusing to serve an API without tokens on {address}, where anyone who can reach it \
             could upload and run code: configure TASKFLOW_API_TOKEN_SHA256 (see `taskflow token \
             create`), listen on a loopback address, or pass --insecure-no-auth if every client \
             on that network is trusted"
        );
    }
    let console = console::router(state.clone());
    let server = api::serve(listener, state, console, shutdown);
    Ok((address, tokio::spawn(server)))
}

/// Starts a worker, its maintenance services (each runs while the worker
/// holds its leadership: `maintenance/elector.rs`) and its two electors in
/// tasks; the handle ends when all have stopped after `shutdown`.
pub fn spawn_worker(
    backends: &Backends,
    config: WorkerConfig,
    limits: &ExecutionLimits,
    compile: &CompileConfig,
    retry: &RetryPolicy,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    config.validate()?;
    limits.validate()?;
    retry.validate()?;
    let config = WorkerConfig {
        secret_key: backends.secret_key.clone(),
        ..config
    };
    let interval = config.maintenance_interval;
    let elector = |office| {
        Elector::new(
            backends.store.clone(),
            office,
            config.effective_worker_id(),
            config.leader_term,
        )
    };
    let maintenance = elector(Office::Maintenance);
    let rescue = elector(Office::Rescue(backends.redis.clone()));
    let scheduler = Scheduler::new(backends.store.clone(), Waker::spawn(backends.redis.clone()));
    let worker = Worker::new(
        config,
        limits,
        compile.compiler_config()?,
        retry.clone(),
        backends.store.clone(),
        backends.leases.clone(),
        scheduler.nudge(),
    )?
    .with_traces(backends.traces.clone());
    let rescuer = Rescuer::new(
        backends.store.clone(),
        backends.leases.clone(),
        retry.clone(),
    )
    .with_traces(backends.traces.clone());
    let pruner = Pruner::new(backends.store.clone());
    let counter_folder = CounterFolder::new(backends.store.clone());
    let (leadership, rescue_leadership) = (maintenance.leadership(), rescue.leadership());
    Ok(tokio::spawn(async move {
        tokio::join!(
            worker.run(shutdown.clone()),
            maintenance::run(scheduler, leadership.clone(), interval, shutdown.clone()),
            maintenance::run(rescuer, rescue_leadership, interval, shutdown.clone()),
            maintenance::run(pruner, leadership.clone(), interval, shutdown.clone()),
            maintenance::run(counter_folder, leadership, interval, shutdown.clone()),
            maintenance.run(shutdown.clone()),
            rescue.run(shutdown),
        );
    }))
}

/// A token cancelled on SIGINT or SIGTERM; a second signal of either kind
/// exits at once with status 130. Either kind counts: a process manager
/// sends SIGTERM again, a terminal SIGINT, and once tokio has installed its
/// handler for a signal it keeps it for the life of the process, so the
/// default action (exit) never comes back by itself.
///
/// # Errors
///
/// If the SIGTERM handler cannot be installed.
pub fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler")?;
    tokio::spawn(async move {
        let mut signalled = async || {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        };
        signalled().await;
        tracing::info!("shutting down: finishing work in progress (signal again to force)");
        cancel.cancel();
        signalled().await;
        std::process::exit(130);
    });
    Ok(token)
}

/// Connects a role to PostgreSQL and Redis, with traces as the
/// environment configures them, as `service_name` unless
/// `OTEL_SERVICE_NAME` says otherwise; with `migrate`, first creates the
/// database if it is missing and applies migrations.
pub async fn connect(
    common: &CommonArgs,
    migrate: bool,
    service_name: &'static str,
) -> anyhow::Result<Backends> {
    let connections = Connections::from(common.connections.clone());
    if migrate {
        prepare_database(&connections).await?;
    }
    let mut backends = Backends::connect(&connections, &common.lease.clone().into())?;
    backends.traces = Traces::from_env(service_name)?;
    backends.secret_key = secret_key_from_env()?;
    check_secret_key(&backends.store, backends.secret_key.as_ref()).await?;
    Ok(backends)
}

/// `TASKFLOW_SECRET_KEY`, read from the environment only: a command-line
/// flag would show it in `ps`, and a parse error would print it.
fn secret_key_from_env() -> anyhow::Result<Option<SecretKey>> {
    match std::env::var("TASKFLOW_SECRET_KEY") {
        Ok(text) if !text.is_empty() => Ok(Some(SecretKey::parse(&text)?)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(MalformedSecretKey.into()),
    }
}

/// Refuses to start when stored secrets were sealed with a key this process
/// does not hold: every job that needs one would fail. When PostgreSQL
/// cannot be reached the check is skipped (the process starts anyway, as
/// with every dependency), and a job's attempt reports a wrong key instead.
pub async fn check_secret_key(store: &Store, key: Option<&SecretKey>) -> anyhow::Result<()> {
    let sealed_with = match store.secret_key_ids().await {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!(%error, "cannot check TASKFLOW_SECRET_KEY against stored secrets");
            return Ok(());
        }
    };
    let count: i64 = sealed_with.iter().map(|(_, count)| count).sum();
    let ids: Vec<&str> = sealed_with.iter().map(|(id, _)| id.as_str()).collect();
    match key {
        _ if sealed_with.is_empty() => Ok(()),
        None => anyhow::bail!(
            "{count} queue secrets are stored (sealed with key {}) but TASKFLOW_SECRET_KEY is not \
             set: start every API and worker with the key they were sealed with",
            ids.join(", ")
        ),
        Some(key) if !ids.contains(&key.id()) => anyhow::bail!(
            "TASKFLOW_SECRET_KEY (key {}) is not the key the {count} stored queue secrets were \
             sealed with ({}): start with that key, or set the secrets again",
            key.id(),
            ids.join(", ")
        ),
        Some(key) if ids.len() > 1 => {
            tracing::warn!(
                key = key.id(),
                others = ?ids,
                "some queue secrets were sealed with another key: set them again to use them"
            );
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// The API's state from its command line.
pub fn api_state_from(
    backends: &Backends,
    common: &CommonArgs,
    api: &ApiOnlyArgs,
) -> anyhow::Result<ApiState> {
    api_state(
        backends,
        api.limits(&common.memory),
        api.api.clone().into(),
        &common.compile.clone().into(),
    )
}

/// Starts a worker named by `config` with the rest of its command line.
pub fn spawn_worker_from(
    backends: &Backends,
    common: &CommonArgs,
    worker: &WorkerOnlyArgs,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    spawn_worker(
        backends,
        config,
        &worker.execution(&common.memory),
        &common.compile.clone().into(),
        &worker.retry.clone().into(),
        shutdown,
    )
}

/// `taskflow api`.
pub async fn run_api(args: ApiArgs) -> anyhow::Result<()> {
    crate::telemetry::prometheus();
    let backends = connect(&args.common, true, "taskflow-api").await?;
    let state = api_state_from(&backends, &args.common, &args.api)?;
    let open = state.tokens.is_open();
    let (address, server) = spawn_api(state, shutdown_on_signal()?).await?;
    tracing::info!(%address, "API listening");
    if open {
        tracing::warn!(
            "the API is OPEN: no TASKFLOW_API_TOKEN_SHA256 configured, so anyone who can reach \
             {address} can upload and run code; create a token with `taskflow token create`"
        );
    }
    let served = server.await;
    backends.traces.flush().await;
    served??;
    Ok(())
}

/// `taskflow worker`.
pub async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let config = WorkerConfig::from(args.worker.worker.clone());
    if let Some(listen) = config.metrics_listen.clone() {
        crate::telemetry::prometheus();
        tokio::spawn(async move {
            if let Err(error) = crate::telemetry::serve_metrics(&listen).await {
                tracing::error!(%error, %listen, "cannot serve worker metrics");
            }
        });
    }
    let backends = connect(&args.common, false, "taskflow-worker").await?;
    backends.redis.warn_if_evicting().await;
    backends.redis.warn_if_scripts_cannot_read_info().await;
    let stopped = spawn_worker_from(
        &backends,
        &args.common,
        &args.worker,
        config,
        shutdown_on_signal()?,
    )?
    .await;
    backends.traces.flush().await;
    stopped?;
    Ok(())
}

/// `taskflow migrate`.
pub async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    prepare_database(&args.connections.into()).await?;
    tracing::info!("database is up to date");
    Ok(())
}
