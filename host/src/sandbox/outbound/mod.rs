//! Outbound HTTP for tasks: `wasi:http/outgoing-handler`, with every
//! request checked against what the job's queue grants, capped, and
//! recorded on the attempt. Enforced here, in the host: the guest only
//! ever holds a request it asks the host to send.
//!
//! - Which hosts: the queue's `allowed_hosts` (`queue/allowed_host.rs`);
//!   names are resolved here and only public addresses are reached unless
//!   an entry names the address itself, and the connection goes to the
//!   address that was checked (`connect.rs`).
//! - Secrets: substituted for their placeholders in header values, only
//!   towards their own hosts (`placeholders.rs`).
//! - Caps: requests per attempt, bytes sent, bytes received per response
//!   and in all, and a per-request timeout that never passes the attempt's
//!   deadline ([`OutboundLimits`]; bodies are counted as they stream,
//!   `body.rs`).
//! - Record: method, URL without query, status or error, bytes, duration,
//!   whether denied (`audit.rs`); the first [`OutboundLimits::max_recorded`]
//!   kept, the rest counted.
//! - Redirects are returned to the guest, never followed here. Cancelling
//!   the job or losing its lease drops the attempt's store, and with it
//!   every request in flight (`send.rs` also stops at once when the
//!   attempt's `RunGrant` is revoked).

mod audit;
mod body;
mod connect;
mod placeholders;
mod send;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

pub use audit::RequestRecord;
pub use connect::tls_config;
pub use placeholders::GrantedSecret;

use super::grant::RunGrant;
use crate::job::AttemptRequests;
use crate::queue::AllowedHost;
use audit::Audit;
use placeholders::Placeholders;

/// Per-attempt caps on outbound HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Requests one attempt may make; the next is refused as denied.
    pub max_requests: u32,
    /// Request body bytes one attempt may send, in all.
    pub max_sent_bytes: u64,
    /// Body bytes one response may carry.
    pub max_response_bytes: u64,
    /// Response body bytes one attempt may receive, in all.
    pub max_received_bytes: u64,
    /// Longest one request may take, from connecting to the end of its
    /// response body; never past the attempt's own deadline.
    pub request_timeout: Duration,
    /// Requests recorded in full on the attempt; the rest are counted.
    pub max_recorded: usize,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        Self {
            max_requests: 64,
            max_sent_bytes: 16 << 20,
            max_response_bytes: 16 << 20,
            max_received_bytes: 64 << 20,
            request_timeout: Duration::from_secs(30),
            max_recorded: 32,
        }
    }
}

/// What a job's queue grants one of its attempts.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Hosts any request may go to.
    pub allowed_hosts: Vec<AllowedHost>,
    /// What `wasi:config/store` returns.
    pub config: BTreeMap<String, String>,
    /// Secrets by name, opened.
    pub secrets: BTreeMap<String, GrantedSecret>,
}

/// The outbound requests of a finished attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestLog {
    /// The first requests, in order.
    pub records: Vec<RequestRecord>,
    /// Requests made past [`OutboundLimits::max_recorded`].
    pub dropped: u64,
}

impl RequestLog {
    /// This log as the attempt record stores it.
    pub fn stored(&self) -> AttemptRequests {
        AttemptRequests {
            // Records are plain strings and numbers: serializing cannot fail.
            records_json: serde_json::to_string(&self.records).unwrap_or_else(|_| "[]".to_owned()),
            dropped: self.dropped,
        }
    }
}

/// One attempt's outbound state, shared by its requests in flight.
pub(super) struct AttemptOutbound {
    limits: OutboundLimits,
    tls: Arc<rustls::ClientConfig>,
    allowed_hosts: Vec<AllowedHost>,
    placeholders: Placeholders,
    deadline: tokio::time::Instant,
    grant: Arc<RunGrant>,
    /// Requests asked for, refused ones included. 64 bits, so that no
    /// attempt, however long, counts past the cap and back to zero.
    requests: AtomicU64,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    audit: Audit,
}

impl AttemptOutbound {
    pub(super) fn new(
        limits: OutboundLimits,
        tls: Arc<rustls::ClientConfig>,
        grants: Grants,
        deadline: std::time::Instant,
        grant: Arc<RunGrant>,
    ) -> Arc<Self> {
        Arc::new(Self {
            audit: Audit::new(limits.max_recorded),
            limits,
            tls,
            allowed_hosts: grants.allowed_hosts,
            placeholders: Placeholders::new(grants.secrets),
            deadline: deadline.into(),
            grant,
            requests: AtomicU64::new(0),
            sent: Arc::default(),
            received: Arc::default(),
        })
    }

    /// Every request made so far, for the attempt record.
    pub(super) fn finish(&self) -> RequestLog {
        let (records, dropped) = self.audit.finish();
        RequestLog { records, dropped }
    }
}

/// The `wasi:http` hooks of one attempt: every request goes through
/// [`AttemptOutbound::send`]. `None` for a task that imports nothing a
/// queue grants (`PreparedTask::uses_grants`): it cannot make a request or
/// ask for a secret, so its attempt builds no outbound state.
pub(super) struct AttemptHttp(pub(super) Option<Arc<AttemptOutbound>>);

impl AttemptHttp {
    /// The placeholder of secret `name` (`taskflow:task/secrets`).
    pub(super) fn placeholder(&self, name: &str) -> Option<String> {
        self.0.as_ref()?.placeholders.placeholder(name)
    }

    /// HMAC-SHA256 keyed with secret `name` (`taskflow:task/secrets`).
    pub(super) fn hmac_sha256(&self, name: &str, data: &[u8]) -> Option<Vec<u8>> {
        self.0.as_ref()?.placeholders.hmac_sha256(name, data)
    }
}

type SendFuture = Box<dyn Future<Output = Result<send::Sent, Error>> + Send>;

impl WasiHttpHooks for AttemptHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _request_sent: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        match &self.0 {
            Some(outbound) => Box::new(outbound.clone().send(request)),
            None => Box::new(std::future::ready(Err(Error::HttpRequestDenied))),
        }
    }

    /// What one write to an outgoing body may hand the host to buffer
    /// (`RESOURCE_BYTES`, sandbox/resources.rs).
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        super::resources::RESOURCE_BYTES
    }

    fn p2_error_from_hyper(
        &mut self,
        error: &hyper::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        use std::error::Error as _;
        use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
        match error
            .source()
            .and_then(|source| source.downcast_ref::<Error>())
        {
            Some(Error::HttpRequestBodySize(size)) => ErrorCode::HttpRequestBodySize(*size),
            Some(Error::HttpResponseBodySize(size)) => ErrorCode::HttpResponseBodySize(*size),
            Some(Error::ConnectionReadTimeout) => ErrorCode::ConnectionReadTimeout,
            _ => ErrorCode::HttpProtocolError,
        }
    }
}
