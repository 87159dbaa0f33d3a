//! The epoch ticker: the thread that advances the engine's epoch, which is
//! what interrupts a guest at its deadline (deadlines are counted in ticks).
//!
//! It ticks only while guests may run: from the start of a call until a
//! second has passed with no call running and none started, then it parks
//! until the next call starts. An idle host therefore does not wake a core
//! 200 times a second, which on a battery- or heat-limited box is most of
//! its idle wake-ups. A call never runs without ticks: the ticker parks
//! only when no call is running, and a call that starts marks itself
//! running before it looks whether the ticker sleeps (both sides use
//! sequentially consistent atomics, so one of them sees the other).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances while guests may run.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Ticks without a call before the ticker parks (one second).
const IDLE_TICKS: u32 = 200;

/// The ticker thread and what calls tell it.
pub struct EpochTicker {
    shared: Arc<Shared>,
    thread: std::thread::Thread,
}

#[derive(Default)]
struct Shared {
    /// Calls started so far.
    started: AtomicU64,
    /// Calls running now.
    running: AtomicU64,
    /// The ticker is parked or about to park.
    parked: AtomicBool,
    stop: AtomicBool,
}

/// A running call: keeps the ticker ticking until dropped.
pub struct CallRunning(Arc<EpochTicker>);

impl EpochTicker {
    /// Starts the ticker thread for `engine` (it ends with the engine or
    /// when the ticker is dropped).
    pub fn start(engine: &Engine) -> std::io::Result<Arc<EpochTicker>> {
        let shared = Arc::new(Shared::default());
        let weak = engine.weak();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                let mut seen = state.started.load(SeqCst);
                let mut idle = 0;
                while !state.stop.load(SeqCst) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                    let started = state.started.load(SeqCst);
                    if started != seen || state.running.load(SeqCst) > 0 {
                        (seen, idle) = (started, 0);
                        continue;
                    }
                    idle += 1;
                    if idle < IDLE_TICKS {
                        continue;
                    }
                    state.parked.store(true, SeqCst);
                    while state.running.load(SeqCst) == 0
                        && state.started.load(SeqCst) == seen
                        && !state.stop.load(SeqCst)
                    {
                        std::thread::park();
                    }
                    state.parked.store(false, SeqCst);
                    idle = 0;
                }
            })?;
        Ok(Arc::new(EpochTicker {
            shared,
            thread: thread.thread().clone(),
        }))
    }

    /// Marks a call as running (until the returned guard drops) and wakes
    /// the ticker if it sleeps. Called before the call's deadline is set.
    pub fn call_starts(self: &Arc<Self>) -> CallRunning {
        let shared = &self.shared;
        shared.running.fetch_add(1, SeqCst);
        shared.started.fetch_add(1, SeqCst);
        if shared.parked.load(SeqCst) {
            self.thread.unpark();
        }
        CallRunning(self.clone())
    }

    /// Whether the ticker is parked or about to park.
    #[cfg(test)]
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(SeqCst)
    }
}

impl Drop for CallRunning {
    fn drop(&mut self) {
        self.0.shared.running.fetch_sub(1, SeqCst);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        self.thread.unpark();
    }
}
