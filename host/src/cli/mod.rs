//! The `taskflow` binary: server roles (`api`, `worker`, `dev`, `migrate`),
//! an HTTP client of the API (`module …`, `job …`), and `run`, which runs a
//! task component locally without a server.

pub mod client;
pub mod dev;
pub mod flags;
pub mod job_flags;
pub mod queue;
pub mod run;
pub mod server;
pub mod terminal;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::config::{ApiLimits, ExecutionLimits};
use crate::job::JobState;
use flags::{
    ApiFlags, ApiLimitFlags, CompileFlags, ConnectionFlags, ExecutionFlags, LeaseFlags,
    MemoryLimitFlag, RetryFlags, SubmissionFlags, WorkerFlags,
};

/// TaskFlow: run untrusted WebAssembly tasks as durable background jobs.
#[derive(Debug, Parser)]
#[command(name = "taskflow", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the REST API (control plane). Applies migrations on start.
    Api(ApiArgs),
    /// Run a worker (execution plane), with the maintenance services (run
    /// while it is the elected leader).
    Worker(WorkerArgs),
    /// Create the database if needed and apply migrations.
    Migrate(MigrateArgs),
    /// Run everything locally (migrations, API, two workers), build and
    /// upload the example plugin, and run a demo job.
    Dev(Box<dev::DevArgs>),
    /// Manage task modules.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Submit and inspect jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Grant a queue's tasks hosts, configuration and secrets.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Run a task component locally, in the worker's sandbox, without a
    /// server.
    Run(run::RunArgs),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the API's OpenAPI 3.1 document (what `GET /openapi.json`
    /// serves; docs/openapi.json).
    Openapi,
    /// Compile a component read on stdin, writing the artifact on stdout.
    /// The API and workers run this in a process of its own for every
    /// compile (`sandbox/compiler.rs`); not for direct use.
    #[command(hide = true)]
    CompileComponent(CompileComponentArgs),
}

/// `taskflow compile-component`.
#[derive(Debug, Args)]
pub struct CompileComponentArgs {
    /// Optimise the compiled code (a worker's compile), rather than only
    /// checking it quickly (an upload's).
    #[arg(long)]
    pub optimize: bool,
    /// Write nothing: only say whether the component is valid.
    #[arg(long)]
    pub check_only: bool,
}

/// `taskflow token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a random API token. Give the token to clients
    /// (TASKFLOW_API_TOKEN) and its SHA-256 to the API
    /// (TASKFLOW_API_TOKEN_SHA256); the server never needs the token itself.
    Create,
}

/// What every server role shares: where PostgreSQL and Redis live, leases,
/// how components are compiled, and the largest memory a job may have.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Where PostgreSQL and Redis live.
    #[command(flatten)]
    pub connections: ConnectionFlags,
    /// Lease settings.
    #[command(flatten)]
    pub lease: LeaseFlags,
    /// How components are compiled (uploads, and first use on a worker).
    #[command(flatten)]
    pub compile: CompileFlags,
    /// The largest memory a job may ask for and a worker reserves.
    #[command(flatten)]
    pub memory: MemoryLimitFlag,
}

/// The API's own settings.
#[derive(Debug, Args)]
pub struct ApiOnlyArgs {
    /// API settings.
    #[command(flatten)]
    pub api: ApiFlags,
    /// What a submission may ask for.
    #[command(flatten)]
    pub submission: SubmissionFlags,
    /// What the API accepts beyond that.
    #[command(flatten)]
    pub api_limits: ApiLimitFlags,
}

/// A worker's own settings.
#[derive(Debug, Args)]
pub struct WorkerOnlyArgs {
    /// Worker settings.
    #[command(flatten)]
    pub worker: WorkerFlags,
    /// What a worker grants an attempt.
    #[command(flatten)]
    pub execution: ExecutionFlags,
    /// Retry schedule.
    #[command(flatten)]
    pub retry: RetryFlags,
}

impl ApiOnlyArgs {
    /// What the API accepts, jobs' memory capped by `memory`.
    pub fn limits(&self, memory: &MemoryLimitFlag) -> ApiLimits {
        self.api_limits.limits(self.submission.limits(memory))
    }
}

impl WorkerOnlyArgs {
    /// What a worker grants, reserving `memory` per attempt.
    pub fn execution(&self, memory: &MemoryLimitFlag) -> ExecutionLimits {
        self.execution.limits(memory)
    }
}

/// `taskflow api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// What every role shares.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The API's own settings.
    #[command(flatten)]
    pub api: ApiOnlyArgs,
}

/// `taskflow worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// What every role shares.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The worker's own settings.
    #[command(flatten)]
    pub worker: WorkerOnlyArgs,
}

/// `taskflow migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Where PostgreSQL and Redis live.
    #[command(flatten)]
    pub connections: ConnectionFlags,
}

/// Which page of a list.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Page size.
    #[arg(long)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

