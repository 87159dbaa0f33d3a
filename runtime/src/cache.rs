//! Compiled-component cache (`.cwasm` files).
//!
//! Compiling a component with Cranelift takes ~100 ms and noticeable memory;
//! loading a precompiled artifact takes well under a millisecond. Artifacts are
//! keyed by the SHA-256 of the module bytes and by the engine's compatibility
//! hash (wasmtime version + compilation settings), so an upgraded host never
//! loads an artifact made by another engine.
//!
//! `Component::deserialize` runs the machine code it is given, so no file is
//! given to it on its name alone. A cache file is `MAGIC ‖ tag ‖ artifact`,
//! where the tag is HMAC-SHA256 of the file name (module hash and engine
//! hash) and the artifact, under a random per-cache key in `<cache dir>/.key`
//! (32 bytes, created on first use, mode 0600). A file is deserialized only
//! if its tag checks out; otherwise it is logged, removed (when the cache is
//! writable) and the module compiled again. The key is used only if it is a
//! regular file (not a link) owned by this user that no one else may read or
//! write; a writable cache replaces any other (its artifacts then fail their
//! tags and are recompiled), a read-only one loads nothing from the cache.
//!
//! This stops: bit rot or truncation of a file; a file from another host,
//! version or engine; one module's artifact renamed to another's name; a file
//! planted by another user who can write the directory (they cannot read the
//! key). It does not stop root or the user sluice runs as: they can read
//! the key, and could as well replace the binary.
//!
//! Files are written to a temporary name and renamed, so a crash mid-write
//! leaves no half-written file under a valid name; they are read into memory
//! (not mmapped: a file truncated behind a mapping kills the process with
//! SIGBUS), and opened without following links or blocking on a FIFO.

use std::fs::OpenOptions;
use std::hash::{Hash, Hasher};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac as _};
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every cache file (and of what its tag covers).
const MAGIC: &[u8; 8] = b"sluice\x01\n";
/// HMAC-SHA256.
const TAG_LEN: usize = 32;
/// The key's file in the cache directory.
const KEY_FILE: &str = ".key";
const KEY_LEN: usize = 32;

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
    /// directory or its key) is created or removed. For `sluice
    /// check-config`, which must leave the box as it found it.
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
        let loaded = self.load_or_compile(engine, wasm, hash);
        if !matches!(loaded, Ok((_, CacheOutcome::Hit))) {
            release_freed_memory();
        }
        loaded
    }

    fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        hash: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, wasm)?, CacheOutcome::Compiled));
        };
        let name = format!("{}.cwasm", cache_key(engine, hash));
        let path = dir.join(&name);
        let key = self.key(dir);
        if let Some(key) = &key
            && let Some(component) = self.cached(engine, key, &name, &path)
        {
            return Ok((component, CacheOutcome::Hit));
        }
        let (Some(key), true) = (&key, self.writable) else {
            return Ok((Component::new(engine, wasm)?, CacheOutcome::Compiled));
        };
        let artifact = engine.precompile_component(wasm)?;
        let tag = key.tag(&name, &artifact);
        if let Err(err) = store(dir, &path, &[MAGIC, &tag, &artifact]) {
            // A read-only or full disk must not stop the transform from loading.
            tracing::warn!(dir = %dir.display(), error = %err,
                "cannot write compiled-module cache; continuing without it");
        }
        // SAFETY: `artifact` was produced by this engine just now.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((component, CacheOutcome::Compiled))
    }

    /// The component in the file `name` at `path`, if there is one and its
    /// tag checks out; a file that does not is discarded.
    fn cached(&self, engine: &Engine, key: &Key, name: &str, path: &Path) -> Option<Component> {
        let file = match read_regular(path, false) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                self.discard(path, &err.to_string());
                return None;
            }
        };
        let refusal = match key.unseal(name, &file) {
            // SAFETY: the bytes carry a tag made with this cache's key over
            // this file name, so this host wrote them (see the module docs
            // for who else could have).
            Ok(artifact) => match unsafe { Component::deserialize(engine, artifact) } {
                Ok(component) => return Some(component),
                Err(err) => format!("wasmtime cannot load it: {err}"),
            },
            Err(why) => why.to_owned(),
        };
        self.discard(path, &refusal);
        None
    }

    /// Logs why the file at `path` is not used, and removes it when the
    /// cache is writable.
    fn discard(&self, path: &Path, why: &str) {
        if self.writable {
            tracing::warn!(path = %path.display(), reason = why,
                "discarding compiled-module cache entry; compiling the module again");
            let _ = std::fs::remove_file(path);
        } else {
            tracing::debug!(path = %path.display(), reason = why,
                "unusable compiled-module cache entry (read-only cache: left)");
        }
    }

    /// The key of the cache in `dir`: read, or created when missing (or
    /// replaced when unfit) if the cache is writable. `None`: no cache file
    /// can be trusted or written.
    fn key(&self, dir: &Path) -> Option<Key> {
        let path = dir.join(KEY_FILE);
        let unfit = match read_regular(&path, true) {
            Ok(bytes) => match Key::from_bytes(&bytes) {
                Some(key) => return Some(key),
                None => Some(format!("{} bytes, not {KEY_LEN}", bytes.len())),
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => Some(err.to_string()),
        };
        if !self.writable {
            if let Some(why) = unfit {
                tracing::debug!(path = %path.display(), reason = why,
                    "unusable compiled-module cache key (read-only cache: not used)");
            }
            return None;
        }
        if let Some(why) = unfit {
            tracing::warn!(path = %path.display(), reason = why,
                "replacing the compiled-module cache key; cached modules will be compiled again");
            let _ = std::fs::remove_file(&path);
        }
        match create_key(dir, &path) {
            Ok(key) => Some(key),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err,
                    "cannot write compiled-module cache; continuing without it");
                None
            }
        }
    }
}

