//! The command line's flags: a clap layer over the plain structs of
//! [`crate::config`], as wasmtime's `cli-flags` is over its `Config`. Each
//! flag has an environment-variable twin, and its default is the plain
//! struct's `Default`, so a default is written once. `--help` shows the
//! first sentence of each setting; the full reasons are on the fields of
//! [`crate::config`].

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Command, FromArgMatches};

use crate::config::{
    ApiConfig, ApiLimits, CompileConfig, Connections, ExecutionLimits, LeaseConfig, RetryPolicy,
    WorkerConfig,
};
use crate::duration::HumanDuration;
use crate::job::SubmissionLimits;
use crate::sandbox::OutboundLimits;
use crate::store::DatabasePooler;

/// The settings of flags type `T` given no arguments: environment variables
/// where set, defaults otherwise. For embedders that configure TaskFlow
/// through the environment.
///
/// # Errors
///
/// If an environment variable does not parse.
pub fn from_env<T: Args + FromArgMatches>() -> Result<T, clap::Error> {
    let matches = T::augment_args(Command::new("taskflow")).try_get_matches_from(["taskflow"])?;
    T::from_arg_matches(&matches)
}

/// Flags of [`Connections`].
#[derive(Debug, Clone, Args)]
pub struct ConnectionFlags {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", default_value_t = Connections::default().database_url)]
    pub database_url: String,

    /// What DATABASE_URL reaches PostgreSQL through: none (or a session pool), or transaction (a transaction-mode pooler such as PgBouncer).
    #[arg(long, env = "TASKFLOW_DATABASE_POOLER", default_value_t = Connections::default().database_pooler)]
    pub database_pooler: DatabasePooler,

    /// A direct (or session-pooled) URL of the same database, for creating it and applying migrations; needed with --database-pooler transaction.
    #[arg(long, env = "TASKFLOW_DATABASE_MIGRATION_URL")]
    pub database_migration_url: Option<String>,

    /// Most PostgreSQL connections in this process's pool; a worker opens one more, of its own, for its claims.
    #[arg(long, env = "TASKFLOW_DATABASE_MAX_CONNECTIONS", default_value_t = Connections::default().database_max_connections)]
    pub database_max_connections: u32,

    /// Redis connection URL.
    #[arg(long, env = "REDIS_URL", default_value_t = Connections::default().redis_url)]
    pub redis_url: String,

    /// Prefix of every Redis key and channel TaskFlow uses, so several deployments (or test runs) can share one Redis.
    #[arg(long, env = "TASKFLOW_REDIS_PREFIX", default_value_t = Connections::default().redis_prefix)]
    pub redis_prefix: String,
}

impl From<ConnectionFlags> for Connections {
    fn from(flags: ConnectionFlags) -> Self {
        Self {
            database_url: flags.database_url,
            database_pooler: flags.database_pooler,
            database_migration_url: flags.database_migration_url,
            database_max_connections: flags.database_max_connections,
            redis_url: flags.redis_url,
            redis_prefix: flags.redis_prefix,
        }
    }
}

/// Flags of [`SubmissionLimits`] (with [`MemoryLimitFlag`]).
#[derive(Debug, Clone, Args)]
pub struct SubmissionFlags {
    /// Largest job input, in bytes.
    #[arg(long, env = "TASKFLOW_MAX_INPUT_BYTES", default_value_t = SubmissionLimits::default().max_input_bytes)]
    pub max_input_bytes: usize,

    /// Attempts a job gets when it does not say.
    #[arg(long, env = "TASKFLOW_DEFAULT_MAX_ATTEMPTS", default_value_t = SubmissionLimits::default().default_max_attempts)]
    pub default_max_attempts: u32,

    /// Most attempts a job may ask for.
    #[arg(long, env = "TASKFLOW_MAX_ATTEMPTS_LIMIT", default_value_t = SubmissionLimits::default().max_attempts_limit)]
    pub max_attempts_limit: u32,

