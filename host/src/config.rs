//! Every knob TaskFlow has, in one place.
//!
//! Each setting is a command-line flag with an environment-variable twin
//! (`DATABASE_URL`, `REDIS_URL`, and `TASKFLOW_*` for the rest) and a default
//! that is the fast, safe configuration. The structs are shared by every
//! command that needs them (`api`, `worker`, `dev`), so a setting is parsed
//! exactly once and means the same thing everywhere. `validate` functions
//! run at startup and reject combinations that cannot work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Command, FromArgMatches};

use crate::job::SubmissionLimits;

/// A configuration that cannot work, reported before anything starts.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

fn check(ok: bool, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError(message()))
    }
}

/// The settings a process gets with no flags: environment variables where
/// set, defaults otherwise. Used by embedders and tests.
pub fn from_env<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(Command::new("taskflow"));
    let matches = command
        .try_get_matches_from(["taskflow"])
        .unwrap_or_else(|error| panic!("invalid TASKFLOW_* environment: {error}"));
    T::from_arg_matches(&matches)
        .unwrap_or_else(|error| panic!("invalid TASKFLOW_* environment: {error}"))
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Where PostgreSQL and Redis live.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// PostgreSQL connection URL. `taskflow migrate`, `api` and `dev` create
    /// the database if it is missing and apply migrations.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/taskflow"
    )]
    pub database_url: String,

    /// Most PostgreSQL connections this process opens. Too low and requests
    /// queue for a connection; too high and PostgreSQL spends memory and
    /// context switches on idle backends.
    #[arg(long, env = "TASKFLOW_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// Redis connection URL. Redis only coordinates (leases, wake-ups): it
    /// may be flushed or restarted at any time without losing a job.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix of every Redis key and channel TaskFlow uses, so several
    /// deployments (or test runs) can share one Redis.
    #[arg(long, env = "TASKFLOW_REDIS_PREFIX", default_value = "taskflow:")]
    pub redis_prefix: String,
}

impl Connections {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.database_max_connections >= 2, || {
            "--database-max-connections must be at least 2".into()
        })
    }
}

/// What a job may ask for, and what it gets when it asks for nothing.
///
/// The API enforces the maxima when a job is submitted; workers size their
/// sandbox for them, so API and workers must share these settings.
#[derive(Debug, Clone, Args)]
pub struct JobLimits {
    /// Largest module (component) upload, in bytes.
    #[arg(long, env = "TASKFLOW_MAX_MODULE_BYTES", default_value_t = 64 << 20)]
    pub max_module_bytes: usize,

    /// Largest job input, in bytes. Bigger payloads belong in a module or in
    /// object storage referenced from the input.
    #[arg(long, env = "TASKFLOW_MAX_INPUT_BYTES", default_value_t = 1 << 20)]
    pub max_input_bytes: usize,

    /// Largest output a task may return, in bytes. A bigger output fails the
    /// attempt with `output_too_large`.
    #[arg(long, env = "TASKFLOW_MAX_OUTPUT_BYTES", default_value_t = 1 << 20)]
    pub max_output_bytes: usize,

    /// Most bytes of guest log (log calls, stdout, stderr) kept per attempt.
    /// Further lines are counted and dropped; the task keeps running.
    #[arg(long, env = "TASKFLOW_MAX_LOG_BYTES", default_value_t = 64 << 10)]
    pub max_log_bytes: usize,

    /// Most jobs in one `POST /v1/jobs/batch` request.
    #[arg(long, env = "TASKFLOW_MAX_BATCH_JOBS", default_value_t = 1000)]
    pub max_batch_jobs: usize,

    /// Largest `POST /v1/jobs/batch` request body, in bytes.
    #[arg(long, env = "TASKFLOW_MAX_BATCH_REQUEST_BYTES", default_value_t = 64 << 20)]
    pub max_batch_request_bytes: usize,

