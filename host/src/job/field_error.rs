//! What is wrong with a field of something a client wrote: a submission
//! (`spec.rs`, `input.rs`, `names.rs`) or a queue's settings
//! (`queue/settings.rs`). Each caller maps it: the API to a 4xx naming the
//! field (`api/error.rs`), `taskflow run` to text.

/// A field of a submission that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as the client named it (`fuel`, or `jobs[3].fuel` in a
    /// batch).
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
    /// Why, for a person.
    pub message: String,
}

/// The kinds of [`FieldError`], for callers that answer each differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Missing, malformed or out of range.
    Invalid,
    /// Not a module hash (64 lowercase hex digits).
    NotAModuleHash,
    /// The input is over [`SubmissionLimits::max_input_bytes`](super::SubmissionLimits::max_input_bytes).
    InputTooLarge,
    /// No module has this name.
    UnknownModuleName,
}

impl FieldError {
    /// A [`Problem::Invalid`] error.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            problem: Problem::Invalid,
            message: message.into(),
        }
    }

    /// The same error for a field nested in `parent` (`jobs[3]`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}
