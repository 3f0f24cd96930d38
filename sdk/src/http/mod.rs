//! A small blocking HTTP client, over the host's `wasi:http/outgoing-handler`.
//!
//! ```no_run
//! use serde::Deserialize;
//! use taskflow_sdk::{TaskError, http};
//!
//! #[derive(Deserialize)]
//! struct Rate { eur: f64 }
//!
//! fn rate() -> Result<f64, TaskError> {
//!     let rate: Rate = http::get("https://rates.example.com/usd")?.error_for_status()?.json()?;
//!     Ok(rate.eur)
//! }
//!
//! fn notify(token: &taskflow_sdk::Secret) -> Result<(), TaskError> {
//!     http::post("https://chat.example.com/api/messages")
//!         .header("authorization", format!("Bearer {token}"))
//!         .json(&serde_json::json!({ "text": "report ready" }))
//!         .send()?
//!         .error_for_status()?;
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! A task reaches only the hosts its queue allows, within the queue's
//! limits on requests, bytes and time; every request is recorded on the
//! attempt. A request the queue does not allow fails with
//! [`HttpError::Denied`].
//!
//! `?` turns an [`HttpError`] into a [`TaskError`](crate::TaskError) of the
//! right kind: timeouts, connection failures and 5xx/408/429 statuses are
//! retryable; denied requests, invalid URLs, size limits and other 4xx
//! statuses are fatal. Outside WebAssembly (a task's unit tests) there is no
//! host, and every request fails with [`HttpError::Other`].

mod error;
mod response;
mod transport;
mod url;

use serde::Serialize;

pub use crate::bindings::wasi::http::types::Method;
pub use error::HttpError;
pub use response::Response;
use url::Url;

/// Sends a GET request to `url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    request(Method::Get, url).send()
}

/// Starts a POST request to `url`; finish it with [`RequestBuilder::send`].
pub fn post(url: &str) -> RequestBuilder {
    request(Method::Post, url)
}

/// Starts a PUT request to `url`; finish it with [`RequestBuilder::send`].
pub fn put(url: &str) -> RequestBuilder {
    request(Method::Put, url)
}

/// Starts a DELETE request to `url`; finish it with [`RequestBuilder::send`].
pub fn delete(url: &str) -> RequestBuilder {
    request(Method::Delete, url)
}

/// Starts a request with any method; finish it with [`RequestBuilder::send`].
/// `url` must be an absolute `http://` or `https://` URL.
pub fn request(method: Method, url: &str) -> RequestBuilder {
    RequestBuilder {
        method,
        url: Url::parse(url),
        headers: Vec::new(),
        body: Vec::new(),
        invalid_body: None,
    }
}

/// A request being built. Nothing is sent until [`send`](Self::send), which
/// also reports any mistake made while building (an invalid URL, a body that
/// is not JSON).
#[derive(Debug)]
#[must_use = "a request is sent only by `send`"]
pub struct RequestBuilder {
    method: Method,
    url: Result<Url, HttpError>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Why `json` could not encode the body.
    invalid_body: Option<String>,
}

impl RequestBuilder {
    /// Adds a header. `value` may be a [`Secret`](crate::Secret), or contain
    /// one (`format!("Bearer {secret}")`): the host puts the secret's value
    /// in its place on the way out.
    pub fn header(mut self, name: &str, value: impl AsRef<str>) -> Self {
        let value = value.as_ref().as_bytes().to_vec();
        self.headers.push((name.to_owned(), value));
        self
    }

    /// Sets the body, sent as is, with its `content-length`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` encoded as JSON, and the `content-type`
    /// header to `application/json` unless it is already set.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => self.body = body,
            Err(error) => self.invalid_body = Some(format!("the body is not valid JSON: {error}")),
        }
        if has_header(&self.headers, "content-type") {
            self
        } else {
            self.header("content-type", "application/json")
        }
    }

    /// Sends the request and waits for the response's status and headers;
    /// the body is read from the [`Response`]. A 4xx or 5xx status is not an
    /// error here: see [`Response::error_for_status`].
    pub fn send(mut self) -> Result<Response, HttpError> {
        self.set_content_length();
        let url = self.url?;
        if let Some(reason) = self.invalid_body {
            let url = url.without_query();
            return Err(HttpError::InvalidRequest { url, reason });
        }
        transport::send(&self.method, &url, &self.headers, &self.body)
    }

    /// The body is known in full: say its length rather than send it
    /// chunked, which some servers refuse (411 Length Required).
    fn set_content_length(&mut self) {
        let carries_body = !self.body.is_empty()
            || matches!(self.method, Method::Post | Method::Put | Method::Patch);
        if carries_body && !has_header(&self.headers, "content-length") {
            let length = self.body.len().to_string().into_bytes();
            self.headers.push(("content-length".into(), length));
        }
    }
}

fn has_header(headers: &[(String, Vec<u8>)], name: &str) -> bool {
    headers
        .iter()
        .any(|(key, _)| key.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::TaskError;

    #[test]
    fn json_sets_the_body_and_the_content_type_once() {
        let request = post("https://example.com/items").json(&[1, 2]);
        assert_eq!(request.body, b"[1,2]");
        assert_eq!(
            request.headers,
            [("content-type".into(), b"application/json".to_vec())]
        );
        let typed = post("https://example.com/items")
            .header("Content-Type", "application/vnd.api+json")
            .json(&[1]);
        assert_eq!(typed.headers.len(), 1);
    }

    #[test]
    fn a_body_is_sent_with_its_length() {
        let headers = |mut request: RequestBuilder| {
            request.set_content_length();
            request.headers
        };
        let length = |value: &[u8]| vec![("content-length".to_owned(), value.to_vec())];
        assert_eq!(
            headers(post("https://example.com/").body("hello")),
            length(b"5")
        );
        assert_eq!(headers(put("https://example.com/")), length(b"0"));
        assert_eq!(headers(request(Method::Get, "https://example.com/")), []);
        let preset = post("https://example.com/").header("Content-Length", "5");
        assert_eq!(headers(preset.body("hello")).len(), 1);
    }

    #[test]
    fn building_mistakes_surface_on_send_as_fatal_errors() {
        let invalid_url = post("example.com/items").send().unwrap_err();
        assert!(matches!(invalid_url, HttpError::InvalidUrl { .. }));
        let keys = BTreeMap::from([(vec![1], 1)]);
        let invalid_body = post("https://example.com/items?key=k").json(&keys).send();
        let error = TaskError::from(invalid_body.unwrap_err());
        assert!(!error.is_retryable());
        assert!(
            error
                .message()
                .starts_with("invalid request to https://example.com/items:")
        );
    }

    #[test]
    fn outside_a_task_requests_fail_with_an_explanation() {
        let error = get("https://example.com/").unwrap_err();
        assert_eq!(error, HttpError::no_host());
        assert!(error.to_string().starts_with("no TaskFlow host"));
    }
}
