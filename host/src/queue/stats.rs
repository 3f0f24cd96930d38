//! What a queue is doing: its jobs in each state, the places its cancelled
//! attempts still hold, and its recent starts, successes and failures, as
//! `GET /v1/queues` shows them. The store reads them from counters its
//! statements keep and from the few held places (store/queue_stats.rs),
//! never by counting jobs, so a listing costs the same over ten jobs or ten
//! million.

use std::time::Duration;

use crate::job::JobState;

/// How many jobs of a queue are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts([u64; JobState::ALL.len()]);

impl JobCounts {
    /// Jobs in `state`.
    pub fn get(&self, state: JobState) -> u64 {
        self.0[slot(state)]
    }

    /// Records `jobs` jobs in `state`.
    pub fn set(&mut self, state: JobState, jobs: u64) {
        self.0[slot(state)] = jobs;
    }

    /// Jobs in any state.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// `state`'s place in [`JobState::ALL`].
fn slot(state: JobState) -> usize {
    state as usize
}

/// What a queue's attempts did in a window of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Attempts started (claimed).
    pub started: u64,
    /// Attempts that ended with the job succeeded.
    pub succeeded: u64,
    /// Attempts that failed: the job went on to `retrying` or `dead`,
    /// whether its task failed or its worker vanished.
    pub failed: u64,
}

impl std::ops::AddAssign for Activity {
    fn add_assign(&mut self, more: Activity) {
        self.started += more.started;
        self.succeeded += more.succeeded;
        self.failed += more.failed;
    }
}

/// A queue's jobs and recent activity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Its jobs, per state.
    pub jobs: JobCounts,
    /// Places still held by attempts that were cancelled while running and
    /// whose guest may not have stopped yet (the table `stopping_attempts`):
    /// `max_running` and `max_running_per_key` count them beside the jobs
    /// running.
    pub stopping: u64,
    /// How long the job that has been due longest has waited for a worker;
    /// `None` when no job is available.
    pub oldest_available_age: Option<Duration>,
    /// The last minute, counted in 10-second steps: between 50 and 60
    /// seconds, the current step included.
    pub last_minute: Activity,
    /// The last hour, counted the same way.
    pub last_hour: Activity,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_its_own_count() {
        let mut counts = JobCounts::default();
        for (jobs, state) in (1..).zip(JobState::ALL) {
            counts.set(state, jobs);
        }
        for (jobs, state) in (1..).zip(JobState::ALL) {
            assert_eq!(counts.get(state), jobs, "{state:?}");
        }
        assert_eq!(counts.total(), (1..=7u64).sum::<u64>());
    }
}
