//! Bearer-token authentication of the `/v1` routes.
//!
//! The server never stores tokens, only their SHA-256
//! (`TASKFLOW_API_TOKEN_SHA256`, comma-separated hex): a leaked configuration
//! grants nothing. `taskflow token create` makes a token and its hash. A
//! request must send `Authorization: Bearer <token>`; anything else gets 401
//! with the same message whether the token is missing, malformed or wrong,
//! so the response reveals nothing. With no hashes configured the API is
//! open, and says so loudly at startup (fine for `taskflow dev`, not for a
//! shared deployment). `/healthz`, `/readyz` and `/metrics` stay open for
//! probes and scrapers.
//!
//! An open API listens on loopback only (`cli::server::spawn_api`), but a
//! browser on the same machine reaches loopback for any web page it shows:
//! a cross-site form or `fetch` sends a request, and a DNS-rebound name makes
//! the page same-origin with the API. [`require_local_host`] refuses every
//! request an open API gets whose `Host`, or `Origin` when sent, is not a
//! loopback name or address; the tools TaskFlow ships, `curl` and a
//! browser opened on `http://127.0.0.1:…` or `http://localhost:…` all send
//! such names.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::{AUTHORIZATION, CONNECTION, HOST, ORIGIN, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use sha2::{Digest, Sha256};

use super::ApiError;

/// The accepted tokens, as SHA-256 digests.
#[derive(Debug, Clone, Default)]
pub struct TokenHashes(Arc<Vec<[u8; 32]>>);

/// A configured hash is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error(
    "TASKFLOW_API_TOKEN_SHA256 entries must be 64 hex digits (the output of `taskflow token create`)"
)]
pub struct InvalidTokenHash;

/// Who is calling, for records such as a module name's moves: the first 12
/// hex digits of the SHA-256 of the bearer token sent (`token:1a2b3c4d5e6f`,
/// which an operator matches against `TASKFLOW_API_TOKEN_SHA256`; the
/// token itself is never recorded), or `anonymous` on an open API.
pub fn caller(headers: &axum::http::HeaderMap) -> String {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match token {
        Some(token) => format!(
            "token:{}",
            &hex::encode(Sha256::digest(token.as_bytes()))[..12]
        ),
        None => "anonymous".to_owned(),
    }
}

impl TokenHashes {
    /// Parses hex digests.
    pub fn parse<S: AsRef<str>>(hashes: &[S]) -> Result<Self, InvalidTokenHash> {
        let digests = hashes
            .iter()
            .map(|hash| {
                let bytes = hex::decode(hash.as_ref().trim()).map_err(|_| InvalidTokenHash)?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| InvalidTokenHash)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(Arc::new(digests)))
    }

    /// Whether authentication is off (no tokens configured).
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `token` hashes to an accepted digest.
    pub fn accepts(&self, token: &str) -> bool {
        self.accepts_digest(&digest(token))
    }

    /// Whether `presented` is an accepted digest (a console session keeps
    /// the digest of the token it was opened with, never the token).
    /// Compares every digest in constant time, so timing does not reveal
    /// how close a guess was.
    pub fn accepts_digest(&self, presented: &[u8; 32]) -> bool {
        self.0.iter().fold(false, |found, accepted| {
            let difference = accepted
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (difference == 0)
        })
    }
}

/// The SHA-256 of a token, as configured and as a console session keeps it.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ (a CSRF token against the one sent back).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token and its SHA-256, for `taskflow token create`.
pub fn create_token() -> (String, String) {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the operating system provides randomness");
    let token = format!("tf_{}", hex::encode(secret));
    let hash = hex::encode(digest(&token));
    (token, hash)
}

