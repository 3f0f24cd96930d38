//! A response: status and headers at once, the body as it arrives.

use std::fmt;

use serde::de::DeserializeOwned;

use super::HttpError;
use super::transport::Body;

/// A response whose status and headers have arrived. The body is read on
/// demand: all at once ([`bytes`](Self::bytes), [`text`](Self::text),
/// [`json`](Self::json)) or chunk by chunk ([`chunk`](Self::chunk)), which
/// keeps memory flat for large downloads.
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    /// Without its query: for error messages.
    url: String,
    body: Body,
}

impl Response {
    pub(crate) fn new(
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        url: String,
        body: Body,
    ) -> Self {
        Self {
            status,
            headers,
            url,
            body,
        }
    }

    /// The status code, such as 200 or 404.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The value of header `name` (case-insensitive); repeated headers are
    /// joined with `", "`. `None` when the response has no such header.
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers, name)
    }

    /// `Err(HttpError::Status)` for a 4xx or 5xx status, the response
    /// otherwise; `?` then fails the task, retryably for 5xx, 408 and 429.
    pub fn error_for_status(self) -> Result<Self, HttpError> {
        if self.status >= 400 {
            return Err(HttpError::Status {
                status: self.status,
                url: self.url,
            });
        }
        Ok(self)
    }

    /// The next piece of the body, or `None` at its end. Read a large body
    /// this way to process it without holding all of it:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), taskflow_sdk::http::HttpError> {
    /// let mut response = taskflow_sdk::http::get("https://example.com/big.csv")?;
    /// let mut lines = 0;
    /// while let Some(chunk) = response.chunk()? {
    ///     lines += chunk.iter().filter(|&&byte| byte == b'\n').count();
    /// }
    /// # Ok(()) }
    /// ```
    pub fn chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        self.body.read(&self.url)
    }

    /// The whole body.
    pub fn bytes(mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk()? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The whole body as text; invalid UTF-8 is replaced with `�`.
    pub fn text(self) -> Result<String, HttpError> {
        let bytes = self.bytes()?;
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()))
    }

    /// The whole body, decoded from JSON; a body that does not decode is
    /// [`HttpError::Json`].
    pub fn json<T: DeserializeOwned>(self) -> Result<T, HttpError> {
        let url = self.url.clone();
        let bytes = self.bytes()?;
        serde_json::from_slice(&bytes).map_err(|error| HttpError::Json {
            url,
            reason: error.to_string(),
        })
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The values of header `name`, joined as HTTP allows (RFC 9110, 5.3).
fn header_value(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    let values: Vec<_> = headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| String::from_utf8_lossy(value))
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_case_insensitively_and_joined() {
        let headers = vec![
            ("Content-Type".to_owned(), b"application/json".to_vec()),
            ("vary".to_owned(), b"accept".to_vec()),
            ("Vary".to_owned(), b"origin".to_vec()),
        ];
        assert_eq!(
            header_value(&headers, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            header_value(&headers, "VARY").as_deref(),
            Some("accept, origin")
        );
        assert_eq!(header_value(&headers, "etag"), None);
    }
}
