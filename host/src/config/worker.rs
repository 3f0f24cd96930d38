//! The execution plane's settings, and how components are compiled.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, check, check_timestamp_offset};
use crate::job::DEFAULT_QUEUE;
use crate::sandbox::CompilerConfig;

/// How untrusted components are compiled: uploads by the API (to check
/// them), and each module's first use on a worker. Every compile runs in a
/// process of its own under these limits (`sandbox/compiler.rs`), because
/// compiling is not covered by wasmtime's denial-of-service guarantees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileConfig {
    /// Longest one compile may take; the compiler process is then killed.
    /// An upload gets 422 `compile_timeout`; a worker fails the module's
    /// jobs with `module_unavailable` (and remembers it for a while). A
    /// worker's compile is optimised and slower than the API's check.
    pub compile_timeout: Duration,

    /// Most memory one compile may use, in bytes (the compiler process's
    /// `RLIMIT_DATA`: heap and private writable mappings). Too low and big
    /// legitimate components (Python and JavaScript ones compile with a few
    /// hundred MiB) are refused; too high and a hostile one can crowd the
    /// machine.
    pub compile_memory_limit_bytes: u64,

    /// Compiles run at once in this process (each uses every core while it
    /// runs); further ones wait for a slot.
    pub max_concurrent_compiles: usize,

    /// The `taskflow` binary that compiles, as `taskflow compile-component`.
    /// Default: this executable. Set it when TaskFlow is embedded in another
    /// program.
    pub compiler: Option<PathBuf>,
}

impl CompileConfig {
    /// The compiler settings, with the program resolved.
    ///
    /// # Errors
    ///
    /// If a setting cannot work or the compiler program is not there.
    pub fn compiler_config(&self) -> Result<CompilerConfig, ConfigError> {
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
        Ok(CompilerConfig {
            program,
            timeout: self.compile_timeout,
            memory_limit_bytes: self.compile_memory_limit_bytes,
            max_concurrent: self.max_concurrent_compiles,
        })
    }
}

impl Default for CompileConfig {
    fn default() -> Self {
        Self {
            compile_timeout: Duration::from_secs(60),
            compile_memory_limit_bytes: 2 << 30,
            max_concurrent_compiles: 2,
            compiler: None,
        }
    }
}

/// The execution plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// This worker's name in attempt records and logs. Defaults to
    /// `<hostname>-<pid>`; it must be unique among running workers.
    pub worker_id: Option<String>,

    /// Queues this worker serves, comma-separated.
    pub queues: Vec<String>,

    /// Jobs this worker runs at once. Guests have no network or files, so
    /// they are CPU-bound (or sleeping): the default is one per core; more
    /// only adds contention unless jobs mostly sleep.
    pub concurrency: Option<usize>,

    /// Directory of compiled modules. Only TaskFlow workers write it
    /// (artifacts of their own compiler processes, each with a MAC; never
    /// uploaded bytes); it may be shared by the workers of one host and
    /// user. Its whole path must be private to this user: a worker refuses
    /// to start otherwise (`sandbox/private_dir.rs`). Default:
    /// `$XDG_CACHE_HOME/taskflow`, else `$HOME/.cache/taskflow`.
    pub cache_dir: Option<PathBuf>,

    /// Longest a worker with free capacity waits before looking for work on
    /// its own, in case a wake-up was lost (for example while Redis was
    /// down). Submitted jobs normally start within milliseconds through a
    /// Redis wake-up.
    pub poll_interval: Duration,

    /// How often the maintenance services (scheduler, rescuer) run, on the
    /// one worker elected to run them (`maintenance/elector.rs`). A retry's
    /// backoff and a dead worker's rescue can be late by this much.
    pub maintenance_interval: Duration,

    /// How long the maintenance leader's term lasts unless renewed (every
    /// third of it). A dead leader's maintenance stops for up to this long;
    /// too short and a briefly slowed leader loses its term for nothing.
    pub leader_term: Duration,

    /// Address for this worker's Prometheus metrics (`/metrics`); off when unset.
    pub metrics_listen: Option<String>,

    /// The key queue secrets are sealed with (`TASKFLOW_SECRET_KEY`, read
    /// from the environment only: `cli/server.rs`). Without it a job whose
    /// queue has secrets fails with `grants_unavailable`.
    pub secret_key: Option<crate::queue::SecretKey>,
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
        })?;
        check_timestamp_offset("--leader-term", self.leader_term)
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

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            worker_id: None,
            queues: vec![DEFAULT_QUEUE.to_owned()],
            concurrency: None,
            cache_dir: None,
            poll_interval: Duration::from_secs(1),
            maintenance_interval: Duration::from_secs(1),
            leader_term: Duration::from_secs(5),
            metrics_listen: None,
            secret_key: None,
        }
    }
}
