//! Downloads a URL and reports its size and SHA-256.
//!
//! Input `{"url"}` → output `{"status", "size", "sha256"}` (hex). The body
//! is hashed as it arrives, so its size is bounded only by the queue's
//! limits, not by the task's memory. Any status is a result, not an error:
//! a 404 is reported as `"status": 404` with the digest of its body. The
//! queue must allow the URL's host.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use taskflow_sdk::http::{self, HttpError};
use taskflow_sdk::{TaskError, task};

#[derive(Deserialize)]
struct Fetch {
    url: String,
}

#[derive(Debug, PartialEq, Serialize)]
struct Fetched {
    status: u16,
    size: u64,
    sha256: String,
}

#[task]
fn fetch(request: Fetch) -> Result<Fetched, TaskError> {
    let mut response = http::get(&request.url)?;
    let status = response.status();
    let (size, sha256) = digest(|| response.chunk())?;
    taskflow_sdk::log::info!("status {status}, {size} bytes");
    Ok(Fetched {
        status,
        size,
        sha256,
    })
}

/// Size and hex SHA-256 of a body read with `next_chunk` until it returns
/// `None`, one chunk in memory at a time.
fn digest(
    mut next_chunk: impl FnMut() -> Result<Option<Vec<u8>>, HttpError>,
) -> Result<(u64, String), HttpError> {
    let mut hasher = Sha256::new();
    let mut size = 0;
    while let Some(chunk) = next_chunk()? {
        hasher.update(&chunk);
        size += chunk.len() as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_a_body_across_chunks() {
        let mut chunks = vec![b"a".to_vec(), Vec::new(), b"bc".to_vec()].into_iter();
        let (size, sha256) = digest(|| Ok(chunks.next())).unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn outside_a_task_the_request_fails() {
        let error = fetch(Fetch {
            url: "https://example.com/".into(),
        })
        .unwrap_err();
        assert!(error.message().starts_with("no TaskFlow host"), "{error}");
    }
}
