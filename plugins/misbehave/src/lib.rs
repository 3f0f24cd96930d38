//! A task that misbehaves on request, so the host's tests can prove every
//! limit and failure path against a real guest.
//!
//! Input: `{"mode": "...", ...}`; see [`Mode`].

use serde::Deserialize;
use taskflow_sdk::{Bytes, TaskError, task};

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
    /// Fails, not retryably, with a message of `bytes` bytes.
    BigError { bytes: usize },
    /// Logs `lines` lines of `width` characters through `host.log`, and the
    /// same to stdout.
    LogSpam { lines: usize, width: usize },
    /// Sleeps `ms` milliseconds in a host call (WASI), then succeeds.
    Sleep { ms: u64 },
    /// Logs one line at each level through the SDK, one through the `log`
    /// crate facade, and one on stderr, then succeeds.
    LogLevels,
    /// Tries to reach everything a sandbox must deny (files, directories,
    /// environment, arguments, TCP, UDP, name lookup) and reports what
    /// happened, with what the clocks look like.
    Probe,
    /// Burns roughly `iterations` loop iterations, then succeeds with a checksum.
    Burn { iterations: u64 },
    /// Asks the host for the placeholder of a secret whose name is
    /// `name_bytes` control characters (`"k"` if 0), then for an HMAC of
    /// `data_bytes` bytes under that name, straight through the bindings,
    /// and reports each answer's error (cut to 200 characters) and its
    /// length: what a hostile guest could make the host copy or echo.
    SecretCalls {
        name_bytes: usize,
        data_bytes: usize,
    },
    /// Writes `bytes` bytes to stdout in one raw WASI call, ignoring the
    /// permit `check-write` grants (`blocking`: through
    /// `blocking-write-and-flush`, which takes at most 4096), and reports
    /// what the call returned if it did not trap.
    RawWrite { bytes: usize, blocking: bool },
    /// Makes `count` wasi:http header maps holding one `bytes`-byte value
    /// each and never drops them: memory the host holds for the guest,
    /// outside its linear memory. Reports how many it made, and the error
    /// that stopped it if one did without a trap.
    HoardHeaders { count: usize, bytes: usize },
    /// Fills `bytes` bytes of fresh heap and a buffer on its stack with
    /// [`MARK`], then reports how many marks its linear memory holds
    /// (`{"marks": n}`): what proves [`Mode::FindMarks`] finds marks.
    Mark { bytes: usize },
    /// Makes a wasi:http outgoing request (never sent) and sets its method
    /// and its authority to `bytes`-byte names, reporting whether the host
    /// took each: what a guest could make the host keep per request.
    LongRequestNames { bytes: usize },
    /// Asks `wasi:random` for `bytes` random bytes in one raw call, and
    /// reports how many came: what a guest could make the host allocate.
    RandomBytes { bytes: u64 },
    /// Reserves `reserve` bytes of heap without writing them (growing the
    /// memory as a big task would), then reports how many [`MARK`]s its
    /// linear memory holds: any is a previous attempt's.
    FindMarks { reserve: usize },
}

/// A word nothing writes by chance. The code compares with it and writes it
/// as an immediate, so linear memory holds it only where [`Mode::Mark`] put
/// it.
const MARK: u64 = 0x7a5c_f10e_d1e5_0a11;

fn json(value: serde_json::Value) -> Bytes {
    Bytes(serde_json::to_vec(&value).expect("JSON values serialize"))
}

