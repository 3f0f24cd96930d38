//! Who may use the console, and proof that a form came from it.
//!
//! **Login.** A person pastes an API token once (`POST /ui/login`); if the
//! API accepts it ([`TokenHashes::accepts`]), the server opens a session:
//! 32 random bytes in an `HttpOnly`, `SameSite=Strict` cookie scoped to
//! `/ui`, of which PostgreSQL keeps only the SHA-256, beside the SHA-256
//! of the token (store/console_sessions.rs). The token itself is kept
//! nowhere. A session ends at logout, after [`SESSION_LIFETIME`], or as
//! soon as its token is removed from `TASKFLOW_API_TOKEN_SHA256`. On an
//! API without tokens the console is open, like the API: the first page
//! opens a session without asking.
//!
//! **CSRF.** Each session has a random CSRF token that every form carries
//! in a hidden `csrf` field; [`require_session`] refuses any request but
//! `GET` and `HEAD` whose form does not carry it (compared in constant
//! time), and any a browser marks as sent from another site
//! (`Sec-Fetch-Site: cross-site`). `SameSite=Strict` already keeps the
//! cookie off cross-site requests; the token holds even where it would not.
//!
//! The cookie is not marked `Secure`, as the API serves plain HTTP on
//! loopback; behind a TLS proxy, the proxy should add it (docs/console.md).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::view::{Chrome, ConsoleError, Login, render};
use crate::api::ApiState;
use crate::api::auth::{constant_time_eq, digest};
use crate::api::body::Reservation;

/// The cookie holding the session id.
pub const SESSION_COOKIE: &str = "taskflow_session";

/// How long a session lasts from login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Largest form body the console reads, in bytes: a bulk action on a full
/// page of jobs is about 25 KiB.
pub const FORM_MAX_BYTES: usize = 64 << 10;

/// The session of a request that passed [`require_session`].
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the session id in the cookie.
    id_sha256: [u8; 32],
    /// What its forms must send back as `csrf`.
    pub csrf_token: String,
}

impl Session {
    /// The frame of page `active` for this session, on an API that is
    /// `open` (no login, so no logout).
    pub fn chrome(&self, open: bool, active: &'static str) -> Chrome {
        Chrome {
            csrf: self.csrf_token.clone(),
            open,
            active,
            notice: None,
        }
    }
}

