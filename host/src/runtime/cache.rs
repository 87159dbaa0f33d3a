//! Compiled-component cache (`.cwasm` files).
//!
//! Compiling a component with Cranelift takes ~100 ms and noticeable memory;
//! loading a precompiled artifact takes well under a millisecond. Artifacts are
//! keyed by the SHA-256 of the module bytes and by the engine's compatibility
//! hash (wasmtime version + compilation settings), so an upgraded host never
//! loads an artifact made by another engine.
//!
//! Safety: `Component::deserialize*` trusts its input completely. We only ever
//! deserialize files this host wrote into its own cache directory, written to a
//! temporary name and atomically renamed, so a crash mid-write cannot leave a
//! half-written artifact under a valid name. A file that still fails to load
//! (disk corruption, a foreign file) is removed and the module recompiled.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled artifacts live; `None` disables caching.
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: Option<PathBuf>,
    /// False: artifacts already there are used, nothing is written or removed.
    writable: bool,
}

/// How a component was obtained, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from an existing `.cwasm`.
    Hit,
    /// Compiled now (and stored, when a cache directory is set).
    Compiled,
    /// The same bytes were already loaded: that module is shared (its code
    /// is in memory once), nothing was read or compiled.
    Shared,
}

impl ModuleCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            writable: true,
        }
    }

    /// A cache in `dir` that only reads: artifacts already there are loaded,
    /// a module not there is compiled in memory, and nothing (not even the
    /// directory) is created or removed. For `sluice check-config`, which
    /// must leave the box as it found it.
    pub fn read_only(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            writable: false,
        }
    }

    /// The user-level default: `$XDG_CACHE_HOME/sluice` or `~/.cache/sluice`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("sluice"));
        }
        std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .map(|home| PathBuf::from(home).join(".cache").join("sluice"))
    }

    /// The cache directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Compiles `wasm` or loads its cached artifact; `hash` is its
    /// [`module_hash`], which the caller already has.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        hash: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, wasm)?, CacheOutcome::Compiled));
        };
        let path = dir.join(format!("{}.cwasm", cache_key(engine, hash)));
        if let Ok(artifact) = std::fs::read(&path) {
            // Read into memory rather than `deserialize_file` (mmap): a file
            // truncated behind our back while mapped would kill the process
            // with SIGBUS.
            // SAFETY: only files written by `store` below (atomic rename into
            // our own cache dir) carry this name; see the module docs.
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(err) if self.writable => {
                    tracing::warn!(path = %path.display(), error = %err,
                        "discarding unreadable compiled-module cache entry");
                    let _ = std::fs::remove_file(&path);
                }
                Err(err) => {
                    tracing::debug!(path = %path.display(), error = %err,
                        "unreadable compiled-module cache entry (read-only cache: left)");
                }
            }
        }
        if !self.writable {
            return Ok((Component::new(engine, wasm)?, CacheOutcome::Compiled));
        }
        let artifact = engine.precompile_component(wasm)?;
        if let Err(err) = store(dir, &path, &artifact) {
            // A read-only or full disk must not stop the transform from loading.
            tracing::warn!(dir = %dir.display(), error = %err,
                "cannot write compiled-module cache; continuing without it");
        }
        // SAFETY: `artifact` was produced by this engine just now.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((component, CacheOutcome::Compiled))
    }
}

/// `<sha256 of module>-<engine compatibility hash>`, from the module's
/// [`module_hash`].
fn cache_key(engine: &Engine, module_hash: &str) -> String {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    format!("{module_hash}-{:016x}", engine_hash.finish())
}

/// Hex SHA-256 of a module's bytes: its identity in logs, caches and version history.
pub fn module_hash(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

fn store(dir: &Path, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(artifact)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
