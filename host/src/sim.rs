//! A simulated sensor gateway: realistic JSON telemetry lines, as the
//! gateway's firmware writes them, for the demo, the tests and the benchmarks.
//!
//! [`Telemetry`] makes the lines; [`simulate`] (`sluice simulate`) writes them
//! into a pseudo-terminal at a chosen rate and points a symlink at the pty's
//! slave, so `sluice run` can read it like `/dev/ttyUSB0` (a udev symlink on
//! a real box). Whatever the host writes back (downlink commands) is printed.

use std::io::{BufRead as _, Write as _};
use std::os::fd::{AsRawFd as _, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::pty::Pty;

/// State of the simulated gateway: two sensor nodes doing a random walk.
#[derive(Debug, Clone)]
pub struct Telemetry {
    seq: u64,
    nodes: [NodeState; 2],
    rx: u64,
    crc_err: u64,
}

#[derive(Debug, Clone, Copy)]
struct NodeState {
    temperature: f64,
    humidity: f64,
    battery: f64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Telemetry {
    /// A gateway whose first line has sequence number `first_seq`.
    pub fn new(first_seq: u64) -> Self {
        Self {
            seq: first_seq,
            nodes: [
                NodeState {
                    temperature: 27.6,
                    humidity: 54.1,
                    battery: 3.71,
                },
                NodeState {
                    temperature: 26.0,
                    humidity: 50.2,
                    battery: 3.65,
                },
            ],
            rx: 1200,
            crc_err: 3,
        }
    }

    /// The next telemetry line (without the trailing newline).
    pub fn next_line(&mut self) -> String {
        let mut rng = rand::rng();
        for node in &mut self.nodes {
            node.temperature = (node.temperature + rng.random_range(-0.2..=0.2)).clamp(-20.0, 60.0);
            node.humidity = (node.humidity + rng.random_range(-0.5..=0.5)).clamp(5.0, 95.0);
            node.battery = (node.battery - rng.random_range(0.0..=0.0005)).max(2.8);
        }
        self.rx += 1;
        if rng.random_ratio(1, 50) {
            self.crc_err += 1;
        }
        let rssi: i32 = rng.random_range(-70..=-35);
        let snr: f64 = rng.random_range(5.0..=11.0);
        let [n1, n2] = self.nodes;
        let line = format!(
            concat!(
                r#"{{"seq":{},"n1":{{"t":{:.1},"h":{:.1},"bat":{:.2}}},"#,
                r#""n2":{{"t":{:.1},"h":{:.1},"bat":{:.2}}},"#,
                r#""sig":{{"rssi":{},"snr":{:.1}}},"stats":{{"rx":{},"crc_err":{}}}}}"#
            ),
            self.seq,
            n1.temperature,
            n1.humidity,
            n1.battery,
            n2.temperature,
            n2.humidity,
            n2.battery,
            rssi,
            snr,
            self.rx,
            self.crc_err
        );
        self.seq += 1;
        line
    }
}

/// `sluice simulate` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Frames per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Stop after this many frames (default: until Ctrl-C).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Symlink to create, pointing at the pty's slave (e.g. /tmp/ttySIM0);
    /// an existing symlink is replaced. Removed on exit.
    #[arg(long)]
    pub link: PathBuf,
    /// Sequence number of the first frame.
    #[arg(long, default_value_t = 1)]
    pub first_seq: u64,
    /// After the last frame, wait up to this many seconds for the host to
    /// read everything (closing a pty discards what nobody read).
    #[arg(long, default_value_t = 10)]
    pub linger_secs: u64,
}

/// Bytes written to the pty's master that nobody has read from the slave yet.
pub fn unread_bytes(pty: &Pty) -> std::io::Result<usize> {
    unread(pty.slave_fd().as_raw_fd())
}

fn unread(fd: RawFd) -> std::io::Result<usize> {
    use nix::libc;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer, which points to an
    // owned, aligned c_int.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Waits until the host has read everything written to `pty` (or `timeout`).
///
/// The count of unread bytes misses what the kernel has not yet moved from
/// the master's side to the slave's input queue (a work item, late on a
/// loaded machine), so "nothing unread" must hold for [`DRAINED_FOR`]
/// before it counts.
pub fn wait_drained(pty: &Pty, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut empty_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match unread_bytes(pty) {
            Ok(0) => {
                let since = *empty_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= DRAINED_FOR {
                    return true;
                }
            }
            Ok(_) => empty_since = None,
            Err(_) => return false,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// How long a pty must show nothing unread to count as drained.
const DRAINED_FOR: Duration = Duration::from_millis(50);

/// Points the symlink `link` at `target`, replacing an existing symlink
/// atomically; refuses to replace anything else.
pub fn point_symlink(link: &Path, target: &Path) -> anyhow::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(link)
        && !meta.file_type().is_symlink()
    {
        bail!(
            "{} exists and is not a symlink; refusing to replace it",
            link.display()
        );
    }
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("cannot create symlink {}", tmp.display()))?;
    std::fs::rename(&tmp, link).with_context(|| format!("cannot replace {}", link.display()))
}

/// Runs `sluice simulate` until `--frames` are written (and read) or `stop`.
pub async fn simulate(args: SimulateArgs, stop: CancellationToken) -> anyhow::Result<()> {
    if !(0.001..=1_000_000.0).contains(&args.rate) {
        bail!("--rate must be between 0.001 and 1000000 frames per second");
    }
    let pty = Pty::open().context("cannot open a pseudo-terminal")?;
    point_symlink(&args.link, &pty.path)?;
    eprintln!(
        "sluice simulate: {} -> {}, {} frames/s{}; Ctrl-C stops",
        args.link.display(),
        pty.path.display(),
        args.rate,
        args.frames
            .map(|n| format!(", {n} frames"))
            .unwrap_or_default()
    );
    let link = args.link.clone();
    let slave = pty.path.clone();
    let result = tokio::task::spawn_blocking(move || write_frames(pty, &args, &stop))
        .await
        .context("the simulator thread failed")?;
    // Remove the symlink only if it is still ours.
    if std::fs::read_link(&link).is_ok_and(|target| target == slave) {
        let _ = std::fs::remove_file(&link);
    }
    result
}

fn write_frames(pty: Pty, args: &SimulateArgs, stop: &CancellationToken) -> anyhow::Result<()> {
    // Print what the host writes back (downlink commands), one line each.
    let reader = pty
        .master
        .try_clone()
        .context("cannot clone the pty master")?;
    std::thread::Builder::new()
        .name("sim-downlink".into())
        .spawn(move || {
            for line in std::io::BufReader::new(reader).split(b'\n') {
                let Ok(line) = line else { break };
                println!("downlink: {}", String::from_utf8_lossy(&line));
            }
        })
        .context("cannot start the downlink reader")?;
    let mut master = &pty.master;
    let mut telemetry = Telemetry::new(args.first_seq);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut next = Instant::now();
    let mut sent = 0u64;
    while !stop.is_cancelled() && args.frames.is_none_or(|n| sent < n) {
        let mut line = telemetry.next_line();
        line.push('\n');
        master
            .write_all(line.as_bytes())
            .context("writing to the pty failed")?;
        sent += 1;
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    eprintln!("sluice simulate: {sent} frames written");
    if !stop.is_cancelled() && !wait_drained(&pty, Duration::from_secs(args.linger_secs)) {
        eprintln!("sluice simulate: the host did not read everything; unread bytes are lost");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_increasing_seq() {
        let mut sim = Telemetry::new(41);
        for want in 41..45u64 {
            let line = sim.next_line();
            let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            assert_eq!(v["seq"], want);
            assert!(v["n1"]["t"].is_number() && v["n2"]["bat"].is_number());
            assert!(v["sig"]["rssi"].is_i64());
            assert!(!line.contains('\n'));
        }
    }
}
