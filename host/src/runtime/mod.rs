//! The sandboxed Wasm runtime that runs transforms.
//!
//! One [`Runtime`] per host process owns the wasmtime [`Engine`], the
//! [`Linker`] (the only things a guest may import: the `log` interface and an
//! inert WASI with no files, environment, arguments or sockets) and the
//! epoch ticker that enforces per-call deadlines.
//!
//! A [`Module`] is a validated, compiled component ready to instantiate
//! (an `InstancePre`). A [`TransformInstance`] is one live instance in its own
//! [`Store`], reused across calls. Loading the same module bytes again while
//! a [`Module`] of them is alive returns that module
//! ([`CacheOutcome::Shared`]): pipelines running one transform with
//! different configs share its machine code (~0.6 MiB for json-telemetry)
//! instead of each holding a copy; their instances, stores and memories stay
//! separate. The sandbox guarantees:
//!
//! * **Deadline**: every call has a budget of CPU time on its worker thread;
//!   a guest that spins is interrupted with a trap ([`TrapKind::Timeout`]).
//!   The epoch ticker only decides *when to look*: when a call has run for
//!   its budget in wall-clock time, the deadline callback reads the thread's
//!   CPU clock and extends the deadline by what is left of the budget. Time
//!   the OS did not run the worker (a loaded box) is not charged to the
//!   guest, so a busy machine does not drop good frames; a call still ends
//!   after [`WALL_CAP_FACTOR`] × its budget in wall time, whatever happened.
//!   Reading the thread's CPU clock is a system call (the vDSO does not
//!   serve per-thread clocks), which cost ~6 % of a small call; calls that
//!   start within [`CPU_ORIGIN_MAX_AGE`] of the last reading on the same
//!   thread reuse it as their origin, so a call may be charged up to that
//!   much CPU time of its predecessors.
//! * **Memory cap**: linear memory beyond the cap makes `memory.grow` trap
//!   ([`TrapKind::MemoryLimit`]).
//! * **Stack**: wasmtime's `max_wasm_stack` turns runaway recursion into a
//!   trap ([`TrapKind::StackOverflow`]).
//! * **Recovery**: after any trap the instance is poisoned, so the next call
//!   builds a fresh instance (and runs `init` again). A trap costs only the
//!   frame being processed.
//!
//! Calls are synchronous: pipelines run transforms on their own OS threads
//! (see [`crate::pipeline`]), so a slow guest never blocks the async runtime.
//!
//! Two versions of the contract load side by side ([`SUPPORTED_WIT_VERSIONS`]):
//! `sluice:transform@0.2.0`, which the SDK builds, returns each frame's
//! output as one postcard buffer ([`packed`]); `0.1.0` returns it as WIT
//! records. A module is bound to the newest version it exports.

mod cache;
pub mod packed;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use cache::{CacheOutcome, ModuleCache, module_hash};

use crate::model::{self, Frame, TransformOutput};

/// Bindings of `sluice:transform@0.1.0`: output as WIT records.
mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "sluice:transform/transform-module",
    });
    pub use self::sluice::transform::{log, types as wit};
}

/// Bindings of `sluice:transform@0.2.0`: output as one packed buffer.
mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "sluice:transform/transform-module",
    });
    pub use self::sluice::transform::{log, types as wit};
}

/// The WIT versions this host can load, newest first.
pub const SUPPORTED_WIT_VERSIONS: &[&str] = &["sluice:transform@0.2.0", "sluice:transform@0.1.0"];

/// How often the epoch ticker advances; deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// However starved the worker thread is, a call ends after this many times
/// its budget in wall-clock time.
pub const WALL_CAP_FACTOR: u32 = 50;

/// How old (in wall time) the CPU-clock reading a call uses as its origin
/// may be: at most this much of earlier calls' CPU time is charged to it.
pub const CPU_ORIGIN_MAX_AGE: Duration = Duration::from_millis(1);

/// Limits applied to every call of every instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU-time budget per call (on the worker thread; see the module docs).
    pub call_timeout: Duration,
    /// Maximum linear memory per instance, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(100),
            memory_bytes: 32 << 20,
        }
    }
}

