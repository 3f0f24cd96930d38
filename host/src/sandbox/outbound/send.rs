//! One outbound request, from the guest's `outgoing-handler.handle` to its
//! response: checked against the attempt's grants and caps, its secrets
//! substituted, sent to a checked address, and recorded.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use http::uri::{PathAndQuery, Uri};
use http_body_util::BodyExt;
use tokio::time::{Instant, timeout_at};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

use super::AttemptOutbound;
use super::audit::RequestMeter;
use super::body::{Direction, Metered};
use super::connect::{self, ConnectError};
use crate::queue::Scheme;

/// What the hook returns: the response, and the future that drives its
/// connection (which `wasi:http` keeps alive with the response body).
pub(super) type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// The longest host name DNS can resolve. A longer one is refused before
/// anything is formatted around it: the guest chooses it.
const MAX_HOST_BYTES: usize = 253;

/// Where a request goes, from its absolute URI.
struct Target {
    scheme: Scheme,
    host: String,
    port: u16,
}

impl Target {
    fn of(uri: &Uri) -> Option<Self> {
        let scheme = Scheme::parse(uri.scheme_str()?)?;
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        Some(Self { scheme, host, port })
    }

    /// `scheme://host:port/path`, without the query string.
    fn recorded_url(&self, uri: &Uri) -> String {
        format!(
            "{}://{}:{}{}",
            self.scheme.as_str(),
            self.host,
            self.port,
            uri.path()
        )
    }
}

/// Why a request did not get a response.
enum Failure {
    Denied(String),
    Timeout(Error),
    Connect(ConnectError),
    Aborted,
    Protocol(Error),
}

impl Failure {
    fn record(&self, meter: &RequestMeter) {
        match self {
            Failure::Denied(reason) => meter.deny(reason.clone()),
            Failure::Timeout(_) => meter.fail("timeout", "the request's time ran out"),
            Failure::Connect(error @ ConnectError::InternalAddress { .. }) => {
                meter.deny(error.to_string());
            }
            Failure::Connect(error @ ConnectError::Dns(_)) => {
                meter.fail("dns_error", error.to_string())
            }
            Failure::Connect(error @ ConnectError::Tls(..)) => {
                meter.fail("tls_error", error.to_string())
            }
            Failure::Connect(error @ ConnectError::Refused(..)) => {
                meter.fail("connection_failed", error.to_string());
            }
            Failure::Aborted => meter.fail("aborted", "the attempt lost its right to run"),
            Failure::Protocol(Error::HttpRequestBodySize(_)) => {
                meter.fail("request_too_large", "the attempt's cap on bytes sent");
            }
            Failure::Protocol(error) => meter.fail("protocol_error", error.to_string()),
        }
    }

    fn into_error(self) -> Error {
        match self {
            Failure::Denied(_) | Failure::Connect(ConnectError::InternalAddress { .. }) => {
                Error::HttpRequestDenied
            }
            Failure::Timeout(error) | Failure::Protocol(error) => error,
            Failure::Connect(ConnectError::Dns(_)) => Error::DnsError {
                rcode: None,
                info_code: None,
            },
            Failure::Connect(ConnectError::Tls(..)) => Error::TlsCertificateError,
            Failure::Connect(ConnectError::Refused(..)) => Error::ConnectionRefused,
            Failure::Aborted => Error::InternalError(Some("the attempt was stopped".into())),
        }
    }
}

