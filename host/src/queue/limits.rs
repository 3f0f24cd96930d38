//! How a queue's jobs may start: at most so many running at once across the
//! cluster (in all, and per concurrency key), and at most so many starts in
//! any window of a period. A queue with no limits claims as it always did;
//! one with limits reserves its places under its row lock before it claims
//! (`Store::claim_limited` in store/claim.rs), so the limits hold whatever
//! the number of workers.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::job::FieldError;

/// Largest `max_running` and `max_running_per_key`: what PostgreSQL's
/// `integer` column holds.
pub const MAX_RUNNING_LIMIT: u32 = i32::MAX as u32;

/// Largest `rate.limit`: what PostgreSQL's `integer` column holds.
pub const MAX_RATE_LIMIT: u32 = i32::MAX as u32;

/// Shortest rate period: a limit per millisecond is not one anybody can
/// observe across a cluster's clocks.
pub const MIN_RATE_PERIOD: Duration = Duration::from_secs(1);

/// Longest rate period.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(31 * 24 * 3600);

/// A queue's limits, checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most running attempts of the queue at once, cluster-wide.
    pub max_running: Option<NonZeroU32>,
    /// Most running attempts per concurrency key at once; jobs without a
    /// key are limited only by `max_running`.
    pub max_running_per_key: Option<NonZeroU32>,
    /// Most attempt starts in any window of a period.
    pub rate: Option<Rate>,
}

impl QueueLimits {
    /// Whether no limit is set: the queue's jobs are claimed without
    /// counting anything.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// At most `limit` starts in any window of `period`. Enforced exactly (never
/// more), from per-bucket counts that cost the same at any rate; the price
/// is that a full window may admit up to a twentieth less than `limit`
/// (store/claim.rs, `RATE_BUCKETS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts per window, `1..=MAX_RATE_LIMIT`.
    pub limit: NonZeroU32,
    /// The window, `MIN_RATE_PERIOD..=MAX_RATE_PERIOD`, whole milliseconds.
    pub period: Duration,
}

/// Limits as written: numbers and a period as text (`"1s"`, `"5m"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsSpec {
    /// See [`QueueLimits::max_running`].
    pub max_running: Option<u32>,
    /// See [`QueueLimits::max_running_per_key`].
    pub max_running_per_key: Option<u32>,
    /// See [`QueueLimits::rate`].
    pub rate: Option<RateSpec>,
}

/// `rate` of a queue: at most `limit` starts in any window of `period`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Starts per window, 1 to 2147483647 (what PostgreSQL's `integer`
    /// holds).
    pub limit: u32,
    /// The window: `"1s"`, `"1m"`, `"1h 30m"`; at least 1 s.
    pub period: String,
}

impl LimitsSpec {
    /// Checks every limit against its range.
    ///
    /// # Errors
    ///
    /// The first field out of range, named as the client wrote it
    /// (`max_running`, `rate.period`).
    pub fn resolve(&self) -> Result<QueueLimits, FieldError> {
        let count = |field: &str, value: Option<u32>, max: u32| {
            value
                .map(|value| {
                    NonZeroU32::new(value)
                        .filter(|value| value.get() <= max)
                        .ok_or_else(|| FieldError::invalid(field, format!("must be 1 to {max}")))
                })
                .transpose()
        };
        let rate = match &self.rate {
            None => None,
            Some(rate) => Some(Rate {
                limit: count("rate.limit", Some(rate.limit), MAX_RATE_LIMIT)?
                    .unwrap_or(NonZeroU32::MIN),
                period: parse_period("rate.period", &rate.period)?,
            }),
        };
        Ok(QueueLimits {
            max_running: count("max_running", self.max_running, MAX_RUNNING_LIMIT)?,
            max_running_per_key: count(
                "max_running_per_key",
                self.max_running_per_key,
                MAX_RUNNING_LIMIT,
            )?,
            rate,
        })
    }
}

impl From<QueueLimits> for LimitsSpec {
    fn from(limits: QueueLimits) -> Self {
        Self {
            max_running: limits.max_running.map(NonZeroU32::get),
            max_running_per_key: limits.max_running_per_key.map(NonZeroU32::get),
            rate: limits.rate.map(|rate| RateSpec {
                limit: rate.limit.get(),
                period: crate::duration::format(rate.period),
            }),
        }
    }
}

fn parse_period(field: &str, text: &str) -> Result<Duration, FieldError> {
    let period = crate::duration::parse(text).map_err(|error| {
        FieldError::invalid(field, format!("not a duration such as 1s or 5m: {error}"))
    })?;
    if !(MIN_RATE_PERIOD..=MAX_RATE_PERIOD).contains(&period)
        || period.subsec_nanos() % 1_000_000 != 0
    {
        return Err(FieldError::invalid(
            field,
            format!(
                "must be whole milliseconds from {} to {}",
                crate::duration::format(MIN_RATE_PERIOD),
                crate::duration::format(MAX_RATE_PERIOD)
            ),
        ));
    }
    Ok(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(limit: u32, period: &str) -> Option<RateSpec> {
        Some(RateSpec {
            limit,
            period: period.into(),
        })
    }

    #[test]
    fn limits_resolve_and_print_back_as_written() {
        let spec = LimitsSpec {
            max_running: Some(3),
            max_running_per_key: Some(1),
            rate: rate(20, "1s"),
        };
        let limits = spec.resolve().unwrap();
        assert_eq!(limits.rate.unwrap().period, Duration::from_secs(1));
        assert!(!limits.is_unlimited());
        assert_eq!(LimitsSpec::from(limits), spec);
        assert!(LimitsSpec::default().resolve().unwrap().is_unlimited());
    }

    #[test]
    fn each_limit_out_of_range_is_named() {
        let cases = [
            (
                LimitsSpec {
                    max_running: Some(0),
                    ..LimitsSpec::default()
                },
                "max_running",
            ),
            (
                LimitsSpec {
                    max_running_per_key: Some(u32::MAX),
                    ..LimitsSpec::default()
                },
                "max_running_per_key",
            ),
            (
                LimitsSpec {
                    rate: rate(0, "1s"),
                    ..LimitsSpec::default()
                },
                "rate.limit",
            ),
            (
                LimitsSpec {
                    rate: rate(MAX_RATE_LIMIT + 1, "1s"),
                    ..LimitsSpec::default()
                },
                "rate.limit",
            ),
            (
                LimitsSpec {
                    rate: rate(5, "999ms"),
                    ..LimitsSpec::default()
                },
                "rate.period",
            ),
            (
                LimitsSpec {
                    rate: rate(5, "1s 1us"),
                    ..LimitsSpec::default()
                },
                "rate.period",
            ),
            (
                LimitsSpec {
                    rate: rate(5, "soon"),
                    ..LimitsSpec::default()
                },
                "rate.period",
            ),
            (
                LimitsSpec {
                    rate: rate(5, "32days"),
                    ..LimitsSpec::default()
                },
                "rate.period",
            ),
        ];
        for (spec, field) in cases {
            assert_eq!(spec.resolve().unwrap_err().field, field, "{spec:?}");
        }
    }
}
