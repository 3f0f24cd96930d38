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
pub mod clocks;
pub mod compiler;
pub mod failure;

mod bindings;
mod cache;
mod engine;
mod guest;
mod output;
mod private_dir;
mod streams;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::job::{Failure, FailureKind};
pub use bindings::JobContext;
pub use cache::{CacheSource, FAILED_COMPILE_MEMORY};
pub use capture::{CapturedLog, LogLine, LogSource};
pub use compiler::{CompileError, CompileSlot, Compiler, CompilerConfig};
pub use engine::InvalidModule;

use bindings::{TaskError, TaskPre};
use capture::LogCapture;
use failure::Interrupted;
use guest::GuestState;
use output::GuestOutput;

/// How often the epoch advances: the resolution of wall-clock deadlines and
/// of lease checks, and how often a running guest yields to the executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Extra time the outer timeout allows past the deadline before it fires,
/// so a guest running wasm code is stopped by the precise epoch check and the
/// outer timeout only catches guests blocked in a host call.
const HOST_CALL_GRACE: Duration = Duration::from_millis(50);

/// Longest guest error message kept.
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
}

// Not `#[from]`: that would also make the I/O error the source, and a
// report of the chain would say it twice.
impl From<std::io::Error> for SandboxError {
    fn from(error: std::io::Error) -> Self {
        SandboxError::CacheDir(error)
    }
}

/// An attempt's right to keep running.
///
/// The worker extends it each time it renews the attempt's lease and revokes
/// it when the lease is lost. The sandbox stops the guest once the grant is
/// revoked or lapses (at the next epoch tick while it runs wasm code; at
/// once while it is blocked in a host call), so an attempt does not outlive
/// the lease that makes it the only live execution of its job.
#[derive(Debug)]
pub struct RunGrant {
    origin: Instant,
    valid_for_ms: AtomicU64,
    revoked: AtomicBool,
    revoked_notify: Notify,
}

impl RunGrant {
    /// A grant valid until `until`.
    pub fn until(until: Instant) -> Arc<Self> {
        let origin = Instant::now();
        let grant = Arc::new(Self {
            origin,
            valid_for_ms: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
            revoked_notify: Notify::new(),
        });
        grant.extend_until(until);
        grant
    }

    /// A grant that never lapses (for running a task outside a worker).
    pub fn unlimited() -> Arc<Self> {
        let grant = Self::until(Instant::now());
        grant.valid_for_ms.store(u64::MAX, Ordering::Release);
        grant
    }

    /// Extends the grant to `until` (never shortens it).
    pub fn extend_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.origin).as_millis() as u64;
        self.valid_for_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Ends the grant now.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.revoked_notify.notify_waiters();
    }

    /// Whether the attempt may still run at `now`.
    pub fn is_valid_at(&self, now: Instant) -> bool {
        !self.revoked.load(Ordering::Acquire)
            && (now.saturating_duration_since(self.origin).as_millis() as u64)
                < self.valid_for_ms.load(Ordering::Acquire)
    }

    /// Resolves once the grant is revoked or has lapsed. This covers a guest
    /// blocked in a host call, where epoch checks do not run.
    async fn invalidated(&self) {
        loop {
            let notified = self.revoked_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let elapsed_ms = self.origin.elapsed().as_millis() as u64;
            let valid_for_ms = self.valid_for_ms.load(Ordering::Acquire);
            if self.revoked.load(Ordering::Acquire) || elapsed_ms >= valid_for_ms {
                return;
            }
            // Extensions move the end, so wake at least every second to look again.
            let remaining =
                Duration::from_millis(valid_for_ms - elapsed_ms).min(Duration::from_secs(1));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(remaining) => {}
            }
        }
    }
}

/// What an attempt may use.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimits {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// CPU budget in fuel units.
    pub fuel: u64,
    /// Limit on the sum of the guest's linear memories.
    pub memory_bytes: u64,
}

/// One attempt to run.
#[derive(Debug)]
pub struct Attempt {
    /// Input bytes passed to `run`.
    pub input: Vec<u8>,
    /// What `host.context` returns.
    pub context: JobContext,
    /// Resource limits.
    pub limits: AttemptLimits,
    /// The attempt's right to run.
    pub grant: Arc<RunGrant>,
}

