//! Why an attempt failed, precisely: [`classify`] turns what wasmtime
//! reports into a [`Failure`] of the job domain (`job/failure.rs`).

use std::fmt::Write as _;

use wasmtime::component::ResourceTableError;

use super::MAX_ERROR_MESSAGE_BYTES;
use super::capture::{CapturedLog, LogSource, PANIC_REPORT_BYTES};
use super::resources::RESOURCE_BYTES;
use crate::job::{Failure, FailureKind};

/// Why the host interrupted the guest; raised from the epoch callback and
/// recognised again when the trap comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Interrupted {
    #[error("the attempt exceeded its wall-clock limit")]
    Timeout,
    #[error("the worker lost the job's lease")]
    LeaseLost,
}

/// The guest asked for more memory than its limit; raised by the store's
/// resource limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("memory limit exceeded: the guest asked for {desired} bytes, the limit is {limit}")]
pub(super) struct MemoryLimitExceeded {
    pub desired: usize,
    pub limit: usize,
}

/// Turns an error from instantiating or calling the guest into a [`Failure`].
pub(super) fn classify(
    error: &wasmtime::Error,
    log: &CapturedLog,
    timeout_ms: u64,
    fuel: u64,
) -> Failure {
    if let Some(interrupted) = error.downcast_ref::<Interrupted>() {
        return match interrupted {
            Interrupted::Timeout => Failure::new(
                FailureKind::Timeout,
                format!("the attempt exceeded its wall-clock limit of {timeout_ms} ms"),
            ),
            Interrupted::LeaseLost => Failure::new(FailureKind::LeaseLost, interrupted.to_string()),
        };
    }
    if let Some(exceeded) = error.downcast_ref::<MemoryLimitExceeded>() {
        return Failure::new(FailureKind::MemoryLimit, exceeded.to_string());
    }
    if let Some(ResourceTableError::Full) = error.downcast_ref::<ResourceTableError>() {
        return Failure::new(
            FailureKind::MemoryLimit,
            format!(
                "the guest held more host resources (streams, header maps, requests…) at once \
                 than its memory limit allows, at {} KiB each",
                RESOURCE_BYTES / 1024
            ),
        );
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Failure::new(
            FailureKind::FuelExhausted,
            format!("the attempt used up its fuel budget of {fuel}"),
        ),
        Some(wasmtime::Trap::StackOverflow) => Failure::new(
            FailureKind::StackOverflow,
            "the guest overflowed its WebAssembly stack",
        ),
        Some(wasmtime::Trap::MemoryOutOfBounds) if is_shadow_stack_overflow(error) => Failure::new(
            FailureKind::StackOverflow,
            "the guest overflowed its stack in linear memory (its stack pointer wrapped below \
             address 0); a Rust guest's stack is 1 MiB unless linked with `-z stack-size`",
        ),
        Some(wasmtime::Trap::UnreachableCodeReached) => match panic_message(log) {
            // A panic is a bug in the task: running it again will not help.
            Some(message) => Failure {
                kind: FailureKind::Panic,
                message,
                retryable: false,
            },
            None => Failure::new(FailureKind::Trap, trap_message(error)),
        },
        _ => Failure::new(FailureKind::Trap, trap_message(error)),
    }
}

/// Whether an out-of-bounds access hit the top 64 KiB of the 4 GiB address
/// space: what happens when a guest whose stack lives in linear memory (as
/// Rust's and C's do) pushes its stack pointer below zero.
///
/// wasmtime reports the faulting address only in the text of one of the
/// error's causes (`memory fault at wasm address 0x…`), and only for faults
/// caught by the guard pages: a bulk-memory instruction (`memory.fill`) that
/// runs off the end traps without an address and stays a plain `trap`. If a
/// wasmtime upgrade changes the wording, these faults degrade to plain
/// `trap`s too (the `deep_stack` integration test accepts either).
fn is_shadow_stack_overflow(error: &wasmtime::Error) -> bool {
    const PREFIX: &str = "memory fault at wasm address 0x";
    error.chain().any(|cause| {
        let text = cause.to_string();
        text.strip_prefix(PREFIX)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|address| (0xFFFF_0000..=0xFFFF_FFFF).contains(&address))
    })
}