    /// Attempts a job gets when it does not say.
    #[arg(long, env = "TASKFLOW_DEFAULT_MAX_ATTEMPTS", default_value_t = 5)]
    pub default_max_attempts: u32,

    /// Most attempts a job may ask for.
    #[arg(long, env = "TASKFLOW_MAX_ATTEMPTS_LIMIT", default_value_t = 100)]
    pub max_attempts_limit: u32,

    /// Wall-clock limit of one attempt when the job does not say. It covers
    /// everything the guest does, including time spent in host calls.
    #[arg(long, env = "TASKFLOW_DEFAULT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub default_timeout: Duration,

    /// Longest wall-clock limit a job may ask for.
    #[arg(long, env = "TASKFLOW_MAX_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub max_timeout: Duration,

    /// CPU budget of one attempt, in fuel units (about one per WebAssembly
    /// instruction; a few, like `nop` and `block`, are free), when the job
    /// does not say. Deterministic: the same
    /// input burns the same fuel on every machine. Compiled code runs several
    /// instructions per CPU cycle (a tight loop burns about 2·10¹⁰ a second
    /// here), so the default lets the wall-clock timeout bind first; set a
    /// lower `fuel` per job for a reproducible CPU cap.
    #[arg(
        long,
        env = "TASKFLOW_DEFAULT_FUEL",
        default_value_t = 1_000_000_000_000
    )]
    pub default_fuel: u64,

    /// Largest fuel budget a job may ask for.
    #[arg(long, env = "TASKFLOW_MAX_FUEL", default_value_t = 100_000_000_000_000)]
    pub max_fuel: u64,

    /// Linear-memory limit of one attempt, in bytes, when the job does not say.
    #[arg(long, env = "TASKFLOW_DEFAULT_MEMORY_LIMIT_BYTES", default_value_t = 64 << 20)]
    pub default_memory_limit_bytes: u64,

    /// Largest memory limit a job may ask for. Workers reserve address space
    /// for this much per concurrent job, so keep it no larger than needed.
    #[arg(long, env = "TASKFLOW_MAX_MEMORY_LIMIT_BYTES", default_value_t = 512 << 20)]
    pub max_memory_limit_bytes: u64,
}

impl JobLimits {
    /// The limits a submission is checked against.
    pub fn submission(&self) -> SubmissionLimits {
        SubmissionLimits {
            max_input_bytes: self.max_input_bytes,
            default_max_attempts: self.default_max_attempts,
            max_attempts_limit: self.max_attempts_limit,
            default_timeout: self.default_timeout,
            max_timeout: self.max_timeout,
            default_fuel: self.default_fuel,
            max_fuel: self.max_fuel,
            default_memory_limit_bytes: self.default_memory_limit_bytes,
            max_memory_limit_bytes: self.max_memory_limit_bytes,
        }
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.max_batch_jobs >= 1, || {
            "--max-batch-jobs must be at least 1".into()
        })?;
        check(
            (1..=self.max_attempts_limit).contains(&self.default_max_attempts),
            || "--default-max-attempts must be between 1 and --max-attempts-limit".into(),
        )?;
        check(self.max_attempts_limit <= i32::MAX as u32, || {
            "--max-attempts-limit must fit in a signed 32-bit integer".into()
        })?;
        check(
            !self.default_timeout.is_zero() && self.default_timeout <= self.max_timeout,
            || "--default-timeout must be positive and at most --max-timeout".into(),
        )?;
        check(self.max_timeout.as_millis() <= i32::MAX as u128, || {
            "--max-timeout must be under 24 days".into()
        })?;
        check(
            self.default_fuel >= 1 && self.default_fuel <= self.max_fuel,
            || "--default-fuel must be positive and at most --max-fuel".into(),
        )?;
        check(self.max_fuel <= i64::MAX as u64, || {
            "--max-fuel must fit in a signed 64-bit integer".into()
        })?;
        check(
            self.default_memory_limit_bytes >= 1 << 16
                && self.default_memory_limit_bytes <= self.max_memory_limit_bytes,
            || {
                "--default-memory-limit-bytes must be at least 64 KiB and at most --max-memory-limit-bytes"
                    .into()
            },
        )?;
        check(self.max_memory_limit_bytes <= 4 << 30, || {
            "--max-memory-limit-bytes must be at most 4 GiB (32-bit WebAssembly memories)".into()
        })
    }
}

