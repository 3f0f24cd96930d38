//! Compiling untrusted components in a child process, under a time and a
//! memory limit.
//!
//! Compilation is not covered by wasmtime's denial-of-service guarantees: a
//! hostile component can keep Cranelift busy for minutes or make it take
//! gigabytes, and a compile running on a thread cannot be stopped. So every
//! compile of a component a user uploaded runs in a process of its own,
//! `taskflow compile-component` ([`child_main`]):
//!
//! - its memory is capped by `RLIMIT_DATA` (heap and private writable
//!   mappings), so a compile that needs more fails there, not in the worker;
//! - it is killed when `timeout` passes (and by `RLIMIT_CPU`, and by the
//!   kernel when its parent dies), so its slot is free again at once;
//! - at most `max_concurrent` run at once per [`Compiler`], so compiles of
//!   other modules wait for a slot, never for one slow compile to finish
//!   unless every slot is taken.
//!
//! The child reads the component on stdin and writes the compiled artifact
//! on stdout (nothing when only checking), or, for a component it refuses,
//! an [`InvalidModule`] as JSON with exit status `EXIT_INVALID`. Its
//! engine is built with the parent's settings (`engine.rs`), so the parent
//! can load the artifact; the artifact comes from this same binary, never
//! from a user, which is what makes deserializing it sound.

use std::io::{Read as _, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;

use super::engine::{self, InvalidModule};

/// Exit status of a compiler process that refused the component; its stdout
/// holds the [`InvalidModule`] as JSON.
const EXIT_INVALID: u8 = 3;
/// Exit status of a compiler process that ran out of memory.
const EXIT_OUT_OF_MEMORY: u8 = 4;
/// Exit status of a compiler process that failed for any other reason.
const EXIT_FAILED: u8 = 5;

/// Most bytes of a compiler process's stderr kept for the error message.
const STDERR_KEPT_BYTES: usize = 16 << 10;

/// How compiles run.
#[derive(Debug, Clone)]
pub struct CompilerConfig {
    /// The `taskflow` binary to run as `taskflow compile-component`:
    /// normally this very executable.
    pub program: PathBuf,
    /// Longest a compile may take before it is killed.
    pub timeout: Duration,
    /// Most memory (`RLIMIT_DATA`) a compile may use, in bytes.
    pub memory_limit_bytes: u64,
    /// Compiles run at once.
    pub max_concurrent: usize,
}

/// Why a component did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// It is not a component TaskFlow can run.
    #[error(transparent)]
    Invalid(#[from] InvalidModule),
    /// It did not compile within the time limit.
    #[error("the component did not compile within {0:?}; it is too large or too complex")]
    Timeout(Duration),
    /// Compiling it needed more memory than the limit.
    #[error(
        "compiling the component needed more than {0} bytes of memory; it is too large or too \
         complex"
    )]
    MemoryLimit(u64),
    /// The compiler process could not run, or failed for a reason of its own.
    #[error("the compiler process failed: {0}")]
    Failed(String),
}

/// A compile slot, held while a compile (and the fetch of its bytes) runs.
#[derive(Debug)]
pub struct CompileSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What the compiler process is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Only whether the component is valid.
    Verdict,
    /// The compiled artifact.
    Artifact,
}

/// Runs compiles in child processes; see the [module docs](self). Cheap to
/// clone; clones share the concurrency limit.
#[derive(Debug, Clone)]
pub struct Compiler {
    config: Arc<CompilerConfig>,
    optimize: bool,
    slots: Arc<Semaphore>,
}

