//! Compiled components, cached per module hash in memory and on disk, and
//! the compiles that failed lately.
//!
//! Compiling a component takes from milliseconds to seconds; instantiating a
//! ready [`PreparedTask`] (a component with its imports already resolved against
//! the linker) takes microseconds. So each worker keeps a bounded in-memory
//! map from module hash to `PreparedTask`, and writes every artifact it compiles
//! to the cache directory, so a restarted worker loads machine code instead
//! of recompiling. A compile that failed is remembered for
//! [`FAILED_COMPILE_MEMORY`], so the jobs of a module that cannot compile
//! fail at once instead of compiling it again and again.
//!
//! Safety of the disk cache: an artifact is machine code, loaded with
//! wasmtime's `unsafe` deserialize. So:
//!
//! - the cache directory must be private to the worker's user along its
//!   whole path ([`super::private_dir`]), and it lives under a subdirectory
//!   named after [`Engine::precompile_compatibility_hash`], so artifacts of
//!   another wasmtime version or configuration are never loaded;
//! - every artifact `{hash}.cwasm` has a MAC beside it, `{hash}.mac`
//!   (BLAKE3 in keyed mode, over the module hash and the artifact), keyed by
//!   a random key kept in the directory (mode 0600, made by the first worker
//!   that uses it): an artifact is loaded only for the module it was
//!   compiled from, and a file written there by anything but a worker
//!   holding the key is refused. The MAC sits in a file of its own so that a
//!   verified artifact is mapped by wasmtime straight from its file, pages
//!   loaded as used, rather than read and copied whole: a restarted
//!   worker's first job of the 18 MB Python module takes 19–23 ms so (6–14
//!   ms without any MAC), and took 95–110 ms the other way. (BLAKE3 rather than HMAC-SHA256: checking the 40 MB artifact
//!   takes 8.5 ms with BLAKE3 and took 47 ms with HMAC-SHA256.)
//! - bytes a user uploaded are never deserialized: they are always compiled
//!   (in a compiler process, `compiler.rs`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PreparedTask;
use super::private_dir;

/// How long a failed compile is remembered: its module's jobs fail at once
/// meanwhile (`module_unavailable`). Long enough that a module that cannot
/// compile costs one compile per worker every few minutes, not one per job;
/// short enough that a failure due to the worker's own trouble (a machine
/// short of memory) passes.
pub const FAILED_COMPILE_MEMORY: Duration = Duration::from_secs(10 * 60);

/// Length of the artifact key and of an artifact's MAC.
const KEY_BYTES: usize = 32;

/// Ready-to-instantiate components a worker loaded or compiled, by module hash.
pub(super) struct ComponentCache {
    engine: Engine,
    artifacts: Option<ArtifactDir>,
    capacity: usize,
    memory: Mutex<HashMap<String, PreparedTask>>,
    failures: Mutex<HashMap<String, (Instant, String)>>,
    loading: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
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
    ///
    /// # Errors
    ///
    /// If `dir` is not private to this user ([`private_dir::ensure`]) or its
    /// key cannot be read or made.
    pub(super) fn new(
        engine: Engine,
        dir: Option<&Path>,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let artifacts = dir.map(|dir| ArtifactDir::open(&engine, dir)).transpose()?;
        Ok(Self {
            engine,
            artifacts,
            capacity,
            memory: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
        })
    }

    /// The prepared component in memory, if loaded.
    pub(super) fn get(&self, hash: &str) -> Option<PreparedTask> {
        lock(&self.memory).get(hash).cloned()
    }

    /// Keeps a prepared component in memory, evicting another if full.
    pub(super) fn insert(&self, hash: &str, pre: PreparedTask) {
        let mut memory = lock(&self.memory);
        if memory.len() >= self.capacity && !memory.contains_key(hash) {
            // Any entry will do: a miss costs a disk load, not a compile.
            if let Some(evicted) = memory.keys().next().cloned() {
                memory.remove(&evicted);
            }
        }
        memory.insert(hash.to_owned(), pre);
    }

