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

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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

    /// Whether `token` hashes to an accepted digest. Compares every digest in
    /// constant time, so timing does not reveal how close a guess was.
    pub fn accepts(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0.iter().fold(false, |found, accepted| {
            let difference = accepted
                .iter()
                .zip(&presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (difference == 0)
        })
    }
}

/// A new random token and its SHA-256, for `taskflow token create`.
pub fn create_token() -> (String, String) {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the operating system provides randomness");
    let token = format!("tf_{}", hex::encode(secret));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}

/// Most bytes of a refused request's body read before answering 401.
///
/// A client writes its whole body before it reads the answer. If the server
/// answered without reading the body and closed the connection, a client
/// uploading a module with a wrong token would see a broken pipe instead of
/// the 401. Reading (and discarding) the body fixes that; the cap bounds
/// what a stranger can make the server read per request. A bigger body is
/// cut off unread, as before.
const REFUSED_BODY_READ_BYTES: usize = 16 << 20;

/// Middleware: lets the request through if auth is off or it carries an
/// accepted bearer token; answers 401 otherwise.
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
            let _ = axum::body::to_bytes(request.into_body(), REFUSED_BODY_READ_BYTES).await;
            let mut response = ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send a valid API token as `Authorization: Bearer <token>`",
            )
            .into_response();
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, "Bearer".parse().expect("a valid header"));
            response
        }
    }
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
