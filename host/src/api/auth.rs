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

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::{AUTHORIZATION, CONNECTION, WWW_AUTHENTICATE};
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
}
