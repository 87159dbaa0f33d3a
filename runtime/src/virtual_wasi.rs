//! What a transform sees of the world through WASI: a clock, randomness,
//! and nothing that waits.
//!
//! A call's deadline can only interrupt guest code (epoch interruption does
//! not fire inside a host call), so a guest must have no host call that
//! blocks. Rust's std links WASI, so the imports are there; this module
//! makes them harmless and deterministic:
//!
//! * **Clocks**: wall and monotonic clocks read the call's time — the
//!   frame's receive time (for `init` and `encode-command`, the wall time at
//!   the call's start) — plus what the guest slept during the call.
//! * **Sleeping** (`subscribe-duration`/`-instant`, then `poll` or `block`)
//!   returns at once and moves the call's clock on by the time asked: a
//!   guest that sleeps 20 s costs no time and sees 20 s pass.
//! * **Randomness** is a stream seeded by the call's time, so a frame gives
//!   the same output live, in `sluice transform test` and in test vectors.
//!   It is not a source of secrets.
//! * **Sockets** cannot be created (each would be a file descriptor of the
//!   host's); there are no preopened files, no environment or arguments;
//!   stdin is empty.
//! * **stdout and stderr** are the guest's log: each line becomes a log
//!   line (stdout at info, stderr — where a Rust panic message goes — at
//!   warn), under the same per-pipeline rate limit as the `log` import.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use super::{GuestLog, GuestState};

/// The version of the WASI interfaces that wasmtime-wasi defines (the
/// linker serves any 0.2.x import from it); the shadowed functions must be
/// defined under the same name.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The running call's time, shared by the store's clocks and generators.
#[derive(Debug, Default)]
pub(super) struct CallClock {
    /// The call's time: nanoseconds since the Unix epoch.
    origin_ns: AtomicU64,
    /// What the guest slept in this call, in nanoseconds.
    slept_ns: AtomicU64,
    /// Calls so far; a generator reseeds when it sees a new one.
    call: AtomicU64,
}

impl CallClock {
    /// Starts a call whose time is `origin_ns`.
    pub(super) fn start_call(&self, origin_ns: u64) {
        self.origin_ns.store(origin_ns, Ordering::Relaxed);
        self.slept_ns.store(0, Ordering::Relaxed);
        self.call.fetch_add(1, Ordering::Relaxed);
    }

    /// The call's time now, nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64 {
        self.origin_ns
            .load(Ordering::Relaxed)
            .saturating_add(self.slept_ns.load(Ordering::Relaxed))
    }

    /// A sleep of `ns`: nothing waits, the call's clock moves on.
    fn sleep(&self, ns: u64) {
        // Never past u64::MAX in total: `now_ns` saturates too.
        let slept = self.slept_ns.load(Ordering::Relaxed);
        self.slept_ns
            .store(slept.saturating_add(ns), Ordering::Relaxed);
    }
}

/// Both WASI clocks read the call's clock: nanoseconds since the Unix
/// epoch (a monotonic clock's origin is unspecified, so this one is fine).
struct GuestClock(Arc<CallClock>);

impl HostWallClock for GuestClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.now_ns())
    }
}

impl HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.now_ns()
    }
}

/// A SplitMix64 stream, reseeded from the call's time whenever a new call
/// draws from it. `salt` tells the secure and the insecure stream apart.
struct CallRandom {
    clock: Arc<CallClock>,
    salt: u64,
    call: u64,
    state: u64,
}

impl CallRandom {
    fn new(clock: Arc<CallClock>, salt: u64) -> Self {
        CallRandom {
            clock,
            salt,
            call: u64::MAX,
            state: 0,
        }
    }

