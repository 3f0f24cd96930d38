//! Preparing a module to run: from memory, from the disk cache, or
//! compiled in a compiler process.

use super::bindings::TaskPre;
use super::compiler::{CompileError, CompileSlot};
use super::guest::GuestState;
use super::{CacheSource, FAILED_COMPILE_MEMORY, PreparedTask, Sandbox, SandboxInner, engine};
use crate::job::{Failure, FailureKind};

impl Sandbox {
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
            return Ok((pre, CacheSource::Memory));
        }
        let loading = cache.loading(hash);
        let _loading = loading.lock().await;
        if let Some(pre) = cache.get(hash) {
            return Ok((pre, CacheSource::Memory));
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
            let task = PreparedTask::new(pre);
            cache.insert(hash, task.clone());
            return Ok((task, CacheSource::Disk));
        }
        let slot = self.inner.compiler.slot().await;
        let bytes = fetch.await.map_err(unavailable)?;
        match self.compile(&slot, hash, bytes).await {
            Ok(pre) => {
                let task = PreparedTask::new(pre);
                cache.insert(hash, task.clone());
                Ok((task, CacheSource::Compiled))
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
        // Loading an artifact this binary just compiled fails only when the
        // component does not fit this worker's pooling allocator (a memory
        // that starts above `--max-memory-limit-bytes`, too many memories,
        // tables or instances): the module's fault, and the same on every
        // attempt, so it is remembered like a failed compile.
        let owned_hash = hash.to_owned();
        let component = self
            .blocking(move |inner| inner.cache.load_compiled(&owned_hash, &artifact))
            .await
            .map_err(|error| {
                (
                    format!("module {hash} cannot run on this worker: {error:#}"),
                    true,
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
}
