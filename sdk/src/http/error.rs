//! Why an HTTP request failed, and whether retrying may help.

use crate::bindings::wasi::http::types::ErrorCode;

/// Why an HTTP request failed.
///
/// Every message names the URL without its query string, which may carry
/// tokens. `?` turns it into a [`TaskError`](crate::TaskError) of the right
/// kind: see [`HttpError::is_retryable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not an absolute `http://` or `https://` URL. Fatal.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The URL as given, without its query string.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request cannot be sent as built: a malformed header name or
    /// value, a body that cannot be encoded as JSON. Fatal.
    #[error("invalid request to {url}: {reason}")]
    InvalidRequest {
        /// The URL, without its query string.
        url: String,
        /// What is wrong with the request.
        reason: String,
    },
    /// The host refused the request: the job's queue does not allow this
    /// host, the attempt used up its requests, or a secret was sent to a
    /// host it is not bound to. Fatal: the queue's operator must grant it.
    #[error("request to {url} denied: the job's queue does not allow it")]
    Denied {
        /// The URL, without its query string.
        url: String,
    },
    /// Connecting, or waiting for the response, took too long. Retryable.
    #[error("request to {url} timed out")]
    Timeout {
        /// The URL, without its query string.
        url: String,
    },
    /// The server could not be reached or broke off the exchange (DNS,
    /// refused connection, TLS, protocol error). Retryable.
    #[error("request to {url} failed: {reason}")]
    Connection {
        /// The URL, without its query string.
        url: String,
        /// The transport's error.
        reason: String,
    },
    /// A body or header exceeded a size limit of the host or the server.
    /// Fatal: the same request would exceed it again.
    #[error("request to {url} exceeded a size limit")]
    TooLarge {
        /// The URL, without its query string.
        url: String,
    },
    /// The server answered with an error status (from
    /// [`Response::error_for_status`](super::Response::error_for_status)).
    /// Retryable for 5xx, 408 and 429; fatal for other statuses.
    #[error("{url} answered with status {status}")]
    Status {
        /// The response's status code.
        status: u16,
        /// The URL, without its query string.
        url: String,
    },
    /// The response body is not the JSON [`Response::json`](super::Response::json)
    /// expected. Fatal: a server that answers in another shape will keep
    /// doing so.
    #[error("the response from {url} is not the expected JSON: {reason}")]
    Json {
        /// The URL, without its query string.
        url: String,
        /// The decoding error.
        reason: String,
    },
    /// Anything else, such as an internal error of the host. Retryable.
    #[error("{0}")]
    Other(String),
}

impl HttpError {
    /// Whether another attempt may succeed: the kind of
    /// [`TaskError`](crate::TaskError) that `?` makes of this error.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Connection { .. } | Self::Other(_) => true,
            Self::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::InvalidUrl { .. }
            | Self::InvalidRequest { .. }
            | Self::Denied { .. }
            | Self::TooLarge { .. }
            | Self::Json { .. } => false,
        }
    }

    /// The error outside a task, where there is no host to send requests.
    pub(crate) fn no_host() -> Self {
        Self::Other("no TaskFlow host: HTTP is available only inside a task".into())
    }

    /// Classifies a wasi:http `error-code` for a request to `url` (already
    /// without its query).
    pub(crate) fn from_code(code: ErrorCode, url: &str) -> Self {
        let url = url.to_owned();
        use ErrorCode as C;
        match code {
            C::HttpRequestDenied | C::DestinationIpProhibited => Self::Denied { url },
            C::DnsTimeout
            | C::ConnectionTimeout
            | C::ConnectionReadTimeout
            | C::ConnectionWriteTimeout
            | C::HttpResponseTimeout => Self::Timeout { url },
            C::HttpRequestBodySize(_)
            | C::HttpRequestHeaderSectionSize(_)
            | C::HttpRequestHeaderSize(_)
            | C::HttpRequestTrailerSectionSize(_)
            | C::HttpRequestTrailerSize(_)
            | C::HttpRequestUriTooLong
            | C::HttpResponseBodySize(_)
            | C::HttpResponseHeaderSectionSize(_)
            | C::HttpResponseHeaderSize(_)
            | C::HttpResponseTrailerSectionSize(_)
            | C::HttpResponseTrailerSize(_) => Self::TooLarge { url },
            C::HttpRequestMethodInvalid
            | C::HttpRequestUriInvalid
            | C::HttpRequestLengthRequired => Self::InvalidRequest {
                url,
                reason: format!("{code:?}"),
            },
            C::InternalError(Some(message)) => Self::Other(format!("request to {url}: {message}")),
            C::InternalError(None) | C::ConfigurationError => {
                Self::Other(format!("request to {url}: {code:?}"))
            }
            other => Self::Connection {
                url,
                reason: format!("{other:?}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskError;

    const URL: &str = "https://api.example.com/v1/items";

    fn kind(error: HttpError) -> bool {
        TaskError::from(error).is_retryable()
    }

    fn status(status: u16) -> HttpError {
        HttpError::Status {
            status,
            url: URL.into(),
        }
    }

    #[test]
    fn statuses_map_to_the_right_kind() {
        for retryable in [408, 429, 500, 502, 503, 504] {
            assert!(kind(status(retryable)), "{retryable}");
        }
        for fatal in [400, 401, 403, 404, 409, 422] {
            assert!(!kind(status(fatal)), "{fatal}");
        }
    }

    #[test]
    fn transport_errors_map_to_the_right_kind() {
        let url = || URL.to_owned();
        assert!(!kind(HttpError::Denied { url: url() }));
        assert!(!kind(HttpError::TooLarge { url: url() }));
        let reason = String::new;
        assert!(!kind(HttpError::InvalidUrl {
            url: url(),
            reason: reason()
        }));
        assert!(!kind(HttpError::InvalidRequest {
            url: url(),
            reason: reason()
        }));
        assert!(!kind(HttpError::Json {
            url: url(),
            reason: reason()
        }));
        assert!(kind(HttpError::Timeout { url: url() }));
        assert!(kind(HttpError::Connection {
            url: url(),
            reason: reason()
        }));
        assert!(kind(HttpError::no_host()));
    }

    #[test]
    fn the_task_error_names_the_url() {
        let error = TaskError::from(status(404));
        assert_eq!(
            error.message(),
            "https://api.example.com/v1/items answered with status 404"
        );
        let denied = TaskError::from(HttpError::from_code(ErrorCode::HttpRequestDenied, URL));
        assert_eq!(
            denied.message(),
            "request to https://api.example.com/v1/items denied: the job's queue does not allow it"
        );
    }

    #[test]
    fn error_codes_are_classified() {
        let from = |code| HttpError::from_code(code, URL);
        assert_eq!(
            from(ErrorCode::HttpRequestDenied),
            HttpError::Denied { url: URL.into() }
        );
        assert_eq!(
            from(ErrorCode::ConnectionReadTimeout),
            HttpError::Timeout { url: URL.into() }
        );
        assert_eq!(
            from(ErrorCode::HttpResponseBodySize(Some(1 << 20))),
            HttpError::TooLarge { url: URL.into() }
        );
        assert!(matches!(
            from(ErrorCode::ConnectionRefused),
            HttpError::Connection { .. }
        ));
        assert!(matches!(
            from(ErrorCode::HttpRequestUriInvalid),
            HttpError::InvalidRequest { .. }
        ));
        assert_eq!(
            from(ErrorCode::InternalError(Some(
                "worker shutting down".into()
            ))),
            HttpError::Other(format!("request to {URL}: worker shutting down"))
        );
    }
}