impl Compiler {
    /// A compiler producing optimised code or not (a component that is only
    /// checked compiles several times faster unoptimised).
    pub fn new(config: CompilerConfig, optimize: bool) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config: Arc::new(config),
            optimize,
        }
    }

    /// Waits for one of the `max_concurrent` compile slots. A caller that
    /// must fetch the bytes first takes the slot before fetching them, so at
    /// most that many modules' bytes wait in memory for a compile.
    pub async fn slot(&self) -> CompileSlot {
        CompileSlot {
            _permit: self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed"),
        }
    }

    /// Checks that `bytes` are a component this host can run, by compiling
    /// it exactly as a worker would.
    pub async fn check(&self, bytes: &[u8]) -> Result<(), CompileError> {
        let slot = self.slot().await;
        self.run(&slot, bytes, Output::Verdict).await.map(drop)
    }

    /// Compiles `bytes` into an artifact for an engine with this compiler's
    /// settings, in `slot`, and says how long that took.
    pub(super) async fn compile(
        &self,
        slot: &CompileSlot,
        bytes: &[u8],
    ) -> Result<(Vec<u8>, Duration), CompileError> {
        let started = Instant::now();
        let artifact = self.run(slot, bytes, Output::Artifact).await?;
        Ok((artifact, started.elapsed()))
    }

    async fn run(
        &self,
        _slot: &CompileSlot,
        bytes: &[u8],
        output: Output,
    ) -> Result<Vec<u8>, CompileError> {
        let timeout = self.config.timeout;
        let started = Instant::now();
        let mut child = self.command(output).spawn().map_err(|error| {
            CompileError::Failed(format!(
                "cannot start {} compile-component: {error}",
                self.config.program.display()
            ))
        })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(CompileError::Failed(
                "the compiler's pipes are missing".into(),
            ));
        };
        let artifact_cap = self.config.memory_limit_bytes as usize;
        // Dropping this future on timeout drops `child`, which kills it
        // (`kill_on_drop`); tokio reaps it.
        let finished = tokio::time::timeout(timeout, async move {
            let write = async {
                // A compiler that exits early (it refused the header) closes
                // its stdin: the broken pipe is not an error here.
                let _ = stdin.write_all(bytes).await;
                drop(stdin);
            };
            let ((), out, err) = tokio::join!(
                write,
                read_capped(stdout, artifact_cap),
                read_capped(stderr, STDERR_KEPT_BYTES)
            );
            (child.wait().await, out, err)
        })
        .await;
        let result = match finished {
            Ok((status, stdout, stderr)) => self.verdict(status, stdout, stderr),
            Err(_) => Err(CompileError::Timeout(timeout)),
        };
        let outcome = match &result {
            Ok(_) => "compiled",
            Err(CompileError::Invalid(_)) => "invalid",
            Err(CompileError::Timeout(_)) => "timeout",
            Err(CompileError::MemoryLimit(_)) => "memory_limit",
            Err(CompileError::Failed(_)) => "failed",
        };
        metrics::counter!("taskflow_compiles_total", "outcome" => outcome).increment(1);
        metrics::histogram!("taskflow_compile_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// What a compiler process that exited with `status` said.
    fn verdict(
        &self,
        status: std::io::Result<std::process::ExitStatus>,
        stdout: std::io::Result<Vec<u8>>,
        stderr: std::io::Result<Vec<u8>>,
    ) -> Result<Vec<u8>, CompileError> {
        let status = status.map_err(|error| CompileError::Failed(error.to_string()))?;
        let stderr = String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned();
        match status.code().map(|code| code as u8) {
            Some(0) => stdout.map_err(|error| CompileError::Failed(error.to_string())),
            Some(EXIT_INVALID) => Err(stdout
                .ok()
                .and_then(|json| serde_json::from_slice::<InvalidModule>(&json).ok())
                .map_or_else(
                    || CompileError::Failed("the compiler's verdict is unreadable".into()),
                    CompileError::Invalid,
                )),
            Some(EXIT_OUT_OF_MEMORY) => {
                Err(CompileError::MemoryLimit(self.config.memory_limit_bytes))
            }
            _ if stderr.contains("memory allocation of") => {
                Err(CompileError::MemoryLimit(self.config.memory_limit_bytes))
            }
            _ if status.signal() == Some(rustix::process::Signal::XCPU.as_raw()) => {
                Err(CompileError::Timeout(self.config.timeout))
            }
            _ => Err(CompileError::Failed(format!("{status}: {}", stderr.trim()))),
        }
    }

    fn command(&self, output: Output) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.config.program);
        command.arg("compile-component");
        if self.optimize {
            command.arg("--optimize");
        }
        if output == Output::Verdict {
            command.arg("--check-only");
        }
        command
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let memory = self.config.memory_limit_bytes;
        // RLIMIT_CPU counts the CPU time of all the compiler's threads; it
        // only backs up the parent's wall-clock kill.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let cpu_seconds = (self.config.timeout.as_secs() + 1) * threads;
        // SAFETY: the closure runs between fork and exec and only makes raw
        // system calls (prctl, setrlimit), which are async-signal-safe.
        unsafe {
            command.pre_exec(move || limit_this_process(memory, cpu_seconds));
        }
        command
    }
}

