//! Bounded capture of everything a guest says: `host.log` calls and its
//! stdout and stderr.
//!
//! All three feed one ordered list of lines, so an attempt's log reads in the
//! order the guest wrote it. The list is bounded by the bytes it will take
//! once stored: each line costs its message as PostgreSQL's `jsonb` will hold
//! it (escapes included) plus [`LINE_OVERHEAD_BYTES`], so an empty line is not
//! free. Past the bound, lines are counted and dropped, and the guest keeps
//! running. A log flood can neither exhaust the worker's memory nor make the
//! attempt's record too big to store.
//!
//! The capture takes borrowed bytes and copies only what it keeps: the host
//! side of `host.log` hands it the message still in guest memory (a UTF-16
//! guest's transcoded, only if it could fit: `sandbox/guest_str.rs`), and the
//! stdout/stderr streams hand it at most one write permit at a time
//! (`sandbox/streams.rs`).

use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::bindings::Level;
use crate::job::AttemptLog;

/// What one stored line costs beyond its message: the JSON object around it
/// in `job_attempts.logs` (`{"source": "stdout", "level": "debug",
/// "message": ""}` is 50 bytes), rounded up. It is what makes a flood of
/// empty lines hit the bound like any other.
pub const LINE_OVERHEAD_BYTES: usize = 64;

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
    /// The text, without its trailing newline. Never contains NUL, which
    /// PostgreSQL cannot store in text: a guest's NULs become U+FFFD.
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
    /// Stored size of the kept lines, overhead included.
    used: usize,
    limit: usize,
    dropped: u64,
    stdout: Option<Partial>,
    stderr: Option<Partial>,
    /// The SDK's panic report, if the guest's latest line was one
    /// ([`CapturedLog::panic_report`]).
    panic_report: Option<String>,
}

/// How far into a `host.log` line "panicked at" is looked for: the SDK's
/// hook starts its line with it.
const PANIC_MARK_WINDOW: usize = 256;

/// The most of a panic report kept, apart from the log or in the
/// attempt's error message.
pub const PANIC_REPORT_BYTES: usize = 2048;

/// An unterminated stdout or stderr line. Its raw bytes are bounded by the
/// room left in the log, so a guest writing one endless line cannot grow it
/// past the bound.
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
    /// Lines dropped past the bound, or cut short by it. Saturates instead
    /// of overflowing.
    pub dropped: u64,
    /// The SDK's panic report (a `host.log` line saying `panicked at`, cut
    /// at [`PANIC_REPORT_BYTES`]) when it was the last line the guest
    /// completed, kept whether or not the bound kept the line: a panic is
    /// told from any other abort by it (`sandbox/failure.rs`), so a full
    /// log must not turn a panic into a retryable trap, and an earlier line
    /// that merely mentions "panicked at" must not turn a later abort into
    /// a panic.
    pub panic_report: Option<String>,
}

impl CapturedLog {
    /// This log as the attempt record stores it.
    pub fn stored(&self) -> AttemptLog {
        AttemptLog {
            // Lines are plain strings and enums: serializing them cannot fail.
            lines_json: serde_json::to_string(&self.lines).unwrap_or_else(|_| "[]".to_owned()),
            kept: self.lines.len() as u64,
            dropped: self.dropped,
        }
    }
}

