//! A submission: what a client asks for ([`JobSpec`]), checked against the
//! server's [`SubmissionLimits`] and completed with defaults into the
//! [`NewJob`] the store inserts. The API, `taskflow run` and the tests all
//! submit through [`JobSpec::resolve`]; each turns a [`FieldError`] into
//! its own kind of answer (an HTTP 4xx, a line of text).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::time::Duration;
use uuid::Uuid;

use super::attempt::AttemptLimits;
use super::field_error::{FieldError, Problem};
use super::input::JobInput;
use super::names::{ModuleRef, check_queue_name};
use super::trace_context::TraceContext;

/// Queue of jobs that do not name one.
pub const DEFAULT_QUEUE: &str = "default";

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// Longest concurrency key, in bytes.
pub const MAX_CONCURRENCY_KEY_BYTES: usize = 255;

/// Smallest memory limit: one 64 KiB WebAssembly page.
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 64 << 10;

/// A job as a client asks for it; `None` takes the server's default.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// SHA-256 (hex) of an uploaded module, or a name pointing at one
    /// (`resize:stable`), resolved once, at submission.
    pub module: String,
    /// The task's input.
    pub input: JobInput,
    /// Attempts before the job is dead-lettered.
    pub max_attempts: Option<u32>,
    /// Wall-clock limit of one attempt, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// CPU budget of one attempt.
    pub fuel: Option<u64>,
    /// Linear-memory limit of one attempt, in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Queue; [`DEFAULT_QUEUE`] if none.
    pub queue: Option<String>,
    /// Higher runs first; 0 if none.
    pub priority: Option<i16>,
    /// Earliest start; now if none.
    pub run_at: Option<DateTime<Utc>>,
    /// Deduplicates retried submissions.
    pub idempotency_key: Option<String>,
    /// Groups jobs (by tenant, say) for the queue's `max_running_per_key`.
    pub concurrency_key: Option<String>,
}

/// What a submission may ask for, and what it gets when it asks for nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionLimits {
    /// Largest input, in bytes (after compaction or decoding).
    pub max_input_bytes: usize,
    /// `max_attempts` when none is given.
    pub default_max_attempts: u32,
    /// Largest `max_attempts`.
    pub max_attempts_limit: u32,
    /// Wall-clock limit when none is given.
    pub default_timeout: Duration,
    /// Largest wall-clock limit.
    pub max_timeout: Duration,
    /// Fuel when none is given.
    pub default_fuel: u64,
    /// Largest fuel.
    pub max_fuel: u64,
    /// Memory limit when none is given.
    pub default_memory_limit_bytes: u64,
    /// Largest memory limit.
    pub max_memory_limit_bytes: u64,
}

/// A job ready to insert: every field checked and defaulted, in the ranges
/// PostgreSQL's columns hold.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Id (UUIDv7), chosen when resolved.
    pub id: Uuid,
    /// Module to run.
    pub module_hash: String,
    /// Queue to run it on.
    pub queue: String,
    /// Higher runs first.
    pub priority: i16,
    /// Input bytes handed to the task.
    pub input: Vec<u8>,
    /// Attempts before the job is dead-lettered.
    pub max_attempts: i32,
    /// Wall-clock limit of one attempt.
    pub timeout_ms: i32,
    /// CPU budget of one attempt.
    pub fuel: i64,
    /// Linear-memory limit of one attempt.
    pub memory_limit_bytes: i64,
    /// When to run it; `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    /// Deduplicates retried submissions.
    pub idempotency_key: Option<String>,
    /// Groups jobs for the queue's `max_running_per_key`.
    pub concurrency_key: Option<String>,
    /// Digest of the submission, compared when the idempotency key repeats.
    pub request_fingerprint: Option<Vec<u8>>,
    /// The span its spans are children of; not part of the fingerprint (a
    /// retried submission may come from another trace).
    pub trace: Option<TraceContext>,
}

impl NewJob {
    /// What each of its attempts may use.
    pub fn limits(&self) -> AttemptLimits {
        AttemptLimits::from_columns(self.timeout_ms, self.fuel, self.memory_limit_bytes)
    }
}

/// Module names and the hashes they point at, as read before resolving
/// submissions that name their module ([`JobSpec::module_name`]).
pub type ModuleNames = HashMap<String, String>;

impl JobSpec {
    /// The module name this submission gives instead of a hash, if it does
    /// (the caller looks those up before [`JobSpec::resolve`]).
    pub fn module_name(&self) -> Option<&str> {
        match ModuleRef::parse("module", &self.module) {
            Ok(ModuleRef::Name(name)) => Some(name),
            _ => None,
        }
    }

