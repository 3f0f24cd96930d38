//! What every page shares: the frame around it ([`Chrome`]), rendering with
//! the headers a console page needs ([`render`]), the error page
//! ([`ConsoleError`]), and how numbers, times and payloads are shown.
//! The templates are in host/templates/console/.

use std::time::Duration;

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::api::ApiError;
use crate::store::StoreError;

/// The frame of a page: navigation, the logout form and a notice.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// The session's CSRF token, for every form on the page.
    pub csrf: String,
    /// Whether the API is open (no login, so no logout).
    pub open: bool,
    /// The navigation entry to mark as current.
    pub active: &'static str,
    /// What the last action did, shown once at the top.
    pub notice: Option<String>,
}

impl Chrome {
    /// The same frame with the notice of `done`.
    pub fn with_notice(mut self, done: &Done) -> Self {
        self.notice = done.text();
        self
    }
}

/// The result of an action, carried to the page it redirects to
/// (`?done=retried&count=3&skipped=1`), so reloading that page does not
/// act again. Only known codes are shown: a link cannot make the console
/// display text of its choosing.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Done {
    /// What was done: `retried`, `cancelled`, `paused`, `resumed`.
    pub done: Option<String>,
    /// To how many jobs.
    pub count: Option<u64>,
    /// How many were skipped (not in a state the action applies to).
    pub skipped: Option<u64>,
}

impl Done {
    /// The query string for an action's result.
    pub fn query(done: &str, count: u64, skipped: u64) -> String {
        format!("done={done}&count={count}&skipped={skipped}")
    }

    fn text(&self) -> Option<String> {
        let verb = match self.done.as_deref()? {
            "retried" => "Retried",
            "cancelled" => "Cancelled",
            "paused" => return Some("Queue paused: no worker claims its jobs now.".to_owned()),
            "resumed" => return Some("Queue resumed.".to_owned()),
            _ => return None,
        };
        let count = self.count.unwrap_or(0);
        let mut text = format!("{verb} {count} job{}.", plural(count));
        if let Some(skipped) = self.skipped.filter(|skipped| *skipped > 0) {
            text.push_str(&format!(
                " {skipped} skipped: not in a state that allows it."
            ));
        }
        Some(text)
    }
}

/// An error page, with the status it is served with.
#[derive(Debug, Clone)]
pub struct ConsoleError {
    status: StatusCode,
    message: String,
    /// Seconds after which a retry may succeed (`Retry-After`), as the
    /// API's error said.
    retry_after_secs: Option<u32>,
}

impl ConsoleError {
    /// An error page with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

impl From<ApiError> for ConsoleError {
    fn from(error: ApiError) -> Self {
        Self {
            retry_after_secs: error.retry_after_secs,
            ..Self::new(error.status, error.message)
        }
    }
}

impl From<StoreError> for ConsoleError {
    fn from(error: StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<crate::job::FieldError> for ConsoleError {
    fn from(error: crate::job::FieldError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error.to_string())
    }
}

/// The error page.
#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or("Error"),
            message: &self.message,
        };
        let mut response = render(self.status, &page);
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The login form.
#[derive(Template)]
#[template(path = "console/login.html")]
pub struct Login {
    /// Whether a token was just refused.
    pub refused: bool,
}

/// A page as a response: HTML that may load only the console's own
/// script and style, never be framed, and never be cached.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    let html = match page.render() {
        Ok(html) => html,
        Err(error) => {
            tracing::error!(%error, "a console page failed to render");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response();
        }
    };
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A redirect to `path` (which may have a query) carrying `query` too.
pub fn redirect_with(path: &str, query: &str) -> Response {
    let separator = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{separator}{query}")).into_response()
}

/// `""` or `"s"`.
pub fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// A duration as a person reads it: `850 ms`, `42 s`, `3 min`, `5 h`, `2 d`.
pub fn duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 => format!("{} ms", duration.as_millis()),
        1..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

