//! Bounded capture of everything a guest says: `host.log` calls and its
//! stdout and stderr.
//!
//! All three feed one ordered list of lines, so an attempt's log reads in the
//! order the guest wrote it. The list is bounded by bytes: past the bound,
//! lines are counted and dropped, and the guest keeps running. A log flood
//! can neither exhaust the worker's memory nor fail the job.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::Serialize;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::bindings::Level;

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// A `host.log` call.
    Log,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr (where Rust's default panic hook writes; the SDK's
    /// hook logs panics through `host.log` instead).
    Stderr,
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Where it came from.
    pub source: LogSource,
    /// Severity, for `host.log` lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<&'static str>,
    /// The text, without its trailing newline.
    pub message: String,
}

/// The capture of one attempt. Shared by the store data (for `host.log`) and
/// the stdout/stderr streams handed to WASI.
#[derive(Debug)]
pub struct LogCapture {
    state: Mutex<CaptureState>,
}

#[derive(Debug)]
struct CaptureState {
    lines: Vec<LogLine>,
    bytes: usize,
    limit: usize,
    dropped: u32,
    stdout_partial: Partial,
    stderr_partial: Partial,
}

/// An unterminated stdout or stderr line.
#[derive(Debug, Default)]
struct Partial {
    bytes: Vec<u8>,
    /// Whether bytes of this line were already dropped (and counted).
    cut: bool,
}

/// What an attempt said, once it is over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedLog {
    /// Lines kept, in order.
    pub lines: Vec<LogLine>,
    /// Lines dropped past the bound, or cut short by it.
    pub dropped: u32,
}

impl LogCapture {
    /// A capture keeping at most `limit` bytes of text.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(CaptureState {
                lines: Vec::new(),
                bytes: 0,
                limit,
                dropped: 0,
                stdout_partial: Partial::default(),
                stderr_partial: Partial::default(),
            }),
        })
    }

    /// Records a `host.log` call.
    pub fn log(&self, level: Level, message: String) {
        self.lock()
            .push(LogSource::Log, Some(level_name(level)), message);
    }

    /// The guest's stdout, as a WASI stream.
    pub fn stdout(self: &Arc<Self>) -> CaptureStream {
        CaptureStream {
            capture: self.clone(),
            source: LogSource::Stdout,
        }
    }

    /// The guest's stderr, as a WASI stream.
    pub fn stderr(self: &Arc<Self>) -> CaptureStream {
        CaptureStream {
            capture: self.clone(),
            source: LogSource::Stderr,
        }
    }

    /// Ends the capture: flushes unterminated stdout/stderr lines and
    /// returns everything kept.
    pub fn finish(&self) -> CapturedLog {
        let mut state = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            state.end_line(source);
        }
        CapturedLog {
            lines: std::mem::take(&mut state.lines),
            dropped: state.dropped,
        }
    }

    fn write(&self, source: LogSource, bytes: &[u8]) {
        let mut state = self.lock();
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            state.append(source, &rest[..newline]);
            state.end_line(source);
            rest = &rest[newline + 1..];
        }
        state.append(source, rest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CaptureState> {
        // A panic while holding this lock cannot leave the state invalid, so
        // a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl CaptureState {
    fn push(&mut self, source: LogSource, level: Option<&'static str>, message: String) {
        if self.bytes + message.len() > self.limit {
            self.dropped += 1;
            return;
        }
        self.bytes += message.len();
        self.lines.push(LogLine {
            source,
            level,
            message,
        });
    }

    /// Adds bytes to the unterminated line of `source`, but never beyond the
    /// bound: a guest writing one endless line must not grow it forever. A
    /// line cut short counts as one dropped line.
    fn append(&mut self, source: LogSource, bytes: &[u8]) {
        let pending = self.stdout_partial.bytes.len() + self.stderr_partial.bytes.len();
        let room = self.limit.saturating_sub(self.bytes + pending);
        let keep = bytes.len().min(room);
        let cut_now = keep < bytes.len() && !self.partial(source).cut;
        let partial = self.partial(source);
        partial.bytes.extend_from_slice(&bytes[..keep]);
        if cut_now {
            partial.cut = true;
            self.dropped += 1;
        }
    }

    /// Ends the unterminated line of `source` (at a newline or at the end).
    fn end_line(&mut self, source: LogSource) {
        let Partial { bytes, cut } = std::mem::take(self.partial(source));
        if bytes.is_empty() {
            return;
        }
        let message = String::from_utf8_lossy(&bytes).into_owned();
        if cut {
            // Already counted; keep what fit.
            self.bytes += message.len();
            self.lines.push(LogLine {
                source,
                level: None,
                message,
            });
        } else {
            self.push(source, None, message);
        }
    }

    fn partial(&mut self, source: LogSource) -> &mut Partial {
        match source {
            LogSource::Stderr => &mut self.stderr_partial,
            _ => &mut self.stdout_partial,
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// A guest's stdout or stderr, writing into a [`LogCapture`]. Always ready:
/// writes past the bound are accepted and dropped, so a guest never blocks
/// or fails on its output.
#[derive(Debug, Clone)]
pub struct CaptureStream {
    capture: Arc<LogCapture>,
    source: LogSource,
}

/// Largest write permit handed to the guest at once.
const WRITE_PERMIT: usize = 64 * 1024;

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.capture.write(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_sources_in_order_and_splits_lines() {
        let capture = LogCapture::new(1024);
        capture.write(LogSource::Stdout, b"hello ");
        capture.log(Level::Info, "from log".into());
        capture.write(LogSource::Stdout, b"world\nsecond");
        capture.write(LogSource::Stderr, b"oops\n");
        let log = capture.finish();
        let lines: Vec<_> = log
            .lines
            .iter()
            .map(|l| (l.source, l.message.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (LogSource::Log, "from log"),
                (LogSource::Stdout, "hello world"),
                (LogSource::Stderr, "oops"),
                (LogSource::Stdout, "second"),
            ]
        );
        assert_eq!(log.dropped, 0);
    }

    #[test]
    fn drops_and_counts_lines_past_the_bound() {
        let capture = LogCapture::new(10);
        for _ in 0..5 {
            capture.log(Level::Warn, "12345".into());
        }
        let log = capture.finish();
        assert_eq!(log.lines.len(), 2);
        assert_eq!(log.dropped, 3);
    }

    #[test]
    fn an_endless_line_stays_within_the_bound_and_counts_once() {
        let capture = LogCapture::new(100);
        for _ in 0..1000 {
            capture.write(LogSource::Stdout, &[b'x'; 1000]);
        }
        let log = capture.finish();
        assert_eq!(log.lines.len(), 1);
        assert_eq!(log.lines[0].message.len(), 100);
        assert_eq!(log.dropped, 1);
    }
}
