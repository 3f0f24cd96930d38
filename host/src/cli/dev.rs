//! `taskflow dev`: the whole system on one machine, with a demo.
//!
//! Applies migrations, starts the API and two workers in this process
//! (each worker with its own sandbox, leases, elector and maintenance services, exactly
//! as `taskflow worker` runs them), builds the `hello` plugin, uploads it
//! through the API, submits a job and prints its result and log. Then it
//! shows a task reaching the outside world: a local HTTP service granted to
//! the `demo` queue is fetched by the `fetch` plugin, and the same request
//! from a queue that grants nothing is denied; each attempt shows its
//! request. Then it keeps serving until Ctrl-C, so you can submit your own
//! jobs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::client::{describe_attempts, describe_job};
use super::server::{api_state_from, connect, shutdown_on_signal, spawn_api, spawn_worker_from};
use super::{ApiOnlyArgs, CommonArgs, WorkerOnlyArgs};
use crate::api::types::{PutQueue, SubmitJob};
use crate::client::Client;
use crate::config::WorkerConfig;
use crate::job::JobState;

/// `taskflow dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// What every role shares.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The API's own settings.
    #[command(flatten)]
    pub api: ApiOnlyArgs,
    /// The workers' own settings.
    #[command(flatten)]
    pub worker: WorkerOnlyArgs,
    /// Number of workers to start.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// The demo component; built from plugins/hello when not given.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// The outbound demo's component; built from plugins/fetch when not
    /// given. With both given, the demo needs neither cargo nor the source.
    #[arg(long)]
    pub fetch_plugin: Option<PathBuf>,
    /// Stop after the demo job instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_after_demo: bool,
}

/// Runs `taskflow dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // The flag is `taskflow api`'s, shared through `ApiFlags`; here the API
    // shares its runtime with the workers (`Cli::runtime`), so it could
    // only be ignored.
    anyhow::ensure!(
        args.api.api.threads.get() == 1,
        "--threads (TASKFLOW_API_THREADS) is for `taskflow api`: `taskflow dev` runs its API and workers on one runtime, one thread per core"
    );
    crate::telemetry::prometheus();
    let backends = connect(&args.common, true, "taskflow-dev").await?;
    let shutdown = shutdown_on_signal()?;
    let state = api_state_from(&backends, &args.common, &args.api)?;
    let open = state.tokens.is_open();
    let (address, api) = spawn_api(state, shutdown.clone()).await?;
    let mut worker = WorkerConfig::from(args.worker.worker.clone());
    if !worker.queues.iter().any(|queue| queue == DEMO_QUEUE) {
        worker.queues.push(DEMO_QUEUE.to_owned());
    }
    let base_id = worker.effective_worker_id();
    let mut workers = Vec::new();
    for index in 1..=args.workers {
        let config = WorkerConfig {
            worker_id: Some(format!("{base_id}-{index}")),
            ..worker.clone()
        };
        workers.push(spawn_worker_from(
            &backends,
            &args.common,
            &args.worker,
            config,
            shutdown.clone(),
        )?);
    }
    let url = format!("http://{address}");
    println!("TaskFlow is up: API at {url}, {} workers", args.workers);
    if open {
        println!("The API is open (no TASKFLOW_API_TOKEN_SHA256 configured): do not expose it.");
    }

    let demos = demos(&url, args.plugin, args.fetch_plugin).await;
    // A failed demo stops everything the way Ctrl-C does: workers drain.
    if demos.is_err() || args.exit_after_demo {
        shutdown.cancel();
    } else {
        println!("\nServing until Ctrl-C. Try: taskflow job list --api {url}");
    }
    for worker in workers {
        worker.await?;
    }
    let served = api.await;
    backends.traces.flush().await;
    demos?;
    served??;
    Ok(())
}

/// Both demos, from the components given or built here.
async fn demos(
    url: &str,
    plugin: Option<PathBuf>,
    fetch_plugin: Option<PathBuf>,
) -> anyhow::Result<()> {
    let plugin = match plugin {
        Some(path) => path,
        None => build_plugin("taskflow-plugin-hello").await?,
    };
    demo(url, &plugin).await?;
    let fetch_plugin = match fetch_plugin {
        Some(path) => path,
        None => build_plugin("taskflow-plugin-fetch").await?,
    };
    outbound_demo(url, &fetch_plugin).await?;
    println!("\nSee both jobs, their attempts and the queues in the console: {url}/ui");
    Ok(())
}