impl LogCapture {
    /// A capture keeping at most `limit` stored bytes (see the module docs).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(CaptureState {
                lines: Vec::new(),
                used: 0,
                limit,
                dropped: 0,
                stdout: None,
                stderr: None,
                panic_report: None,
            }),
        })
    }

    /// Records a `host.log` call. `message` may still be in guest memory:
    /// it is copied only if it fits.
    pub fn log(&self, level: Level, message: &str) {
        self.lock()
            .push(LogSource::Log, Some(level_name(level)), message);
    }

    /// The longest `host.log` message that could still be kept, in bytes:
    /// a longer one is dropped whatever it says.
    pub fn room_for_a_message(&self) -> usize {
        self.lock().room().saturating_sub(LINE_OVERHEAD_BYTES)
    }

    /// Records a `host.log` call whose message was longer than
    /// [`LogCapture::room_for_a_message`] and so was not read (a UTF-16
    /// guest's, which reading would transcode: `sandbox/guest_str.rs`). The
    /// line is dropped, and, unread, it is no panic report: only the SDK's
    /// hook writes those, and the SDK's strings are UTF-8.
    pub fn log_unread(&self) {
        let mut state = self.lock();
        state.panic_report = None;
        state.drop_line();
    }

    /// Records bytes the guest wrote to stdout or stderr; lines end at `\n`.
    /// Only the bytes kept are copied.
    pub fn write(&self, source: LogSource, bytes: &[u8]) {
        let mut state = self.lock();
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            state.append(source, &rest[..newline]);
            state.end_line(source);
            // The guest went on after its last host.log line.
            state.panic_report = None;
            rest = &rest[newline + 1..];
        }
        if !rest.is_empty() {
            state.append(source, rest);
        }
    }

    /// Ends the capture: flushes unterminated stdout/stderr lines and
    /// returns everything kept.
    pub fn finish(&self) -> CapturedLog {
        let mut state = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            if state.partial(source).is_some() {
                state.end_line(source);
            }
        }
        CapturedLog {
            lines: std::mem::take(&mut state.lines),
            dropped: state.dropped,
            panic_report: state.panic_report.take(),
        }
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
    /// Keeps a whole line if its stored size fits, counts it dropped if not.
    fn push(&mut self, source: LogSource, level: Option<&'static str>, message: &str) {
        self.panic_report = panic_report(message);
        let room = self.room();
        // `stored_len` is at least the length: a message longer than the room
        // is dropped without reading it.
        if message.len() + LINE_OVERHEAD_BYTES > room
            || stored_len(message) + LINE_OVERHEAD_BYTES > room
        {
            self.drop_line();
            return;
        }
        self.keep(source, level, storable(message));
    }

    /// Adds bytes to the unterminated line of `source`, never beyond the
    /// room left (counting the other stream's pending bytes). A line cut
    /// short counts as one dropped line.
    fn append(&mut self, source: LogSource, bytes: &[u8]) {
        let room = self.room().saturating_sub(LINE_OVERHEAD_BYTES);
        let partial = self.partial(source).get_or_insert_with(Partial::default);
        let keep = bytes.len().min(room);
        partial.bytes.extend_from_slice(&bytes[..keep]);
        if keep < bytes.len() && !partial.cut {
            partial.cut = true;
            self.drop_line();
        }
    }

    /// Ends the line of `source` (at a newline or at the end): keeps as much
    /// of it as fits once decoded and escaped. An empty line is a line.
    fn end_line(&mut self, source: LogSource) {
        let Partial { bytes, cut } = self.partial(source).take().unwrap_or_default();
        let Some(fits) = self.room().checked_sub(LINE_OVERHEAD_BYTES) else {
            if !cut {
                self.drop_line();
            }
            return;
        };
        let mut message = storable(&String::from_utf8_lossy(&bytes));
        if stored_len(&message) > fits {
            // Decoding or escaping made it bigger than the raw bytes that fit:
            // keep what fits, and count the line as cut short.
            truncate_to_stored_len(&mut message, fits);
            if !cut {
                self.drop_line();
            }
        }
        self.keep(source, None, message);
    }

    fn keep(&mut self, source: LogSource, level: Option<&'static str>, message: String) {
        self.used += stored_len(&message) + LINE_OVERHEAD_BYTES;
        self.lines.push(LogLine {
            source,
            level,
            message,
        });
    }

    fn drop_line(&mut self) {
        self.dropped = self.dropped.saturating_add(1);
    }

    /// Stored bytes still free, less the raw bytes of unterminated lines.
    fn room(&self) -> usize {
        let pending = [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .map(|partial| partial.bytes.len())
            .sum::<usize>();
        self.limit.saturating_sub(self.used + pending)
    }

    fn partial(&mut self, source: LogSource) -> &mut Option<Partial> {
        match source {
            LogSource::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        }
    }
}

/// `message`, cut at [`PANIC_REPORT_BYTES`], if its start says "panicked
/// at"; only that much of it is read or copied.
fn panic_report(message: &str) -> Option<String> {
    const MARK: &[u8] = b"panicked at";
    let window = &message.as_bytes()[..message.len().min(PANIC_MARK_WINDOW)];
    if !window.windows(MARK.len()).any(|part| part == MARK) {
        return None;
    }
    Some(storable(
        &message[..message.floor_char_boundary(PANIC_REPORT_BYTES)],
    ))
}

