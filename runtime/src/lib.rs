//! The sandboxed Wasm runtime that runs transforms.
//!
//! Built on `sluice-core` (frames in, outputs out); knows nothing of ports,
//! pipelines or sinks. The host re-exports it as `sluice::runtime`.
//!
//! One [`Runtime`] per host process owns the wasmtime [`Engine`], the
//! [`Linker`] (the only things a guest may import: the `log` interface and an
//! inert WASI with no files, environment, arguments or sockets) and the
//! epoch ticker that enforces per-call deadlines (`epoch.rs`).
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
//!   CPU clock, and looks again at every tick until the call has used its
//!   budget in CPU time or ends (a call that ends in time needs no tick). Time
//!   the OS did not run the worker (a loaded box) is not charged to the
//!   guest, so a busy machine does not drop good frames; a call still ends
//!   after [`WALL_CAP_FACTOR`] × its budget in wall time, whatever happened.
//!   Reading the thread's CPU clock is a system call (the vDSO does not
//!   serve per-thread clocks), which cost ~6 % of a small call; calls that
//!   start within a tenth of their budget ([`CPU_ORIGIN_BUDGET_DIVISOR`])
//!   of the last reading on the same thread reuse it as their origin, so a
//!   call may be charged up to that much CPU time of its predecessors.
//! * **Memory cap**: linear memory beyond the cap makes `memory.grow` trap
//!   ([`TrapKind::MemoryLimit`]).
//! * **Stack**: wasmtime's `max_wasm_stack` turns runaway recursion into a
//!   trap ([`TrapKind::StackOverflow`]).
//! * **Recovery**: after any trap the instance is poisoned, so the next call
//!   builds a fresh instance (and runs `init` again). A trap costs only the
//!   frame being processed.
//!
//! Calls are synchronous: pipelines run transforms on their own OS threads
//! (the host's `pipeline` module), so a slow guest never blocks the async
//! runtime.
//!
//! Two versions of the contract load side by side ([`SUPPORTED_WIT_VERSIONS`]):
//! `sluice:transform@0.2.0`, which the SDK builds, returns each frame's
//! output as one postcard buffer ([`packed`]); `0.1.0` returns it as WIT
//! records. A module is bound to the newest version it exports.

mod cache;
mod epoch;
mod error;
mod guest_state;
pub mod output;
pub mod packed;
mod virtual_wasi;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use wasmtime::component::{
    ComponentExportIndex, Func, HasSelf, InstancePre, Linker, ResourceTable, TypedFunc,
};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use cache::{CacheOutcome, ModuleCache, module_hash};
pub use error::{GuestError, GuestErrorKind, LoadError, ProcessError, Rejected, TrapKind};
use guest_state::*;
pub use output::{Limit, OutputError, OutputLimits};

use epoch::{CallRunning, EpochTicker};
use output::{Budget, Bytes, WitCommand, WitError, WitFrame, WitOutputV01};
use sluice_core::model::{Frame, guest_text};
use sluice_core::output::TransformOutput;
use sluice_core::ratelimit::RateLimiter;
use sluice_core::sync::lock;
use virtual_wasi::CallClock;

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

/// However starved the worker thread is, a call ends after this many times
/// its budget in wall-clock time.
pub const WALL_CAP_FACTOR: u32 = 50;

/// How old (in wall time) the CPU-clock reading a call uses as its origin
/// may be, as a fraction of its budget: 1/10, so at most a tenth of the
/// budget of earlier calls' CPU time is charged to it. A tenth of the
/// default 100 ms covers calls 1–10 ms apart (100–1000 frames a second),
/// which would otherwise each make a system call.
pub const CPU_ORIGIN_BUDGET_DIVISOR: u32 = 10;

