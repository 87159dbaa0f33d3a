//! The bound on an orderly shutdown.
//!
//! SIGTERM starts an orderly shutdown (`app`): drain what was read, hand it
//! to the sinks, wait a while for confirmations, close the outboxes. Each
//! step can wait on something outside the process — a broker that is down,
//! an outbox full under `when_full = "block"`, a disk that stalls — so
//! rather than bound every wait, one [`Deadline`] bounds them all: armed
//! when shutdown starts, it ends the process if shutdown has not finished
//! by then. What was committed to an outbox is on disk and is sent after
//! the next start; frames read but not yet committed are lost, exactly as
//! with SIGKILL (the outbox is crash-safe). A second SIGTERM or SIGINT ends
//! the process at once (`main.rs`).

use std::sync::mpsc;
use std::time::Duration;

/// The exit code when the deadline passes.
pub const EXIT_DEADLINE: i32 = 1;

/// Ends the process after `bound` unless dropped first.
pub struct Deadline {
    /// Dropping it disconnects the watchdog's channel: shutdown finished.
    _finished: mpsc::Sender<()>,
}

impl Deadline {
    /// Arms the deadline: a thread of its own, so nothing the async runtime
    /// or a blocked OS thread does can stop it.
    pub fn arm(bound: Duration) -> Deadline {
        let (finished, watch) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("shutdown-deadline".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(bound) {
                    tracing::error!(
                        bound_secs = bound.as_secs_f64(),
                        "shutdown did not finish in time (a sink unreachable, an outbox full, a disk stalled): exiting now; what the outboxes hold is sent after the next start, frames not yet in an outbox are lost"
                    );
                    std::process::exit(EXIT_DEADLINE);
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot start the shutdown deadline thread; shutdown is not bounded");
        }
        Deadline {
            _finished: finished,
        }
    }
}