/// The panic report a Rust guest left before aborting: the SDK's hook's
/// line, kept apart from the log for this ([`CapturedLog::panic_report`]),
/// or else, from Rust's default hook, the stderr line containing "panicked
/// at" and the stderr lines after it, if the log's bound kept them.
fn panic_message(log: &CapturedLog) -> Option<String> {
    if let Some(report) = &log.panic_report {
        return Some(report.clone());
    }
    let start = log.lines.iter().position(|line| {
        line.source == LogSource::Stderr && line.message.contains("panicked at")
    })?;
    let source = log.lines[start].source;
    let message = log.lines[start..]
        .iter()
        .filter(|line| line.source == source)
        .map(|line| line.message.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    Some(Capped::cut(message, PANIC_REPORT_BYTES))
}

/// The error and its causes on one line (wasmtime puts the trap reason and
/// the guest backtrace in the chain), at most [`MAX_ERROR_MESSAGE_BYTES`].
/// The backtrace names the guest's functions from its own name section,
/// each up to 100,000 bytes, in up to 20 frames: formatting stops at the
/// limit instead of building megabytes and cutting them.
fn trap_message(error: &wasmtime::Error) -> String {
    let mut message = Capped::new(MAX_ERROR_MESSAGE_BYTES);
    // An error here only means the limit was reached.
    let _ = write!(message, "{error:#}");
    message.text
}

/// Text written to it up to `limit` bytes, cut at a character boundary;
/// writing past the limit stops the formatting.
pub(super) struct Capped {
    text: String,
    limit: usize,
}

impl Capped {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            text: String::new(),
            limit,
        }
    }

    /// `text` cut to `limit` bytes, in place: a text within the limit
    /// (most are) is returned as it came, not copied.
    pub(super) fn cut(mut text: String, limit: usize) -> String {
        text.truncate(text.floor_char_boundary(limit));
        text
    }
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let room = self.limit - self.text.len();
        if text.len() <= room {
            self.text.push_str(text);
            return Ok(());
        }
        self.text.push_str(&text[..text.floor_char_boundary(room)]);
        Err(std::fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::bindings::Level;
    use crate::sandbox::capture::{LogCapture, LogLine};

    fn line(source: LogSource, message: &str) -> LogLine {
        LogLine {
            source,
            level: None,
            message: message.to_owned(),
        }
    }

    #[test]
    fn a_trap_message_stops_at_the_limit_whatever_the_guest_named_its_functions() {
        let name = "é".repeat(300_000);
        let error = wasmtime::Error::msg(format!("wasm backtrace: 0: {name}"))
            .context("error while executing at wasm backtrace");
        let failure = classify(&error, &CapturedLog::default(), 1, 1);
        assert!(
            failure.message.len() <= MAX_ERROR_MESSAGE_BYTES
                && failure.message.len() > MAX_ERROR_MESSAGE_BYTES - 4,
            "a {} byte message",
            failure.message.len()
        );
        assert!(failure.message.starts_with("error while executing"));
    }

    #[test]
    fn finds_a_panic_reported_on_stderr_by_rusts_default_hook() {
        let log = CapturedLog {
            lines: vec![
                line(LogSource::Stdout, "working"),
                line(
                    LogSource::Stderr,
                    "thread '<unnamed>' panicked at src/lib.rs:7:5:",
                ),
                line(LogSource::Stdout, "unrelated"),
                line(LogSource::Stderr, "index out of bounds"),
            ],
            ..CapturedLog::default()
        };
        assert_eq!(
            panic_message(&log).as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:7:5:\nindex out of bounds")
        );
    }

    #[test]
    fn recognises_a_fault_at_the_top_of_the_address_space_as_a_stack_overflow() {
        let fault = |address: &str| {
            wasmtime::Error::msg(format!(
                "memory fault at wasm address {address} in linear memory of size 0x110000"
            ))
            .context("error while executing at wasm backtrace")
        };
        assert!(is_shadow_stack_overflow(&fault("0xfffffff0")));
        assert!(
            !is_shadow_stack_overflow(&fault("0x200000")),
            "an ordinary out-of-bounds access"
        );
        assert!(!is_shadow_stack_overflow(&wasmtime::Error::msg(
            "out of bounds memory access"
        )));
    }

    #[test]
    fn finds_a_panic_reported_by_the_sdk_hook_and_nothing_when_there_is_none() {
        let capture = LogCapture::new(1024);
        capture.log(Level::Info, "the task logs that it panicked at noon");
        capture.log(Level::Error, "panicked at src/lib.rs:3:9: boom");
        assert_eq!(
            panic_message(&capture.finish()).as_deref(),
            Some("panicked at src/lib.rs:3:9: boom")
        );

        // A line that mentions a panic, then the guest goes on and aborts
        // for another reason: not a panic.
        let capture = LogCapture::new(1024);
        capture.log(Level::Info, "the worker panicked at noon");
        capture.write(LogSource::Stdout, b"working\n");
        assert_eq!(panic_message(&capture.finish()), None);
        let capture = LogCapture::new(1024);
        capture.log(Level::Info, "the worker panicked at noon");
        capture.log(Level::Info, "and then recovered");
        assert_eq!(panic_message(&capture.finish()), None);
    }

    #[test]
    fn a_panic_report_is_kept_when_the_log_is_full() {
        let capture = LogCapture::new(256);
        capture.log(Level::Info, &"x".repeat(300));
        let report = format!("panicked at src/lib.rs:3:9: {}", "y".repeat(5000));
        capture.log(Level::Error, &report);
        let log = capture.finish();
        assert!(log.lines.is_empty(), "the bound dropped both lines");
        let message = panic_message(&log).unwrap();
        assert!(
            message.starts_with("panicked at src/lib.rs:3:9: yyy"),
            "{message}"
        );
        assert!(message.len() <= PANIC_REPORT_BYTES, "{}", message.len());
    }
}