/// Limits applied to every call of every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU-time budget per call (on the worker thread; see the module docs).
    pub call_timeout: Duration,
    /// Maximum linear memory per instance (all its memories together), in
    /// bytes.
    pub memory_bytes: usize,
    /// What one frame's output may hold.
    pub output: OutputLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(100),
            memory_bytes: 32 << 20,
            output: OutputLimits::default(),
        }
    }
}

/// Core instances, tables and memories one instance may create: a Rust
/// component has a handful of each; these bound what a crafted one costs.
const MAX_CORE_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;
/// Table elements per instance, all tables together.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// WASI handles (streams, pollables) an instance may hold at once; each is
/// host memory outside the guest's cap (wasmtime allows a million). A
/// transform needs a handful; one more traps.
const MAX_RESOURCES: usize = 4096;

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
    /// The guest log's rate limiter of each pipeline (by transform name),
    /// shared by all its instances and versions.
    log_limits: Mutex<HashMap<Arc<str>, Arc<Mutex<RateLimiter>>>>,
    ticker: Arc<EpochTicker>,
}

/// Guest log lines per pipeline: a burst of this many per second.
const GUEST_LOG_PER_SECOND: u32 = 20;

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker thread.
    pub fn new(cache: ModuleCache) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // `perf` can name a guest's functions only from a map of the
        // compiled code, written to /tmp/perf-<pid>.map on request.
        if std::env::var_os("SLUICE_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        // Keep the guest stack well below the host thread's stack.
        config.max_wasm_stack(512 << 10);
        // Enough frames to locate a bug, without a 10,000-line message
        // (and capture cost) after a runaway recursion.
        config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(16));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // WASI is linked so that Rust std guests instantiate; what it lets
        // a guest see and do is `virtual_wasi`'s.
        virtual_wasi::add_to_linker(&mut linker)?;
        v0_1::TransformModule::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        v0_2::TransformModule::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let ticker = EpochTicker::start(&engine)?;

        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                loaded: Mutex::new(HashMap::new()),
                log_limits: Mutex::new(HashMap::new()),
                ticker,
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
        // Bound to the newest contract it exports (the exports' types are
        // checked when the first instance is made).
        let (contract, exports) = match Exports::find(&component, Contract::V0_2) {
            Ok(exports) => (Contract::V0_2, exports),
            Err(newest) => match Exports::find(&component, Contract::V0_1) {
                Ok(exports) => (Contract::V0_1, exports),
                Err(_) => return Err(LoadError::Contract("missing exports", newest)),
            },
        };
        let shared = Arc::new(LoadedModule {
            pre: instance_pre,
            contract,
            exports,
            hash: hash.clone(),
        });
        // Two threads loading the same new module at once both compile it;
        // the later one's entry wins, and both modules work.
        lock(&self.inner.loaded).insert(hash, Arc::downgrade(&shared));
        Ok(Module {
            shared,
            cache,
            runtime: self.clone(),
        })
    }

    /// The live module with this hash, pruning the registry of dead ones.
    fn alive(&self, hash: &str) -> Option<Arc<LoadedModule>> {
        let mut loaded = lock(&self.inner.loaded);
        loaded.retain(|_, module| module.strong_count() > 0);
        loaded.get(hash).and_then(Weak::upgrade)
    }

    /// The guest log limiter of transform `name` (see [`GuestLog`]).
    fn log_limit(&self, name: &Arc<str>) -> Arc<Mutex<RateLimiter>> {
        lock(&self.inner.log_limits)
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(RateLimiter::new(
                    GUEST_LOG_PER_SECOND,
                    Duration::from_secs(1),
                )))
            })
            .clone()
    }

    fn new_store(&self, transform: &Arc<str>, limits: &Limits) -> Store<GuestState> {
        let clock = Arc::new(CallClock::default());
        let log = GuestLog {
            transform: transform.clone(),
            limiter: self.log_limit(transform),
        };
        let state = GuestState {
            wasi: virtual_wasi::context(&clock, &log),
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_RESOURCES);
                table
            },
            clock,
            limiter: MemoryLimiter::new(limits.memory_bytes),
            budget: CallBudget::new(limits.call_timeout),
            log,
            epoch: self.inner.ticker.clone(),
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut context| {
            Ok(context
                .data_mut()
                .budget
                .on_deadline(thread_cpu_time(), Instant::now()))
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
    pre: InstancePre<GuestState>,
    contract: Contract,
    exports: Exports,
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

/// The contract versions a module can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contract {
    V0_1,
    V0_2,
}