impl AttemptOutbound {
    /// Sends `request` if the attempt's grants and caps allow it, and
    /// records it either way.
    pub(super) async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
    ) -> Result<Sent, Error> {
        let Some(target) = Target::of(request.uri()) else {
            return Err(Error::HttpRequestUriInvalid);
        };
        let meter = self.audit.start(
            request.method().as_str(),
            target.recorded_url(request.uri()),
        );
        let grant = self.grant.clone();
        let outcome = tokio::select! {
            outcome = self.send_checked(request, &target, &meter) => outcome,
            () = grant.invalidated() => Err(Failure::Aborted),
        };
        outcome.map_err(|failure| {
            failure.record(&meter);
            tracing::debug!(host = %target.host, port = target.port, "outbound request failed");
            failure.into_error()
        })
    }

    async fn send_checked(
        &self,
        mut request: http::Request<WasiBody>,
        target: &Target,
        meter: &Arc<RequestMeter>,
    ) -> Result<Sent, Failure> {
        let limits = &self.limits;
        if self.requests.fetch_add(1, Ordering::Relaxed) >= u64::from(limits.max_requests) {
            return Err(Failure::Denied(format!(
                "past the cap of {} requests per attempt",
                limits.max_requests
            )));
        }
        if target.host.len() > MAX_HOST_BYTES {
            return Err(Failure::Denied(format!(
                "a host name of {} bytes; DNS allows at most {MAX_HOST_BYTES}",
                target.host.len()
            )));
        }
        let grants: Vec<_> = self
            .allowed_hosts
            .iter()
            .filter(|entry| entry.allows(target.scheme, &target.host, target.port))
            .collect();
        if grants.is_empty() {
            return Err(Failure::Denied(format!(
                "{}://{}:{} is not in the queue's allowed_hosts",
                target.scheme.as_str(),
                target.host,
                target.port
            )));
        }
        let misuse = |error: super::placeholders::Misuse| Failure::Denied(error.to_string());
        self.placeholders
            .check_url(&request.uri().to_string())
            .map_err(misuse)?;
        self.placeholders
            .substitute(
                request.headers_mut(),
                target.scheme,
                &target.host,
                target.port,
            )
            .map_err(misuse)?;
        let deadline = Instant::now()
            .checked_add(limits.request_timeout)
            .map_or(self.deadline, |end| end.min(self.deadline));
        let stream = timeout_at(
            deadline,
            connect::open(target.scheme, &target.host, target.port, &grants, &self.tls),
        )
        .await
        .map_err(|_| Failure::Timeout(Error::ConnectionTimeout))?
        .map_err(Failure::Connect)?;
        let (mut sender, connection) = timeout_at(
            deadline,
            hyper::client::conn::http1::handshake::<_, WasiBody>(TokioIo::new(stream)),
        )
        .await
        .map_err(|_| Failure::Timeout(Error::ConnectionTimeout))?
        .map_err(|error| Failure::Protocol(error.into()))?;

        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
        let (parts, body) = request.into_parts();
        let body = Metered::new(
            body,
            Direction::Out,
            meter.clone(),
            vec![(self.sent.clone(), limits.max_sent_bytes)],
            deadline,
        );
        let request = http::Request::from_parts(parts, body.boxed_unsync());

        let mut connection = Box::pin(connection);
        let mut connection_done = false;
        let mut response = pin!(timeout_at(deadline, sender.send_request(request)));
        let response = poll_fn(|cx| {
            if let Poll::Ready(response) = response.as_mut().poll(cx) {
                return Poll::Ready(response);
            }
            if !connection_done && connection.as_mut().poll(cx).is_ready() {
                connection_done = true;
            }
            Poll::Pending
        })
        .await
        .map_err(|_| Failure::Timeout(Error::ConnectionReadTimeout))?
        .map_err(|error| Failure::Protocol(request_error(error)))?;

        meter.responded(response.status().as_u16());
        let per_response = Arc::default();
        let response = response.map(|incoming| {
            Metered::new(
                incoming.map_err(Error::from),
                Direction::In,
                meter.clone(),
                vec![
                    (per_response, limits.max_response_bytes),
                    (self.received.clone(), limits.max_received_bytes),
                ],
                deadline,
            )
            .boxed_unsync()
        });
        let drive: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
            if !connection_done {
                connection.await.map_err(Error::from)?;
            }
            Ok(())
        });
        Ok((response, drive))
    }
}

/// The error hyper reports when sending failed; a body that passed its cap
/// is reported as such rather than as a protocol error.
fn request_error(error: hyper::Error) -> Error {
    use std::error::Error as _;
    match error
        .source()
        .and_then(|source| source.downcast_ref::<Error>())
    {
        Some(Error::HttpRequestBodySize(size)) => Error::HttpRequestBodySize(*size),
        Some(Error::ConnectionReadTimeout) => Error::ConnectionReadTimeout,
        _ => Error::from(error),
    }
}
