//! How a task reports failure.

use std::fmt;

/// Why a task did not produce an output, and whether retrying may help.
///
/// Create one with [`TaskError::retry`] or [`TaskError::fatal`], or let `?`
/// convert any error (as retryable). Not itself a `std::error::Error`, so
/// that `?` can convert every error type into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    message: String,
    retryable: bool,
}

impl TaskError {
    /// A failure another attempt may fix (an overloaded dependency, a
    /// transient outage): the job is retried with backoff until it runs out
    /// of attempts.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix (the input is invalid): the job goes
    /// straight to the dead-letter state.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// The message stored in the attempt record.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the job may be retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable { "retryable" } else { "fatal" };
        write!(f, "{} ({kind})", self.message)
    }
}

/// `?` on any error: a retryable `TaskError` whose message is the error and
/// its causes, joined by ": ".
impl<E: std::error::Error> From<E> for TaskError {
    fn from(error: E) -> Self {
        Self::retry(error_chain(&error))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Marks the error of a `Result` as fatal or retryable before `?`.
///
/// ```
/// use taskflow_sdk::{ResultExt, TaskError};
///
/// fn parse(text: &str) -> Result<u32, TaskError> {
///     let n: u32 = text.parse().fatal()?; // bad input: do not retry
///     Ok(n)
/// }
/// assert!(!parse("x").unwrap_err().is_retryable());
/// ```
pub trait ResultExt<T> {
    /// Converts the error into a fatal [`TaskError`].
    fn fatal(self) -> Result<T, TaskError>;
    /// Converts the error into a retryable [`TaskError`].
    fn retryable(self) -> Result<T, TaskError>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn fatal(self) -> Result<T, TaskError> {
        self.map_err(|error| TaskError::fatal(error.to_string()))
    }

    fn retryable(self) -> Result<T, TaskError> {
        self.map_err(|error| TaskError::retry(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_mark_makes_a_retryable_error_with_its_causes() {
        fn read() -> Result<(), TaskError> {
            Err(std::io::Error::other("disk on fire"))?;
            Ok(())
        }
        let error = read().unwrap_err();
        assert!(error.is_retryable());
        assert_eq!(error.message(), "disk on fire");
    }

    #[test]
    fn result_ext_chooses_the_kind() {
        let fatal: Result<(), _> = Err("bad").fatal();
        assert_eq!(fatal.unwrap_err(), TaskError::fatal("bad"));
        let retry: Result<(), _> = Err("busy").retryable();
        assert_eq!(retry.unwrap_err(), TaskError::retry("busy"));
        assert_eq!(TaskError::fatal("x").to_string(), "x (fatal)");
    }
}
