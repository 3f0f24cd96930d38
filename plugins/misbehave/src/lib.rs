//! A task that misbehaves on request, so the host's tests can prove every
//! limit and failure path against a real guest.
//!
//! Input: `{"mode": "...", ...}`; see [`Mode`].

use serde::Deserialize;
use taskflow_sdk::{Guest, Level, TaskError};

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum Mode {
    /// Returns `output` (any JSON), or `{}`.
    Succeed { output: Option<serde_json::Value> },
    /// Loops forever without allocating (exhausts fuel or time).
    Spin,
    /// Grows memory without bound.
    Allocate,
    /// Recurses without bound, using only the WebAssembly call stack.
    Recurse,
    /// Recurses without bound with big frames, overflowing the stack the
    /// guest keeps in its linear memory.
    DeepStack,
    /// Executes `unreachable`.
    Trap,
    /// Panics with `message`.
    Panic { message: String },
    /// Returns a retryable error.
    RetryableError { message: String },
    /// Returns a non-retryable error.
    FatalError { message: String },
    /// Fails with a retryable error until attempt `succeed_on`, then succeeds
    /// with the attempt number.
    FailUntil { succeed_on: u32 },
    /// Returns `bytes` bytes of output.
    BigOutput { bytes: usize },
    /// Logs `lines` lines of `width` characters through `host.log`, and the
    /// same to stdout.
    LogSpam { lines: usize, width: usize },
    /// Sleeps `ms` milliseconds in a host call (WASI), then succeeds.
    Sleep { ms: u64 },
    /// Burns roughly `iterations` loop iterations, then succeeds with a checksum.
    Burn { iterations: u64 },
}

struct Misbehave;

impl Guest for Misbehave {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, TaskError> {
        let mode: Mode = serde_json::from_slice(&input)
            .map_err(|error| TaskError::fatal(format!("bad input: {error}")))?;
        match mode {
            Mode::Succeed { output } => {
                Ok(serde_json::to_vec(&output.unwrap_or_else(|| serde_json::json!({}))).unwrap())
            }
            Mode::Spin => {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            Mode::Allocate => {
                let mut chunks: Vec<Vec<u8>> = Vec::new();
                loop {
                    chunks.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&chunks);
                }
            }
            Mode::Recurse => Ok(recurse(0).to_le_bytes().to_vec()),
            Mode::DeepStack => Ok(recurse_with_frames(0).to_le_bytes().to_vec()),
            Mode::Trap => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                unreachable!()
            }
            Mode::Panic { message } => panic!("{message}"),
            Mode::RetryableError { message } => Err(TaskError::retry(message)),
            Mode::FatalError { message } => Err(TaskError::fatal(message)),
            Mode::FailUntil { succeed_on } => {
                let attempt = taskflow_sdk::context().attempt;
                if attempt < succeed_on {
                    Err(TaskError::retry(format!(
                        "attempt {attempt} fails on purpose"
                    )))
                } else {
                    Ok(serde_json::to_vec(&serde_json::json!({ "attempt": attempt })).unwrap())
                }
            }
            Mode::BigOutput { bytes } => Ok(vec![b'x'; bytes]),
            Mode::LogSpam { lines, width } => {
                let line = "y".repeat(width);
                for _ in 0..lines {
                    taskflow_sdk::log(Level::Debug, &line);
                    println!("{line}");
                }
                Ok(b"{}".to_vec())
            }
            Mode::Sleep { ms } => {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(b"{}".to_vec())
            }
            Mode::Burn { iterations } => {
                let mut hash: u64 = 0xcbf29ce484222325;
                for i in 0..iterations {
                    hash = (hash ^ i).wrapping_mul(0x100000001b3);
                }
                Ok(serde_json::to_vec(&serde_json::json!({ "checksum": hash })).unwrap())
            }
        }
    }
}

// Unbounded on purpose: the host must stop it with `stack_overflow`. The
// rotate-then-xor keeps LLVM from turning the recursion into a loop.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    recurse(depth + 1).rotate_left(1) ^ depth
}

// Like `recurse`, but each frame holds an array in linear memory.
#[allow(unconditional_recursion)]
fn recurse_with_frames(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 16]);
    recurse_with_frames(depth + 1) + frame[3]
}

taskflow_sdk::export_task!(Misbehave);