/// Errors from loading or instantiating a module.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read module {path}: {source}")]
    Read {
        /// The module path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a valid component, or it failed to compile.
    #[error("not a valid Wasm component: {0:#}")]
    Compile(wasmtime::Error),
    /// The component does not fit the host: missing exports, foreign imports.
    #[error(
        "module does not implement a supported transform contract ({supported}), {0}: {1:#}",
        supported = SUPPORTED_WIT_VERSIONS.join(", ")
    )]
    Contract(&'static str, wasmtime::Error),
    /// Instantiation trapped or failed.
    #[error("cannot instantiate module: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The guest's `init` refused its configuration.
    #[error("transform init failed: {0}")]
    Init(GuestError),
    /// `init` trapped.
    #[error("transform init trapped ({kind}): {message}")]
    InitTrap {
        /// Classified trap.
        kind: TrapKind,
        /// wasmtime's message.
        message: String,
    },
}

/// A typed error a guest returned (not a trap).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct GuestError {
    /// The WIT variant case.
    pub kind: GuestErrorKind,
    /// The guest's message.
    pub message: String,
}

/// The cases of the WIT `error` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestErrorKind {
    /// Input not in the expected format.
    Malformed,
    /// Well-formed but not handled.
    Unsupported,
    /// Bad configuration.
    InvalidConfig,
    /// A bug in the transform.
    Internal,
}