/// The retry schedule of failed attempts; see [`crate::backoff`].
#[derive(Debug, Clone, Args)]
pub struct RetryPolicy {
    /// Delay before the second attempt. Each further attempt doubles it.
    #[arg(long, env = "TASKFLOW_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Longest delay between two attempts.
    #[arg(long, env = "TASKFLOW_BACKOFF_MAX", default_value = "1h", value_parser = parse_duration)]
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.backoff_base <= self.backoff_max, || {
            "--backoff-base must be at most --backoff-max".into()
        })
    }
}

/// How leases behave; shared by workers (which hold them) and the rescuer
/// (which recovers them).
#[derive(Debug, Clone, Args)]
pub struct LeaseConfig {
    /// How long a lease lives without renewal. A worker renews its leases
    /// every third of this, and a dead worker's jobs are rescued about this
    /// long after it stopped. Too low and a worker stalled by a long pause
    /// loses its jobs (they are safely re-run, but the work is wasted); too
    /// high and a crashed worker's jobs wait that long.
    #[arg(long, env = "TASKFLOW_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
}

impl LeaseConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.lease_ttl >= Duration::from_millis(300), || {
            "--lease-ttl must be at least 300ms".into()
        })
    }
}

/// The control plane.
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Address the REST API listens on. Without API tokens it must be a
    /// loopback address, unless `--insecure-no-auth` says otherwise.
    #[arg(long, env = "TASKFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Most uploads waiting for a compile slot (`--max-concurrent-compiles`).
    /// An upload takes its place in this queue before its body is read, so
    /// waiting uploads hold at most this many bodies; one more gets 503 with
    /// `Retry-After`.
    #[arg(long, env = "TASKFLOW_MAX_QUEUED_UPLOADS", default_value_t = 8)]
    pub max_queued_uploads: usize,

    /// SHA-256 (hex) of each accepted API token, comma-separated; make one
    /// with `taskflow token create`. Every `/v1` route then requires
    /// `Authorization: Bearer <token>`. Empty: the API is open to anyone who
    /// can reach it, which `taskflow api` allows only on a loopback address
    /// or with `--insecure-no-auth`.
    #[arg(long, env = "TASKFLOW_API_TOKEN_SHA256", value_delimiter = ',')]
    pub api_token_sha256: Vec<String>,

    /// Serve an API without tokens on a non-loopback address, so that anyone
    /// who can reach it may upload and run code. Only for networks where
    /// every client is trusted.
    #[arg(long, env = "TASKFLOW_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Most client connections open at once. Further connections wait in
    /// the listen backlog until one closes, so a crowd of idle clients
    /// cannot exhaust the process's file descriptors (which its database
    /// and Redis connections need too). Too low and busy clients queue;
    /// too high and the process runs out of descriptors first.
    #[arg(long, env = "TASKFLOW_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Longest a connection may go without sending a complete request head:
    /// a new connection from its opening, a kept-alive one from the end of
    /// its previous response. Idle and half-open connections are closed
    /// after this, so they cannot hold connection slots for long.
    #[arg(long, env = "TASKFLOW_REQUEST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_header_timeout: Duration,

    /// Longest time to receive a request's whole body, and to wait for room
    /// in the in-flight budget (`--max-request-bytes-in-flight`) before
    /// reading it. A slower upload gets 408; raise it for big modules on
    /// slow links.
    #[arg(long, env = "TASKFLOW_REQUEST_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub request_body_timeout: Duration,

    /// Most memory request bodies may hold at once, in bytes, summed over
    /// every request in flight. Each request reserves its body size (times
    /// what parsing adds: four for JSON, one for an upload) before reading
    /// it, and waits for room; so N parallel maximum-size requests cost at
    /// most this much. A request bigger than the whole budget waits until it
    /// is alone.
    #[arg(long, env = "TASKFLOW_MAX_REQUEST_BYTES_IN_FLIGHT", default_value_t = 512 << 20)]
    pub max_request_bytes_in_flight: usize,
}