    /// Wall-clock limit of one attempt when the job does not say.
    #[arg(long, env = "TASKFLOW_DEFAULT_TIMEOUT", default_value_t = SubmissionLimits::default().default_timeout.into())]
    pub default_timeout: HumanDuration,

    /// Longest wall-clock limit a job may ask for.
    #[arg(long, env = "TASKFLOW_MAX_TIMEOUT", default_value_t = SubmissionLimits::default().max_timeout.into())]
    pub max_timeout: HumanDuration,

    /// CPU budget of one attempt, in fuel units (about one per WebAssembly instruction)
    #[arg(long, env = "TASKFLOW_DEFAULT_FUEL", default_value_t = SubmissionLimits::default().default_fuel)]
    pub default_fuel: u64,

    /// Largest fuel budget a job may ask for.
    #[arg(long, env = "TASKFLOW_MAX_FUEL", default_value_t = SubmissionLimits::default().max_fuel)]
    pub max_fuel: u64,

    /// Linear-memory limit of one attempt, in bytes, when the job does not say.
    #[arg(long, env = "TASKFLOW_DEFAULT_MEMORY_LIMIT_BYTES", default_value_t = SubmissionLimits::default().default_memory_limit_bytes)]
    pub default_memory_limit_bytes: u64,
}

/// The largest memory a job may ask for, which is also what a worker
/// reserves per attempt: one flag for both, so the API and its workers
/// read the same `TASKFLOW_MAX_MEMORY_LIMIT_BYTES`.
#[derive(Debug, Clone, Args)]
pub struct MemoryLimitFlag {
    /// Largest memory limit a job may ask for.
    #[arg(long, env = "TASKFLOW_MAX_MEMORY_LIMIT_BYTES", default_value_t = SubmissionLimits::default().max_memory_limit_bytes)]
    pub max_memory_limit_bytes: u64,
}

/// Flags of [`ApiLimits`] beyond the submission's.
#[derive(Debug, Clone, Args)]
pub struct ApiLimitFlags {
    /// Largest module (component) upload, in bytes.
    #[arg(long, env = "TASKFLOW_MAX_MODULE_BYTES", default_value_t = ApiLimits::default().max_module_bytes)]
    pub max_module_bytes: usize,

    /// Most jobs in one `POST /v1/jobs/batch` request.
    #[arg(long, env = "TASKFLOW_MAX_BATCH_JOBS", default_value_t = ApiLimits::default().max_batch_jobs)]
    pub max_batch_jobs: usize,

    /// Largest `POST /v1/jobs/batch` request body, in bytes.
    #[arg(long, env = "TASKFLOW_MAX_BATCH_REQUEST_BYTES", default_value_t = ApiLimits::default().max_batch_request_bytes)]
    pub max_batch_request_bytes: usize,
}

/// Flags of [`ExecutionLimits`] (with [`MemoryLimitFlag`]).
#[derive(Debug, Clone, Args)]
pub struct ExecutionFlags {
    /// Largest output a task may return, in bytes.
    #[arg(long, env = "TASKFLOW_MAX_OUTPUT_BYTES", default_value_t = ExecutionLimits::default().max_output_bytes)]
    pub max_output_bytes: usize,

    /// Most bytes of guest log (log calls, stdout, stderr) kept per attempt.
    #[arg(long, env = "TASKFLOW_MAX_LOG_BYTES", default_value_t = ExecutionLimits::default().max_log_bytes)]
    pub max_log_bytes: usize,

    /// Outbound HTTP requests one attempt may make.
    #[arg(long, env = "TASKFLOW_MAX_OUTBOUND_REQUESTS", default_value_t = OutboundLimits::default().max_requests)]
    pub max_outbound_requests: u32,