    fn next(&mut self) -> u64 {
        let call = self.clock.call.load(Ordering::Relaxed);
        if call != self.call {
            self.call = call;
            self.state = self.clock.origin_ns.load(Ordering::Relaxed) ^ self.salt;
        }
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl rand_core::TryRng for CallRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// The most random bytes one call may ask for; more traps.
pub(super) const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// The WASI context of a store whose calls run on `clock` and whose
/// output lines go to `log`.
pub(super) fn context(clock: &Arc<CallClock>, log: &GuestLog) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(GuestOutput {
            log: log.clone(),
            level: tracing::Level::INFO,
        })
        .stderr(GuestOutput {
            log: log.clone(),
            level: tracing::Level::WARN,
        })
        .wall_clock(GuestClock(clock.clone()))
        .monotonic_clock(GuestClock(clock.clone()))
        .secure_random(CallRandom::new(clock.clone(), 0x5ec0_4e00_5ec0_4e00))
        .insecure_random(CallRandom::new(clock.clone(), 0x1a5e_c04e_1a5e_c04e))
        .insecure_random_seed(0x51_u128 << 64 | 0x1ce)
        // Random bytes are made in host code, where no deadline fires, in a
        // buffer outside the guest's memory cap (wasmtime allows 64 MiB).
        .max_random_size(MAX_RANDOM_BYTES)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder.build()
}

/// stdout or stderr of a guest: its lines go to the guest's log.
struct GuestOutput {
    log: GuestLog,
    level: tracing::Level,
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(LineStream {
            log: self.log.clone(),
            level: self.level,
            line: Vec::new(),
        })
    }

    /// Only WASI 0.3 and the preview-1 adapter ask for this; sluice links
    /// neither, so their writes are discarded.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

/// Collects a guest's output into lines, each logged when it ends; at most
/// [`GUEST_TEXT_MAX`](sluice_core::model::GUEST_TEXT_MAX) bytes of a line are kept.
struct LineStream {
    log: GuestLog,
    level: tracing::Level,
    line: Vec<u8>,
}

impl wasmtime_wasi::p2::OutputStream for LineStream {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let room = sluice_core::model::GUEST_TEXT_MAX.saturating_sub(self.line.len());
            self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            if piece.ends_with(b"\n") {
                let text = String::from_utf8_lossy(&self.line);
                self.log
                    .line(self.level, text.trim_end_matches(['\r', '\n']));
                self.line.clear();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineStream {
    async fn ready(&mut self) {}
}

/// Links WASI (wasmtime-wasi's synchronous bindings) with the two functions
/// that would wait replaced: a clock subscription is ready at once and
/// moves the call's clock instead. With every pollable a guest can make
/// ready at once (streams of an empty stdin and discarded stdout, no
/// sockets, no files), `poll` and `block` never wait either.
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, GuestState>, (ns,): (u64,)| {
            let state = store.data_mut();
            state.clock.sleep(ns);
            Ok((ready(&mut state.table)?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, GuestState>, (when,): (u64,)| {
            let state = store.data_mut();
            state.clock.sleep(when.saturating_sub(state.clock.now_ns()));
            Ok((ready(&mut state.table)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A pollable that is ready at once.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

fn ready(table: &mut ResourceTable) -> wasmtime::Result<Resource<DynPollable>> {
    let ready = table.push(Ready)?;
    subscribe(table, ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::TryRng;

    #[test]
    fn the_clock_is_the_calls_time_plus_what_was_slept() {
        let clock = Arc::new(CallClock::default());
        clock.start_call(1_000);
        let guest = GuestClock(clock.clone());
        assert_eq!(HostMonotonicClock::now(&guest), 1_000);
        clock.sleep(20_000_000_000);
        assert_eq!(
            HostWallClock::now(&guest),
            Duration::from_nanos(20_000_001_000)
        );
        clock.sleep(u64::MAX);
        assert_eq!(HostMonotonicClock::now(&guest), u64::MAX);
        // A new call starts from its own time.
        clock.start_call(5);
        assert_eq!(HostMonotonicClock::now(&guest), 5);
    }

    #[test]
    fn randomness_is_a_function_of_the_calls_time() {
        let clock = Arc::new(CallClock::default());
        let mut rng = CallRandom::new(clock.clone(), 1);
        let draw = |rng: &mut CallRandom| {
            let mut bytes = [0u8; 13];
            rng.try_fill_bytes(&mut bytes).ok();
            (bytes, rng.try_next_u64().ok())
        };
        clock.start_call(42);
        let first = draw(&mut rng);
        let more = draw(&mut rng);
        assert_ne!(first, more, "a stream, not one value");
        clock.start_call(42);
        assert_eq!(draw(&mut rng), first, "the same time, the same stream");
        clock.start_call(43);
        assert_ne!(draw(&mut rng), first);
        // Another salt is another stream.
        clock.start_call(42);
        assert_ne!(draw(&mut CallRandom::new(clock.clone(), 2)), first);
    }
}