/// How an attempt went.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The output, or why there is none.
    pub result: Result<Vec<u8>, Failure>,
    /// Fuel the guest burned.
    pub fuel_consumed: u64,
    /// Wall time from instantiation to the end of the call.
    pub duration: Duration,
    /// What the guest logged.
    pub log: CapturedLog,
}

impl Execution {
    /// An attempt that failed before the guest ran.
    pub fn failed(failure: Failure) -> Self {
        Self {
            result: Err(failure),
            fuel_consumed: 0,
            duration: Duration::ZERO,
            log: CapturedLog::default(),
        }
    }
}

/// A component ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct PreparedTask(TaskPre<GuestState>);

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
                ticker_stop,
            }),
        })
    }

    /// The prepared component for `hash`: from memory, from the disk cache,
    /// or compiled (in a compiler process, under its limits) from the bytes
    /// `fetch` returns, which is only called on a miss.
    ///
    /// Concurrent misses of one module load or compile it once; misses of
    /// other modules go on meanwhile (up to the compiler's concurrency). A
    /// module that failed to compile fails at once for
    /// [`FAILED_COMPILE_MEMORY`]; a fetch that failed (PostgreSQL down) is
    /// not remembered.
    pub async fn prepare<F>(
        &self,
        hash: &str,
        fetch: F,
    ) -> Result<(PreparedTask, CacheSource), Failure>
    where
        F: Future<Output = Result<Vec<u8>, String>>,
    {
        let cache = &self.inner.cache;
        let unavailable = |message: String| Failure::new(FailureKind::ModuleUnavailable, message);
        if let Some(pre) = cache.get(hash) {
            return Ok((PreparedTask(pre), CacheSource::Memory));
        }
        let loading = cache.loading(hash);
        let _loading = loading.lock().await;
        if let Some(pre) = cache.get(hash) {
            return Ok((PreparedTask(pre), CacheSource::Memory));
        }
        if let Some(message) = cache.failure(hash) {
            return Err(unavailable(format!(
                "{message} (it failed less than {} minutes ago, and is not compiled again \
                 before then)",
                FAILED_COMPILE_MEMORY.as_secs() / 60
            )));
        }
        let owned_hash = hash.to_owned();
        if let Some(component) = self
            .blocking(move |inner| inner.cache.load_from_disk(&owned_hash))
            .await
        {
            let pre = engine::task_pre(&self.inner.linker, &component).map_err(unavailable)?;
            cache.insert(hash, pre.clone());
            return Ok((PreparedTask(pre), CacheSource::Disk));
        }
        let slot = self.inner.compiler.slot().await;
        let bytes = fetch.await.map_err(unavailable)?;
        match self.compile(&slot, hash, bytes).await {
            Ok(pre) => {
                cache.insert(hash, pre.clone());
                Ok((PreparedTask(pre), CacheSource::Compiled))
            }
            Err((message, remember)) => {
                if remember {
                    cache.remember_failure(hash, &message);
                }
                Err(unavailable(message))
            }
        }
    }

    /// Compiles `bytes` of module `hash` and prepares the result; on
    /// failure, says why and whether the module is to blame (so the failure
    /// is worth remembering) rather than the host.
    async fn compile(
        &self,
        slot: &CompileSlot,
        hash: &str,
        bytes: Vec<u8>,
    ) -> Result<TaskPre<GuestState>, (String, bool)> {
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if actual != hash {
            return Err((format!("module bytes hash to {actual}, not {hash}"), true));
        }
        let (artifact, took) =
            self.inner
                .compiler
                .compile(slot, &bytes)
                .await
                .map_err(|error| {
                    let blame_module = !matches!(error, CompileError::Failed(_));
                    (
                        format!("module {hash} cannot be compiled: {error}"),
                        blame_module,
                    )
                })?;
        tracing::info!(
            module = hash,
            seconds = took.as_secs_f64(),
            artifact_bytes = artifact.len(),
            "compiled a module"
        );
        let owned_hash = hash.to_owned();
        let component = self
            .blocking(move |inner| inner.cache.load_compiled(&owned_hash, &artifact))
            .await
            .map_err(|error| {
                (
                    format!("cannot load compiled module {hash}: {error:#}"),
                    false,
                )
            })?;
        engine::task_pre(&self.inner.linker, &component).map_err(|message| (message, true))
    }

    /// Runs `f` on tokio's blocking pool, keeping file I/O and loading
    /// machine code off the threads that drive async tasks.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&SandboxInner) -> R + Send + 'static,
    ) -> R {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
    }

    /// Runs one attempt in a fresh store. Never panics or fails: everything
    /// that can go wrong becomes the [`Execution`]'s failure.
    pub async fn run(&self, task: &PreparedTask, attempt: Attempt) -> Execution {
        let Attempt {
            input,
            context,
            limits,
            grant,
        } = attempt;
        let config = &self.inner.config;
        if limits.memory_bytes > config.max_memory_bytes {
            return Execution::failed(Failure::new(
                FailureKind::WorkerLimitExceeded,
                format!(
                    "the job asks for {} bytes of memory and this worker grants at most {}; give \
                     the API and the workers the same TASKFLOW_MAX_MEMORY_LIMIT_BYTES",
                    limits.memory_bytes, config.max_memory_bytes
                ),
            ));
        }
        let log = LogCapture::new(config.max_log_bytes);
        let memory_bytes = limits.memory_bytes as usize;
        let mut store = Store::new(
            &self.inner.engine,
            GuestState::new(log.clone(), context, memory_bytes),
        );
        store.limiter(|state| &mut state.limiter);
        // wasmtime caps what one call may move from guest to host (128 MiB
        // by default) and fails the call past it, before copying. TaskFlow's
        // own checks are finer (the output's length, `output.rs`; log lines
        // and stream writes are never copied whole) and must see every
        // in-bounds list to say why it was refused, so the cap becomes the
        // guest's memory, which no list can exceed.
        store.set_hostcall_fuel(memory_bytes);
        let started = Instant::now();
        let deadline = started + limits.timeout;
        if let Err(error) = store.set_fuel(limits.fuel) {
            return host_failure(&log, started, format!("cannot set fuel: {error:#}"));
        }
        store.set_epoch_deadline(1);
        let callback_grant = grant.clone();
        store.epoch_deadline_callback(move |_| {
            let now = Instant::now();
            if now >= deadline {
                return Err(Interrupted::Timeout.into());
            }
            if !callback_grant.is_valid_at(now) {
                return Err(Interrupted::LeaseLost.into());
            }
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });

        let call = async {
            let instance = task.0.instance_pre().instantiate_async(&mut store).await?;
            let run = instance
                .get_typed_func::<(&[u8],), (Result<GuestOutput, TaskError>,)>(&mut store, "run")?;
            let (result,) = run.call_async(&mut store, (&input,)).await?;
            wasmtime::Result::Ok(result)
        };
        let outcome = tokio::select! {
            outcome = call => outcome,
            () = tokio::time::sleep_until((deadline + HOST_CALL_GRACE).into()) => {
                Err(Interrupted::Timeout.into())
            }
            () = grant.invalidated() => Err(Interrupted::LeaseLost.into()),
        };
        let duration = started.elapsed();
        let fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        drop(store);
        let captured = log.finish();
        let too_large = |bytes: usize| {
            Failure::new(
                FailureKind::OutputTooLarge,
                format!(
                    "the task returned {bytes} bytes; the limit is {}",
                    config.max_output_bytes
                ),
            )
        };
        let result = match outcome {
            Ok(Ok(GuestOutput::Bytes(output))) if output.len() > config.max_output_bytes => {
                Err(too_large(output.len()))
            }
            Ok(Ok(GuestOutput::Bytes(output))) => Ok(output),
            Ok(Ok(GuestOutput::TooLong(bytes))) => Err(too_large(bytes)),
            Ok(Err(error)) => Err(guest_failure(error)),
            Err(error) => Err(failure::classify(
                &error,
                &captured,
                limits.timeout.as_millis() as u64,
                limits.fuel,
            )),
        };
        Execution {
            result,
            fuel_consumed,
            duration,
            log: captured,
        }
    }
}

fn host_failure(log: &LogCapture, started: Instant, message: String) -> Execution {
    Execution {
        result: Err(Failure::new(FailureKind::ModuleUnavailable, message)),
        fuel_consumed: 0,
        duration: started.elapsed(),
        log: log.finish(),
    }
}

fn guest_failure(error: TaskError) -> Failure {
    let mut message = error.message;
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let cut = (0..=MAX_ERROR_MESSAGE_BYTES)
            .rev()
            .find(|&i| message.is_char_boundary(i))
            .unwrap_or(0);
        message.truncate(cut);
    }
    Failure {
        kind: FailureKind::GuestError,
        message,
        retryable: error.retryable,
    }
}
