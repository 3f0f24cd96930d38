//! The job state machine.
//!
//! ```text
//!             submit (run_at in the future)        submit (due now)
//!                  │                                     │
//!                  ▼                                     ▼
//!            ┌───────────┐   due (scheduler)    ┌─────────────┐
//!            │ scheduled │ ───────────────────▶ │  available  │ ◀──────────────┐
//!            └───────────┘                      └─────────────┘                │
//!                                                      │ claimed (worker)      │
//!                                                      ▼                       │ due (scheduler)
//!       ┌───────────┐  succeeded (worker)       ┌─────────────┐  failed,     ┌──────────┐
//!       │ succeeded │ ◀──────────────────────── │   running   │ ───────────▶ │ retrying │
//!       └───────────┘                           └─────────────┘  retryable   └──────────┘
//!                                                      │        (worker or rescuer)
//!                                                      │ failed, not retryable or out of
//!                                                      ▼ attempts (worker or rescuer)
//!                                               ┌─────────────┐
//!                                               │    dead     │ ──┐ retry (user)
//!                                               └─────────────┘   └──▶ available
//!
//!   cancel (user): scheduled | available | running | retrying ──▶ cancelled ──retry──▶ available
//! ```
//!
//! Every edge is one guarded SQL statement in [`crate::store`]: it names the
//! state(s) it leaves, and edges out of `running` also require the fencing
//! token of the attempt. A statement whose guard does not match changes
//! nothing and reports [`Transition::Stale`](crate::store::Transition::Stale).

use serde::{Deserialize, Serialize};

/// Where a job is in its lifecycle. Each variant says who moves a job out of it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, clap::ValueEnum,
)]
#[sqlx(type_name = "job_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Submitted with a future `run_at`. The scheduler makes it `available`
    /// when it falls due; a user may cancel it.
    Scheduled,
    /// Due and waiting for a worker. A worker's claim makes it `running`; a
    /// user may cancel it.
    Available,
    /// Leased by a worker that is running an attempt. Only the holder of the
    /// current fencing token may finish it (to `succeeded`, `retrying` or
    /// `dead`); the rescuer finishes it if the lease expires; a user may
    /// cancel it.
    Running,
    /// An attempt failed and another is allowed; waits for its backoff.
    /// The scheduler makes it `available` at `run_at`; a user may cancel it.
    Retrying,
    /// Finished with an output. Terminal.
    Succeeded,
    /// Failed for good: a non-retryable error or no attempts left. This is
    /// the dead-letter state; a user's retry makes it `available` again.
    Dead,
    /// Stopped by a user. A user's retry makes it `available` again.
    Cancelled,
}

impl JobState {
    /// The name used in SQL, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job will never run again unless a user retries it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "attempt_outcome", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The task returned an output.
    Succeeded,
    /// The task returned an error, or the sandbox stopped it (timeout, fuel,
    /// memory, trap, …); `error_kind` says which.
    Failed,
    /// The worker stopped renewing its lease (it crashed, hung or was cut
    /// off) and the rescuer ended the attempt.
    LeaseExpired,
    /// A user cancelled the job while this attempt ran.
    Cancelled,
}

impl AttemptOutcome {
    /// The name used in SQL and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::LeaseExpired => "lease_expired",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}
