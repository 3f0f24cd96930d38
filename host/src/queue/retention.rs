//! How long a queue keeps its finished jobs. The pruner
//! (maintenance/pruner.rs) deletes a succeeded, dead or cancelled job, its
//! attempts and its idempotency key once it has been finished longer than
//! its queue keeps that state.

use std::time::Duration;

use crate::job::{FieldError, JobState};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// How long succeeded jobs are kept unless their queue says otherwise.
pub const DEFAULT_KEEP_SUCCEEDED: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long dead jobs are kept unless their queue says otherwise.
pub const DEFAULT_KEEP_DEAD: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long cancelled jobs are kept unless their queue says otherwise.
pub const DEFAULT_KEEP_CANCELLED: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest retention short of forever: ten years.
pub const MAX_KEEP: Duration = Duration::from_secs(3650 * 24 * 3600);

/// How long jobs of one finished state are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepFor {
    /// Never pruned.
    Forever,
    /// Pruned once finished this long ago (whole seconds, at least one).
    Duration(Duration),
}

/// A queue's retention per finished state; `None` takes the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Succeeded jobs ([`DEFAULT_KEEP_SUCCEEDED`]).
    pub succeeded: Option<KeepFor>,
    /// Dead jobs ([`DEFAULT_KEEP_DEAD`]).
    pub dead: Option<KeepFor>,
    /// Cancelled jobs ([`DEFAULT_KEEP_CANCELLED`]).
    pub cancelled: Option<KeepFor>,
}

impl Retention {
    /// How long jobs of each finished state are kept, defaults filled in.
    pub fn effective(&self) -> [(JobState, KeepFor); 3] {
        let or = |keep: Option<KeepFor>, default| keep.unwrap_or(KeepFor::Duration(default));
        [
            (
                JobState::Succeeded,
                or(self.succeeded, DEFAULT_KEEP_SUCCEEDED),
            ),
            (JobState::Dead, or(self.dead, DEFAULT_KEEP_DEAD)),
            (
                JobState::Cancelled,
                or(self.cancelled, DEFAULT_KEEP_CANCELLED),
            ),
        ]
    }
}

/// `retention` of a queue: per finished state, how long its jobs are kept
/// after they finish: a duration (`"7d"`, `"36h"`) or `"forever"`. A state
/// left out takes the default: succeeded 7 days, dead and cancelled 30.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// Succeeded jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<String>,
    /// Dead jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead: Option<String>,
    /// Cancelled jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<String>,
}

impl RetentionSpec {
    /// Checks each state's retention.
    ///
    /// # Errors
    ///
    /// The first that does not parse, as `retention.<state>`.
    pub fn resolve(&self) -> Result<Retention, FieldError> {
        let parse = |state: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| KeepFor::parse(&format!("retention.{state}"), text))
                .transpose()
        };
        Ok(Retention {
            succeeded: parse("succeeded", &self.succeeded)?,
            dead: parse("dead", &self.dead)?,
            cancelled: parse("cancelled", &self.cancelled)?,
        })
    }
}

impl From<Retention> for RetentionSpec {
    /// The states set, as text; defaults stay unset.
    fn from(retention: Retention) -> Self {
        let text = |keep: Option<KeepFor>| keep.map(KeepFor::to_text);
        Self {
            succeeded: text(retention.succeeded),
            dead: text(retention.dead),
            cancelled: text(retention.cancelled),
        }
    }
}

impl KeepFor {
    /// Reads `"7d"`, `"36h"`, or `"forever"` (also `"0"`).
    ///
    /// # Errors
    ///
    /// Not a duration, not whole seconds, or over [`MAX_KEEP`].
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldError> {
        if text == "forever" || text == "0" {
            return Ok(Self::Forever);
        }
        let keep = crate::duration::parse(text).map_err(|error| {
            FieldError::invalid(
                field,
                format!("not a duration such as 7d or 36h, nor forever: {error}"),
            )
        })?;
        if keep.is_zero() {
            return Ok(Self::Forever);
        }
        if keep.subsec_nanos() != 0 || keep > MAX_KEEP {
            return Err(FieldError::invalid(
                field,
                format!(
                    "must be whole seconds, at most {} days (or forever)",
                    MAX_KEEP.as_secs() / DAY.as_secs()
                ),
            ));
        }
        Ok(Self::Duration(keep))
    }

    /// As [`KeepFor::parse`] reads it.
    pub fn to_text(self) -> String {
        match self {
            Self::Forever => "forever".to_owned(),
            Self::Duration(keep) => crate::duration::format(keep),
        }
    }

    /// Seconds, 0 for forever: how the store and the pruner count it.
    pub fn as_seconds(self) -> i64 {
        match self {
            Self::Forever => 0,
            Self::Duration(keep) => keep.as_secs() as i64,
        }
    }

    /// The inverse of [`KeepFor::as_seconds`].
    pub fn from_seconds(seconds: u64) -> Self {
        match seconds {
            0 => Self::Forever,
            seconds => Self::Duration(Duration::from_secs(seconds)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_reads_durations_and_forever_and_prints_them_back() {
        for text in ["7days", "36h", "1s", "forever"] {
            let keep = KeepFor::parse("retention.succeeded", text).unwrap();
            assert_eq!(KeepFor::parse("x", &keep.to_text()).unwrap(), keep);
            assert_eq!(KeepFor::from_seconds(keep.as_seconds() as u64), keep);
        }
        assert_eq!(KeepFor::parse("x", "0").unwrap(), KeepFor::Forever);
        for bad in ["soon", "1.5s", "3651days", "-1s"] {
            let error = KeepFor::parse("retention.dead", bad).unwrap_err();
            assert_eq!(error.field, "retention.dead", "{bad}");
        }
    }

    #[test]
    fn unset_states_take_the_defaults() {
        let retention = Retention {
            dead: Some(KeepFor::Forever),
            ..Retention::default()
        };
        assert_eq!(
            retention.effective(),
            [
                (
                    JobState::Succeeded,
                    KeepFor::Duration(DEFAULT_KEEP_SUCCEEDED)
                ),
                (JobState::Dead, KeepFor::Forever),
                (
                    JobState::Cancelled,
                    KeepFor::Duration(DEFAULT_KEEP_CANCELLED)
                ),
            ]
        );
    }
}