    /// Checks this submission against `limits` and fills in defaults; a
    /// module name becomes the hash `names` gives it. The idempotency
    /// fingerprint covers the module as written, so a retried submission
    /// by name still finds its job after the name moved.
    ///
    /// # Errors
    ///
    /// The first field that is missing, malformed or out of range, or a
    /// module name `names` does not know.
    pub fn resolve(
        self,
        limits: &SubmissionLimits,
        names: &ModuleNames,
    ) -> Result<NewJob, FieldError> {
        let module_hash = match ModuleRef::parse("module", &self.module)? {
            ModuleRef::Hash(hash) => hash.to_owned(),
            ModuleRef::Name(name) => names.get(name).cloned().ok_or_else(|| FieldError {
                field: "module".to_owned(),
                problem: Problem::UnknownModuleName,
                message: format!(
                    "no module is named {name}: name one with PUT /v1/modules/{{hash}}/names/{name}"
                ),
            })?,
        };
        let input = self.input.into_bytes(limits.max_input_bytes)?;
        let max_attempts = in_range(
            "max_attempts",
            self.max_attempts.unwrap_or(limits.default_max_attempts),
            1,
            limits.max_attempts_limit,
        )?;
        let max_timeout_ms = limits.max_timeout.as_millis().min(i32::MAX as u128) as u64;
        let timeout_ms = in_range(
            "timeout_ms",
            self.timeout_ms
                .unwrap_or(limits.default_timeout.as_millis() as u64),
            1,
            max_timeout_ms,
        )?;
        let fuel = in_range(
            "fuel",
            self.fuel.unwrap_or(limits.default_fuel),
            1,
            limits.max_fuel.min(i64::MAX as u64),
        )?;
        let memory = self
            .memory_limit_bytes
            .unwrap_or(limits.default_memory_limit_bytes);
        if !(MIN_MEMORY_LIMIT_BYTES..=limits.max_memory_limit_bytes).contains(&memory) {
            return Err(FieldError::invalid(
                "memory_limit_bytes",
                format!(
                    "must be between {MIN_MEMORY_LIMIT_BYTES} (one WebAssembly page) and {}",
                    limits.max_memory_limit_bytes
                ),
            ));
        }
        let queue = self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        check_queue_name("queue", &queue)?;
        check_key(
            "idempotency_key",
            self.idempotency_key.as_deref(),
            MAX_IDEMPOTENCY_KEY_BYTES,
        )?;
        check_key(
            "concurrency_key",
            self.concurrency_key.as_deref(),
            MAX_CONCURRENCY_KEY_BYTES,
        )?;
        if let Some(run_at) = self.run_at
            && !(earliest_run_at()..=latest_run_at()).contains(&run_at)
        {
            return Err(FieldError::invalid(
                "run_at",
                "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
            ));
        }
        let mut job = NewJob {
            id: Uuid::now_v7(),
            module_hash,
            queue,
            priority: self.priority.unwrap_or(0),
            input,
            max_attempts: max_attempts as i32,
            timeout_ms: timeout_ms as i32,
            fuel: fuel as i64,
            memory_limit_bytes: memory as i64,
            run_at: self.run_at,
            idempotency_key: self.idempotency_key,
            concurrency_key: self.concurrency_key,
            request_fingerprint: None,
            trace: None,
        };
        if job.idempotency_key.is_some() {
            job.request_fingerprint = Some(fingerprint(&job, &self.module));
        }
        Ok(job)
    }
}

/// Rejects a key (idempotency, concurrency) that is empty, longer than `max`
/// bytes, or holds a NUL (which PostgreSQL's text cannot store).
fn check_key(field: &str, key: Option<&str>, max: usize) -> Result<(), FieldError> {
    match key {
        Some(key) if key.is_empty() || key.len() > max || key.contains('\0') => {
            Err(FieldError::invalid(
                field,
                format!("must be 1-{max} bytes without NUL characters"),
            ))
        }
        _ => Ok(()),
    }
}

/// `value` if it is within `min..=max`.
fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, FieldError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::invalid(
            field,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// The earliest `run_at` accepted: PostgreSQL stores earlier times, but not
/// all of them (none before 4713 BC), and a four-digit year is what RFC 3339
/// promises.
fn earliest_run_at() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The latest `run_at` accepted (see [`earliest_run_at`]).
fn latest_run_at() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A digest of everything a submission asks for, so a retried request (same
/// key, same fingerprint) is told apart from a conflicting one. Every field
/// is of fixed length, ends in a NUL no name may hold, or is the last,
/// and each optional one starts with a tag byte of its own: no two
/// requests write the same bytes. (A request with neither optional field
/// or only a concurrency key digests as it did before the `run_at` tag.)
fn fingerprint(job: &NewJob, module_as_written: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(module_as_written.as_bytes());
    hasher.update([0]);
    hasher.update((job.input.len() as u64).to_be_bytes());
    hasher.update(&job.input);
    hasher.update(job.queue.as_bytes());
    hasher.update([0]);
    hasher.update(job.priority.to_be_bytes());
    hasher.update(job.max_attempts.to_be_bytes());
    hasher.update(job.timeout_ms.to_be_bytes());
    hasher.update(job.fuel.to_be_bytes());
    hasher.update(job.memory_limit_bytes.to_be_bytes());
    if let Some(run_at) = job.run_at {
        hasher.update([2]);
        hasher.update(run_at.timestamp_micros().to_be_bytes());
    }
    if let Some(key) = &job.concurrency_key {
        hasher.update([1]);
        hasher.update(key.as_bytes());
    }
    hasher.finalize().to_vec()
}

#[cfg(test)]
mod tests;