    /// Request body bytes one attempt may send, in all.
    #[arg(long, env = "TASKFLOW_MAX_OUTBOUND_SENT_BYTES", default_value_t = OutboundLimits::default().max_sent_bytes)]
    pub max_outbound_sent_bytes: u64,

    /// Body bytes one response may carry.
    #[arg(long, env = "TASKFLOW_MAX_OUTBOUND_RESPONSE_BYTES", default_value_t = OutboundLimits::default().max_response_bytes)]
    pub max_outbound_response_bytes: u64,

    /// Response body bytes one attempt may receive, in all.
    #[arg(long, env = "TASKFLOW_MAX_OUTBOUND_RECEIVED_BYTES", default_value_t = OutboundLimits::default().max_received_bytes)]
    pub max_outbound_received_bytes: u64,

    /// Longest one outbound request may take (never past the attempt's deadline).
    #[arg(long, env = "TASKFLOW_OUTBOUND_REQUEST_TIMEOUT", default_value_t = OutboundLimits::default().request_timeout.into())]
    pub outbound_request_timeout: HumanDuration,

    /// PEM file of CA certificates trusted for outbound TLS besides the webpki roots.
    #[arg(long, env = "TASKFLOW_EXTRA_CA_CERTS")]
    pub extra_ca_certs: Option<PathBuf>,
}

/// Flags of [`RetryPolicy`].
#[derive(Debug, Clone, Args)]
pub struct RetryFlags {
    /// Delay before the second attempt.
    #[arg(long, env = "TASKFLOW_BACKOFF_BASE", default_value_t = RetryPolicy::default().backoff_base.into())]
    pub backoff_base: HumanDuration,

    /// Longest delay between two attempts.
    #[arg(long, env = "TASKFLOW_BACKOFF_MAX", default_value_t = RetryPolicy::default().backoff_max.into())]
    pub backoff_max: HumanDuration,
}

impl From<RetryFlags> for RetryPolicy {
    fn from(flags: RetryFlags) -> Self {
        Self {
            backoff_base: flags.backoff_base.into(),
            backoff_max: flags.backoff_max.into(),
        }
    }
}

/// Flags of [`LeaseConfig`].
#[derive(Debug, Clone, Args)]
pub struct LeaseFlags {
    /// How long a lease lives without renewal.
    #[arg(long, env = "TASKFLOW_LEASE_TTL", default_value_t = LeaseConfig::default().lease_ttl.into())]
    pub lease_ttl: HumanDuration,
}

impl From<LeaseFlags> for LeaseConfig {
    fn from(flags: LeaseFlags) -> Self {
        Self {
            lease_ttl: flags.lease_ttl.into(),
        }
    }
}

/// Flags of [`ApiConfig`].
#[derive(Debug, Clone, Args)]
pub struct ApiFlags {
    /// Address the REST API listens on.
    #[arg(long, env = "TASKFLOW_LISTEN", default_value_t = ApiConfig::default().listen)]
    pub listen: String,

    /// Most uploads waiting for a compile slot (`--max-concurrent-compiles`).
    #[arg(long, env = "TASKFLOW_MAX_QUEUED_UPLOADS", default_value_t = ApiConfig::default().max_queued_uploads)]
    pub max_queued_uploads: usize,

    /// SHA-256 (hex) of each accepted API token, comma-separated;
    #[arg(long, env = "TASKFLOW_API_TOKEN_SHA256", value_delimiter = ',')]
    pub api_token_sha256: Vec<String>,

    /// Serve an API without tokens on a non-loopback address, so that anyone who can reach it may upload and run code.
    #[arg(long, env = "TASKFLOW_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Most client connections open at once.
    #[arg(long, env = "TASKFLOW_MAX_CONNECTIONS", default_value_t = ApiConfig::default().max_connections)]
    pub max_connections: usize,

    /// Longest a connection may go without sending a complete request head: a new connection from its opening, a kept-alive one from the end of its previous response.
    #[arg(long, env = "TASKFLOW_REQUEST_HEADER_TIMEOUT", default_value_t = ApiConfig::default().request_header_timeout.into())]
    pub request_header_timeout: HumanDuration,

