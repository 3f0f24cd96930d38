//! A task's input as a client gives it, and the bytes the task receives:
//! JSON compacted in one streaming pass that stops at the limit, or base64
//! refused by its length before it is decoded. No input is ever parsed into
//! a tree.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::field_error::{FieldError, Problem};

/// A task's input as the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobInput {
    /// One JSON value as text; the task receives it compacted, in UTF-8.
    Json(String),
    /// Bytes encoded in standard base64.
    Base64(String),
    /// Bytes as they are.
    Bytes(Vec<u8>),
}

impl JobInput {
    /// The bytes the task receives, refused past `limit` before they are
    /// all produced.
    pub(super) fn into_bytes(self, limit: usize) -> Result<Vec<u8>, FieldError> {
        let too_large = |field: &str| FieldError {
            field: field.to_owned(),
            problem: Problem::InputTooLarge,
            message: format!(
                "over the limit of {limit} bytes; store large data elsewhere and pass a reference"
            ),
        };
        let bytes = match self {
            JobInput::Json(text) => match compact_json(&text, limit) {
                Ok(bytes) => bytes,
                Err(CompactError::TooLarge) => return Err(too_large("input")),
                Err(CompactError::Invalid(error)) => {
                    return Err(FieldError::invalid("input", error.to_string()));
                }
            },
            JobInput::Base64(encoded) => {
                // Four base64 characters hold three bytes: refuse before decoding.
                if encoded.len() / 4 * 3 > limit + 2 {
                    return Err(too_large("input_base64"));
                }
                BASE64.decode(encoded.as_bytes()).map_err(|error| {
                    FieldError::invalid("input_base64", format!("not valid base64 ({error})"))
                })?
            }
            JobInput::Bytes(bytes) => bytes,
        };
        if bytes.len() > limit {
            return Err(too_large("input"));
        }
        Ok(bytes)
    }
}

/// Why a JSON input could not be compacted.
enum CompactError {
    /// It is over the limit.
    TooLarge,
    /// It is not a JSON value serde can read (a number out of range, nesting
    /// past serde's recursion limit).
    Invalid(serde_json::Error),
}

/// `text` (one JSON value) without insignificant whitespace, in one
/// streaming pass that builds no tree and stops once the result would pass
/// `limit` bytes.
fn compact_json(text: &str, limit: usize) -> Result<Vec<u8>, CompactError> {
    let mut output = CappedWriter {
        bytes: Vec::with_capacity(text.len().min(limit)),
        limit,
        overflowed: false,
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let transcoded = serde_transcode::transcode(
        &mut deserializer,
        &mut serde_json::Serializer::new(&mut output),
    )
    .and_then(|()| deserializer.end());
    match transcoded {
        Ok(()) => Ok(output.bytes),
        Err(_) if output.overflowed => Err(CompactError::TooLarge),
        Err(error) => Err(CompactError::Invalid(error)),
    }
}

/// A `Vec<u8>` writer that refuses to grow past `limit`.
struct CappedWriter {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