#[task]
fn misbehave(mode: Mode) -> Result<Bytes, TaskError> {
    match mode {
        Mode::Succeed { output } => Ok(json(output.unwrap_or_else(|| serde_json::json!({})))),
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
        Mode::Recurse => Ok(Bytes(recurse(0).to_le_bytes().to_vec())),
        Mode::DeepStack => Ok(Bytes(recurse_with_frames(0).to_le_bytes().to_vec())),
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
                Ok(json(serde_json::json!({ "attempt": attempt })))
            }
        }
        Mode::BigOutput { bytes } => Ok(Bytes(vec![b'x'; bytes])),
        Mode::BigError { bytes } => Err(TaskError::fatal("e".repeat(bytes))),
        Mode::LogSpam { lines, width } => {
            let line = "y".repeat(width);
            for _ in 0..lines {
                taskflow_sdk::log::debug!("{line}");
                println!("{line}");
            }
            Ok(json(serde_json::json!({})))
        }
        Mode::LogLevels => {
            taskflow_sdk::log::trace!("t");
            taskflow_sdk::log::debug!("d");
            taskflow_sdk::log::info!("i");
            taskflow_sdk::log::warn!("w");
            taskflow_sdk::log::error!("e");
            log::warn!("from the facade");
            eprintln!("to stderr");
            Ok(json(serde_json::json!({})))
        }
        Mode::Probe => Ok(json(probe())),
        Mode::Sleep { ms } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(json(serde_json::json!({})))
        }
        Mode::RawWrite { bytes, blocking } => Ok(json(raw_write(bytes, blocking))),
        Mode::HoardHeaders { count, bytes } => Ok(json(hoard_headers(count, bytes))),
        Mode::RandomBytes { bytes } => Ok(json(random_bytes(bytes))),
        Mode::LongRequestNames { bytes } => Ok(json(long_request_names(bytes))),
        Mode::Mark { bytes } => {
            let heap = std::hint::black_box(vec![MARK; bytes / 8]);
            let stack = std::hint::black_box([MARK; 512]);
            let marks = marks_in_memory();
            drop((heap, stack));
            Ok(json(serde_json::json!({ "marks": marks })))
        }
        Mode::FindMarks { reserve } => {
            let reserved = std::hint::black_box(Vec::<u8>::with_capacity(reserve));
            let marks = marks_in_memory();
            drop(reserved);
            Ok(json(serde_json::json!({ "marks": marks })))
        }
        Mode::SecretCalls {
            name_bytes,
            data_bytes,
        } => Ok(json(secret_calls(name_bytes, data_bytes))),
        Mode::Burn { iterations } => {
            let mut hash: u64 = 0xcbf29ce484222325;
            for i in 0..iterations {
                hash = (hash ^ i).wrapping_mul(0x100000001b3);
            }
            Ok(json(serde_json::json!({ "checksum": hash })))
        }
    }
}

fn secret_calls(name_bytes: usize, data_bytes: usize) -> serde_json::Value {
    use taskflow_sdk::bindings::taskflow::task::secrets;
    fn reported<T>(answer: Result<T, String>) -> serde_json::Value {
        let error = answer.err().unwrap_or_default();
        let start: String = error.chars().take(200).collect();
        serde_json::json!({ "error": start, "bytes": error.len() })
    }
    let name = match name_bytes {
        0 => "k".to_owned(),
        bytes => "\u{1}".repeat(bytes),
    };
    let placeholder = reported(secrets::placeholder(&name));
    let data = std::hint::black_box(vec![7u8; data_bytes]);
    let hmac = reported(secrets::hmac_sha256(&name, &data));
    serde_json::json!({ "placeholder": placeholder, "hmac": hmac })
}

/// What each forbidden operation returned: `"denied: <error>"` or
/// `"ALLOWED…"`.
fn probe() -> serde_json::Value {
    fn outcome<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) -> String {
        match result {
            Ok(value) => format!("ALLOWED: {value:?}"),
            Err(error) => format!("denied: {error}"),
        }
    }
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let smallest_step = loop {
        let elapsed = started.elapsed();
        if !elapsed.is_zero() {
            break elapsed;
        }
    };
    serde_json::json!({
        "read_file": outcome(std::fs::read("/etc/passwd").map(|b| b.len())),
        "read_dir": outcome(std::fs::read_dir("/").map(|d| d.count())),
        "write_file": outcome(std::fs::write("/tmp/taskflow-escape", b"x")),
        "env_vars": std::env::vars().count(),
        "args": std::env::args().count(),
        "tcp": outcome(std::net::TcpStream::connect("127.0.0.1:5432").map(|_| ())),
        "udp": outcome(std::net::UdpSocket::bind("127.0.0.1:0").map(|_| ())),
        "dns": outcome(std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(|a| a.count())),
        "wall_clock_sub_ms_nanos": since_epoch.subsec_nanos() % 1_000_000,
        "smallest_monotonic_step_ns": smallest_step.as_nanos() as u64,
    })
}