    /// Longest time to receive a request's whole body, and to wait for room in the in-flight budget (`--max-request-bytes-in-flight`) before reading it.
    #[arg(long, env = "TASKFLOW_REQUEST_BODY_TIMEOUT", default_value_t = ApiConfig::default().request_body_timeout.into())]
    pub request_body_timeout: HumanDuration,

    /// Most memory request bodies may hold at once, in bytes, summed over every request in flight.
    #[arg(long, env = "TASKFLOW_MAX_REQUEST_BYTES_IN_FLIGHT", default_value_t = ApiConfig::default().max_request_bytes_in_flight)]
    pub max_request_bytes_in_flight: usize,

    /// PostgreSQL read replica for the read-only job and queue routes and the console's pages; a job it does not have yet is read from the primary (README, Configuration).
    #[arg(long, env = "TASKFLOW_DATABASE_READ_URL")]
    pub database_read_url: Option<String>,

    /// Threads the API runs requests on. 1: one thread does everything, the fewest wake-ups and least CPU per request; more lets requests parse and answer on several cores at once (README, Configuration).
    #[arg(long, env = "TASKFLOW_API_THREADS", default_value = "1")]
    pub threads: NonZeroUsize,
}

impl From<ApiFlags> for ApiConfig {
    fn from(flags: ApiFlags) -> Self {
        Self {
            listen: flags.listen,
            max_queued_uploads: flags.max_queued_uploads,
            api_token_sha256: flags.api_token_sha256,
            insecure_no_auth: flags.insecure_no_auth,
            max_connections: flags.max_connections,
            request_header_timeout: flags.request_header_timeout.into(),
            request_body_timeout: flags.request_body_timeout.into(),
            max_request_bytes_in_flight: flags.max_request_bytes_in_flight,
            database_read_url: flags.database_read_url,
        }
    }
}

/// Flags of [`CompileConfig`].
#[derive(Debug, Clone, Args)]
pub struct CompileFlags {
    /// Longest one compile may take;
    #[arg(long, env = "TASKFLOW_COMPILE_TIMEOUT", default_value_t = CompileConfig::default().compile_timeout.into())]
    pub compile_timeout: HumanDuration,

    /// Most memory one compile may use, in bytes (the compiler process's `RLIMIT_DATA`: heap and private writable mappings).
    #[arg(long, env = "TASKFLOW_COMPILE_MEMORY_LIMIT_BYTES", default_value_t = CompileConfig::default().compile_memory_limit_bytes)]
    pub compile_memory_limit_bytes: u64,

    /// Compiles run at once in this process (each uses every core while it runs);
    #[arg(long, env = "TASKFLOW_MAX_CONCURRENT_COMPILES", default_value_t = CompileConfig::default().max_concurrent_compiles)]
    pub max_concurrent_compiles: usize,

    /// The `taskflow` binary that compiles, as `taskflow compile-component`.
    #[arg(long, env = "TASKFLOW_COMPILER")]
    pub compiler: Option<PathBuf>,
}

impl From<CompileFlags> for CompileConfig {
    fn from(flags: CompileFlags) -> Self {
        Self {
            compile_timeout: flags.compile_timeout.into(),
            compile_memory_limit_bytes: flags.compile_memory_limit_bytes,
            max_concurrent_compiles: flags.max_concurrent_compiles,
            compiler: flags.compiler,
        }
    }
}

/// Flags of [`WorkerConfig`].
#[derive(Debug, Clone, Args)]
pub struct WorkerFlags {
    /// This worker's name in attempt records and logs.
    #[arg(long, env = "TASKFLOW_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Queues this worker serves, comma-separated.
    #[arg(long, env = "TASKFLOW_QUEUES", value_delimiter = ',', default_values_t = WorkerConfig::default().queues)]
    pub queues: Vec<String>,