/// The limits a compiler process runs under, set in the child before it
/// runs the compiler.
fn limit_this_process(memory_bytes: u64, cpu_seconds: u64) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, Signal, set_parent_process_death_signal, setrlimit};
    let limit = |resource, current, maximum| {
        setrlimit(
            resource,
            Rlimit {
                current: Some(current),
                maximum: Some(maximum),
            },
        )
    };
    set_parent_process_death_signal(Some(Signal::KILL))?;
    limit(Resource::Data, memory_bytes, memory_bytes)?;
    // Past the soft limit the kernel sends SIGXCPU, past the hard one SIGKILL.
    limit(Resource::Cpu, cpu_seconds, cpu_seconds + 1)?;
    limit(Resource::Core, 0, 0)?;
    Ok(())
}

/// Up to `cap` bytes of `reader`; an error past that.
async fn read_capped(reader: impl AsyncRead + Unpin, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(cap as u64 + 1).read_to_end(&mut bytes).await?;
    if bytes.len() > cap {
        return Err(std::io::Error::other(format!(
            "more than {cap} bytes of output"
        )));
    }
    Ok(bytes)
}

/// `taskflow compile-component`: reads a component on stdin, compiles it
/// and writes the artifact (or, with `check_only`, nothing) on stdout; see
/// the [module docs](self). Runs in a process of its own, started by
/// [`Compiler`].
pub fn child_main(optimize: bool, check_only: bool) -> ExitCode {
    let mut bytes = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {error}");
        return ExitCode::from(EXIT_FAILED);
    }
    let prepared = engine::engine(optimize, None)
        .and_then(|engine| engine::linker(&engine).map(|linker| (engine, linker)));
    let (engine, linker) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("cannot configure the engine: {error:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let component = match engine::compile(&engine, &linker, &bytes) {
        Ok(component) => component,
        Err(InvalidModule::Invalid(message)) if is_out_of_memory(&message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_OUT_OF_MEMORY);
        }
        Err(invalid) => {
            let mut stdout = std::io::stdout().lock();
            return match serde_json::to_writer(&mut stdout, &invalid) {
                Ok(()) => ExitCode::from(EXIT_INVALID),
                Err(_) => ExitCode::from(EXIT_FAILED),
            };
        }
    };
    if check_only {
        return ExitCode::SUCCESS;
    }
    let written = component
        .serialize()
        .map_err(|error| format!("{error:#}"))
        .and_then(|artifact| {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&artifact)
                .and_then(|()| stdout.flush())
                .map_err(|error| error.to_string())
        });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cannot write the artifact: {error}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Whether a compile error says memory ran out (an `mmap` refused under
/// `RLIMIT_DATA`) rather than that the component is wrong.
fn is_out_of_memory(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["os error 12", "out of memory", "cannot allocate memory"]
        .iter()
        .any(|sign| message.contains(sign))
}
