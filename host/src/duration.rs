//! Durations as people write them (`30s`, `5m`, `7d`, `1h 30m`): the one
//! reader of such text, for request fields and command-line flags alike.
//!
//! [`parse`] reads humantime's syntax but first refuses text that could make
//! humantime 2.4 panic. Its `parse_duration` carries nanoseconds into
//! seconds only above 10⁹, so a total of `u64::MAX` seconds plus exactly
//! 10⁹ nanoseconds (`18446744073709551615s 1000ms`, or with white space
//! inside the number, which humantime skips) reaches
//! `Duration::new` uncarried, which panics on the overflow. No duration
//! TaskFlow accepts comes near that: [`MAX_TEXT_BYTES`] and
//! [`MAX_NUMBER_DIGITS`] keep every total under 2 × 10¹⁸ seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest duration text read.
pub const MAX_TEXT_BYTES: usize = 64;

/// The most digits of one number in a duration text. A number of at most
/// ten digits in years (the largest unit) is under 3.2 × 10¹⁷ seconds, and
/// [`MAX_TEXT_BYTES`] leaves room for at most five such.
pub const MAX_NUMBER_DIGITS: usize = 10;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Longer than [`MAX_TEXT_BYTES`].
    #[error("longer than {MAX_TEXT_BYTES} bytes")]
    TooLong,
    /// A number longer than [`MAX_NUMBER_DIGITS`].
    #[error("a number of more than {MAX_NUMBER_DIGITS} digits")]
    NumberTooLong,
    /// Not in humantime's syntax, or too large.
    #[error("{0}")]
    Syntax(String),
}

/// Reads `text` as a duration (`30s`, `1h 30m`, `250ms`).
///
/// # Errors
///
/// A text over [`MAX_TEXT_BYTES`], a number over [`MAX_NUMBER_DIGITS`], or
/// one humantime cannot read.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(DurationError::TooLong);
    }
    // humantime reads digits separated by white space as one number
    // (`1844674407 3709551615s` is `u64::MAX` seconds), so a number is a
    // run of digits and white space.
    let longest_number = text
        .split(|c: char| !(c.is_ascii_digit() || c.is_whitespace()))
        .map(|number| number.bytes().filter(u8::is_ascii_digit).count())
        .max()
        .unwrap_or(0);
    if longest_number > MAX_NUMBER_DIGITS {
        return Err(DurationError::NumberTooLong);
    }
    humantime::parse_duration(text).map_err(|error| DurationError::Syntax(error.to_string()))
}

/// `duration` as [`parse`] reads it (`1h 30m`).
pub fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// A duration for a command-line flag: read by [`parse`], shown (in
/// `--help`'s defaults) by [`format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(Duration);

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text).map(Self)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl From<Duration> for HumanDuration {
    fn from(duration: Duration) -> Self {
        Self(duration)
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Self {
        duration.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_people_write() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse(" 5m  30s "), Ok(Duration::from_secs(330)));
        assert_eq!(parse("1 000s"), Ok(Duration::from_secs(1000)));
        assert_eq!(parse("9999999999y").map(|d| d.as_secs() > 0), Ok(true));
        assert!(matches!(parse("soon"), Err(DurationError::Syntax(_))));
    }

    /// Each of these makes `humantime::parse_duration` 2.4 panic: its
    /// seconds sum to `u64::MAX` and the milliseconds to exactly 10⁹ ns.
    #[test]
    fn text_that_would_overflow_is_refused_not_a_panic() {
        for text in [
            "18446744073709551615s 1000ms",
            "18446744073709551615s1000ms",
            "9223372036854775807s 9223372036854775808s 1000ms",
            // humantime joins digits across white space into one number.
            "1844674407 3709551615s 1000ms",
            "1844674407\t3709551615s 1000ms",
            "1844674407\u{2003}3709551615s 1000ms",
        ] {
            assert_eq!(parse(text), Err(DurationError::NumberTooLong), "{text}");
        }
        let many = "9999999999y ".repeat(6);
        assert_eq!(parse(&many), Err(DurationError::TooLong));
    }

    #[test]
    fn a_flag_shows_what_it_reads() {
        let flag: HumanDuration = "1h 30m".parse().unwrap();
        assert_eq!(Duration::from(flag), Duration::from_secs(5400));
        assert_eq!(flag.to_string(), "1h 30m");
    }
}
