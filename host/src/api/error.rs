//! The API's one error type and its JSON shape.
//!
//! Every error response is `{"error": {"code": "...", "message": "..."}}`
//! with a 4xx or 5xx status, and `"field"` naming the request's field when
//! one field is to blame. `code` is stable and machine-readable; the
//! message names the problem and, where there is one, the fix. A 5xx never
//! leaks internals: the details go to the server log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::job::{FieldError, Problem};
use crate::store::StoreError;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for humans.
    pub message: String,
    /// The request field to blame, if one is.
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after_secs: Option<u32>,
}

/// The JSON body of an error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    /// What went wrong, for humans.
    pub message: String,
    /// The request field to blame, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    /// 503 `busy`: the server is at a limit it enforces on purpose (uploads
    /// queued, request memory held); retrying in a second may succeed.
    pub fn busy(message: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
        }
    }

    /// The same answer, naming `field`: the part of the request it is
    /// about (`limit`, `jobs[3].module`).
    pub fn for_field(self, field: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..self
        }
    }

    /// 400: the request is malformed or a field is out of range.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: the named thing does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 413: the request or a payload in it is over a limit.
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 422: well-formed, but not acceptable.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 500: a bug or an unexpected failure; the cause is logged, not shown.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error while serving a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }

    /// 503: a dependency is unreachable; the request may be retried.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(%cause, "dependency unavailable while serving a request");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unreachable; retry the request (send an idempotency_key so \
             that a retried submission can never create a second job)",
        )
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        let message = error.to_string();
        let answer = match error.problem {
            Problem::Invalid => Self::bad_request("invalid_field", message),
            Problem::NotAModuleHash => Self::bad_request("invalid_hash", message),
            Problem::InputTooLarge => Self::too_large("input_too_large", message),
            Problem::UnknownModuleName => Self::not_found("module_not_found", message),
        };
        Self {
            field: Some(error.field),
            ..answer
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::from_store(&error)
    }
}

impl ApiError {
    fn from_store(error: &StoreError) -> Self {
        match error {
            StoreError::Group(error) => Self::from_store(error),
            StoreError::WriterStopped => Self::internal(error),
            StoreError::UnknownModules(_) => Self::not_found("module_not_found", error.to_string()),
            StoreError::JobNotFound(_) => Self::not_found("job_not_found", error.to_string()),
            StoreError::IdempotencyConflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                error.to_string(),
            ),
            StoreError::MissingSecretValue(name) => Self {
                field: Some(format!("secrets.{name}.value")),
                ..Self::bad_request("invalid_field", error.to_string())
            },
            StoreError::Raced => Self::new(StatusCode::CONFLICT, "raced", error.to_string()),
            StoreError::QueueChanged(_) => {
                Self::new(StatusCode::CONFLICT, "queue_changed", error.to_string())
            }
            StoreError::Unavailable(_) => Self::unavailable(error),
            StoreError::InvalidTransition { .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_state", error.to_string())
            }
            StoreError::TooManyNames { .. } => {
                Self::new(StatusCode::CONFLICT, "too_many_names", error.to_string())
            }
            StoreError::ModuleDeleted { .. } => {
                Self::new(StatusCode::CONFLICT, "module_deleted", error.to_string())
            }
            StoreError::Database(_) if error.is_refusal() => Self::bad_request(
                "invalid_value",
                format!(
                    "the database refused a value of this request (SQLSTATE {}); check each \
                     field against the ranges in the API reference",
                    error.sqlstate().unwrap_or_else(|| "none".to_owned())
                ),
            ),
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))
            | StoreError::Database(sqlx::Error::PoolClosed) => Self::unavailable(error),
            StoreError::Database(_) | StoreError::Migration(_) | StoreError::SessionRequired(_) => {
                Self::internal(error)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