/// Uploads the plugin, runs one job through the whole system and prints it.
async fn demo(url: &str, plugin: &Path) -> anyhow::Result<()> {
    let client = demo_client(url)?;
    let module = upload(&client, plugin).await?;
    let job = SubmitJob::new(module, serde_json::json!({ "name": "TaskFlow" }));
    run_and_show(&client, &job, JobState::Succeeded).await
}

/// The queue the outbound demo grants its local service to.
const DEMO_QUEUE: &str = "demo";

/// Starts a local HTTP service, grants it to the `demo` queue, and fetches
/// it with the `fetch` plugin from that queue (allowed) and from `default`
/// (denied: it grants nothing).
async fn outbound_demo(url: &str, plugin: &Path) -> anyhow::Result<()> {
    let client = demo_client(url)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    let service = axum::Router::new().route(
        "/status",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"service": "up"})) }),
    );
    tokio::spawn(async move { axum::serve(listener, service).await });
    let grants = PutQueue {
        allowed_hosts: vec![origin.clone()],
        ..PutQueue::default()
    };
    client.put_queue(DEMO_QUEUE, &grants).await?;
    println!("\n$ taskflow queue set {DEMO_QUEUE} --allow-host {origin}");
    let module = upload(&client, plugin).await?;
    let input = serde_json::json!({ "url": format!("{origin}/status") });
    for (queue, expected) in [
        (DEMO_QUEUE, JobState::Succeeded),
        (crate::job::DEFAULT_QUEUE, JobState::Dead),
    ] {
        let job = SubmitJob {
            queue: Some(queue.to_owned()),
            max_attempts: Some(1),
            ..SubmitJob::new(module.clone(), input.clone())
        };
        run_and_show(&client, &job, expected).await?;
    }
    Ok(())
}

/// A client of the demo's API; with tokens configured, the demo
/// authenticates like any client.
fn demo_client(url: &str) -> anyhow::Result<Client> {
    Ok(Client::new(url).with_token(super::api_token_from_env()?))
}

/// Uploads `plugin`, shows it, and returns its hash.
async fn upload(client: &Client, plugin: &Path) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    let (module, _) = client.push_module(bytes).await?;
    println!(
        "\n$ taskflow module push {}\nmodule {} ({} bytes)",
        plugin.display(),
        module.hash,
        module.size_bytes
    );
    Ok(module.hash)
}

/// Submits `job`, waits for it, shows it with its attempts, and fails
/// unless it ends `expected`.
async fn run_and_show(client: &Client, job: &SubmitJob, expected: JobState) -> anyhow::Result<()> {
    let queue = job.queue.as_deref().unwrap_or(crate::job::DEFAULT_QUEUE);
    let input = job.input.as_ref().map_or("null", |input| input.text());
    println!(
        "\n$ taskflow job submit --queue {queue} --module {} --input '{input}' --wait",
        job.module
    );
    let submitted = client.submit(job).await?;
    let job = client
        .wait(submitted.job.id, Duration::from_secs(60))
        .await?;
    println!("{}", describe_job(&job));
    println!("\n$ taskflow job attempts {}", job.id);
    println!("{}", describe_attempts(&client.attempts(job.id).await?));
    if job.state != expected {
        bail!(
            "the demo job on queue {queue} is {}, not {expected}",
            job.state
        );
    }
    Ok(())
}

/// Builds a plugin of this repository for `wasm32-wasip2` and returns the
/// component's path, as reported by cargo.
pub async fn build_plugin(package: &str) -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!("building {package} for wasm32-wasip2 …");
    let output = tokio::process::Command::new(
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
    )
    .args([
        "build",
        "--profile",
        "plugin",
        "--target",
        "wasm32-wasip2",
        "-p",
        package,
    ])
    .args(["--message-format", "json-render-diagnostics"])
    .current_dir(&workspace)
    .stderr(Stdio::inherit())
    .output()
    .await
    .context(
        "cannot run cargo to build the plugin (or pass --plugin FILE and --fetch-plugin FILE)",
    )?;
    if !output.status.success() {
        bail!(
            "building {package} failed; is the wasm32-wasip2 target installed? \
             (rustup target add wasm32-wasip2; or pass --plugin FILE and --fetch-plugin FILE)"
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .flat_map(|message| message["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|name| name.as_str().map(PathBuf::from))
        .find(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .context("cargo built no .wasm file")
}
