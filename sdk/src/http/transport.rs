//! Sending a request over wasi:http/outgoing-handler, blocking.

use super::url::{Scheme, Url};
use super::{HttpError, Method, Response};
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, OutgoingBody, OutgoingRequest,
    Scheme as WasiScheme,
};
use crate::bindings::wasi::io::error::Error as IoError;
use crate::bindings::wasi::io::streams::{InputStream, StreamError};

/// The most written per `blocking-write-and-flush`, which accepts at most
/// 4096 bytes at a time.
const WRITE_CHUNK: usize = 4096;

/// The most read per `blocking-read`.
const READ_CHUNK: u64 = 64 << 10;

/// Sends a request and waits for the response's status and headers.
pub(crate) fn send(
    method: &Method,
    url: &Url,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Result<Response, HttpError> {
    if !cfg!(target_arch = "wasm32") {
        return Err(HttpError::no_host());
    }
    let shown = url.without_query();
    let request = build_request(method, url, headers, &shown)?;
    let outgoing = request
        .body()
        .map_err(|()| other(&shown, "the request body was already taken"))?;
    let future = outgoing_handler::handle(request, None)
        .map_err(|code| HttpError::from_code(code, &shown))?;
    if let Err(error) = write_body(outgoing, body, &shown) {
        // The response's error, if any, says more: a refused or oversized body.
        return Err(wait(&future, &shown).err().unwrap_or(error));
    }
    let response = wait(&future, &shown)?;
    let status = response.status();
    let headers = response.headers().entries();
    let body = Body::open(&response, &shown)?;
    Ok(Response::new(status, headers, shown, body))
}

fn build_request(
    method: &Method,
    url: &Url,
    headers: &[(String, Vec<u8>)],
    shown: &str,
) -> Result<OutgoingRequest, HttpError> {
    let invalid = |reason: String| HttpError::InvalidRequest {
        url: shown.to_owned(),
        reason,
    };
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value)
            .map_err(|error| invalid(format!("header {name}: {error}")))?;
    }
    let request = OutgoingRequest::new(fields);
    request
        .set_method(method)
        .map_err(|()| invalid(format!("method {method:?}")))?;
    let scheme = match url.scheme {
        Scheme::Http => WasiScheme::Http,
        Scheme::Https => WasiScheme::Https,
    };
    request
        .set_scheme(Some(&scheme))
        .and_then(|()| request.set_authority(Some(&url.authority)))
        .and_then(|()| request.set_path_with_query(Some(&url.path_with_query)))
        .map_err(|()| invalid("the host refused the URL".into()))?;
    Ok(request)
}

/// Writes the whole body and finishes it. On error the body is dropped
/// unfinished, which aborts the request.
fn write_body(body: OutgoingBody, bytes: &[u8], shown: &str) -> Result<(), HttpError> {
    let stream = body
        .write()
        .map_err(|()| other(shown, "the request body stream was already taken"))?;
    for chunk in bytes.chunks(WRITE_CHUNK) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|error| match error {
                StreamError::Closed => HttpError::Connection {
                    url: shown.to_owned(),
                    reason: "the connection closed while sending the body".into(),
                },
                StreamError::LastOperationFailed(error) => stream_failure(&error, shown),
            })?;
    }
    // The stream is the body's child: it must go before the body finishes.
    drop(stream);
    OutgoingBody::finish(body, None).map_err(|code| HttpError::from_code(code, shown))
}

fn wait(future: &FutureIncomingResponse, shown: &str) -> Result<IncomingResponse, HttpError> {
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(code))) => Err(HttpError::from_code(code, shown)),
        Some(Err(())) | None => Err(other(shown, "the response was lost")),
    }
}

/// A response body being read.
pub(crate) struct Body {
    // Fields drop in order: the stream is the body's child and must go first.
    /// `None` once the stream has ended.
    stream: Option<InputStream>,
    _body: IncomingBody,
}

impl Body {
    fn open(response: &IncomingResponse, shown: &str) -> Result<Self, HttpError> {
        let lost = || other(shown, "the response body was already taken");
        let body = response.consume().map_err(|()| lost())?;
        let stream = body.stream().map_err(|()| lost())?;
        Ok(Self {
            stream: Some(stream),
            _body: body,
        })
    }

    /// The next chunk, or `None` once the stream is closed.
    pub(crate) fn read(&mut self, shown: &str) -> Result<Option<Vec<u8>>, HttpError> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => return Ok(Some(bytes)),
                Err(StreamError::Closed) => {
                    self.stream = None;
                    return Ok(None);
                }
                Err(StreamError::LastOperationFailed(error)) => {
                    return Err(stream_failure(&error, shown));
                }
            }
        }
    }
}

/// The HTTP error behind a failed stream operation.
fn stream_failure(error: &IoError, shown: &str) -> HttpError {
    match crate::bindings::wasi::http::types::http_error_code(error) {
        Some(code) => HttpError::from_code(code, shown),
        None => HttpError::Connection {
            url: shown.to_owned(),
            reason: error.to_debug_string(),
        },
    }
}

fn other(shown: &str, reason: &str) -> HttpError {
    HttpError::Other(format!("request to {shown}: {reason}"))
}
