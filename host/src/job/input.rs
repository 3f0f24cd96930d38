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
    /// It is not a JSON value serde can read (a string with a lone
    /// surrogate, a number past `f64`'s range, nesting past serde's
    /// recursion limit).
    Invalid(serde_json::Error),
}

/// `text` (one JSON value) without insignificant whitespace, refused once
/// the result would pass `limit` bytes. Everything else is kept as the
/// client wrote it: numbers digit for digit (18446744073709551616 stays an
/// integer, 3.14159265358979323846 keeps its digits, -0 stays -0) and
/// strings escape for escape, so the task receives the client's value and
/// not its nearest `f64`.
///
/// Two streaming passes, neither of which builds a tree: serde reads the
/// whole value into a sink (so what it cannot read is refused, as before),
/// then [`strip_whitespace`] copies the text.
fn compact_json(text: &str, limit: usize) -> Result<Vec<u8>, CompactError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_transcode::transcode(
        &mut deserializer,
        &mut serde_json::Serializer::new(std::io::sink()),
    )
    .and_then(|()| deserializer.end())
    .map_err(CompactError::Invalid)?;
    strip_whitespace(text, limit).ok_or(CompactError::TooLarge)
}

/// `json`, known to be valid JSON, without the whitespace between its
/// tokens; `None` once that passes `limit` bytes.
fn strip_whitespace(json: &str, limit: usize) -> Option<Vec<u8>> {
    let mut compact = Vec::with_capacity(json.len().min(limit));
    for (byte, _) in json_tokens(json.as_bytes()) {
        if compact.len() == limit {
            return None;
        }
        compact.push(byte);
    }
    Some(compact)
}

/// The bytes of valid JSON text `json` but the whitespace between its
/// tokens, each with whether it belongs to a string (quotes included).
/// Outside strings, JSON's only whitespace is space, tab, line feed and
/// carriage return; inside them every byte is kept (a quote ends a string
/// unless escaped). The compact form of an input ([`JobInput::into_bytes`]),
/// and what the console lays out again.
pub fn json_tokens(json: &[u8]) -> impl Iterator<Item = (u8, bool)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    json.iter().copied().filter_map(move |byte| {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            Some((byte, true))
        } else if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            None
        } else {
            in_string = byte == b'"';
            Some((byte, in_string))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(text: &str) -> Result<String, String> {
        match compact_json(text, 1 << 10) {
            Ok(bytes) => Ok(String::from_utf8(bytes).unwrap()),
            Err(CompactError::TooLarge) => Err("too large".into()),
            Err(CompactError::Invalid(error)) => Err(error.to_string()),
        }
    }

    #[test]
    fn numbers_and_strings_reach_the_task_as_the_client_wrote_them() {
        assert_eq!(
            compact(
                "{ \"id\" : 18446744073709551616,\n\t\"pi\": 3.14159265358979323846,\r\n \
                 \"z\": -0, \"e\": 1E2, \"big\": -123456789012345678901234567890 }"
            ),
            Ok(r#"{"id":18446744073709551616,"pi":3.14159265358979323846,"z":-0,"e":1E2,"big":-123456789012345678901234567890}"#
                .into())
        );
        assert_eq!(
            compact(r#"[ "a b" , "q\" } { ", "\\", "\u00e9 \n" ]"#),
            Ok(r#"["a b","q\" } { ","\\","\u00e9 \n"]"#.into())
        );
    }

    #[test]
    fn what_serde_cannot_read_is_refused_and_the_limit_holds() {
        for invalid in [r#""\ud800""#, "1e400", "[1,]", "1 2", &"[".repeat(200)] {
            assert!(compact(invalid).is_err(), "{invalid:.20}");
        }
        assert_eq!(
            compact_json("[1, 2]", 5).map_err(|e| matches!(e, CompactError::TooLarge)),
            Ok(b"[1,2]".to_vec())
        );
        assert!(matches!(
            compact_json("[1, 2, 3]", 5),
            Err(CompactError::TooLarge)
        ));
    }
}