impl ApiConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.max_connections >= 1, || {
            "--max-connections must be at least 1".into()
        })?;
        check(
            !self.request_header_timeout.is_zero() && !self.request_body_timeout.is_zero(),
            || "--request-header-timeout and --request-body-timeout must be positive".into(),
        )?;
        crate::api::auth::TokenHashes::parse(&self.api_token_sha256)
            .map(drop)
            .map_err(|error| ConfigError(error.to_string()))
    }
}

/// How untrusted components are compiled: uploads by the API (to check
/// them), and each module's first use on a worker. Every compile runs in a
/// process of its own under these limits (`sandbox/compiler.rs`), because
/// compiling is not covered by wasmtime's denial-of-service guarantees.
#[derive(Debug, Clone, Args)]
pub struct CompileConfig {
    /// Longest one compile may take; the compiler process is then killed.
    /// An upload gets 422 `compile_timeout`; a worker fails the module's
    /// jobs with `module_unavailable` (and remembers it for a while). A
    /// worker's compile is optimised and slower than the API's check.
    #[arg(long, env = "TASKFLOW_COMPILE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub compile_timeout: Duration,

    /// Most memory one compile may use, in bytes (the compiler process's
    /// `RLIMIT_DATA`: heap and private writable mappings). Too low and big
    /// legitimate components (Python and JavaScript ones compile with a few
    /// hundred MiB) are refused; too high and a hostile one can crowd the
    /// machine.
    #[arg(long, env = "TASKFLOW_COMPILE_MEMORY_LIMIT_BYTES", default_value_t = 2 << 30)]
    pub compile_memory_limit_bytes: u64,

    /// Compiles run at once in this process (each uses every core while it
    /// runs); further ones wait for a slot.
    #[arg(long, env = "TASKFLOW_MAX_CONCURRENT_COMPILES", default_value_t = 2)]
    pub max_concurrent_compiles: usize,

    /// The `taskflow` binary that compiles, as `taskflow compile-component`.
    /// Default: this executable. Set it when TaskFlow is embedded in another
    /// program.
    #[arg(long, env = "TASKFLOW_COMPILER")]
    pub compiler: Option<PathBuf>,
}

impl CompileConfig {
    /// The compiler settings, with the program resolved.
    ///
    /// # Errors
    ///
    /// If a setting cannot work or the compiler program is not there.
    pub fn compiler_config(&self) -> Result<crate::sandbox::CompilerConfig, ConfigError> {
        check(!self.compile_timeout.is_zero(), || {
            "--compile-timeout must be positive".into()
        })?;
        check(self.compile_memory_limit_bytes >= 64 << 20, || {
            "--compile-memory-limit-bytes must be at least 64 MiB".into()
        })?;
        check(self.max_concurrent_compiles >= 1, || {
            "--max-concurrent-compiles must be at least 1".into()
        })?;
        let program = match &self.compiler {
            Some(program) => program.clone(),
            None => std::env::current_exe().map_err(|error| {
                ConfigError(format!(
                    "cannot find this executable to compile with: {error}"
                ))
            })?,
        };
        check(program.is_file(), || {
            format!("--compiler: {} is not a file", program.display())
        })?;
        Ok(crate::sandbox::CompilerConfig {
            program,
            timeout: self.compile_timeout,
            memory_limit_bytes: self.compile_memory_limit_bytes,
            max_concurrent: self.max_concurrent_compiles,
        })
    }
}

