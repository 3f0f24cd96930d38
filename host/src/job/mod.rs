//! The job domain: what a job is, how it moves and how its attempts end,
//! free of HTTP, SQL and the CLI. The API maps these types to HTTP
//! (`api/`), the store to PostgreSQL (`store/codec.rs`), `taskflow run` to
//! text.
//!
//! - [`state`]: the lifecycle ([`JobState`]) and how an attempt is recorded
//!   ([`AttemptOutcome`]).
//! - [`spec`]: a submission ([`JobSpec`]) checked against the server's
//!   [`SubmissionLimits`] into a [`NewJob`], or the [`FieldError`] that
//!   names what is wrong.
//! - [`field_error`]: what is wrong with a field a client wrote
//!   ([`FieldError`]), shared by submissions and queue settings.
//! - [`names`]: queue and module-hash rules.
//! - [`attempt`]: how an attempt ended ([`AttemptEnd`]), what it used, and
//!   how many attempts a job has used ([`attempts_used`]).
//! - [`input`]: a task's input ([`JobInput`]) and the bytes it becomes.
//! - [`failure`]: the stable failure codes ([`FailureKind`]).
//! - [`id_prefix`]: the start of a job id, as a range of ids ([`IdPrefix`]).
//! - [`trace_context`]: the trace a job's spans join ([`TraceContext`]).

pub mod attempt;
pub mod failure;
pub mod field_error;
pub mod id_prefix;
pub mod input;
pub mod names;
pub mod spec;
pub mod state;
pub mod trace_context;

pub use attempt::{
    AfterFailure, AttemptEnd, AttemptLimits, AttemptLog, AttemptRequests, RecordedEnd,
    RecordedError, Usage, attempts_used,
};
pub use failure::{Failure, FailureKind, check_failure_code};
pub use field_error::{FieldError, Problem};
pub use id_prefix::IdPrefix;
pub use input::JobInput;
pub use names::{
    MAX_NAMES_PER_MODULE, ModuleRef, check_module_hash, check_module_name, check_queue_name,
    is_valid_module_hash, is_valid_module_name, is_valid_queue_name,
};
pub use spec::{
    DEFAULT_QUEUE, JobSpec, MIN_MEMORY_LIMIT_BYTES, ModuleNames, NewJob, SubmissionLimits,
};
pub use state::{AttemptOutcome, JobState};
pub use trace_context::TraceContext;