/// How long ago `time` was, from `now`: `3 min ago`, or `in 5 s`.
pub fn ago(time: DateTime<Utc>, now: DateTime<Utc>) -> String {
    match (now - time).to_std() {
        Ok(past) => format!("{} ago", self::duration(past)),
        Err(_) => format!(
            "in {}",
            self::duration((time - now).to_std().unwrap_or_default())
        ),
    }
}

/// A timestamp to the millisecond, in UTC.
pub fn timestamp(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// A size in bytes, in binary units.
pub fn bytes(size: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if size < 1024 {
        return format!("{size} B");
    }
    let mut value = size as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The first 12 digits of a module hash, as pages show it (the whole hash
/// is in the element's title).
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A job's input or output, shown as it is best read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// JSON, indented.
    Json(String),
    /// UTF-8 text that is not JSON.
    Text(String),
    /// Anything else: a hex dump and base64 of its first bytes.
    Bytes {
        /// Offset and hex of the first 512 bytes, 16 a line.
        hex: String,
        /// Base64 of the preview.
        base64: String,
    },
}

/// Most bytes of a payload a page shows; inputs may be a mebibyte.
pub const PAYLOAD_PREVIEW_BYTES: usize = 16 << 10;

/// A payload prepared for display: at most [`PAYLOAD_PREVIEW_BYTES`] of
/// it, and its whole size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadView {
    /// How it is shown.
    pub shown: Payload,
    /// Its size in bytes.
    pub size: u64,
    /// Whether only its start is shown.
    pub truncated: bool,
}

impl PayloadView {
    /// Prepares `bytes` for display.
    pub fn of(bytes: &[u8]) -> Self {
        let truncated = bytes.len() > PAYLOAD_PREVIEW_BYTES;
        let start = &bytes[..bytes.len().min(PAYLOAD_PREVIEW_BYTES)];
        let json = (!truncated)
            .then(|| serde_json::from_slice::<serde::de::IgnoredAny>(bytes).ok())
            .flatten()
            .and_then(|_| pretty_json(bytes));
        let shown = match (json, std::str::from_utf8(start)) {
            (Some(json), _) => Payload::Json(json),
            (None, Ok(text)) => Payload::Text(text.to_owned()),
            // The preview cut a character short: the text up to it.
            (None, Err(error)) if truncated && error.error_len().is_none() => {
                Payload::Text(String::from_utf8_lossy(&start[..error.valid_up_to()]).into_owned())
            }
            (None, Err(_)) => Payload::Bytes {
                hex: hex_dump(&start[..start.len().min(512)]),
                base64: base64::engine::general_purpose::STANDARD.encode(start),
            },
        };
        Self {
            shown,
            size: bytes.len() as u64,
            truncated,
        }
    }

    /// Its size, readable.
    pub fn size_text(&self) -> String {
        bytes(self.size)
    }
}

/// `json`, valid JSON text, laid out as `serde_json::to_string_pretty` lays
/// out a value, but from the text itself: a payload is shown as the job
/// holds it, keys in their order, a repeated key repeated, numbers as
/// written (a `serde_json::Value` sorted the keys, kept the last of a
/// repeated one and rounded numbers past `f64`).
fn pretty_json(json: &[u8]) -> Option<String> {
    let tokens: Vec<(u8, bool)> = crate::job::input::json_tokens(json).collect();
    let mut pretty = Vec::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let new_line = |pretty: &mut Vec<u8>, depth: usize| {
        pretty.push(b'\n');
        pretty.extend(std::iter::repeat_n(b' ', 2 * depth));
    };
    for (i, &(byte, in_string)) in tokens.iter().enumerate() {
        if in_string {
            pretty.push(byte);
            continue;
        }
        match byte {
            b'{' | b'[' => {
                pretty.push(byte);
                if !matches!(tokens.get(i + 1), Some((b'}' | b']', false))) {
                    depth += 1;
                    new_line(&mut pretty, depth);
                }
            }
            b'}' | b']' => {
                if !matches!(tokens.get(i.wrapping_sub(1)), Some((b'{' | b'[', false))) {
                    depth = depth.saturating_sub(1);
                    new_line(&mut pretty, depth);
                }
                pretty.push(byte);
            }
            b',' => {
                pretty.push(byte);
                new_line(&mut pretty, depth);
            }
            b':' => pretty.extend_from_slice(b": "),
            _ => pretty.push(byte),
        }
    }
    String::from_utf8(pretty).ok()
}

/// 16 bytes a line: offset, hex.
fn hex_dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(line, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("{:08x}  {}", line * 16, hex.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console form that finds no room in the request budget gets the
    /// API's 503 `busy`; its page must keep the `Retry-After` every such
    /// answer carries (README), which it used to drop.
    #[test]
    fn an_error_page_keeps_the_apis_retry_after() {
        let page = ConsoleError::from(ApiError::busy("no room")).into_response();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(page.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn payloads_show_as_json_text_or_bytes() {
        assert_eq!(
            PayloadView::of(br#"{"a":[1,2]}"#).shown,
            Payload::Json("{\n  \"a\": [\n    1,\n    2\n  ]\n}".to_owned())
        );
        assert_eq!(
            PayloadView::of(b"plain words").shown,
            Payload::Text("plain words".to_owned())
        );
        let binary = PayloadView::of(&[0xff, 0x00, 0x10]);
        assert_eq!(
            binary.shown,
            Payload::Bytes {
                hex: "00000000  ff 00 10".to_owned(),
                base64: "/wAQ".to_owned()
            }
        );
        let big = PayloadView::of(&vec![b'a'; PAYLOAD_PREVIEW_BYTES + 1]);
        assert!(big.truncated);
        assert_eq!(big.size, PAYLOAD_PREVIEW_BYTES as u64 + 1);
    }

    /// A payload is shown as the job holds it, laid out as
    /// `serde_json::to_string_pretty` would lay out a value of it.
    #[test]
    fn json_payloads_keep_their_keys_and_numbers_as_written() {
        let held = r#"{"b":1,"a":{},"b":[],"n":18446744073709551616,"z":-0,"s":"x, {y}: \"z\""}"#;
        let expected = "{\n  \"b\": 1,\n  \"a\": {},\n  \"b\": [],\n  \
                        \"n\": 18446744073709551616,\n  \"z\": -0,\n  \"s\": \"x, {y}: \\\"z\\\"\"\n}";
        assert_eq!(
            PayloadView::of(held.as_bytes()).shown,
            Payload::Json(expected.to_owned())
        );
        let nested = br#"[{"a":[1,{"b":null}]},[],"t"]"#;
        let as_serde = serde_json::to_string_pretty(
            &serde_json::from_slice::<serde_json::Value>(nested).unwrap(),
        )
        .unwrap();
        assert_eq!(PayloadView::of(nested).shown, Payload::Json(as_serde));
    }

    #[test]
    fn a_preview_cut_inside_a_character_shows_the_text_before_it() {
        let mut text = "a".repeat(PAYLOAD_PREVIEW_BYTES - 1).into_bytes();
        text.extend_from_slice("é and more".as_bytes());
        let view = PayloadView::of(&text);
        assert!(view.truncated);
        assert_eq!(
            view.shown,
            Payload::Text("a".repeat(PAYLOAD_PREVIEW_BYTES - 1))
        );
    }

    #[test]
    fn notices_show_only_known_actions() {
        let done = |code: &str| Done {
            done: Some(code.to_owned()),
            count: Some(3),
            skipped: Some(1),
        };
        assert_eq!(
            done("retried").text().unwrap(),
            "Retried 3 jobs. 1 skipped: not in a state that allows it."
        );
        assert_eq!(done("<script>").text(), None);
    }

    #[test]
    fn durations_and_sizes_read_as_a_person_would() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_secs(190)), "3 min");
        assert_eq!(duration(Duration::from_secs(2 * 86_400)), "2 d");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