/// A cache's HMAC key, ready to tag.
struct Key(Hmac<Sha256>);

impl Key {
    fn from_bytes(bytes: &[u8]) -> Option<Key> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        Hmac::new_from_slice(bytes).ok().map(Key)
    }

    /// The tag of `artifact` stored as the file `name`.
    fn tag(&self, name: &str, artifact: &[u8]) -> [u8; TAG_LEN] {
        self.mac(name, artifact).finalize().into_bytes().into()
    }

    fn mac(&self, name: &str, artifact: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(MAGIC);
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(artifact);
        mac
    }

    /// The artifact in `file`, the cache file `name`, if its tag is right.
    fn unseal<'a>(&self, name: &str, file: &'a [u8]) -> Result<&'a [u8], &'static str> {
        let sealed = file
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a cache file of this sluice version")?;
        let (tag, artifact) = sealed.split_at_checked(TAG_LEN).ok_or("truncated")?;
        self.mac(name, artifact)
            .verify_slice(tag)
            .map_err(|_| "its tag does not match: damaged, or not written by this host")?;
        Ok(artifact)
    }
}

/// Reads a regular file, neither following a link nor blocking on a FIFO;
/// `private`: only if it is owned by this (effective) user and has no group
/// or other permission bits.
fn read_regular(path: &Path, private: bool) -> std::io::Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let refuse = |why: String| Err(std::io::Error::other(why));
    if !meta.is_file() {
        return refuse("not a regular file".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if private && meta.uid() != me {
        return refuse(format!(
            "owned by uid {}, not by this user ({me})",
            meta.uid()
        ));
    }
    if private && meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "mode {:o}: others may read or write it",
            meta.mode() & 0o777
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Creates the key of the cache in `dir` at `path`: 32 random bytes, mode
/// 0600, written whole before it appears under its name. Another process
/// that created it first wins; its key is used.
fn create_key(dir: &Path, path: &Path) -> std::io::Result<Key> {
    let mut bytes = [0u8; KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(std::io::Error::other)?;
    create_dir(dir)?;
    // tempfile creates files with mode 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    let bytes = match tmp.persist_noclobber(path) {
        Ok(_) => bytes.to_vec(),
        Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => {
            read_regular(path, true)?
        }
        Err(err) => return Err(err.error),
    };
    Key::from_bytes(&bytes)
        .ok_or_else(|| std::io::Error::other("another process wrote an unfit key"))
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

/// The cache directory, created for this user only when missing.
fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `parts` to a temporary file in `dir` and renames it to `path`.
fn store(dir: &Path, path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    create_dir(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    for part in parts {
        tmp.write_all(part)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Gives the memory a compile freed back to the system. Cranelift frees
/// what it allocated when a compile ends, but glibc keeps freed memory in
/// its arenas (one per compiling thread): without this, a host that
/// compiled its modules at a first start stays ~16 MiB larger until it
/// restarts.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heaps; it has no
    // preconditions and is thread-safe.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Two components that differ (an empty one, and one with a custom
    /// section), written as bytes: no WAT parser needed.
    const A: &[u8] = b"\0asm\x0d\0\x01\0";
    const B: &[u8] = b"\0asm\x0d\0\x01\0\x00\x02\x01b";

    fn load(cache: &ModuleCache, engine: &Engine, wasm: &[u8]) -> CacheOutcome {
        cache
            .load(engine, wasm, &module_hash(wasm))
            .expect("loads")
            .1
    }

    fn name(engine: &Engine, wasm: &[u8]) -> String {
        format!("{}.cwasm", cache_key(engine, &module_hash(wasm)))
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).expect("read")
    }

    /// A writable cache in a fresh directory, with A and B compiled into it.
    fn filled() -> (tempfile::TempDir, ModuleCache, Engine) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ModuleCache::new(Some(dir.path().to_owned()));
        let engine = Engine::default();
        assert_eq!(load(&cache, &engine, A), CacheOutcome::Compiled);
        assert_eq!(load(&cache, &engine, B), CacheOutcome::Compiled);
        (dir, cache, engine)
    }

    #[test]
    fn a_flipped_byte_is_refused_and_the_module_recompiled() {
        let (dir, cache, engine) = filled();
        assert_eq!(load(&cache, &engine, A), CacheOutcome::Hit);
        let path = dir.path().join(name(&engine, A));
        let mut file = read(&path);
        // In the artifact, past the header and the tag.
        let middle = MAGIC.len() + TAG_LEN + (file.len() - MAGIC.len() - TAG_LEN) / 2;
        file[middle] ^= 0x01;
        std::fs::write(&path, &file).expect("write");
        assert_eq!(load(&cache, &engine, A), CacheOutcome::Compiled);
        assert_ne!(read(&path), file, "rewritten");
        assert_eq!(load(&cache, &engine, A), CacheOutcome::Hit);
    }

    /// B's artifact is valid machine code for this engine: had it reached
    /// `Component::deserialize`, A's load would have been a `Hit` (running
    /// B's code). Under A's name — as B's own file, with a tag made with
    /// another key, or bare (what a file of old sluice or of an attacker
    /// is) — it is refused and A compiled.
    #[test]
    fn a_file_whose_tag_does_not_match_is_never_deserialized() {
        let (dir, cache, engine) = filled();
        let a = dir.path().join(name(&engine, A));
        let b_file = read(&dir.path().join(name(&engine, B)));
        let b_artifact = &b_file[MAGIC.len() + TAG_LEN..];
        let other_key = Key::from_bytes(&[7; KEY_LEN]).expect("a key");
        let forged = [
            MAGIC.as_slice(),
            &other_key.tag(&name(&engine, A), b_artifact),
            b_artifact,
        ]
        .concat();
        for planted in [b_file.clone(), forged, b_artifact.to_vec()] {
            std::fs::write(&a, &planted).expect("plant");
            assert_eq!(load(&cache, &engine, A), CacheOutcome::Compiled);
            assert_ne!(read(&a), planted);
            assert_eq!(load(&cache, &engine, A), CacheOutcome::Hit);
        }
    }

    /// The key is 32 bytes only this user may read; one that others may
    /// read or write (or that is a link) is replaced, and what was tagged
    /// with it compiled again.
    #[test]
    fn the_key_is_private_and_replaced_when_it_is_not() {
        let (dir, cache, engine) = filled();
        let key = dir.path().join(KEY_FILE);
        let meta = std::fs::symlink_metadata(&key).expect("the key");
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let first = read(&key);

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(load(&cache, &engine, A), CacheOutcome::Compiled);
        let second = read(&key);
        assert_ne!(second, first);
        let meta = std::fs::symlink_metadata(&key).expect("the key");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(load(&cache, &engine, A), CacheOutcome::Hit);

        // A link to a private file with a key someone knows.
        let known = dir.path().join("known");
        std::fs::write(&known, [7; KEY_LEN]).expect("write");
        std::fs::set_permissions(&known, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::remove_file(&key).expect("rm");
        std::os::unix::fs::symlink(&known, &key).expect("symlink");
        assert_eq!(load(&cache, &engine, A), CacheOutcome::Compiled);
        assert!(std::fs::symlink_metadata(&key).expect("key").is_file());
        assert_ne!(read(&key), read(&known));
    }

    /// A read-only cache loads what verifies, and creates, rewrites and
    /// removes nothing.
    #[test]
    fn a_read_only_cache_verifies_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::default();
        let missing = dir.path().join("cache");
        let read_only = ModuleCache::read_only(Some(missing.clone()));
        assert_eq!(load(&read_only, &engine, A), CacheOutcome::Compiled);
        assert!(!missing.exists());

        assert_eq!(
            load(&ModuleCache::new(Some(missing.clone())), &engine, A),
            CacheOutcome::Compiled
        );
        assert_eq!(load(&read_only, &engine, A), CacheOutcome::Hit);
        let path = missing.join(name(&engine, A));
        let mut file = read(&path);
        let last = file.len() - 1;
        file[last] ^= 0x01;
        std::fs::write(&path, &file).expect("write");
        assert_eq!(load(&read_only, &engine, A), CacheOutcome::Compiled);
        assert_eq!(read(&path), file, "left as it was");
    }
}