/// Options of every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the TaskFlow API.
    #[arg(
        long = "api",
        env = "TASKFLOW_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api_url: String,
    /// API token (see `taskflow token create`). Better set
    /// TASKFLOW_API_TOKEN, read when this is absent: a flag's value shows
    /// in `ps` to every user of the machine, so giving it warns.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientArgs {
    /// A client of the configured API, with the token of `--token` (after
    /// a warning on stderr) or else of TASKFLOW_API_TOKEN.
    ///
    /// # Errors
    ///
    /// If TASKFLOW_API_TOKEN is set but not UTF-8.
    pub fn client(&self) -> anyhow::Result<crate::client::Client> {
        let token = match &self.token {
            Some(token) => {
                eprintln!(
                    "warning: --token shows the token to every user of this machine (ps, \
                     /proc/<pid>/cmdline); set TASKFLOW_API_TOKEN instead"
                );
                Some(token.clone())
            }
            None => api_token_from_env()?,
        };
        Ok(crate::client::Client::new(&self.api_url).with_token(token))
    }
}

/// The API token a client sends when no `--token` is given, if set.
///
/// # Errors
///
/// If it is set but not UTF-8: sent as no token, it would only earn a 401.
pub fn api_token_from_env() -> anyhow::Result<Option<String>> {
    match std::env::var("TASKFLOW_API_TOKEN") {
        Ok(token) => Ok(Some(token)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("TASKFLOW_API_TOKEN is not UTF-8, so it cannot be an API token")
        }
    }
}

/// `taskflow module …`.
#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Upload a component (.wasm built for wasm32-wasip2).
    Push {
        /// The component file.
        file: PathBuf,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a module.
    Get {
        /// Its SHA-256.
        hash: String,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List modules.
    List {
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Point a name (`resize` or `resize:stable`) at a module; jobs
    /// submitted with `--module NAME` run it from then on.
    Name {
        /// The module's SHA-256.
        hash: String,
        /// The name.
        name: String,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List names, a page at a time, or show one name's module and moves.
    Names {
        /// The name to show.
        #[arg(conflicts_with_all = ["limit", "cursor"])]
        name: Option<String>,
        /// Which page, when listing.
        #[command(flatten)]
        page: PageArgs,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Point a name back where its latest move took it from.
    Rollback {
        /// The name.
        name: String,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a module no name points at and no unfinished job would run.
    Rm {
        /// Its SHA-256.
        hash: String,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `taskflow job …`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job.
    Submit(client::SubmitArgs),
    /// Show a job with its input and output.
    Get {
        /// The job id.
        id: Uuid,
        /// Wait up to this long for the job to end (`30s`, `5m`), then show
        /// it as it is.
        #[arg(long, value_parser = crate::duration::parse)]
        wait: Option<Duration>,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<JobState>,
        /// Only jobs on this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show every finished attempt of a job, with its log.
    Attempts {
        /// The job id.
        id: Uuid,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job that has not finished.
    Cancel {
        /// The job id.
        id: Uuid,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Requeue a dead or cancelled job.
    Retry {
        /// The job id.
        id: Uuid,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a finished (succeeded, dead or cancelled) job and its attempts.
    Rm {
        /// The job id.
        id: Uuid,
        /// API address and output format.
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl Cli {
    /// The async runtime the command runs on. The API runs on as many
    /// threads as `--threads` says, one by default: a current-thread runtime,
    /// where a request's tasks never wake another thread (README, "The
    /// API's threads"). Everything else runs on one thread per core.
    ///
    /// # Errors
    ///
    /// The runtime's own (the operating system refused a thread or a
    /// descriptor).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match &self.command {
            Command::Api(args) if args.api.api.threads.get() == 1 => {
                tokio::runtime::Builder::new_current_thread()
            }
            Command::Api(args) => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(args.api.api.threads.get());
                builder
            }
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Api(args) => server::run_api(args).await,
        Command::Worker(args) => server::run_worker(args).await,
        Command::Migrate(args) => server::run_migrate(args).await,
        Command::Dev(args) => dev::run(*args).await,
        Command::Module(command) => client::run_module(command).await,
        Command::Job(command) => client::run_job(command).await,
        Command::Queue(command) => queue::run_queue(command).await,
        Command::Run(args) => run::run(args).await,
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::api::openapi_document())?
            );
            Ok(())
        }
        Command::CompileComponent(_) => {
            anyhow::bail!("compile-component runs outside the async runtime (main.rs)")
        }
        Command::Token(TokenCommand::Create) => {
            let (token, hash) = crate::api::auth::create_token();
            println!("token:  {token}\nsha256: {hash}");
            println!(
                "\nclients: TASKFLOW_API_TOKEN={token}\nserver:  TASKFLOW_API_TOKEN_SHA256={hash}"
            );
            Ok(())
        }
    }
}
