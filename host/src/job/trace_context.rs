//! The trace a job belongs to: a W3C Trace Context `traceparent`
//! (<https://www.w3.org/TR/trace-context/#traceparent-header>), stored with
//! the job at submission so that the spans of every process that touches it
//! (telemetry/traces.rs) join one trace.

use std::fmt;

/// Longest `traceparent` value looked at. Version `00` is 55 bytes; a
/// later version may append fields, which are ignored.
const MAX_TRACEPARENT_BYTES: usize = 512;

/// A span a job's spans are children of: the submission's span, or the
/// caller's when the API exports no traces of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace, never all zeros.
    pub trace_id: [u8; 16],
    /// The parent span, never all zeros.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// Length of its `traceparent` text (version `00`).
    pub const TRACEPARENT_BYTES: usize = 55;

    /// Whether the caller recorded its span (and wants this trace sampled).
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Parses a `traceparent` value, or `None` if it is not a valid one.
    ///
    /// The W3C rules: lowercase hex only; a trace or span id of all zeros is
    /// invalid; version `ff` is invalid; a version above `00` is read as
    /// `00` if its first 55 bytes are well formed and followed by the end or
    /// a `-`. An invalid value is ignored, not refused, as the W3C asks of
    /// every receiver: a client's broken tracing must not fail its job.
    pub fn parse_traceparent(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.len() < Self::TRACEPARENT_BYTES || bytes.len() > MAX_TRACEPARENT_BYTES {
            return None;
        }
        let version = hex_bytes::<1>(&bytes[0..2])?[0];
        let exact = bytes.len() == Self::TRACEPARENT_BYTES;
        let extended = bytes[Self::TRACEPARENT_BYTES..].first() == Some(&b'-');
        match version {
            0x00 if !exact => return None,
            0xff => return None,
            0x01..=0xfe if !exact && !extended => return None,
            _ => {}
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let context = Self {
            trace_id: hex_bytes(&bytes[3..35])?,
            span_id: hex_bytes(&bytes[36..52])?,
            flags: hex_bytes::<1>(&bytes[53..55])?[0],
        };
        let all_zeros = |id: &[u8]| id.iter().all(|&byte| byte == 0);
        (!all_zeros(&context.trace_id) && !all_zeros(&context.span_id)).then_some(context)
    }

    /// The trace id as 32 lowercase hex digits, as trace viewers search it.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// The version-`00` `traceparent` value.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

/// `N` bytes from `2 × N` lowercase hex digits.
fn hex_bytes<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N
        || !digits
            .iter()
            .all(|d| matches!(d, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut bytes = [0; N];
    hex::decode_to_slice(digits, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let context = TraceContext::parse_traceparent(VALID).expect("valid");
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            context.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(context.is_sampled());
        assert_eq!(context.to_string(), VALID);
        let unsampled = TraceContext::parse_traceparent(&VALID.replace("-01", "-00")).unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn a_later_version_is_read_as_version_00_and_its_extra_fields_ignored() {
        let later = format!("cc{}-what-comes-next", &VALID[2..]);
        let context = TraceContext::parse_traceparent(&later).expect("readable");
        assert_eq!(context.to_string(), VALID);
    }

    #[test]
    fn invalid_values_are_ignored() {
        let invalid = [
            String::new(),
            VALID[..54].to_owned(),
            format!("{VALID}-"),
            VALID.to_uppercase(),
            VALID.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            VALID.replace("00f067aa0ba902b7", &"0".repeat(16)),
            format!("ff{}", &VALID[2..]),
            format!("01{}x", &VALID[2..]),
            VALID.replacen('-', "_", 1),
            VALID.replace("-01", "-0g"),
            format!("cc{}-{}", &VALID[2..], "x".repeat(MAX_TRACEPARENT_BYTES)),
            // Multi-byte characters where the separators should be.
            format!("00é{}", &VALID[4..]),
        ];
        for value in invalid {
            assert_eq!(TraceContext::parse_traceparent(&value), None, "{value:?}");
        }
    }
}
