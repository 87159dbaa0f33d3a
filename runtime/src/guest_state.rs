//! What a guest's store carries: the inert WASI context, the memory and
//! table limiter, the guest's rate-limited log, the call's CPU budget.

use super::*;
use sluice_core::sync::lock;

/// Per-store state: the inert WASI context and the call's clock
/// ([`virtual_wasi`]), the resource limiter, the guest's log, the call's
/// CPU budget.
pub(crate) struct GuestState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) clock: Arc<CallClock>,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: GuestLog,
    pub(crate) budget: CallBudget,
    /// Told when a call starts and ends (it ticks only while calls run).
    pub(crate) epoch: Arc<EpochTicker>,
}

/// The running call's CPU budget (see the module docs, "Deadline").
pub(crate) struct CallBudget {
    /// The budget per call.
    pub(crate) limit: Duration,
    /// The worker thread's CPU clock at the call's start, or up to a tenth
    /// of the budget before it (see [`CallBudget::start`]).
    pub(crate) cpu_at_start: Duration,
    /// When and on which thread `cpu_at_start` was read.
    pub(crate) sampled: Option<(Instant, ThreadId)>,
    /// When the call started (the wall-clock cap counts from here).
    pub(crate) started_at: Instant,
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID). The
/// clock cannot fail for the calling thread on Linux; should it, the zero
/// makes the budget fall back to wall-clock time.
pub(crate) fn thread_cpu_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

impl CallBudget {
    pub(crate) fn new(limit: Duration) -> Self {
        CallBudget {
            limit,
            cpu_at_start: Duration::ZERO,
            sampled: None,
            started_at: Instant::now(),
        }
    }

    /// Starts a call with budget `limit` at wall time `now` on the calling
    /// thread. The CPU clock is read again only when the last reading is
    /// older than `limit / CPU_ORIGIN_BUDGET_DIVISOR` or from another thread (an
    /// instance validated on the blocking pool, then run by its worker).
    pub(crate) fn start(
        &mut self,
        limit: Duration,
        now: Instant,
        read_cpu: impl FnOnce() -> Duration,
    ) {
        self.limit = limit;
        self.started_at = now;
        let thread = std::thread::current().id();
        let fresh = self.sampled.is_some_and(|(at, on)| {
            on == thread && now.saturating_duration_since(at) <= limit / CPU_ORIGIN_BUDGET_DIVISOR
        });
        if !fresh {
            self.cpu_at_start = read_cpu();
            self.sampled = Some((now, thread));
        }
    }

    /// Called at each epoch tick once the call has run for its budget in
    /// wall time (and at ticks other calls caused): interrupt if it used
    /// the budget in CPU time or reached the wall-clock cap, else go on
    /// until the next tick.
    pub(crate) fn on_deadline(
        &mut self,
        cpu_now: Duration,
        now: Instant,
    ) -> wasmtime::UpdateDeadline {
        let used = cpu_now.saturating_sub(self.cpu_at_start);
        let wall = now.saturating_duration_since(self.started_at);
        if used >= self.limit || wall >= self.limit.saturating_mul(WALL_CAP_FACTOR) {
            return wasmtime::UpdateDeadline::Interrupt;
        }
        wasmtime::UpdateDeadline::Continue(1)
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

/// Caps an instance's linear memory — all its memories together, since
/// wasmtime allows a component several — and its tables, and remembers a
/// refused growth, so the resulting trap can be reported as
/// [`TrapKind::MemoryLimit`] rather than a generic error.
pub(crate) struct MemoryLimiter {
    pub(crate) max_bytes: usize,
    /// Bytes of every memory of the store together.
    pub(crate) memory_bytes: usize,
    /// Elements of every table of the store together.
    pub(crate) table_elements: usize,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(max_bytes: usize) -> Self {
        MemoryLimiter {
            max_bytes,
            memory_bytes: 0,
            table_elements: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.memory_bytes - current.min(self.memory_bytes)).saturating_add(desired);
        if total > self.max_bytes {
            self.hit = true;
            wasmtime::bail!(
                "memory limit: guest asked for {total} bytes in all, cap is {}",
                self.max_bytes
            );
        }
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries in all is far
        // beyond any sane transform and bounds host memory.
        let total =
            (self.table_elements - current.min(self.table_elements)).saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Where a guest's words go — its `log` import and the lines it writes to
/// stdout and stderr: rate-limited per pipeline (the limiter outlives
/// instances, so a guest that logs and then traps does not get a fresh
/// allowance with every new instance), made safe to print ([`guest_text`]).
#[derive(Clone)]
pub(crate) struct GuestLog {
    pub(crate) transform: Arc<str>,
    pub(crate) limiter: Arc<Mutex<RateLimiter>>,
}

impl GuestLog {
    pub(crate) fn line(&self, level: tracing::Level, message: &str) {
        let Some(suppressed) = lock(&self.limiter).check() else {
            return;
        };
        let message = guest_text(message);
        let transform = &*self.transform;
        match level {
            tracing::Level::TRACE => {
                tracing::trace!(target: "sluice::guest", transform, suppressed, "{message}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: "sluice::guest", transform, suppressed, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: "sluice::guest", transform, suppressed, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: "sluice::guest", transform, suppressed, "{message}")
            }
            tracing::Level::ERROR => {
                tracing::error!(target: "sluice::guest", transform, suppressed, "{message}")
            }
        }
    }
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
                self.log.line(level, &message);
            }
        }

        impl $wit::wit::Host for GuestState {}
    )*};
}
guest_log_host!(v0_1, v0_2);