#[cfg(target_arch = "wasm32")]
fn raw_write(bytes: usize, blocking: bool) -> serde_json::Value {
    let stdout = wasip2::cli::stdout::get_stdout();
    let contents = vec![b'z'; bytes];
    let result = if blocking {
        stdout.blocking_write_and_flush(&contents)
    } else {
        stdout.write(&contents)
    };
    serde_json::json!({ "result": format!("{result:?}") })
}

#[cfg(not(target_arch = "wasm32"))]
fn raw_write(_bytes: usize, _blocking: bool) -> serde_json::Value {
    serde_json::json!({ "result": "not on WASI" })
}

#[cfg(target_arch = "wasm32")]
fn long_request_names(bytes: usize) -> serde_json::Value {
    use wasip2::http::types::{Fields, Method, OutgoingRequest};
    let request = OutgoingRequest::new(Fields::new());
    let method = request.set_method(&Method::Other("M".repeat(bytes)));
    let authority = request.set_authority(Some(&"a".repeat(bytes)));
    serde_json::json!({ "method": method.is_ok(), "authority": authority.is_ok() })
}

#[cfg(not(target_arch = "wasm32"))]
fn long_request_names(_bytes: usize) -> serde_json::Value {
    serde_json::json!({ "method": false, "authority": false })
}

#[cfg(target_arch = "wasm32")]
fn random_bytes(bytes: u64) -> serde_json::Value {
    serde_json::json!({ "len": wasip2::random::random::get_random_bytes(bytes).len() })
}

#[cfg(not(target_arch = "wasm32"))]
fn random_bytes(_bytes: u64) -> serde_json::Value {
    serde_json::json!({ "len": 0 })
}

#[cfg(target_arch = "wasm32")]
fn hoard_headers(count: usize, bytes: usize) -> serde_json::Value {
    let value = vec![b'h'; bytes];
    for made in 0..count {
        let fields = wasip2::http::types::Fields::new();
        if let Err(error) = fields.append("x-hoard", &value) {
            return serde_json::json!({ "made": made, "error": format!("{error:?}") });
        }
        std::mem::forget(fields);
    }
    serde_json::json!({ "made": count })
}

#[cfg(not(target_arch = "wasm32"))]
fn hoard_headers(_count: usize, _bytes: usize) -> serde_json::Value {
    serde_json::json!({ "made": 0, "error": "not on WASI" })
}

/// How many 8-byte-aligned words of the whole linear memory equal
/// [`MARK`], whoever wrote them. Reads raw addresses on purpose: the memory
/// the host handed this attempt is what is being checked, not Rust's objects.
#[cfg(target_arch = "wasm32")]
fn marks_in_memory() -> usize {
    let end = core::arch::wasm32::memory_size(0) * 65536;
    // Address 0 is the null pointer to Rust; the first word is skipped.
    (8..end)
        .step_by(8)
        // SAFETY: every address below the memory's size is mapped and
        // readable in WebAssembly; a volatile read is not optimized away.
        .filter(|&address| unsafe { std::ptr::read_volatile(address as *const u64) } == MARK)
        .count()
}

#[cfg(not(target_arch = "wasm32"))]
fn marks_in_memory() -> usize {
    0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_behaved_modes_work_natively() {
        let out = misbehave(Mode::Succeed {
            output: Some(serde_json::json!({"a": 1})),
        })
        .unwrap();
        assert_eq!(out.0, br#"{"a":1}"#);
        assert_eq!(misbehave(Mode::BigOutput { bytes: 3 }).unwrap().0, b"xxx");
        assert!(
            !misbehave(Mode::FatalError {
                message: "x".into()
            })
            .unwrap_err()
            .is_retryable()
        );
        assert!(
            misbehave(Mode::RetryableError {
                message: "x".into()
            })
            .unwrap_err()
            .is_retryable()
        );
        let parsed: Mode =
            serde_json::from_str(r#"{"mode": "fail_until", "succeed_on": 2}"#).unwrap();
        assert!(
            misbehave(parsed).is_err(),
            "the placeholder context is attempt 1"
        );
    }
}
