//! Small helpers shared by the bench: one clock for every process, ports,
//! programs, child processes.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// `CLOCK_MONOTONIC` in nanoseconds. One clock for the bench, the generator
/// and the bare publisher (a child process), so a write time taken in one
/// process and a receive time taken in another can be subtracted.
pub fn mono_ns() -> u64 {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, aligned
    // pointer to a local.
    let rc = unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Sleeps until `mono_ns() >= at`.
pub fn sleep_until_ns(at: u64) {
    let now = mono_ns();
    if at > now {
        std::thread::sleep(Duration::from_nanos(at - now));
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("reserving a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The full path of a program, searching `PATH` and the sbin directories
/// (where Debian puts servers such as mosquitto).
pub fn program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    match std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
    {
        Some(found) => Ok(found),
        None => {
            bail!("{name} is not installed (scripts/bench-peers.sh installs what the bench needs)")
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaps the child.
pub fn terminate(child: &mut Child, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Makes the child started by `command` get SIGTERM when the bench dies
/// (a crash, a kill, Ctrl-C): a system under test left running holds its
/// pty and ports, and the next run or test that gets the same pty number
/// finds it locked. Call on the main thread, which spawns every child (the
/// signal comes when the spawning thread ends).
pub fn ends_with_the_bench(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe, as `pre_exec` requires.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn a_child_ends_when_the_thread_that_started_it_does() {
        // The bench's main thread ending is its process ending; a thread
        // shows the same signal without ending the test.
        let mut child = std::thread::spawn(|| {
            ends_with_the_bench(Command::new("sleep").arg("30"))
                .spawn()
                .expect("spawn sleep")
        })
        .join()
        .expect("spawning thread");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(nix::libc::SIGTERM), "{status:?}");
    }
}
