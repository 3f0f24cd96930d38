//! The record of every outbound request an attempt made ([`RequestRecord`]),
//! kept with the attempt: what was sent where, what came back, and what was
//! refused. Never a header, a query string or a body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::sandbox::failure::Capped;

/// The most bytes of a request's method, URL or reason a record keeps. The
/// guest chooses them (a host name or path of megabytes, a made-up
/// method), and the worker holds the first records of an attempt
/// ([`Audit`]) until it ends: uncut, those held many copies of whatever the
/// guest sent.
pub const MAX_RECORDED_TEXT_BYTES: usize = 1024;

/// `text` as a record keeps it: its first [`MAX_RECORDED_TEXT_BYTES`].
fn recorded(text: impl Into<String>) -> String {
    Capped::cut(text.into(), MAX_RECORDED_TEXT_BYTES)
}

/// One outbound request, as the attempt record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// `GET`, `POST`, …
    pub method: String,
    /// `scheme://host:port/path`: the query string is dropped (it often
    /// carries tokens); cut to [`MAX_RECORDED_TEXT_BYTES`], as are the
    /// method and the reason.
    pub url: String,
    /// The response status, when one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed, when it did: `denied`, `timeout`, `dns_error`,
    /// `connection_failed`, `tls_error`, `request_too_large`,
    /// `response_too_large`, `protocol_error`, `aborted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was refused or failed, for a person (which rule denied it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the host refused to send it.
    pub denied: bool,
    /// Request body bytes sent.
    pub bytes_out: u64,
    /// Response body bytes received.
    pub bytes_in: u64,
    /// From the request to the end of its response body (or its failure),
    /// in milliseconds.
    pub duration_ms: f64,
}

/// How one request went, filled in while it is in flight: the hook, the
/// request body and the response body each update it.
#[derive(Debug)]
pub(super) struct RequestMeter {
    started: Instant,
    record: Mutex<RequestRecord>,
    pub(super) bytes_out: Arc<AtomicU64>,
    pub(super) bytes_in: Arc<AtomicU64>,
    ended_ms: Mutex<Option<f64>>,
}

impl RequestMeter {
    /// Marks the request refused by the host.
    pub(super) fn deny(&self, reason: impl Into<String>) {
        let mut record = self.lock();
        record.denied = true;
        record.error = Some("denied".into());
        record.reason = Some(recorded(reason));
        drop(record);
        self.end();
    }

    /// Marks it failed with `error` (see [`RequestRecord::error`]).
    pub(super) fn fail(&self, error: &str, reason: impl Into<String>) {
        let mut record = self.lock();
        if record.error.is_none() {
            record.error = Some(error.into());
            record.reason = Some(recorded(reason));
        }
        drop(record);
        self.end();
    }

    /// Records the response status.
    pub(super) fn responded(&self, status: u16) {
        self.lock().status = Some(status);
    }

    /// Marks the end of the request (its response body read, or its
    /// failure); only the first end counts.
    pub(super) fn end(&self) {
        let mut ended = self.ended_ms.lock().unwrap_or_else(|p| p.into_inner());
        ended.get_or_insert_with(|| self.started.elapsed().as_secs_f64() * 1000.0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RequestRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> RequestRecord {
        let mut record = self.lock().clone();
        record.bytes_out = self.bytes_out.load(Ordering::Relaxed);
        record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let ended = *self.ended_ms.lock().unwrap_or_else(|p| p.into_inner());
        record.duration_ms = ended.unwrap_or_else(|| self.started.elapsed().as_secs_f64() * 1000.0);
        if ended.is_none() && record.error.is_none() && record.status.is_none() {
            record.error = Some("aborted".into());
            record.reason = Some("the attempt ended while the request was in flight".into());
        }
        record
    }
}

/// Every request of one attempt: the first `keep` in full, the rest
/// counted.
#[derive(Debug)]
pub(super) struct Audit {
    keep: usize,
    meters: Mutex<Vec<Arc<RequestMeter>>>,
    dropped: AtomicU64,
}

impl Audit {
    pub(super) fn new(keep: usize) -> Self {
        Self {
            keep,
            meters: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Starts recording a request, its method and URL cut to
    /// [`MAX_RECORDED_TEXT_BYTES`]. Past the bound the meter still works
    /// (the caps need its counts) but is not kept.
    pub(super) fn start(&self, method: &str, url: String) -> Arc<RequestMeter> {
        let meter = Arc::new(RequestMeter {
            started: Instant::now(),
            record: Mutex::new(RequestRecord {
                method: recorded(method),
                url: recorded(url),
                status: None,
                error: None,
                reason: None,
                denied: false,
                bytes_out: 0,
                bytes_in: 0,
                duration_ms: 0.0,
            }),
            bytes_out: Arc::default(),
            bytes_in: Arc::default(),
            ended_ms: Mutex::new(None),
        });
        let mut meters = self.meters.lock().unwrap_or_else(|p| p.into_inner());
        if meters.len() < self.keep {
            meters.push(meter.clone());
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        meter
    }

    /// The records kept, in the order the requests were made, and how many
    /// were not kept.
    pub(super) fn finish(&self) -> (Vec<RequestRecord>, u64) {
        let meters = self.meters.lock().unwrap_or_else(|p| p.into_inner());
        let records = meters.iter().map(|meter| meter.snapshot()).collect();
        (records, self.dropped.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_requests_are_kept_the_rest_counted_and_unfinished_ones_marked_aborted() {
        let audit = Audit::new(2);
        let ok = audit.start("GET", "https://a.example.com:443/x".into());
        ok.bytes_in.store(10, Ordering::Relaxed);
        ok.responded(200);
        ok.end();
        let hanging = audit.start("POST", "https://a.example.com:443/y".into());
        let extra = audit.start("GET", "https://b.example.com:443/".into());
        extra.deny("host not granted");
        let (records, dropped) = audit.finish();
        assert_eq!(dropped, 1);
        assert_eq!(records[0].status, Some(200));
        assert_eq!(records[0].bytes_in, 10);
        assert_eq!(records[0].error, None);
        assert_eq!(records[1].error.as_deref(), Some("aborted"));
        drop(hanging);
    }
}
