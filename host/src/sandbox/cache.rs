//! Compiled components, cached per module hash in memory and on disk.
//!
//! Compiling a component with Cranelift takes from milliseconds to seconds;
//! instantiating a ready [`TaskPre`] (a component with its imports already
//! resolved against the linker) takes microseconds. So each worker keeps a
//! bounded in-memory map from module hash to `TaskPre`, and writes every
//! component it compiles to the cache directory, so a restarted worker
//! loads machine code instead of recompiling.
//!
//! Safety of the disk cache: `Component::deserialize_file` trusts its input
//! (it is machine code). The cache only ever holds files a TaskFlow worker
//! wrote from components it compiled itself, in a directory created with
//! mode 0700 (shared by the workers of one host and user, never writable by
//! anyone else), under a subdirectory named after
//! [`wasmtime::Engine::precompile_compatibility_hash`] so artifacts from a
//! different wasmtime version or configuration are never loaded. Bytes a
//! user uploaded are never deserialized: they are always compiled.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::bindings::TaskPre;
use super::guest::GuestState;

/// Ready-to-instantiate components a worker loaded or compiled, by module hash.
pub(super) struct ComponentCache {
    engine: Engine,
    dir: Option<PathBuf>,
    capacity: usize,
    memory: Mutex<HashMap<String, TaskPre<GuestState>>>,
}

/// Where a prepared component came from, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSource {
    /// Already loaded in this process.
    Memory,
    /// Loaded from the disk cache (compiled earlier by this or another
    /// worker of the host).
    Disk,
    /// Compiled from the module's bytes.
    Compiled,
}

impl ComponentCache {
    /// A cache of at most `capacity` components in memory, persisting to
    /// `dir` when given.
    pub(super) fn new(
        engine: Engine,
        dir: Option<&Path>,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let dir = match dir {
            Some(dir) => Some(prepare_dir(&engine, dir)?),
            None => None,
        };
        Ok(Self {
            engine,
            dir,
            capacity,
            memory: Mutex::new(HashMap::new()),
        })
    }

    /// The prepared component in memory, if loaded.
    pub(super) fn get(&self, hash: &str) -> Option<TaskPre<GuestState>> {
        self.lock().get(hash).cloned()
    }

    /// Loads the component compiled earlier by a worker, if the disk
    /// cache has it. Blocking.
    pub(super) fn load_from_disk(&self, hash: &str) -> Option<Component> {
        let path = self.path(hash)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: `path` is inside the workers' private cache directory and
        // was written by `write_to_disk` from a component a worker compiled;
        // the directory name pins the engine's compatibility hash.
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "discarding unreadable compiled module");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Compiles `bytes` after checking they hash to `hash`, and writes the
    /// result to the disk cache. Blocking, and possibly slow.
    pub(super) fn compile(&self, hash: &str, bytes: &[u8]) -> Result<Component, String> {
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != hash {
            return Err(format!("module bytes hash to {actual}, not {hash}"));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|error| format!("compiling module {hash} failed: {error:#}"))?;
        self.write_to_disk(hash, &component);
        Ok(component)
    }

    /// Keeps a prepared component in memory, evicting another if full.
    pub(super) fn insert(&self, hash: &str, pre: TaskPre<GuestState>) {
        let mut memory = self.lock();
        if memory.len() >= self.capacity && !memory.contains_key(hash) {
            // Any entry will do: a miss costs a disk load, not a compile.
            if let Some(evicted) = memory.keys().next().cloned() {
                memory.remove(&evicted);
            }
        }
        memory.insert(hash.to_owned(), pre);
    }

    fn path(&self, hash: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        // The hash was validated as 64 hex digits before it got here; checking
        // again keeps a bad caller from escaping the directory.
        crate::store::is_valid_module_hash(hash).then(|| dir.join(format!("{hash}.cwasm")))
    }

    fn write_to_disk(&self, hash: &str, component: &Component) {
        let Some(path) = self.path(hash) else { return };
        let result = component
            .serialize()
            .map_err(std::io::Error::other)
            .and_then(|code| {
                // Write then rename, so a crash never leaves a truncated file
                // under the final name.
                // Unique per writer: workers of one host share the directory.
                let temporary = path.with_extension(format!(
                    "tmp.{}.{}",
                    std::process::id(),
                    uuid::Uuid::new_v4().simple()
                ));
                let mut file = std::fs::File::create(&temporary)?;
                file.write_all(&code)?;
                file.sync_all()?;
                std::fs::rename(&temporary, &path)
            });
        if let Err(error) = result {
            tracing::warn!(%error, path = %path.display(), "could not cache compiled module on disk");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskPre<GuestState>>> {
        self.memory
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Creates `{dir}/{compatibility hash}` with owner-only permissions.
fn prepare_dir(engine: &Engine, dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut hasher = StableHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let dir = dir.join(hex::encode(&hasher.0.finalize()[..16]));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// A `Hasher` over SHA-256, so the directory name is the same across Rust
/// releases (std's `DefaultHasher` promises no such thing).
struct StableHasher(Sha256);

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("digest has 32 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