/// Bytes `message` takes inside a JSON string: quotes and backslashes are
/// escaped with one more byte, other control characters as `\u00XX`.
fn stored_len(message: &str) -> usize {
    message
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// `message` as PostgreSQL can store it: text and `jsonb` refuse NUL.
fn storable(message: &str) -> String {
    message.replace('\0', "\u{FFFD}")
}

/// Cuts `message` at a character boundary so its stored size is at most
/// `limit`.
fn truncate_to_stored_len(message: &mut String, limit: usize) {
    let mut size = 0;
    let cut = message
        .char_indices()
        .find(|&(_, c)| {
            size += stored_len(c.encode_utf8(&mut [0; 4]));
            size > limit
        })
        .map_or(message.len(), |(at, _)| at);
    message.truncate(cut);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `lines` take in `job_attempts.logs`, as PostgreSQL would
    /// store them.
    fn stored_bytes(lines: &[LogLine]) -> usize {
        lines
            .iter()
            .map(|line| serde_json::to_string(line).unwrap().len())
            .sum()
    }

    #[test]
    fn interleaves_sources_in_order_and_splits_lines() {
        let capture = LogCapture::new(1024);
        capture.write(LogSource::Stdout, b"hello ");
        capture.log(Level::Info, "from log");
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
        let capture = LogCapture::new(2 * (LINE_OVERHEAD_BYTES + 5) + 3);
        for _ in 0..5 {
            capture.log(Level::Warn, "12345");
        }
        let log = capture.finish();
        assert_eq!(log.lines.len(), 2);
        assert_eq!(log.dropped, 3);
    }

    #[test]
    fn the_room_for_a_message_is_exactly_the_longest_line_kept() {
        let capture = LogCapture::new(LINE_OVERHEAD_BYTES + 10);
        capture.write(LogSource::Stdout, b"abc");
        let room = capture.room_for_a_message();
        assert_eq!(room, 7, "the pending stdout bytes take room too");
        capture.log(Level::Info, &"x".repeat(room + 1));
        capture.log(Level::Info, &"x".repeat(room));
        let log = capture.finish();
        assert_eq!(log.lines.len(), 1);
        assert_eq!(log.lines[0].message.len(), room);
        assert_eq!(
            log.dropped, 2,
            "the longer message, then `abc`: no room left"
        );
        assert_eq!(LogCapture::new(3).room_for_a_message(), 0);
    }

    #[test]
    fn an_unread_message_is_dropped_and_ends_a_panic_report() {
        let capture = LogCapture::new(1024);
        capture.log(Level::Error, "panicked at src/lib.rs:1:1");
        capture.log_unread();
        let log = capture.finish();
        assert_eq!(log.lines.len(), 1);
        assert_eq!(log.dropped, 1);
        assert_eq!(log.panic_report, None);
    }

    #[test]
    fn empty_lines_cost_their_overhead_from_every_source() {
        let limit = 64 << 10;
        let capture = LogCapture::new(limit);
        for _ in 0..100_000 {
            capture.log(Level::Debug, "");
            capture.write(LogSource::Stdout, b"\n");
            capture.write(LogSource::Stderr, b"\n");
        }
        let log = capture.finish();
        assert_eq!(log.lines.len(), limit / LINE_OVERHEAD_BYTES);
        assert_eq!(log.lines.len() as u64 + log.dropped, 300_000);
        assert!(stored_bytes(&log.lines) <= limit);
    }

    #[test]
    fn the_bound_holds_on_stored_bytes_whatever_the_guest_writes() {
        let limit = 4096;
        let nasty: &[&[u8]] = &[
            b"\x01\x02\x03\x04\x05\x06\x07",
            b"\"\\\"\\",
            b"\0\0\0\0",
            b"\xff\xfe\xfd invalid utf-8 \xc3",
            "é😀".as_bytes(),
        ];
        let capture = LogCapture::new(limit);
        for round in 0..2_000 {
            let bytes = nasty[round % nasty.len()];
            capture.write(LogSource::Stdout, bytes);
            capture.write(LogSource::Stderr, bytes);
            if round % 3 == 0 {
                capture.write(LogSource::Stdout, b"\n");
            }
            capture.log(Level::Info, &String::from_utf8_lossy(bytes));
        }
        let log = capture.finish();
        assert!(log.dropped > 0);
        assert!(
            stored_bytes(&log.lines) <= limit,
            "{} stored bytes",
            stored_bytes(&log.lines)
        );
        assert!(log.lines.iter().all(|line| !line.message.contains('\0')));
    }

    #[test]
    fn an_endless_line_stays_within_the_bound_and_counts_once() {
        let capture = LogCapture::new(100 + LINE_OVERHEAD_BYTES);
        for _ in 0..1000 {
            capture.write(LogSource::Stdout, &[b'x'; 1000]);
        }
        let log = capture.finish();
        assert_eq!(log.lines.len(), 1);
        assert_eq!(log.lines[0].message.len(), 100);
        assert_eq!(log.dropped, 1);
    }

    #[test]
    fn the_dropped_count_saturates_instead_of_overflowing() {
        let capture = LogCapture::new(0);
        capture.lock().dropped = u64::MAX - 1;
        for _ in 0..3 {
            capture.log(Level::Info, "x");
        }
        assert_eq!(capture.finish().dropped, u64::MAX);
    }
}
