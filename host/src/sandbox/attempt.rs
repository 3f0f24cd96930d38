//! What one attempt is given ([`Attempt`]) and how it went ([`Execution`]).

use std::sync::Arc;
use std::time::Duration;

use super::bindings::JobContext;
use super::capture::CapturedLog;
use super::grant::RunGrant;
use super::outbound::{Grants, RequestLog};
use crate::job::{AttemptLimits, Failure};

/// One attempt to run.
#[derive(Debug)]
pub struct Attempt {
    /// Input bytes passed to `run`.
    pub input: Vec<u8>,
    /// What `host.context` returns.
    pub context: JobContext,
    /// Resource limits.
    pub limits: AttemptLimits,
    /// The attempt's right to run.
    pub grant: Arc<RunGrant>,
    /// What the job's queue grants: hosts, configuration, secrets.
    pub grants: Grants,
}

/// How an attempt went.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The output, or why there is none.
    pub result: Result<Vec<u8>, Failure>,
    /// Fuel the guest burned.
    pub fuel_consumed: u64,
    /// Peak linear memory of the guest, in bytes.
    pub memory_bytes: u64,
    /// Wall time from instantiation to the end of the call.
    pub duration: Duration,
    /// What the guest logged.
    pub log: CapturedLog,
    /// The outbound requests it made.
    pub requests: RequestLog,
}

impl Execution {
    /// An attempt that failed before the guest ran.
    pub fn failed(failure: Failure) -> Self {
        Self {
            result: Err(failure),
            fuel_consumed: 0,
            memory_bytes: 0,
            duration: Duration::ZERO,
            log: CapturedLog::default(),
            requests: RequestLog::default(),
        }
    }
}
