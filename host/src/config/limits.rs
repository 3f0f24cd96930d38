//! Limits: what a submission may ask for, what the API accepts, what a
//! worker can grant.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, check};
use crate::job::{MIN_MEMORY_LIMIT_BYTES, SubmissionLimits};
use crate::sandbox::{CompilerConfig, OutboundLimits, SandboxConfig};

/// What the API accepts beyond a job's own limits ([`SubmissionLimits`],
/// the job domain's, whose defaults and checks live here with every other
/// knob's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLimits {
    /// What a submission may ask for, and its defaults.
    pub submission: SubmissionLimits,

    /// Largest module (component) upload, in bytes.
    pub max_module_bytes: usize,

    /// Most jobs in one `POST /v1/jobs/batch` request.
    pub max_batch_jobs: usize,

    /// Largest `POST /v1/jobs/batch` request body, in bytes.
    pub max_batch_request_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            submission: SubmissionLimits::default(),
            max_module_bytes: 64 << 20,
            max_batch_jobs: 1000,
            max_batch_request_bytes: 64 << 20,
        }
    }
}

impl ApiLimits {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.max_batch_jobs >= 1, || {
            "--max-batch-jobs must be at least 1".into()
        })?;
        self.submission.validate()
    }
}

/// What a worker (or `taskflow run`) can grant an attempt. Its sandbox
/// reserves memory for `max_memory_bytes` per concurrent attempt; a job that
/// asks for more fails with `worker_limit_exceeded` rather than running
/// with less than it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionLimits {
    /// Largest linear memory an attempt may have, in bytes. Give workers
    /// the API's `max_memory_limit_bytes` (both read
    /// `TASKFLOW_MAX_MEMORY_LIMIT_BYTES`).
    pub max_memory_bytes: u64,

    /// Largest output a task may return, in bytes. A bigger output fails the
    /// attempt with `output_too_large`.
    pub max_output_bytes: usize,

    /// Most bytes of guest log (log calls, stdout, stderr) kept per attempt.
    /// Further lines are counted and dropped; the task keeps running.
    pub max_log_bytes: usize,

    /// Caps on each attempt's outbound HTTP.
    pub outbound: OutboundLimits,

    /// A PEM file of CA certificates trusted for outbound TLS besides the
    /// webpki roots.
    pub extra_ca_certs: Option<PathBuf>,
}

impl Default for ExecutionLimits {
    fn default() -> Self {
        Self {
            max_memory_bytes: 512 << 20,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
            outbound: OutboundLimits::default(),
            extra_ca_certs: None,
        }
    }
}

impl ExecutionLimits {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_memory_limit(self.max_memory_bytes)
    }

    /// The configuration of a sandbox that grants these limits to
    /// `concurrent_attempts` attempts at once: the one way a worker,
    /// `taskflow run` and the benchmarks size a sandbox.
    pub fn sandbox_config(
        &self,
        concurrent_attempts: usize,
        cache_dir: Option<PathBuf>,
        compiler: CompilerConfig,
    ) -> SandboxConfig {
        SandboxConfig {
            max_concurrent_attempts: concurrent_attempts,
            max_memory_bytes: self.max_memory_bytes,
            max_output_bytes: self.max_output_bytes,
            max_log_bytes: self.max_log_bytes,
            cache_dir,
            memory_cache_capacity: MEMORY_CACHE_CAPACITY,
            compiler,
            outbound: self.outbound.clone(),
            extra_ca_certs: self.extra_ca_certs.clone(),
        }
    }
}

/// The defaults a submission gets. Largest input: bigger payloads belong in
/// object storage referenced from the input. Timeout: it covers everything
/// the guest does, including host calls. Fuel: about one unit per
/// WebAssembly instruction (a few, like `nop` and `block`, are free),
/// deterministic on every machine; compiled code runs several instructions
/// per CPU cycle (a tight loop burns about 2·10¹⁰ a second here), so the
/// default lets the wall-clock timeout bind first; a job sets a lower
/// `fuel` for a reproducible CPU cap. Memory: workers reserve address space
/// for the largest limit per concurrent job, so keep it no larger than
/// needed.
impl Default for SubmissionLimits {
    fn default() -> Self {
        Self {
            max_input_bytes: 1 << 20,
            default_max_attempts: 5,
            max_attempts_limit: 100,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(15 * 60),
            default_fuel: 1_000_000_000_000,
            max_fuel: 100_000_000_000_000,
            default_memory_limit_bytes: 64 << 20,
            max_memory_limit_bytes: ExecutionLimits::default().max_memory_bytes,
        }
    }
}

impl SubmissionLimits {
    /// Rejects settings that cannot work, or that PostgreSQL's columns
    /// cannot hold.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
            self.default_memory_limit_bytes >= MIN_MEMORY_LIMIT_BYTES
                && self.default_memory_limit_bytes <= self.max_memory_limit_bytes,
            || {
                "--default-memory-limit-bytes must be at least 64 KiB and at most \
                 --max-memory-limit-bytes"
                    .into()
            },
        )?;
        check_memory_limit(self.max_memory_limit_bytes)
    }
}

/// Prepared components a sandbox keeps in memory: a worker's working set of
/// modules.
const MEMORY_CACHE_CAPACITY: usize = 256;

fn check_memory_limit(bytes: u64) -> Result<(), ConfigError> {
    check(bytes <= 4 << 30, || {
        "--max-memory-limit-bytes must be at most 4 GiB (32-bit WebAssembly memories)".into()
    })
}