/// Most bytes of a refused request's body read and thrown away before the
/// 401, and the longest time spent on it.
///
/// A client writes its whole body before it reads the answer; a server that
/// answers and closes while the body is still arriving makes the client see
/// a broken pipe instead of the 401. So a small body is read, a chunk at a
/// time, and discarded (never held: a stranger costs no memory), then the
/// connection is closed. A body beyond these bounds is cut off unread.
const REFUSED_BODY_DRAIN_BYTES: usize = 1 << 20;
const REFUSED_BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Middleware: on an open API (no tokens, loopback only, not
/// `--insecure-no-auth`), answers 403 to a request addressed to another
/// host or sent by a page of another origin; see the [module docs](self).
pub async fn require_local_host(
    State(guard): State<LocalHostGuard>,
    request: Request,
    next: Next,
) -> Response {
    if !guard.0 {
        return next.run(request).await;
    }
    let headers = request.headers();
    let host_is_local = headers
        .get(HOST)
        .is_none_or(|host| host.to_str().is_ok_and(is_loopback_authority));
    let origin_is_local = headers.get(ORIGIN).is_none_or(|origin| {
        origin
            .to_str()
            .ok()
            .and_then(|origin| origin.parse::<axum::http::Uri>().ok())
            .and_then(|origin| {
                origin
                    .authority()
                    .map(|a| is_loopback_authority(a.as_str()))
            })
            .unwrap_or(false)
    });
    if host_is_local && origin_is_local {
        return next.run(request).await;
    }
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "not_local",
        "this API has no tokens, so it answers only requests addressed to a loopback host \
         (127.0.0.1, [::1], localhost) from no other origin; configure \
         TASKFLOW_API_TOKEN_SHA256 to serve other names",
    )
    .into_response()
}

/// Whether [`require_local_host`] checks requests: the API is open and was
/// not told every client of its network is trusted.
#[derive(Debug, Clone, Copy)]
pub struct LocalHostGuard(pub bool);

/// Whether `authority` (`host[:port]`) names this machine: a loopback
/// address, `localhost`, or a name under `.localhost` (which browsers
/// resolve to loopback themselves, RFC 6761).
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host),
    };
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Middleware: lets the request through if auth is off or it carries an
/// accepted bearer token; answers 401 and closes the connection otherwise.
pub async fn require_token(
    State(tokens): State<TokenHashes>,
    request: Request,
    next: Next,
) -> Response {
    if tokens.is_open() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if tokens.accepts(token) => next.run(request).await,
        _ => {
            discard_body(request.into_body()).await;
            let mut response = ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send a valid API token as `Authorization: Bearer <token>`",
            )
            .into_response();
            let headers = response.headers_mut();
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// Reads and drops up to [`REFUSED_BODY_DRAIN_BYTES`] of `body`, for at most
/// [`REFUSED_BODY_DRAIN_TIME`], one frame at a time.
async fn discard_body(body: Body) {
    let mut body = body.into_data_stream();
    let mut read = 0;
    let drain = async {
        while read < REFUSED_BODY_DRAIN_BYTES {
            match body.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_tokens_whose_hash_is_configured() {
        let (token, hash) = create_token();
        let (other, _) = create_token();
        let tokens = TokenHashes::parse(&[hash]).unwrap();
        assert!(tokens.accepts(&token));
        assert!(!tokens.accepts(&other));
        assert!(!tokens.accepts(""));
        assert!(!tokens.is_open());
        assert!(TokenHashes::parse::<&str>(&[]).unwrap().is_open());
        assert!(TokenHashes::parse(&["abc"]).is_err());
    }

    #[test]
    fn loopback_names_and_addresses_with_or_without_a_port() {
        for local in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "127.1.2.3:1",
            "[::1]:8080",
            "[::1]",
            "localhost:8080",
            "LocalHost",
            "app.localhost:3000",
        ] {
            assert!(is_loopback_authority(local), "{local}");
        }
        for remote in [
            "evil.example.com",
            "evil.example.com:8080",
            "localhost.evil.example.com",
            "10.0.0.1:8080",
            "[2001:db8::1]:8080",
            "[::ffff:10.0.0.1]",
            "",
            "[",
        ] {
            assert!(!is_loopback_authority(remote), "{remote}");
        }
    }
}