impl GuestErrorKind {
    /// Stable label for metrics and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestErrorKind::Malformed => "malformed",
            GuestErrorKind::Unsupported => "unsupported",
            GuestErrorKind::InvalidConfig => "invalid_config",
            GuestErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for GuestErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` variant is the same in every contract version.
macro_rules! guest_error_from {
    ($($wit:ident),*) => {$(
        impl From<$wit::wit::Error> for GuestError {
            fn from(e: $wit::wit::Error) -> Self {
                use $wit::wit::Error as E;
                let (kind, message) = match e {
                    E::Malformed(m) => (GuestErrorKind::Malformed, m),
                    E::Unsupported(m) => (GuestErrorKind::Unsupported, m),
                    E::InvalidConfig(m) => (GuestErrorKind::InvalidConfig, m),
                    E::Internal(m) => (GuestErrorKind::Internal, m),
                };
                GuestError { kind, message }
            }
        }
    )*};
}
guest_error_from!(v0_1, v0_2);

/// Why a call trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The call exceeded its deadline.
    Timeout,
    /// The guest tried to grow memory beyond the cap.
    MemoryLimit,
    /// Wasm stack exhausted.
    StackOverflow,
    /// `unreachable` — what a Rust guest's panic or abort turns into.
    Panic,
    /// Out-of-bounds linear memory access: a bug, or a Rust guest's shadow
    /// stack (which lives in linear memory) running out.
    MemoryFault,
    /// Any other trap (out-of-bounds access, bad conversion, host error).
    Other,
}

impl TrapKind {
    /// Stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Timeout => "timeout",
            TrapKind::MemoryLimit => "memory_limit",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::Panic => "panic",
            TrapKind::MemoryFault => "memory_fault",
            TrapKind::Other => "trap",
        }
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame produced no output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// The guest returned a typed error.
    #[error("{0}")]
    Guest(GuestError),
    /// The guest trapped; the instance will be replaced.
    #[error("transform trapped ({kind}): {message}")]
    Trap {
        /// Classified trap.
        kind: TrapKind,
        /// wasmtime's message.
        message: String,
    },
    /// The guest broke the contract (e.g. a batch result of the wrong length).
    #[error("transform broke the contract: {0}")]
    Contract(String),
    /// A fresh instance could not be created after a trap.
    #[error("cannot recreate the transform instance: {0}")]
    Reinstantiate(String),
}

impl ProcessError {
    /// Stable label for the drop counter.
    pub fn reason(&self) -> &'static str {
        match self {
            ProcessError::Guest(e) => match e.kind {
                GuestErrorKind::Malformed => "decode_malformed",
                GuestErrorKind::Unsupported => "decode_unsupported",
                GuestErrorKind::InvalidConfig => "decode_invalid_config",
                GuestErrorKind::Internal => "decode_internal",
            },
            ProcessError::Trap { kind, .. } => match kind {
                TrapKind::Timeout => "trap_timeout",
                TrapKind::MemoryLimit => "trap_memory_limit",
                TrapKind::StackOverflow => "trap_stack_overflow",
                TrapKind::Panic => "trap_panic",
                TrapKind::MemoryFault => "trap_memory_fault",
                TrapKind::Other => "trap_other",
            },
            ProcessError::Contract(_) => "contract_violation",
            ProcessError::Reinstantiate(_) => "instance_unavailable",
        }
    }
}

/// A frame the transform did not turn into output, with the reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Why.
    pub error: ProcessError,
    /// The frame, unchanged, for dead-lettering.
    pub frame: Frame,
}

/// Per-store state: the inert WASI context, the memory limiter, and the
/// identity used in guest log lines.
struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    log: GuestLog,
    budget: CallBudget,
}

/// The running call's CPU budget (see the module docs, "Deadline").
struct CallBudget {
    /// The budget per call.
    limit: Duration,
    /// The worker thread's CPU clock at the call's start, or up to
    /// [`CPU_ORIGIN_MAX_AGE`] before it (see [`CallBudget::start`]).
    cpu_at_start: Duration,
    /// When and on which thread `cpu_at_start` was read.
    sampled: Option<(Instant, ThreadId)>,
    /// Wall-clock deadline checks so far in this call.
    checks: u32,
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID). The
/// clock cannot fail for the calling thread on Linux; should it, the zero
/// makes the budget fall back to wall-clock time.
fn thread_cpu_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

impl CallBudget {
    fn new(limit: Duration) -> Self {
        CallBudget {
            limit,
            cpu_at_start: Duration::ZERO,
            sampled: None,
            checks: 0,
        }
    }

    /// Starts a call with budget `limit` at wall time `now` on the calling
    /// thread. The CPU clock is read again only when the last reading is
    /// older than [`CPU_ORIGIN_MAX_AGE`] or from another thread (an
    /// instance validated on the blocking pool, then run by its worker).
    fn start(&mut self, limit: Duration, now: Instant, read_cpu: impl FnOnce() -> Duration) {
        self.limit = limit;
        self.checks = 0;
        let thread = std::thread::current().id();
        let fresh = self.sampled.is_some_and(|(at, on)| {
            on == thread && now.saturating_duration_since(at) <= CPU_ORIGIN_MAX_AGE
        });
        if !fresh {
            self.cpu_at_start = read_cpu();
            self.sampled = Some((now, thread));
        }
    }

    /// Epoch ticks covering `duration` (+1: the current tick may be about to
    /// end).
    fn ticks(duration: Duration) -> u64 {
        u64::try_from(duration.as_nanos().div_ceil(EPOCH_TICK.as_nanos()))
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Called when the call has run for its remaining budget in wall time:
    /// interrupt if it used the budget in CPU time (or hit the wall-clock
    /// cap), else look again when the rest of the budget could be used up.
    fn on_deadline(&mut self, cpu_now: Duration) -> wasmtime::UpdateDeadline {
        self.checks += 1;
        let used = cpu_now.saturating_sub(self.cpu_at_start);
        // Checks come at least one budget of wall time apart.
        if used >= self.limit || self.checks >= WALL_CAP_FACTOR {
            return wasmtime::UpdateDeadline::Interrupt;
        }
        wasmtime::UpdateDeadline::Continue(Self::ticks(self.limit - used))
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that it did, so the resulting trap can
/// be reported as [`TrapKind::MemoryLimit`] rather than a generic error.
struct MemoryLimiter {
    max_bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            wasmtime::bail!(
                "memory limit: guest asked for {desired} bytes, cap is {}",
                self.max_bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond
        // any sane transform and bounds host memory.
        Ok(desired <= 1_000_000)
    }
}

/// Rate-limited sink for the guest's `log` import.
struct GuestLog {
    transform: Arc<str>,
    limiter: crate::ratelimit::RateLimiter,
}

/// The `log` interface is the same in every contract version.
macro_rules! guest_log_host {
    ($($wit:ident),*) => {$(
        impl $wit::log::Host for GuestState {
            fn log(&mut self, level: $wit::log::Level, message: String) {
                use $wit::log::Level as L;
                let level = match level {
                    L::Trace => tracing::Level::TRACE,
                    L::Debug => tracing::Level::DEBUG,
                    L::Info => tracing::Level::INFO,
                    L::Warn => tracing::Level::WARN,
                    L::Error => tracing::Level::ERROR,
                };
                self.guest_log(level, message);
            }
        }

        impl $wit::wit::Host for GuestState {}
    )*};
}
guest_log_host!(v0_1, v0_2);

impl GuestState {
    /// A line from the guest's `log` import: truncated, rate-limited.
    fn guest_log(&mut self, level: tracing::Level, mut message: String) {
        const MAX_LEN: usize = 1024;
        if !self.log.limiter.allow() {
            return;
        }
        if message.len() > MAX_LEN {
            let mut end = MAX_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let transform = &*self.log.transform;
        match level {
            tracing::Level::TRACE => {
                tracing::trace!(target: "sluice::guest", transform, "{message}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "sluice::guest", transform, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "sluice::guest", transform, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "sluice::guest", transform, "{message}")
            }
            tracing::Level::ERROR => {
                tracing::error!(target: "sluice::guest", transform, "{message}")
            }
        }
    }
}

/// The engine, linker and epoch ticker shared by all transforms of a host.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<GuestState>,
    cache: ModuleCache,
    /// Modules alive somewhere in the host, by module hash; an entry dies
    /// with the last [`Module`] of it (pruned on the next load).
    loaded: Mutex<HashMap<Arc<str>, Weak<LoadedModule>>>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker thread.
    pub fn new(cache: ModuleCache) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Keep the guest stack well below the host thread's stack.
        config.max_wasm_stack(512 << 10);
        // Enough frames to locate a bug, without a 10,000-line message
        // (and capture cost) after a runaway recursion.
        config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(16));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // WASI is linked so that Rust std guests instantiate, but the context
        // built in `new_store` grants nothing: no preopens, env, args, sockets.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        v0_1::TransformModule::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        v0_2::TransformModule::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;

        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                loaded: Mutex::new(HashMap::new()),
                ticker_stop,
            }),
        })
    }

    /// The wasmtime engine (for benchmarks and diagnostics).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Reads, compiles (or loads from cache) and links a module file.
    pub fn load_file(&self, path: &Path) -> Result<Module, LoadError> {
        let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load_bytes(&wasm)
    }

    /// Compiles (or loads from cache) and links a module given as bytes, or
    /// returns the [`Module`] of the same bytes if one is alive.
    pub fn load_bytes(&self, wasm: &[u8]) -> Result<Module, LoadError> {
        let hash: Arc<str> = module_hash(wasm).into();
        if let Some(shared) = self.alive(&hash) {
            return Ok(Module {
                shared,
                cache: CacheOutcome::Shared,
                runtime: self.clone(),
            });
        }
        let (component, cache) = self
            .inner
            .cache
            .load(&self.inner.engine, wasm, &hash)
            .map_err(LoadError::Compile)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Contract("unsatisfied imports", e))?;
        // Bound to the newest contract it exports.
        let pre = match v0_2::TransformModulePre::new(instance_pre.clone()) {
            Ok(pre) => Pre::V0_2(pre),
            Err(newest) => match v0_1::TransformModulePre::new(instance_pre) {
                Ok(pre) => Pre::V0_1(pre),
                Err(_) => return Err(LoadError::Contract("missing exports", newest)),
            },
        };
        let shared = Arc::new(LoadedModule {
            pre,
            hash: hash.clone(),
        });
        // Two threads loading the same new module at once both compile it;
        // the later one's entry wins, and both modules work.
        self.registry().insert(hash, Arc::downgrade(&shared));
        Ok(Module {
            shared,
            cache,
            runtime: self.clone(),
        })
    }

    /// The live module with this hash, pruning the registry of dead ones.
    fn alive(&self, hash: &str) -> Option<Arc<LoadedModule>> {
        let mut loaded = self.registry();
        loaded.retain(|_, module| module.strong_count() > 0);
        loaded.get(hash).and_then(Weak::upgrade)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Weak<LoadedModule>>> {
        // The map holds no invariant a panic could break halfway.
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn new_store(&self, transform: &Arc<str>, limits: &Limits) -> Store<GuestState> {
        let state = GuestState {
            // Nothing is granted: no preopened dirs, no env, no args, no
            // network (the default socket check denies every address).
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: limits.memory_bytes,
                hit: false,
            },
            budget: CallBudget::new(limits.call_timeout),
            log: GuestLog {
                transform: transform.clone(),
                limiter: crate::ratelimit::RateLimiter::new(20, Duration::from_secs(1)),
            },
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut context| {
            Ok(context.data_mut().budget.on_deadline(thread_cpu_time()))
        });
        store
    }
}

/// A compiled component that passed the contract check, ready to instantiate.
#[derive(Clone)]
pub struct Module {
    shared: Arc<LoadedModule>,
    cache: CacheOutcome,
    runtime: Runtime,
}

/// What every [`Module`] of the same bytes shares (see the module docs).
struct LoadedModule {
    pre: Pre,
    hash: Arc<str>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("hash", &self.shared.hash)
            .field("cache", &self.cache)
            .finish()
    }
}

/// A module's pre-instantiated bindings, by contract version.
#[derive(Clone)]
enum Pre {
    V0_1(v0_1::TransformModulePre<GuestState>),
    V0_2(v0_2::TransformModulePre<GuestState>),
}

/// A live instance's bindings, by contract version.
enum Bindings {
    V0_1(v0_1::TransformModule),
    V0_2(v0_2::TransformModule),
}

impl Module {
    /// The contract version the module implements, e.g.
    /// `sluice:transform@0.2.0` (one of [`SUPPORTED_WIT_VERSIONS`]).
    pub fn contract(&self) -> &'static str {
        match self.shared.pre {
            Pre::V0_1(_) => "sluice:transform@0.1.0",
            Pre::V0_2(_) => "sluice:transform@0.2.0",
        }
    }

    /// SHA-256 of the module bytes.
    pub fn hash(&self) -> &str {
        &self.shared.hash
    }

    /// Whether it came from the `.cwasm` cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// Instantiates the module and runs `init` with `config`.
    pub fn instantiate(
        &self,
        transform: &str,
        config: &[(String, String)],
        limits: Limits,
    ) -> Result<TransformInstance, LoadError> {
        let name: Arc<str> = transform.into();
        let live = self.fresh_instance(&name, config, &limits)?;
        Ok(TransformInstance {
            module: self.clone(),
            name,
            config: config.to_vec(),
            limits,
            live: Some(live),
        })
    }

    fn fresh_instance(
        &self,
        name: &Arc<str>,
        config: &[(String, String)],
        limits: &Limits,
    ) -> Result<Live, LoadError> {
        let mut store = self.runtime.new_store(name, limits);
        set_deadline(&mut store, limits);
        let bindings = match &self.shared.pre {
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Bindings::V0_1),
            Pre::V0_2(pre) => pre.instantiate(&mut store).map(Bindings::V0_2),
        }
        .map_err(LoadError::Instantiate)?;
        set_deadline(&mut store, limits);
        let init = match &bindings {
            Bindings::V0_1(b) => b
                .sluice_transform_transform()
                .call_init(&mut store, config)
                .map(|r| r.map_err(GuestError::from)),
            Bindings::V0_2(b) => b
                .sluice_transform_transform()
                .call_init(&mut store, config)
                .map(|r| r.map_err(GuestError::from)),
        };
        match init {
            Ok(Ok(())) => Ok(Live { store, bindings }),
            Ok(Err(e)) => Err(LoadError::Init(e)),
            Err(trap) => {
                let kind = classify_trap(&trap, &store);
                Err(LoadError::InitTrap {
                    kind,
                    message: trap_message(&trap),
                })
            }
        }
    }
}

/// A live instance with its store.
struct Live {
    store: Store<GuestState>,
    bindings: Bindings,
}

/// One transform instance, reused across calls and rebuilt after a trap.
pub struct TransformInstance {
    module: Module,
    name: Arc<str>,
    config: Vec<(String, String)>,
    limits: Limits,
    /// `None` after a trap until the next call rebuilds it.
    live: Option<Live>,
}

impl TransformInstance {
    /// The module this instance runs.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Decodes one frame. A trap poisons the instance; the next call gets a
    /// fresh one. On failure the frame is handed back (for dead-lettering).
    pub fn process(&mut self, frame: Frame) -> Result<TransformOutput, Rejected> {
        let limits = self.limits;
        let live = match self.live() {
            Ok(live) => live,
            Err(error) => return Err(Rejected { error, frame }),
        };
        let (source, received_at_ns) = (frame.source.clone(), frame.received_at_ns);
        set_deadline(&mut live.store, &limits);
        // Each arm hands the frame's bytes back with the result.
        let (result, data) = match &live.bindings {
            Bindings::V0_1(b) => {
                let input = wit_frame!(v0_1, frame);
                let result = b
                    .sluice_transform_transform()
                    .call_process(&mut live.store, &input)
                    .map(from_v0_1);
                (result, input.data)
            }
            Bindings::V0_2(b) => {
                let input = wit_frame!(v0_2, frame);
                let result = b
                    .sluice_transform_transform()
                    .call_process(&mut live.store, &input)
                    .map(from_v0_2);
                (result, input.data)
            }
        };
        let error = match result {
            Ok(Ok(output)) => return Ok(output),
            Ok(Err(error)) => error,
            Err(trap) => self.poison(&trap),
        };
        Err(Rejected {
            error,
            frame: Frame {
                source,
                received_at_ns,
                data,
            },
        })
    }

    /// Decodes many frames in one guest call; one result per frame.
    pub fn process_batch(
        &mut self,
        frames: Vec<Frame>,
    ) -> Result<Vec<Result<TransformOutput, ProcessError>>, ProcessError> {
        let limits = self.limits;
        let live = self.live()?;
        let count = frames.len();
        set_deadline(&mut live.store, &limits);
        let result = match &live.bindings {
            Bindings::V0_1(b) => {
                let input: Vec<_> = frames.into_iter().map(|f| wit_frame!(v0_1, f)).collect();
                b.sluice_transform_transform()
                    .call_process_batch(&mut live.store, &input)
                    .map(|results| results.into_iter().map(from_v0_1).collect::<Vec<_>>())
            }
            Bindings::V0_2(b) => {
                let input: Vec<_> = frames.into_iter().map(|f| wit_frame!(v0_2, f)).collect();
                b.sluice_transform_transform()
                    .call_process_batch(&mut live.store, &input)
                    .map(|results| results.into_iter().map(from_v0_2).collect::<Vec<_>>())
            }
        };
        match result {
            Ok(results) if results.len() == count => Ok(results),
            Ok(results) => Err(ProcessError::Contract(format!(
                "process-batch returned {} results for {count} frames",
                results.len()
            ))),
            Err(trap) => Err(self.poison(&trap)),
        }
    }

    /// Encodes a downlink command into bytes for the serial line.
    pub fn encode_command(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<u8>, ProcessError> {
        let limits = self.limits;
        let live = self.live()?;
        set_deadline(&mut live.store, &limits);
        let result = match &live.bindings {
            Bindings::V0_1(b) => {
                let command = v0_1::wit::Command {
                    topic: topic.to_owned(),
                    payload: payload.to_vec(),
                };
                b.sluice_transform_transform()
                    .call_encode_command(&mut live.store, &command)
                    .map(|r| r.map_err(guest_error))
            }
            Bindings::V0_2(b) => {
                let command = v0_2::wit::Command {
                    topic: topic.to_owned(),
                    payload: payload.to_vec(),
                };
                b.sluice_transform_transform()
                    .call_encode_command(&mut live.store, &command)
                    .map(|r| r.map_err(guest_error))
            }
        };
        match result {
            Ok(result) => result,
            Err(trap) => Err(self.poison(&trap)),
        }
    }

    fn live(&mut self) -> Result<&mut Live, ProcessError> {
        if self.live.is_none() {
            let fresh = self
                .module
                .fresh_instance(&self.name, &self.config, &self.limits)
                .map_err(|e| ProcessError::Reinstantiate(e.to_string()))?;
            self.live = Some(fresh);
        }
        // Just ensured above.
        self.live
            .as_mut()
            .ok_or_else(|| ProcessError::Reinstantiate("no instance".into()))
    }

    /// Drops the trapped instance and classifies the trap.
    fn poison(&mut self, trap: &wasmtime::Error) -> ProcessError {
        let kind = match &self.live {
            Some(live) => classify_trap(trap, &live.store),
            None => TrapKind::Other,
        };
        self.live = None;
        ProcessError::Trap {
            kind,
            message: trap_message(trap),
        }
    }
}

/// Starts a call's budget: the first look at its CPU time comes after the
/// whole budget in wall time (a call cannot use more CPU than wall time).
fn set_deadline(store: &mut Store<GuestState>, limits: &Limits) {
    store
        .data_mut()
        .budget
        .start(limits.call_timeout, Instant::now(), thread_cpu_time);
    store.set_epoch_deadline(CallBudget::ticks(limits.call_timeout));
}

fn classify_trap(err: &wasmtime::Error, store: &Store<GuestState>) -> TrapKind {
    if store.data().limiter.hit {
        return TrapKind::MemoryLimit;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => TrapKind::Timeout,
        Some(Trap::StackOverflow) => TrapKind::StackOverflow,
        Some(Trap::UnreachableCodeReached) => TrapKind::Panic,
        Some(Trap::MemoryOutOfBounds) => TrapKind::MemoryFault,
        _ => TrapKind::Other,
    }
}

/// A one-line description of a trap: the trap itself and the innermost
/// guest frame, not the whole backtrace.
fn trap_message(err: &wasmtime::Error) -> String {
    let what = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    let frame = err
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| bt.frames().first())
        .map(|f| match f.func_name() {
            Some(name) => format!(" in {name}"),
            None => format!(" in wasm function {}", f.func_index()),
        })
        .unwrap_or_default();
    format!("{what}{frame}")
}

/// A host frame as the WIT `frame` record of contract module `$v` (the
/// record is the same in every version); moves the bytes.
macro_rules! wit_frame {
    ($v:ident, $frame:expr) => {{
        let frame: Frame = $frame;
        $v::wit::Frame {
            source: frame.source.to_string(),
            received_at_ns: frame.received_at_ns,
            data: frame.data,
        }
    }};
}
use wit_frame;

/// A guest's typed error, of any contract version.
fn guest_error(e: impl Into<GuestError>) -> ProcessError {
    ProcessError::Guest(e.into())
}

/// A 0.1.0 `process` result in the host's terms.
fn from_v0_1(
    result: Result<v0_1::wit::Output, v0_1::wit::Error>,
) -> Result<TransformOutput, ProcessError> {
    result.map(convert_output).map_err(guest_error)
}

/// A 0.2.0 `process` result in the host's terms: a `packed-output` that
/// does not decode breaks the contract.
fn from_v0_2(result: Result<Vec<u8>, v0_2::wit::Error>) -> Result<TransformOutput, ProcessError> {
    let packed = result.map_err(guest_error)?;
    packed::decode(&packed).map_err(ProcessError::Contract)
}

/// Converts a 0.1.0 output (WIT records) into the host's model.
fn convert_output(output: v0_1::wit::Output) -> TransformOutput {
    use v0_1::wit;
    TransformOutput {
        messages: output
            .messages
            .into_iter()
            .map(|m| model::MqttMessage {
                topic: m.topic,
                payload: m.payload,
                qos: match m.qos {
                    wit::Qos::AtMostOnce => model::Qos::AtMostOnce,
                    wit::Qos::AtLeastOnce => model::Qos::AtLeastOnce,
                    wit::Qos::ExactlyOnce => model::Qos::ExactlyOnce,
                },
                retain: m.retain,
            })
            .collect(),
        points: output
            .points
            .into_iter()
            .map(|p| model::Point {
                measurement: p.measurement,
                tags: p.tags.into_iter().map(|t| (t.key, t.value)).collect(),
                fields: p
                    .fields
                    .into_iter()
                    .map(|f| {
                        let value = match f.value {
                            wit::FieldValue::Float(v) => model::FieldValue::Float(v),
                            wit::FieldValue::Int(v) => model::FieldValue::Int(v),
                            wit::FieldValue::Uint(v) => model::FieldValue::UInt(v),
                            wit::FieldValue::Boolean(v) => model::FieldValue::Bool(v),
                            wit::FieldValue::Text(v) => model::FieldValue::Text(v),
                        };
                        (f.key, value)
                    })
                    .collect(),
                timestamp_ns: p.timestamp_ns,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit_ms: u64, cpu_at_start_ms: u64) -> CallBudget {
        let mut b = CallBudget::new(Duration::from_millis(limit_ms));
        b.start(b.limit, Instant::now(), || {
            Duration::from_millis(cpu_at_start_ms)
        });
        b
    }

    #[test]
    fn calls_close_together_share_one_cpu_clock_reading() {
        let reads = std::cell::Cell::new(0);
        let clock = |ms| {
            reads.set(reads.get() + 1);
            Duration::from_millis(ms)
        };
        let mut b = CallBudget::new(Duration::from_millis(100));
        let t0 = Instant::now();
        b.start(b.limit, t0, || clock(10));
        b.start(b.limit, t0 + CPU_ORIGIN_MAX_AGE / 2, || clock(11));
        assert_eq!(
            (b.cpu_at_start, reads.get()),
            (Duration::from_millis(10), 1)
        );
        b.start(b.limit, t0 + CPU_ORIGIN_MAX_AGE * 2, || clock(12));
        assert_eq!(
            (b.cpu_at_start, reads.get()),
            (Duration::from_millis(12), 2)
        );
        assert_eq!(b.checks, 0);
        // Another thread's clock is never reused, however recent.
        let later = t0 + CPU_ORIGIN_MAX_AGE * 2;
        let b = std::thread::spawn(move || {
            b.start(b.limit, later, || Duration::from_millis(99));
            b
        })
        .join()
        .expect("thread");
        assert_eq!(b.cpu_at_start, Duration::from_millis(99));
    }

    #[test]
    fn a_call_that_used_its_budget_in_cpu_time_is_interrupted() {
        let mut b = budget(100, 1_000);
        assert!(matches!(
            b.on_deadline(Duration::from_millis(1_100)),
            wasmtime::UpdateDeadline::Interrupt
        ));
    }

    #[test]
    fn a_starved_call_gets_the_rest_of_its_budget() {
        // 100 ms of wall time passed but the thread ran for 30 ms only.
        let mut b = budget(100, 1_000);
        match b.on_deadline(Duration::from_millis(1_030)) {
            wasmtime::UpdateDeadline::Continue(ticks) => {
                assert_eq!(ticks, CallBudget::ticks(Duration::from_millis(70)));
            }
            _ => panic!("a starved call must go on"),
        }
        // Later it has used it all: interrupted.
        assert!(matches!(
            b.on_deadline(Duration::from_millis(1_100)),
            wasmtime::UpdateDeadline::Interrupt
        ));
    }

    #[test]
    fn however_starved_a_call_ends_at_the_wall_clock_cap() {
        let mut b = budget(100, 1_000);
        let mut checks = 0;
        while let wasmtime::UpdateDeadline::Continue(_) =
            b.on_deadline(Duration::from_millis(1_001))
        {
            checks += 1;
            assert!(checks < WALL_CAP_FACTOR, "no cap");
        }
        assert_eq!(checks + 1, WALL_CAP_FACTOR);
    }

    #[test]
    fn the_thread_cpu_clock_counts_work_not_waiting() {
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time() - before;
        assert!(slept < Duration::from_millis(20), "sleeping cost {slept:?}");
        let before = thread_cpu_time();
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        while wall.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spun = thread_cpu_time() - before;
        assert!(
            spun > Duration::ZERO && spun <= wall.elapsed(),
            "spinning cost {spun:?}"
        );
    }
}