/// Middleware of every console route but login and the assets: finds the
/// request's session (opening one on an open API), checks the CSRF token
/// of anything but a read, and hands the [`Session`] to the handler.
pub async fn require_session(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let (session, new_cookie) = match current_session(&state, request.headers()).await {
        Ok(Some(session)) => (session, None),
        Ok(None) if state.tokens.is_open() => match open_session(&state, None).await {
            Ok((session, cookie)) => (session, Some(cookie)),
            Err(error) => return error.into_response(),
        },
        Ok(None) => return logged_out(request.method()),
        Err(error) => return error.into_response(),
    };
    // A form's share of the request budget is held until its answer is.
    let mut _form_reservation = None;
    if !is_read(request.method()) {
        request = match checked_form(&state, request, &session).await {
            Ok((request, reservation)) => {
                _form_reservation = Some(reservation);
                request
            }
            Err(error) => return error.into_response(),
        };
    }
    request.extensions_mut().insert(session);
    let mut response = next.run(request).await;
    if let Some(cookie) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The unexpired session the request's cookie names, if its token is still
/// accepted (or the API is open).
async fn current_session(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<Option<Session>, ConsoleError> {
    let Some(id) = session_id(headers) else {
        return Ok(None);
    };
    let id_sha256: [u8; 32] = Sha256::digest(id.as_bytes()).into();
    let Some(stored) = state.store.console_session(&id_sha256).await? else {
        return Ok(None);
    };
    let token_still_accepted = match stored.token_sha256.as_deref().map(<[u8; 32]>::try_from) {
        Some(Ok(token)) => state.tokens.accepts_digest(&token),
        Some(Err(_)) => false,
        None => state.tokens.is_open(),
    };
    Ok(token_still_accepted.then_some(Session {
        id_sha256,
        csrf_token: stored.csrf_token,
    }))
}

/// The session id the request's cookie carries.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// Opens a session for the token whose digest is `token_sha256` (`None` on
/// an open API); returns it with the `Set-Cookie` that hands it over.
async fn open_session(
    state: &ApiState,
    token_sha256: Option<[u8; 32]>,
) -> Result<(Session, HeaderValue), ConsoleError> {
    let id = random_hex();
    let csrf_token = random_hex();
    let id_sha256: [u8; 32] = Sha256::digest(id.as_bytes()).into();
    state
        .store
        .create_console_session(
            &id_sha256,
            token_sha256.as_ref(),
            &csrf_token,
            SESSION_LIFETIME,
        )
        .await?;
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    let cookie = HeaderValue::from_str(&cookie).expect("hex digits are a valid header");
    Ok((
        Session {
            id_sha256,
            csrf_token,
        },
        cookie,
    ))
}

/// 32 random bytes as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    hex::encode(bytes)
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Where a request without a session goes: a page to the login form; a
/// form post gets 401, as re-sending it after login would act twice.
fn logged_out(method: &Method) -> Response {
    if is_read(method) {
        Redirect::to("/ui/login").into_response()
    } else {
        ConsoleError::new(
            StatusCode::UNAUTHORIZED,
            "Your session has ended. Log in again, then repeat the action.",
        )
        .into_response()
    }
}

/// The request with its form read ([`read_form`]), if the form carries the
/// session's CSRF token and no browser marked it cross-site; the body is
/// handed on unchanged, with the form's share of the request budget.
async fn checked_form(
    state: &ApiState,
    request: Request,
    session: &Session,
) -> Result<(Request, Reservation), ConsoleError> {
    refuse_cross_site(request.headers())?;
    let (parts, body) = request.into_parts();
    let (bytes, reservation) = read_form(state, &parts.headers, body).await?;
    let sent = form_urlencoded::parse(&bytes)
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if !constant_time_eq(sent.as_bytes(), session.csrf_token.as_bytes()) {
        return Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "This form is missing its CSRF token or has an old one. Reload the page and try again.",
        ));
    }
    Ok((Request::from_parts(parts, Body::from(bytes)), reservation))
}

/// Reads a console form's body as the API reads its own (`api::body::read`):
/// at most [`FORM_MAX_BYTES`] (a larger declared length is refused before a
/// byte is read), from the memory budget every request in flight shares
/// (`--max-request-bytes-in-flight`), within `--request-body-timeout`. The
/// caller holds the [`Reservation`] until its answer is ready.
async fn read_form(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Reservation), ConsoleError> {
    Ok(crate::api::body::read(&state.budget, headers, body, FORM_MAX_BYTES, 1).await?)
}

/// Refuses a request a browser says came from another site.
fn refuse_cross_site(headers: &HeaderMap) -> Result<(), ConsoleError> {
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        Some(b"cross-site") => Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "The console accepts forms only from its own pages.",
        )),
        _ => Ok(()),
    }
}

/// The login form, or the overview when the API is open.
pub async fn login_page(State(state): State<ApiState>) -> Response {
    if state.tokens.is_open() {
        return Redirect::to("/ui").into_response();
    }
    render(StatusCode::OK, &Login { refused: false })
}

/// `POST /ui/login`: a session for an accepted token (the form's `token`).
pub async fn log_in(
    State(state): State<ApiState>,
    request: Request,
) -> Result<Response, ConsoleError> {
    refuse_cross_site(request.headers())?;
    let (parts, body) = request.into_parts();
    let (form, _reservation) = read_form(&state, &parts.headers, body).await?;
    let token = form_urlencoded::parse(&form)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let token = token.trim();
    if !state.tokens.is_open() && !state.tokens.accepts(token) {
        return Ok(render(StatusCode::UNAUTHORIZED, &Login { refused: true }));
    }
    let token_sha256 = (!state.tokens.is_open()).then(|| digest(token));
    let (_, cookie) = open_session(&state, token_sha256).await?;
    let mut response = Redirect::to("/ui").into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `POST /ui/logout`: ends the session and forgets the cookie.
pub async fn log_out(
    State(state): State<ApiState>,
    axum::Extension(session): axum::Extension<Session>,
) -> Result<Response, ConsoleError> {
    state
        .store
        .delete_console_session(&session.id_sha256)
        .await?;
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("a valid header"),
    );
    Ok(response)
}