impl Contract {
    fn name(self) -> &'static str {
        match self {
            Contract::V0_1 => "sluice:transform@0.1.0",
            Contract::V0_2 => "sluice:transform@0.2.0",
        }
    }
}

/// Where a component's `transform` functions are among its exports.
struct Exports {
    init: ComponentExportIndex,
    process: ComponentExportIndex,
    encode_command: ComponentExportIndex,
}

impl Exports {
    fn find(
        component: &wasmtime::component::Component,
        contract: Contract,
    ) -> wasmtime::Result<Self> {
        let interface = match contract {
            Contract::V0_1 => "sluice:transform/transform@0.1.0",
            Contract::V0_2 => "sluice:transform/transform@0.2.0",
        };
        let interface = component
            .get_export_index(None, interface)
            .ok_or_else(|| wasmtime::format_err!("no export {interface}"))?;
        let function = |name: &str| {
            component
                .get_export_index(Some(&interface), name)
                .ok_or_else(|| wasmtime::format_err!("no function {name}"))
        };
        Ok(Exports {
            init: function("init")?,
            process: function("process")?,
            encode_command: function("encode-command")?,
        })
    }
}

/// The parameter and result types of the contract's functions, as the host
/// calls them: results are lifted within the output limits ([`output`]).
type InitParams<'a> = (&'a [(String, String)],);
type InitResult = (Result<(), WitError>,);
type ProcessParams<'a> = (WitFrame<'a>,);
type ProcessResultV01 = (Result<WitOutputV01, WitError>,);
type BytesResult = (Result<Bytes, WitError>,);
type CommandParams<'a> = (WitCommand<'a>,);

impl Module {
    /// The contract version the module implements, e.g.
    /// `sluice:transform@0.2.0` (one of [`SUPPORTED_WIT_VERSIONS`]).
    pub fn contract(&self) -> &'static str {
        self.shared.contract.name()
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
    ///
    /// Runs on a thread of its own: wasmtime-wasi's synchronous bindings
    /// block on the *current* tokio runtime when the calling thread is in
    /// one, which panics on a runtime's own thread (a guest that prints or
    /// panics in `init` would take the host down). Instantiating is rare
    /// (start-up, a deploy), so the thread costs nothing that matters.
    pub fn instantiate(
        &self,
        transform: &str,
        config: &[(String, String)],
        limits: Limits,
    ) -> Result<TransformInstance, LoadError> {
        let name: Arc<str> = transform.into();
        let live = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("sluice-init".into())
                .spawn_scoped(scope, || self.fresh_instance(&name, config, &limits))
                .map_err(|e| LoadError::Instantiate(e.into()))?
                .join()
                .unwrap_or_else(|_| {
                    Err(LoadError::Instantiate(wasmtime::format_err!(
                        "the host panicked instantiating the module"
                    )))
                })
        })?;
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
        store.data().clock.start_call(sluice_core::model::now_ns());
        let _running = set_deadline(&mut store, limits);
        let instance = self
            .shared
            .pre
            .instantiate(&mut store)
            .map_err(LoadError::Instantiate)?;
        let exports = &self.shared.exports;
        let function = |store: &mut Store<GuestState>, index| {
            instance.get_func(&mut *store, index).ok_or_else(|| {
                LoadError::Contract("missing exports", wasmtime::format_err!("no function"))
            })
        };
        let mut live = Live {
            init: function(&mut store, &exports.init)?,
            process: function(&mut store, &exports.process)?,
            encode_command: function(&mut store, &exports.encode_command)?,
            store,
        };
        live.check_types(self.shared.contract)
            .map_err(|e| LoadError::Contract("exports of the wrong type", e))?;
        live.store
            .data()
            .clock
            .start_call(sluice_core::model::now_ns());
        let _running = set_deadline(&mut live.store, limits);
        let init = live
            .init
            .typed::<InitParams<'_>, InitResult>(&live.store)
            .and_then(|f| f.call(&mut live.store, (config,)));
        match init {
            Ok((Ok(()),)) => Ok(live),
            Ok((Err(e),)) => Err(LoadError::Init(e.into())),
            Err(trap) => {
                let kind = classify_trap(&trap, &live.store);
                Err(LoadError::InitTrap {
                    kind,
                    message: trap_message(&trap),
                })
            }
        }
    }
}

