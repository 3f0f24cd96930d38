//! SHA-256 and base64 of a binary payload.
//!
//! Input: any bytes (submit them with `input_base64`) → output
//! `{"size", "sha256", "base64"}`. `base64` is omitted for inputs over
//! 512 KiB, whose encoding would exceed the default output limit.

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use taskflow_sdk::{Bytes, TaskError, task};

/// Largest input whose base64 encoding is returned.
const BASE64_LIMIT: usize = 512 << 10;

#[derive(Debug, PartialEq, Serialize)]
struct Digest {
    size: usize,
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

#[task]
fn digest(payload: Bytes) -> Result<Digest, TaskError> {
    taskflow_sdk::log::debug!("hashing {} bytes", payload.len());
    Ok(Digest {
        size: payload.len(),
        sha256: hex::encode(Sha256::digest(&*payload)),
        base64: (payload.len() <= BASE64_LIMIT)
            .then(|| base64::engine::general_purpose::STANDARD.encode(&*payload)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_encodes() {
        let result = digest(Bytes(b"abc".to_vec())).unwrap();
        assert_eq!(
            result.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(result.base64.as_deref(), Some("YWJj"));
        assert_eq!(result.size, 3);
    }

    #[test]
    fn large_payloads_skip_base64() {
        let result = digest(Bytes(vec![0; BASE64_LIMIT + 1])).unwrap();
        assert_eq!(result.base64, None);
    }
}
