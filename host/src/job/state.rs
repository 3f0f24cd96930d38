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
//! Every edge is one guarded SQL statement in the store (`host/src/store/`): it names the
//! state(s) it leaves, and edges out of `running` also require the fencing
//! token of the attempt. A statement whose guard does not match changes
//! nothing and reports `Transition::Stale`.
//! The store maps these types to PostgreSQL's enums (`store/codec.rs`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its lifecycle. Each variant says who moves a job out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// the dead-letter state; a user's retry makes it `available` again
    /// (see [`Cancelled`](Self::Cancelled) for when it is `scheduled`).
    Dead,
    /// Stopped by a user. A user's retry makes it `available` again, or
    /// `scheduled` until one lease TTL (its worker's, or the API's if longer) after a cancel that
    /// ended a running attempt, whose guest may run until then
    /// (`Store::requeue_if_finished`).
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

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

/// A name that is not a [`JobState`] (or not an [`AttemptOutcome`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of: {1}")]
pub struct UnknownName(String, &'static str);

impl FromStr for JobState {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
            .ok_or_else(|| {
                UnknownName(
                    name.to_owned(),
                    "scheduled, available, running, retrying, succeeded, dead, cancelled",
                )
            })
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 4] = [
        AttemptOutcome::Succeeded,
        AttemptOutcome::Failed,
        AttemptOutcome::LeaseExpired,
        AttemptOutcome::Cancelled,
    ];

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

impl FromStr for AttemptOutcome {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
            .ok_or_else(|| {
                UnknownName(
                    name.to_owned(),
                    "succeeded, failed, lease_expired, cancelled",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(outcome.as_str().parse::<AttemptOutcome>(), Ok(outcome));
        }
        assert!("Running".parse::<JobState>().is_err());
    }
}