/// The execution plane.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// This worker's name in attempt records and logs. Defaults to
    /// `<hostname>-<pid>`; it must be unique among running workers.
    #[arg(long, env = "TASKFLOW_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Queues this worker serves, comma-separated.
    #[arg(
        long,
        env = "TASKFLOW_QUEUES",
        default_value = "default",
        value_delimiter = ','
    )]
    pub queues: Vec<String>,

    /// Jobs this worker runs at once. Guests have no network or files, so
    /// they are CPU-bound (or sleeping): the default is one per core; more
    /// only adds contention unless jobs mostly sleep.
    #[arg(long, env = "TASKFLOW_WORKER_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Directory of compiled modules. Only TaskFlow workers write it
    /// (artifacts of their own compiler processes, each with a MAC; never
    /// uploaded bytes); it may be shared by the workers of one host and
    /// user. Its whole path must be private to this user: a worker refuses
    /// to start otherwise (`sandbox/private_dir.rs`). Default:
    /// `$XDG_CACHE_HOME/taskflow`, else `$HOME/.cache/taskflow`.
    #[arg(long, env = "TASKFLOW_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Longest a worker with free capacity waits before looking for work on
    /// its own, in case a wake-up was lost (for example while Redis was
    /// down). Submitted jobs normally start within milliseconds through a
    /// Redis wake-up.
    #[arg(long, env = "TASKFLOW_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How often the maintenance services (scheduler, rescuer) run, on the
    /// one worker elected to run them (`maintenance/elector.rs`). A retry's
    /// backoff and a dead worker's rescue can be late by this much.
    #[arg(long, env = "TASKFLOW_MAINTENANCE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub maintenance_interval: Duration,

    /// How long the maintenance leader's term lasts unless renewed (every
    /// third of it). A dead leader's maintenance stops for up to this long;
    /// too short and a briefly slowed leader loses its term for nothing.
    #[arg(long, env = "TASKFLOW_LEADER_TERM", default_value = "5s", value_parser = parse_duration)]
    pub leader_term: Duration,

    /// Address for this worker's Prometheus metrics (`/metrics`); off when unset.
    #[arg(long, env = "TASKFLOW_WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl WorkerConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(!self.queues.is_empty(), || {
            "--queues must name at least one queue".into()
        })?;
        for queue in &self.queues {
            check(crate::job::is_valid_queue_name(queue), || {
                format!("--queues: {queue:?} is not a valid queue name (1-64 of a-z, 0-9, _ and -)")
            })?;
        }
        check(self.concurrency != Some(0), || {
            "--concurrency must be at least 1".into()
        })?;
        check(!self.poll_interval.is_zero(), || {
            "--poll-interval must be positive".into()
        })?;
        check(!self.maintenance_interval.is_zero(), || {
            "--maintenance-interval must be positive".into()
        })?;
        check(self.leader_term >= Duration::from_millis(300), || {
            "--leader-term must be at least 300ms".into()
        })
    }

    /// Jobs run at once: the configured value, or one per core.
    pub fn effective_concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// The configured cache directory, or the user's cache directory.
    ///
    /// # Errors
    ///
    /// If none is configured and neither `XDG_CACHE_HOME` nor `HOME` is set.
    pub fn effective_cache_dir(&self) -> Result<PathBuf, ConfigError> {
        let from_env = |name| std::env::var_os(name).filter(|value| !value.is_empty());
        self.cache_dir
            .clone()
            .or_else(|| from_env("XDG_CACHE_HOME").map(|dir| PathBuf::from(dir).join("taskflow")))
            .or_else(|| from_env("HOME").map(|home| PathBuf::from(home).join(".cache/taskflow")))
            .ok_or_else(|| {
                ConfigError(
                    "no --cache-dir given, and neither XDG_CACHE_HOME nor HOME is set".into(),
                )
            })
    }

    /// The configured worker id, or `<hostname>-<pid>`.
    pub fn effective_worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }
}
