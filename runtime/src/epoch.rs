//! The epoch ticker: the thread that advances the engine's epoch, which is
//! what makes wasmtime run a running call's deadline callback.
//!
//! It advances the epoch only when a running call reaches its *check time*:
//! the moment its budget could be used up in wall time, then every
//! [`EPOCH_TICK`] while it keeps running. Calls that end within their budget,
//! nearly all of them, need no tick, so the ticker does not wake for them: it
//! sleeps until the earliest check time of the calls running when it last
//! looked, and with none running, for the shortest budget of the calls
//! started lately, which no call starting meanwhile can overtake. A call
//! whose check time comes before the ticker's next look (a shorter budget,
//! or the ticker parked after an idle second) wakes it. At 1000 calls a
//! second of a 100 ms budget the ticker wakes ~10 times a second, not 200,
//! and an idle host not at all. Everything is decided under one mutex, so a
//! call cannot slip past a ticker that is going to sleep.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sluice_core::sync::lock;
use wasmtime::Engine;

/// How often the epoch advances while a call runs past its check time.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Time without calls after which the ticker parks until the next one.
const IDLE: Duration = Duration::from_secs(1);

/// The furthest check time: a longer budget (`Limits` takes any
/// `Duration`, and `Instant + Duration::MAX` overflows) is checked this
/// far out, then at every tick.
const FURTHEST_CHECK: Duration = Duration::from_secs(365 * 24 * 3600);

/// The ticker thread and what calls tell it.
pub struct EpochTicker {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// The check time of each running call, by slot; `None`: a free slot.
    check_at: Vec<Option<Instant>>,
    /// When the ticker looks next; `None`: parked until a call starts.
    wake_at: Option<Instant>,
    /// The shortest budget of the calls started since the ticker last looked.
    shortest_started: Option<Duration>,
    /// How long the ticker may sleep with no call running.
    lookout: Duration,
    /// Times the ticker looked (each a wake-up of its thread).
    looks: u64,
    stop: bool,
}

/// A running call: registered with the ticker until dropped.
pub struct CallRunning {
    ticker: Arc<EpochTicker>,
    slot: usize,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine` (it ends with the engine or
    /// when the ticker is dropped).
    pub fn start(engine: &Engine) -> std::io::Result<Arc<EpochTicker>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lookout: EPOCH_TICK,
                ..State::default()
            }),
            wake: Condvar::new(),
        });
        let weak = engine.weak();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                let shared = thread_shared;
                let mut state = lock(&shared.state);
                // None until the first call: a ticker with nothing to watch parks.
                let mut last_busy: Option<Instant> = None;
                while !state.stop {
                    state.looks += 1;
                    let now = Instant::now();
                    let due = state.check_at.iter().flatten().any(|&at| at <= now);
                    if due {
                        match weak.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                        // A due call is looked at again every tick until it ends.
                        for at in state.check_at.iter_mut().flatten() {
                            if *at <= now {
                                *at = now + EPOCH_TICK;
                            }
                        }
                    }
                    let next_check = state.check_at.iter().flatten().min().copied();
                    if let Some(budget) = state.shortest_started.take() {
                        state.lookout = budget;
                        last_busy = Some(now);
                    }
                    if next_check.is_some() {
                        last_busy = Some(now);
                    }
                    let busy = last_busy.is_some_and(|at| now.duration_since(at) < IDLE);
                    state.wake_at = match next_check {
                        Some(at) => Some(at.min(now + state.lookout)),
                        None if busy => Some(now + state.lookout),
                        None => None,
                    };
                    state = match state.wake_at {
                        Some(at) => {
                            let timeout = at.saturating_duration_since(Instant::now());
                            shared
                                .wake
                                .wait_timeout(state, timeout)
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .0
                        }
                        None => shared
                            .wake
                            .wait(state)
                            .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    };
                }
            })?;
        Ok(Arc::new(EpochTicker { shared }))
    }

    /// Registers a call with `budget` that starts `now` (until the returned
    /// guard drops), waking the ticker if it would look too late. Called
    /// before the call's deadline is set.
    pub fn call_starts(self: &Arc<Self>, budget: Duration, now: Instant) -> CallRunning {
        let budget = budget.min(FURTHEST_CHECK);
        let check_at = now + budget;
        let mut state = lock(&self.shared.state);
        let slot = match state.check_at.iter().position(Option::is_none) {
            Some(free) => {
                state.check_at[free] = Some(check_at);
                free
            }
            None => {
                state.check_at.push(Some(check_at));
                state.check_at.len() - 1
            }
        };
        state.shortest_started = Some(state.shortest_started.map_or(budget, |b| b.min(budget)));
        if state.wake_at.is_none_or(|wake_at| check_at < wake_at) {
            self.shared.wake.notify_one();
        }
        CallRunning {
            ticker: self.clone(),
            slot,
        }
    }

    /// Whether the ticker is parked until the next call.
    #[cfg(test)]
    pub fn is_parked(&self) -> bool {
        lock(&self.shared.state).wake_at.is_none()
    }

    /// How many times the ticker's thread has looked (woken) so far.
    #[cfg(test)]
    pub fn looks(&self) -> u64 {
        lock(&self.shared.state).looks
    }
}

impl Drop for CallRunning {
    fn drop(&mut self) {
        if let Some(slot) = lock(&self.ticker.shared.state).check_at.get_mut(self.slot) {
            *slot = None;
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
    }
}
