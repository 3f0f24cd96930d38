//! How a task reports failure.

use std::fmt;

use crate::http::HttpError;

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

    /// The message and whether to retry, taken apart without copying the
    /// message (it may be large, and guest memory is bounded).
    pub(crate) fn into_parts(self) -> (String, bool) {
        (self.message, self.retryable)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable { "retryable" } else { "fatal" };
        write!(f, "{} ({kind})", self.message)
    }
}

/// `?` on any error: a `TaskError` whose message is the error and its
/// causes, joined by ": ". Retryable, unless the error or one of its causes
/// is an [`HttpError`](crate::http::HttpError) that says otherwise (a denied
/// request, a 404): that is how `?` on an HTTP call, even one wrapped in your
/// own error type, picks the right kind. Like `anyhow`, this takes errors
/// that borrow nothing (`'static`); map one that does (a `PoisonError` of a
/// lock guard) to a `TaskError` yourself.
impl<E: std::error::Error + 'static> From<E> for TaskError {
    fn from(error: E) -> Self {
        let message = chain(&error)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        let http = chain(&error).find_map(|cause| cause.downcast_ref::<HttpError>());
        match http {
            Some(http) if !http.is_retryable() => Self::fatal(message),
            _ => Self::retry(message),
        }
    }
}

/// The error followed by its causes.
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| error.source())
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
    fn question_mark_keeps_the_kind_of_a_wrapped_http_error() {
        #[derive(Debug)]
        struct Upload(HttpError);
        impl fmt::Display for Upload {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("upload failed")
            }
        }
        impl std::error::Error for Upload {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let denied = HttpError::Denied {
            url: "https://example.com/files".into(),
        };
        let error = TaskError::from(Upload(denied));
        assert!(!error.is_retryable());
        assert!(
            error
                .message()
                .starts_with("upload failed: request to https://example.com/files")
        );
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
