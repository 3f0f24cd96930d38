//! The control plane's settings.

use std::time::Duration;

use super::{ConfigError, check};

/// The control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Address the REST API listens on. Without API tokens it must be a
    /// loopback address, unless `--insecure-no-auth` says otherwise.
    pub listen: String,

    /// Most uploads waiting for a compile slot (`--max-concurrent-compiles`).
    /// An upload takes its place in this queue before its body is read, so
    /// waiting uploads hold at most this many bodies; one more gets 503 with
    /// `Retry-After`.
    pub max_queued_uploads: usize,

    /// SHA-256 (hex) of each accepted API token, comma-separated; make one
    /// with `taskflow token create`. Every `/v1` route then requires
    /// `Authorization: Bearer <token>`. Empty: the API is open to anyone who
    /// can reach it, which `taskflow api` allows only on a loopback address
    /// or with `--insecure-no-auth`.
    pub api_token_sha256: Vec<String>,

    /// Serve an API without tokens on a non-loopback address, so that anyone
    /// who can reach it may upload and run code. Only for networks where
    /// every client is trusted.
    pub insecure_no_auth: bool,

    /// Most client connections open at once. Further connections wait in
    /// the listen backlog until one closes, so a crowd of idle clients
    /// cannot exhaust the process's file descriptors (which its database
    /// and Redis connections need too). Too low and busy clients queue;
    /// too high and the process runs out of descriptors first.
    pub max_connections: usize,

    /// Longest a connection may go without sending a complete request head:
    /// a new connection from its opening, a kept-alive one from the end of
    /// its previous response. Idle and half-open connections are closed
    /// after this, so they cannot hold connection slots for long.
    pub request_header_timeout: Duration,

    /// Longest time to receive a request's whole body, and to wait for room
    /// in the in-flight budget (`--max-request-bytes-in-flight`) before
    /// reading it. A slower upload gets 408; raise it for big modules on
    /// slow links.
    pub request_body_timeout: Duration,

    /// Most memory request bodies may hold at once, in bytes, summed over
    /// every request in flight. Each request reserves its body size (times
    /// what parsing adds: four for JSON, one for an upload) before reading
    /// it, and waits for room; so N parallel maximum-size requests cost at
    /// most this much. A request bigger than the whole budget waits until it
    /// is alone.
    pub max_request_bytes_in_flight: usize,

    /// PostgreSQL read replica for the routes that only read jobs and
    /// queues (`GET /v1/jobs`, `/v1/jobs/{id}`, `/v1/queues`,
    /// `/v1/queues/{name}`) and the console's lists. Its lag shows: a job
    /// may look a state behind. A job the replica does not have yet is read
    /// from the primary, so a client always finds the job it just created;
    /// a `wait` and a job's attempts read the primary, and everything that
    /// writes (or logs in) uses the primary. None: everything reads the
    /// primary.
    pub database_read_url: Option<String>,
}

impl ApiConfig {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.max_connections >= 1, || {
            "--max-connections must be at least 1".into()
        })?;
        check(
            !self.request_header_timeout.is_zero() && !self.request_body_timeout.is_zero(),
            || "--request-header-timeout and --request-body-timeout must be positive".into(),
        )
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_queued_uploads: 8,
            api_token_sha256: Vec::new(),
            insecure_no_auth: false,
            max_connections: 1024,
            request_header_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(60),
            max_request_bytes_in_flight: 512 << 20,
            database_read_url: None,
        }
    }
}