    /// Why `hash` failed to compile, if it did within
    /// [`FAILED_COMPILE_MEMORY`].
    pub(super) fn failure(&self, hash: &str) -> Option<String> {
        let mut failures = lock(&self.failures);
        match failures.get(hash) {
            Some((at, message)) if at.elapsed() < FAILED_COMPILE_MEMORY => Some(message.clone()),
            Some(_) => {
                failures.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remembers that `hash` failed to compile, and why.
    pub(super) fn remember_failure(&self, hash: &str, message: &str) {
        let mut failures = lock(&self.failures);
        failures.retain(|_, (at, _)| at.elapsed() < FAILED_COMPILE_MEMORY);
        failures.insert(hash.to_owned(), (Instant::now(), message.to_owned()));
    }

    /// The lock that loading or compiling `hash` takes, so concurrent misses
    /// of one module do the work once while misses of other modules go on.
    pub(super) fn loading(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut loading = lock(&self.loading);
        if let Some(existing) = loading.get(hash).and_then(Weak::upgrade) {
            return existing;
        }
        loading.retain(|_, lock| lock.strong_count() > 0);
        let fresh = Arc::new(tokio::sync::Mutex::new(()));
        loading.insert(hash.to_owned(), Arc::downgrade(&fresh));
        fresh
    }

    /// The component a worker compiled earlier for `hash`, if the disk cache
    /// has a genuine artifact of it. Blocking.
    pub(super) fn load_from_disk(&self, hash: &str) -> Option<Component> {
        let artifacts = self.artifacts.as_ref()?;
        let path = artifacts.verified(hash)?;
        // SAFETY: the artifact is in the worker's private cache directory
        // and its MAC proves a TaskFlow worker holding the key wrote it for
        // this module, from a compiler process's output; the directory name
        // pins the engine's compatibility hash, and wasmtime checks it again.
        // Between the check and the mapping, only this user could change the
        // file (`private_dir`).
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(%error, module = hash, "discarding a compiled module that does not load");
                artifacts.discard(hash);
                None
            }
        }
    }

    /// Loads an artifact the compiler process made for `hash`, and keeps it
    /// on disk for the next start. Blocking.
    pub(super) fn load_compiled(&self, hash: &str, artifact: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: `artifact` was written by a `taskflow compile-component`
        // process of this binary (`compiler.rs`), for an engine with this
        // engine's settings; a user's bytes never get here.
        let component = unsafe { Component::deserialize(&self.engine, artifact) }?;
        if let Some(artifacts) = &self.artifacts {
            artifacts.store(hash, artifact);
        }
        Ok(component)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can be left half-changed by a panic.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The disk cache: `{dir}/{compatibility}/{module hash}.cwasm`, the artifact
/// as the compiler process wrote it, and `{module hash}.mac`, its MAC.
struct ArtifactDir {
    dir: PathBuf,
    key: [u8; KEY_BYTES],
}

impl ArtifactDir {
    fn open(engine: &Engine, dir: &Path) -> std::io::Result<Self> {
        let mut hasher = StableHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let root = private_dir::ensure(dir)?;
        let dir = private_dir::ensure(&root.join(hex::encode(&hasher.0.finalize()[..16])))?;
        let key = artifact_key(&root)?;
        Ok(Self { dir, key })
    }

    /// The artifact and MAC files of `hash`.
    fn paths(&self, hash: &str) -> Option<(PathBuf, PathBuf)> {
        // The hash was validated as 64 hex digits before it got here; checking
        // again keeps a bad caller from escaping the directory.
        crate::job::is_valid_module_hash(hash).then(|| {
            (
                self.dir.join(format!("{hash}.cwasm")),
                self.dir.join(format!("{hash}.mac")),
            )
        })
    }

    /// A MAC of the artifact of module `hash`, to be fed the artifact.
    fn mac(&self, hash: &str) -> blake3::Hasher {
        let mut mac = blake3::Hasher::new_keyed(&self.key);
        mac.update(b"taskflow artifact\0");
        mac.update(hash.as_bytes());
        mac
    }

    /// The artifact file of `hash`, if it is there and its MAC is right.
    fn verified(&self, hash: &str) -> Option<PathBuf> {
        let (artifact, mac_path) = self.paths(hash)?;
        let stored = std::fs::read(&mac_path).ok()?;
        let mut mac = self.mac(hash);
        let computed = std::fs::File::open(&artifact)
            .and_then(|file| mac.update_reader(file).map(|mac| mac.finalize()))
            .ok()?;
        // `Hash`'s equality runs in constant time.
        let genuine = <[u8; KEY_BYTES]>::try_from(stored.as_slice())
            .is_ok_and(|stored| computed == blake3::Hash::from_bytes(stored));
        if !genuine {
            tracing::warn!(path = %artifact.display(), "refusing a compiled module whose MAC does not match");
            self.discard(hash);
            return None;
        }
        Some(artifact)
    }

    /// Writes `artifact` for `hash`, then its MAC. Each is written then
    /// renamed, so a crash never leaves a truncated file under a final name;
    /// the temporary names are unique per writer, since workers of one host
    /// share the directory. A reader that comes between the two renames finds
    /// the MAC wrong or missing and compiles the module itself.
    fn store(&self, hash: &str, artifact: &[u8]) {
        let Some((artifact_path, mac_path)) = self.paths(hash) else {
            return;
        };
        let mac = self.mac(hash).update(artifact).finalize();
        let written = write_file(&artifact_path, artifact)
            .and_then(|()| write_file(&mac_path, mac.as_bytes()));
        if let Err(error) = written {
            tracing::warn!(%error, path = %artifact_path.display(), "could not cache a compiled module on disk");
        }
    }

    fn discard(&self, hash: &str) {
        if let Some((artifact, mac)) = self.paths(hash) {
            let _ = std::fs::remove_file(artifact);
            let _ = std::fs::remove_file(mac);
        }
    }
}

/// Writes `bytes` to a fresh private temporary file, syncs it and renames it
/// to `path`.
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = private_file(&temporary)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// A new file only this user can read or write; fails if it exists.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// The key of the cache at `root`: read from `{root}/artifact.key`, or made
/// (random) if there is none. Written to a temporary file and linked into
/// place, so workers starting together end up with one key.
fn artifact_key(root: &Path) -> std::io::Result<[u8; KEY_BYTES]> {
    let path = root.join("artifact.key");
    if !path.exists() {
        let mut key = [0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(std::io::Error::other)?;
        let temporary = root.join(format!("artifact.key.{}", uuid::Uuid::new_v4().simple()));
        private_file(&temporary)?.write_all(&key)?;
        let linked = std::fs::hard_link(&temporary, &path);
        std::fs::remove_file(&temporary)?;
        match linked {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    let metadata = std::fs::symlink_metadata(&path)?;
    if !metadata.is_file()
        || metadata.uid() != rustix::process::geteuid().as_raw()
        || metadata.mode() & 0o077 != 0
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a file of this user's that no one else can read (mode 0600)",
                path.display()
            ),
        ));
    }
    std::fs::read(&path)?.try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a {KEY_BYTES}-byte key", path.display()),
        )
    })
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
