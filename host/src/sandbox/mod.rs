//! Runs untrusted task components under hard limits.
//!
//! # Architecture
//!
//! - One [`Sandbox`] per worker, holding one `wasmtime::Engine` configured
//!   for hostile code, one `Linker` with the WASI and TaskFlow imports
//!   (`engine.rs`), a cache of compiled components, and an epoch ticker
//!   thread.
//! - Every compile of a user's component runs in a compiler process, under
//!   a time and a memory limit ([`compiler`]); the API checks uploads with a
//!   [`Compiler`] of its own and runs no guest.
//! - One `TaskPre` (an `InstancePre`: a component whose imports are already
//!   resolved) per module hash, cached in memory, and compiled code cached
//!   on disk in a private directory, each artifact with a keyed MAC
//!   (`cache.rs`, `private_dir.rs`).
//! - One fresh `Store` per attempt, dropped when the attempt ends: nothing a
//!   guest does survives into another attempt.
//!
//! # Limits and how each fails
//!
//! | limit | mechanism | failure kind |
//! |---|---|---|
//! | CPU | fuel, set per attempt, consumed per instruction | `fuel_exhausted` |
//! | wall time | epoch deadline checked every [`EPOCH_TICK`], plus an async timeout around host calls | `timeout` |
//! | memory | resource limiter on the sum of all linear memories, and the pooling allocator's per-memory cap | `memory_limit` |
//! | stack | `max_wasm_stack` | `stack_overflow` |
//! | output | its length checked before it is copied out of guest memory (`output.rs`) | `output_too_large` |
//! | compile | a compiler process per compile: `RLIMIT_DATA`, killed at the timeout, failures remembered | `module_unavailable` |
//! | log | bounded by stored bytes, a fixed overhead per line ([`capture`]); excess lines dropped and counted | (never fails) |
//! | stream writes | a write longer than its stream permits traps before it is copied (`streams.rs`) | `trap` |
//! | capabilities | WASI context granting nothing: no files, environment, arguments, sockets or name lookups | the call fails inside the guest |
//! | clocks | 1 ms resolution; the monotonic clock starts at 0 per attempt ([`clocks`]) | — |
//!
//! # When to use fuel vs. epochs
//!
//! Both are on. Fuel is deterministic: the same input burns the same fuel on
//! any machine, so it is the billable, reproducible CPU budget and is
//! recorded per attempt. It cannot see time spent blocked, and costs more per
//! instruction. Epochs are cheap and measure wall time: a background thread
//! bumps the engine's epoch every [`EPOCH_TICK`] and compiled code checks it
//! at loop headers and function entries, so a guest cannot skip the check.
//! At each tick the store's callback checks the attempt's deadline and its
//! [`RunGrant`] (whether the worker still holds the lease), and yields to the
//! async executor so one busy guest cannot starve the worker's other tasks.
//! Epoch checks do not fire while the guest is blocked in a host call (e.g.
//! a WASI sleep), so the whole attempt also runs under a tokio timeout.
//! The deadline therefore covers everything: guest code and host calls.

pub mod capture;
mod capture_stream;
pub mod clocks;
pub mod compiler;
pub mod failure;

mod attempt;
mod bindings;
mod cache;
mod engine;
mod grant;
mod guest;
mod guest_str;
pub mod outbound;
mod output;
mod prepare;
mod private_dir;
mod resources;
mod run;
mod streams;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::Linker;

pub use attempt::{Attempt, Execution};
pub use bindings::JobContext;
pub use cache::{CacheSource, FAILED_COMPILE_MEMORY};
pub use capture::{CapturedLog, LogLine, LogSource};
pub use compiler::{CompileError, CompileSlot, Compiler, CompilerConfig};
pub use engine::InvalidModule;
pub use grant::RunGrant;
pub use outbound::{Grants, OutboundLimits, RequestLog, RequestRecord};

use bindings::TaskPre;
use guest::GuestState;

/// How often the epoch advances: the resolution of wall-clock deadlines and
/// of lease checks, and how often a running guest yields to the executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Extra time the outer timeout allows past the deadline before it fires,
/// so a guest running wasm code is stopped by the precise epoch check and the
/// outer timeout only catches guests blocked in a host call.
const HOST_CALL_GRACE: Duration = Duration::from_millis(50);

/// Longest error message of an attempt kept: the guest's own, or a trap's.
const MAX_ERROR_MESSAGE_BYTES: usize = 8 << 10;