/// A live instance with its store and the functions the host calls.
struct Live {
    store: Store<GuestState>,
    init: Func,
    process: Func,
    encode_command: Func,
}

impl Live {
    /// Checks the exports' types against `contract`, once per instance:
    /// the calls then skip the check (it walks the types, names included,
    /// on every call).
    fn check_types(&self, contract: Contract) -> wasmtime::Result<()> {
        self.init.typed::<InitParams<'_>, InitResult>(&self.store)?;
        match contract {
            Contract::V0_1 => {
                self.process
                    .typed::<ProcessParams<'_>, ProcessResultV01>(&self.store)?;
            }
            Contract::V0_2 => {
                self.process
                    .typed::<ProcessParams<'_>, BytesResult>(&self.store)?;
            }
        }
        self.encode_command
            .typed::<CommandParams<'_>, BytesResult>(&self.store)?;
        Ok(())
    }
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
        match self.try_process(&frame) {
            Ok(output) => Ok(output),
            Err(error) => Err(Rejected { error, frame }),
        }
    }

    fn try_process(&mut self, frame: &Frame) -> Result<TransformOutput, ProcessError> {
        let limits = self.limits;
        let contract = self.module.shared.contract;
        let live = self.live()?;
        live.store.data().clock.start_call(frame.received_at_ns);
        let _running = set_deadline(&mut live.store, &limits);
        let input = (WitFrame {
            source: &frame.source,
            received_at_ns: frame.received_at_ns,
            data: &frame.data,
        },);
        let (process, store) = (live.process, &mut live.store);
        let guest = |e: WitError| ProcessError::Guest(e.into());
        let result = output::within(limits.output, || match contract {
            Contract::V0_1 => {
                // SAFETY: `Live::check_types` checked this type for `contract`.
                let process = unsafe {
                    TypedFunc::<ProcessParams<'_>, ProcessResultV01>::new_unchecked(process)
                };
                process
                    .call(&mut *store, input)
                    .map(|(result,)| result.map(TransformOutput::from).map_err(guest))
            }
            Contract::V0_2 => {
                // SAFETY: `Live::check_types` checked this type for `contract`.
                let process =
                    unsafe { TypedFunc::<ProcessParams<'_>, BytesResult>::new_unchecked(process) };
                process
                    .call(&mut *store, input)
                    .map(|(result,)| match result {
                        Ok(Bytes(packed)) => {
                            packed::decode(packed, &mut Budget::new(limits.output))
                                .map_err(ProcessError::from)
                        }
                        Err(e) => Err(guest(e)),
                    })
            }
        });
        match result {
            Ok(result) => result,
            Err(e) => Err(self.call_failed(&e)),
        }
    }

    /// Encodes a downlink command into bytes for the serial line (at most
    /// [`OutputLimits::bytes`] of them).
    pub fn encode_command(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<u8>, ProcessError> {
        let limits = self.limits;
        let live = self.live()?;
        live.store
            .data()
            .clock
            .start_call(sluice_core::model::now_ns());
        let _running = set_deadline(&mut live.store, &limits);
        let (encode, store) = (live.encode_command, &mut live.store);
        // SAFETY: `Live::check_types` checked this type.
        let encode = unsafe { TypedFunc::<CommandParams<'_>, BytesResult>::new_unchecked(encode) };
        let result = output::within(limits.output, || {
            encode.call(&mut *store, (WitCommand { topic, payload },))
        });
        match result {
            Ok((Ok(Bytes(bytes)),)) => Ok(bytes),
            Ok((Err(e),)) => Err(ProcessError::Guest(e.into())),
            Err(e) => Err(self.call_failed(&e)),
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

    /// A call that did not return: its output went over a limit while it
    /// was lifted, or it trapped. Either way the instance is dropped (a
    /// call cut short in the middle of lifting leaves it unusable).
    fn call_failed(&mut self, error: &wasmtime::Error) -> ProcessError {
        match error.downcast_ref::<OutputError>() {
            Some(over) => {
                self.live = None;
                ProcessError::from(over.clone())
            }
            None => self.poison(error),
        }
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
/// Returns the guard that keeps the epoch ticking while the call runs.
#[must_use = "the ticker may sleep once the guard drops"]
fn set_deadline(store: &mut Store<GuestState>, limits: &Limits) -> CallRunning {
    // One reading of the clock for both.
    let now = Instant::now();
    let running = store.data().epoch.call_starts(limits.call_timeout, now);
    store
        .data_mut()
        .budget
        .start(limits.call_timeout, now, thread_cpu_time);
    // The ticker advances the epoch only at a running call's check time.
    store.set_epoch_deadline(1);
    running
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
            // The name section is the guest's text too.
            Some(name) => format!(" in {}", guest_text(name)),
            None => format!(" in wasm function {}", f.func_index()),
        })
        .unwrap_or_default();
    guest_text(&format!("{what}{frame}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module (hand-assembled: no text-format crate here) that
    /// declares two memories of `pages` 64-KiB pages each.
    fn two_memories(pages: u8) -> Vec<u8> {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        // Memory section (id 5): 5 bytes long, two memories, each `min`
        // only (flag 0) of `pages`.
        wasm.extend([5, 5, 2, 0, pages, 0, pages]);
        wasm
    }

    #[test]
    fn the_memory_cap_holds_for_all_memories_together() {
        let runtime = Runtime::new(ModuleCache::new(None)).expect("runtime");
        let instantiate = |memory_bytes: usize| {
            let limits = Limits {
                memory_bytes,
                ..Limits::default()
            };
            let mut store = runtime.new_store(&Arc::from("test"), &limits);
            let module =
                wasmtime::Module::new(runtime.engine(), two_memories(100)).expect("compiles");
            let result = wasmtime::Instance::new(&mut store, &module, &[]).map(|_| ());
            (result, store.data().limiter.hit)
        };
        // Two memories of 6.25 MiB each: within 16 MiB in all.
        let (result, hit) = instantiate(16 << 20);
        assert!(result.is_ok() && !hit, "{result:?}");
        // Each fits a 10 MiB cap; together they do not.
        let (result, hit) = instantiate(10 << 20);
        assert!(result.is_err() && hit, "{result:?}");
    }

    /// A core module exporting `spin`, a function that loops forever.
    const SPIN: &[u8] = &[
        0, b'a', b's', b'm', 1, 0, 0, 0, // header
        1, 4, 1, 0x60, 0, 0, // type section: () -> ()
        3, 2, 1, 0, // function section: one function of type 0
        7, 8, 1, 4, b's', b'p', b'i', b'n', 0, 0, // export "spin" = function 0
        10, 9, 1, 7, 0, 0x03, 0x40, 0x0c, 0, 0x0b, 0x0b, // code: loop { br 0 }
    ];

    /// Runs [`SPIN`] with a budget of `budget` until it is interrupted. Returns
    /// whether the ticker failed it: a rescue thread had to advance the
    /// epoch, which it does only after the wall-clock cap (which ends any
    /// call that gets its ticks, however loaded the machine), so that the
    /// test fails instead of spinning forever.
    fn spin_needed_a_rescue(runtime: &Runtime, budget: Duration) -> bool {
        let limits = &Limits {
            call_timeout: budget,
            ..Limits::default()
        };
        let mut store = runtime.new_store(&Arc::from("test"), limits);
        let module = wasmtime::Module::new(runtime.engine(), SPIN).expect("compiles");
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiates");
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .expect("spin");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rescue_after = limits.call_timeout * (WALL_CAP_FACTOR + 10);
        let rescue = std::thread::spawn({
            let (engine, done) = (runtime.engine().clone(), done.clone());
            move || {
                let give_up = Instant::now() + rescue_after;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if Instant::now() > give_up {
                        engine.increment_epoch();
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Instant::now() > give_up
            }
        });
        let running = set_deadline(&mut store, limits);
        let error = spin.call(&mut store, ()).expect_err("interrupted");
        drop(running);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(error.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
        rescue.join().expect("rescue")
    }

    /// Waits until the ticker has looked more than `looks` times.
    fn wait_for_look(ticker: &EpochTicker, looks: u64) {
        let give_up = Instant::now() + Duration::from_secs(20);
        while ticker.looks() <= looks {
            assert!(Instant::now() < give_up, "the ticker never looked");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_idle_ticker_sleeps_and_ticks_through_a_call_longer_than_its_idle_second() {
        let runtime = Runtime::new(ModuleCache::new(None)).expect("runtime");
        let ticker = runtime.inner.ticker.clone();
        let give_up = Instant::now() + Duration::from_secs(20);
        while !ticker.is_parked() {
            assert!(Instant::now() < give_up, "the idle ticker never parked");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Longer than the ticker's idle second: it must not park under a call.
        assert!(
            !spin_needed_a_rescue(&runtime, Duration::from_millis(1500)),
            "no tick reached the call: the ticker slept"
        );
    }

    #[test]
    fn a_call_with_a_shorter_budget_wakes_a_ticker_that_would_look_too_late() {
        let runtime = Runtime::new(ModuleCache::new(None)).expect("runtime");
        let ticker = runtime.inner.ticker.clone();
        // A call with a 5 s budget: the ticker then looks again in 5 s.
        let looks = ticker.looks();
        drop(ticker.call_starts(Duration::from_secs(5), Instant::now()));
        wait_for_look(&ticker, looks);
        assert!(
            !spin_needed_a_rescue(&runtime, Duration::from_millis(20)),
            "no tick reached the call before the ticker's next look"
        );
    }

    #[test]
    fn a_budget_too_long_for_the_clock_is_checked_a_year_out() {
        let runtime = Runtime::new(ModuleCache::new(None)).expect("runtime");
        let limits = Limits {
            // `Instant::now() + Duration::MAX` overflows (a panic).
            call_timeout: Duration::MAX,
            ..Limits::default()
        };
        let mut store = runtime.new_store(&Arc::from("test"), &limits);
        drop(set_deadline(&mut store, &limits));
        // The ticker, which now looks out that far, still serves the next call.
        assert!(
            !spin_needed_a_rescue(&runtime, Duration::from_millis(20)),
            "the ticker stopped"
        );
    }

    #[test]
    fn calls_that_end_within_their_budget_do_not_wake_the_ticker() {
        let runtime = Runtime::new(ModuleCache::new(None)).expect("runtime");
        let ticker = runtime.inner.ticker.clone();
        let budget = Duration::from_millis(100);
        let looks = ticker.looks();
        let started = Instant::now();
        for _ in 0..300 {
            drop(ticker.call_starts(budget, Instant::now()));
            std::thread::sleep(Duration::from_millis(1));
        }
        let elapsed = started.elapsed();
        let woken = ticker.looks() - looks;
        // A look per budget while calls come (the first call woke it from
        // parking), not one per tick: that would be elapsed / EPOCH_TICK,
        // 20 times as many. A loaded machine only makes looks later.
        let per_budget = u64::try_from(elapsed.as_millis() / budget.as_millis()).expect("small");
        assert!(
            woken <= per_budget + 2,
            "{woken} looks in {elapsed:?} of calls with a {budget:?} budget"
        );
        assert!(woken >= 1, "the first call did not wake the parked ticker");
    }

    fn budget(limit_ms: u64, cpu_at_start_ms: u64) -> (CallBudget, Instant) {
        let mut b = CallBudget::new(Duration::from_millis(limit_ms));
        let start = Instant::now();
        b.start(b.limit, start, || Duration::from_millis(cpu_at_start_ms));
        (b, start)
    }

    #[test]
    fn calls_close_together_share_one_cpu_clock_reading() {
        let reads = std::cell::Cell::new(0);
        let clock = |ms| {
            reads.set(reads.get() + 1);
            Duration::from_millis(ms)
        };
        let mut b = CallBudget::new(Duration::from_millis(100));
        let max_age = b.limit / CPU_ORIGIN_BUDGET_DIVISOR;
        let t0 = Instant::now();
        b.start(b.limit, t0, || clock(10));
        // Calls 1 ms apart (1000 frames a second) share the reading.
        b.start(b.limit, t0 + Duration::from_millis(1), || clock(11));
        b.start(b.limit, t0 + max_age, || clock(11));
        assert_eq!(
            (b.cpu_at_start, reads.get()),
            (Duration::from_millis(10), 1)
        );
        b.start(b.limit, t0 + max_age * 2, || clock(12));
        assert_eq!(
            (b.cpu_at_start, reads.get()),
            (Duration::from_millis(12), 2)
        );
        // A smaller budget reuses a reading for a shorter time.
        b.start(
            Duration::from_millis(5),
            t0 + max_age * 2 + Duration::from_millis(1),
            || clock(13),
        );
        assert_eq!(
            (b.cpu_at_start, reads.get()),
            (Duration::from_millis(13), 3)
        );
        // Another thread's clock is never reused, however recent.
        let later = t0 + max_age * 2;
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
        let (mut b, start) = budget(100, 1_000);
        assert!(matches!(
            b.on_deadline(
                Duration::from_millis(1_100),
                start + Duration::from_millis(100)
            ),
            wasmtime::UpdateDeadline::Interrupt
        ));
    }

    #[test]
    fn a_starved_call_goes_on_until_it_used_its_budget() {
        // 100 ms of wall time passed but the thread ran for 30 ms only.
        let (mut b, start) = budget(100, 1_000);
        let at = |ms| start + Duration::from_millis(ms);
        assert!(matches!(
            b.on_deadline(Duration::from_millis(1_030), at(100)),
            wasmtime::UpdateDeadline::Continue(1)
        ));
        // Later it has used it all: interrupted.
        assert!(matches!(
            b.on_deadline(Duration::from_millis(1_100), at(180)),
            wasmtime::UpdateDeadline::Interrupt
        ));
    }

    #[test]
    fn however_starved_a_call_ends_at_the_wall_clock_cap() {
        let (mut b, start) = budget(100, 1_000);
        let cap = b.limit * WALL_CAP_FACTOR;
        let starved = Duration::from_millis(1_001);
        assert!(matches!(
            b.on_deadline(starved, start + cap - Duration::from_millis(1)),
            wasmtime::UpdateDeadline::Continue(1)
        ));
        assert!(matches!(
            b.on_deadline(starved, start + cap),
            wasmtime::UpdateDeadline::Interrupt
        ));
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