    /// Jobs this worker runs at once.
    #[arg(long, env = "TASKFLOW_WORKER_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Directory of compiled modules.
    #[arg(long, env = "TASKFLOW_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Longest a worker with free capacity waits before looking for work on its own, in case a wake-up was lost (for example while Redis was down).
    #[arg(long, env = "TASKFLOW_POLL_INTERVAL", default_value_t = WorkerConfig::default().poll_interval.into())]
    pub poll_interval: HumanDuration,

    /// How often the maintenance services (scheduler, rescuer) run, on the one worker elected to run them (`maintenance/elector.rs`).
    #[arg(long, env = "TASKFLOW_MAINTENANCE_INTERVAL", default_value_t = WorkerConfig::default().maintenance_interval.into())]
    pub maintenance_interval: HumanDuration,

    /// How long the maintenance leader's term lasts unless renewed (every third of it).
    #[arg(long, env = "TASKFLOW_LEADER_TERM", default_value_t = WorkerConfig::default().leader_term.into())]
    pub leader_term: HumanDuration,

    /// Address for this worker's Prometheus metrics (`/metrics`), off when unset.
    #[arg(long, env = "TASKFLOW_WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl From<WorkerFlags> for WorkerConfig {
    /// Field by field, so a flag added to [`WorkerFlags`] does not compile
    /// until it reaches the config.
    fn from(flags: WorkerFlags) -> Self {
        let WorkerFlags {
            worker_id,
            queues,
            concurrency,
            cache_dir,
            poll_interval,
            maintenance_interval,
            leader_term,
            metrics_listen,
        } = flags;
        Self {
            worker_id,
            queues,
            concurrency,
            cache_dir,
            poll_interval: poll_interval.into(),
            maintenance_interval: maintenance_interval.into(),
            leader_term: leader_term.into(),
            metrics_listen,
            secret_key: None,
        }
    }
}

impl SubmissionFlags {
    /// What a submission may ask for, up to `memory`.
    pub fn limits(&self, memory: &MemoryLimitFlag) -> SubmissionLimits {
        SubmissionLimits {
            max_input_bytes: self.max_input_bytes,
            default_max_attempts: self.default_max_attempts,
            max_attempts_limit: self.max_attempts_limit,
            default_timeout: self.default_timeout.into(),
            max_timeout: self.max_timeout.into(),
            default_fuel: self.default_fuel,
            max_fuel: self.max_fuel,
            default_memory_limit_bytes: self.default_memory_limit_bytes,
            max_memory_limit_bytes: memory.max_memory_limit_bytes,
        }
    }
}

impl ApiLimitFlags {
    /// What the API accepts, submissions checked against `submission`.
    pub fn limits(&self, submission: SubmissionLimits) -> ApiLimits {
        ApiLimits {
            submission,
            max_module_bytes: self.max_module_bytes,
            max_batch_jobs: self.max_batch_jobs,
            max_batch_request_bytes: self.max_batch_request_bytes,
        }
    }
}

impl ExecutionFlags {
    /// What a worker can grant, reserving `memory` per attempt.
    pub fn limits(&self, memory: &MemoryLimitFlag) -> ExecutionLimits {
        ExecutionLimits {
            max_memory_bytes: memory.max_memory_limit_bytes,
            max_output_bytes: self.max_output_bytes,
            max_log_bytes: self.max_log_bytes,
            outbound: OutboundLimits {
                max_requests: self.max_outbound_requests,
                max_sent_bytes: self.max_outbound_sent_bytes,
                max_response_bytes: self.max_outbound_response_bytes,
                max_received_bytes: self.max_outbound_received_bytes,
                request_timeout: self.outbound_request_timeout.into(),
                ..OutboundLimits::default()
            },
            extra_ca_certs: self.extra_ca_certs.clone(),
        }
    }
}