/// How a [`Sandbox`] is sized.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Attempts that may run at once; the pooling allocator reserves a slot
    /// for each.
    pub max_concurrent_attempts: usize,
    /// Largest memory limit any attempt may have.
    pub max_memory_bytes: u64,
    /// Largest output an attempt may return.
    pub max_output_bytes: usize,
    /// Log bytes kept per attempt.
    pub max_log_bytes: usize,
    /// Directory for compiled code; `None` keeps it in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Prepared components kept in memory.
    pub memory_cache_capacity: usize,
    /// How components are compiled (always optimised here: a sandbox runs
    /// what it compiles).
    pub compiler: CompilerConfig,
    /// Caps on each attempt's outbound HTTP.
    pub outbound: OutboundLimits,
    /// A PEM file of CA certificates trusted for outbound TLS besides the
    /// webpki roots (`TASKFLOW_EXTRA_CA_CERTS`).
    pub extra_ca_certs: Option<PathBuf>,
}

/// The sandbox could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// wasmtime rejected the configuration (for example, not enough address
    /// space for the pooling allocator).
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    /// The cache directory is unusable or unsafe.
    #[error("cannot use the compiled-module cache directory: {0}")]
    CacheDir(std::io::Error),
    /// The extra CA certificates cannot be used.
    #[error("TASKFLOW_EXTRA_CA_CERTS: {0}")]
    ExtraCaCerts(String),
}

// Not `#[from]`: that would also make the I/O error the source, and a
// report of the chain would say it twice.
impl From<std::io::Error> for SandboxError {
    fn from(error: std::io::Error) -> Self {
        SandboxError::CacheDir(error)
    }
}

/// A component ready to instantiate. Cheap to clone; the memory cache holds
/// these, so what is learnt of a component here is learnt once.
#[derive(Clone)]
pub struct PreparedTask {
    pre: TaskPre<GuestState>,
    uses_grants: bool,
}

impl PreparedTask {
    fn new(pre: TaskPre<GuestState>) -> Self {
        let component = pre.instance_pre().component();
        let uses_grants =
            component
                .component_type()
                .imports(component.engine())
                .any(|(name, _)| {
                    ["wasi:http/", "wasi:config/", "taskflow:task/secrets"]
                        .iter()
                        .any(|prefix| name.starts_with(prefix))
                });
        Self { pre, uses_grants }
    }

    /// Whether the component imports anything a queue grants (HTTP,
    /// configuration, secrets): only then does a worker read the queue's
    /// grants before running it.
    pub fn uses_grants(&self) -> bool {
        self.uses_grants
    }
}

/// Runs task components; see the [module docs](self). Cheap to clone;
/// clones share the engine, linker and caches.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<SandboxInner>,
}

struct SandboxInner {
    engine: Engine,
    linker: Linker<GuestState>,
    cache: cache::ComponentCache,
    compiler: Compiler,
    config: SandboxConfig,
    tls: Arc<rustls::ClientConfig>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for SandboxInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Release);
    }
}

impl Sandbox {
    /// Creates the engine, linker, cache and epoch ticker.
    ///
    /// # Errors
    ///
    /// If wasmtime rejects the configuration, or the cache directory is
    /// unusable or not private to this user.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let engine_error = |error: wasmtime::Error| SandboxError::Engine(format!("{error:#}"));
        let pooling = engine::Pooling {
            slots: config.max_concurrent_attempts,
            max_memory_bytes: config.max_memory_bytes,
        };
        let engine = engine::engine(true, Some(pooling)).map_err(engine_error)?;
        let linker = engine::linker(&engine).map_err(engine_error)?;
        let cache = cache::ComponentCache::new(
            engine.clone(),
            config.cache_dir.as_deref(),
            config.memory_cache_capacity,
        )?;
        output::raise_lift_limit(config.max_output_bytes);
        let tls = outbound::tls_config(config.extra_ca_certs.as_deref())
            .map_err(SandboxError::ExtraCaCerts)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        engine::spawn_epoch_ticker(engine.clone(), ticker_stop.clone()).map_err(|error| {
            SandboxError::Engine(format!("cannot start the epoch ticker: {error}"))
        })?;
        Ok(Self {
            inner: Arc::new(SandboxInner {
                compiler: Compiler::new(config.compiler.clone(), true),
                engine,
                linker,
                cache,
                config,
                tls,
                ticker_stop,
            }),
        })
    }
}
