//! The workload: numbered gateway telemetry lines written into a
//! pseudo-terminal at a fixed rate or as fast as the reader takes them.
//!
//! A line has the shape of json-telemetry's `SAMPLE_LINE` (same keys, same
//! order, same number formats, ~150 bytes) with the frame's sequence number
//! in `seq`, which every system under test publishes on `iiot/stats/seq`
//! before the frame's other ten messages: that is how the subscriber tells
//! frames apart. Write times are taken with [`mono_ns`] just before the
//! `write` that carries the frame.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

use crate::util::mono_ns;

/// MQTT messages json-telemetry (and every peer) publishes per frame.
pub const MESSAGES_PER_FRAME: u32 = 11;

/// Appends the telemetry line for `seq`, newline included. The values move
/// with `seq` so consecutive lines differ, as real readings do.
pub fn push_line(out: &mut Vec<u8>, seq: u64) {
    let t1 = 200 + seq % 100; // 20.0 .. 29.9
    let h1 = 500 + (seq / 3) % 100;
    let t2 = 250 + (seq / 7) % 20;
    let rssi = 35 + seq % 36;
    let snr = 50 + seq % 60;
    let _ = write!(
        out,
        concat!(
            r#"{{"seq":{},"n1":{{"t":{}.{},"h":{}.{},"bat":3.71}},"#,
            r#""n2":{{"t":{}.{},"h":50.2,"bat":3.65}},"#,
            r#""sig":{{"rssi":-{},"snr":{}.{}}},"stats":{{"rx":{},"crc_err":3}}}}"#,
            "\n"
        ),
        seq,
        t1 / 10,
        t1 % 10,
        h1 / 10,
        h1 % 10,
        t2 / 10,
        t2 % 10,
        rssi,
        snr / 10,
        snr % 10,
        1200 + seq,
    );
}

/// A pseudo-terminal: the "serial port" every system under test reads.
pub struct Pty {
    /// The device side, non-blocking; the generator writes here.
    master: File,
    /// Held open so bytes written before the reader opens the port are
    /// buffered (and the pty survives a reader closing it).
    _slave: OwnedFd,
    /// The path the system under test opens, e.g. `/dev/pts/7`.
    pub path: PathBuf,
}

impl Pty {
    /// A new pair, raw mode (no echo, no CR/LF translation), close-on-exec.
    pub fn open() -> Result<Pty> {
        let pair = openpty(None, None).context("openpty")?;
        for fd in [&pair.master, &pair.slave] {
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("FD_CLOEXEC")?;
        }
        fcntl(
            pair.master.as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .context("O_NONBLOCK on the pty master")?;
        let mut termios = tcgetattr(&pair.slave).context("tcgetattr")?;
        cfmakeraw(&mut termios);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &termios).context("tcsetattr")?;
        let path = nix::unistd::ttyname(&pair.slave).context("ttyname")?;
        Ok(Pty {
            master: File::from(pair.master),
            _slave: pair.slave,
            path,
        })
    }

    /// Writes as much of `bytes` as the reader takes before `deadline_ns`,
    /// waiting for room when the reader is slower than the writer. Returns
    /// the number of bytes written.
    fn write_until(&mut self, bytes: &[u8], deadline_ns: u64) -> Result<usize> {
        let mut done = 0;
        while done < bytes.len() {
            match self.master.write(&bytes[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if mono_ns() >= deadline_ns {
                        break;
                    }
                    wait_writable(&self.master, 50)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("writing the pty master"),
            }
        }
        Ok(done)
    }
}

/// poll(2) for POLLOUT, at most `timeout_ms`.
fn wait_writable(file: &File, timeout_ms: i32) -> Result<()> {
    let mut pfd = nix::libc::pollfd {
        fd: file.as_raw_fd(),
        events: nix::libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1.
    let rc = unsafe { nix::libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("poll on the pty master");
        }
    }
    Ok(())
}

/// How a step writes its frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// This many frames per second, on a fixed schedule; frames that fall
    /// due while a write blocks are written together in the next write.
    Rate(f64),
    /// Back to back, in writes of a few frames, as fast as the reader
    /// drains the pty.
    Burst,
}

/// One step of writing.
#[derive(Debug, Clone, Copy)]
pub struct FeedPlan {
    /// Sequence number of the first frame.
    pub first_seq: u64,
    /// Frames to write at most.
    pub frames: u64,
    /// Schedule.
    pub pace: Pace,
    /// Stop writing after this long even if frames remain (a reader that
    /// cannot keep up must not stall the bench).
    pub max_duration: Duration,
}

/// What a step wrote, and when.
#[derive(Debug, Clone, Default)]
pub struct Fed {
    /// Write time ([`mono_ns`]) of each frame written, in order.
    pub times: Vec<u64>,
    /// The largest delay of a write behind its schedule (0 for bursts).
    pub max_lag_ns: u64,
}

/// Frames written per `write` in a burst (≈ 2.4 KB).
const BURST_CHUNK: u64 = 16;

/// Writes a step's frames into `pty`.
pub fn feed(pty: &mut Pty, plan: FeedPlan) -> Result<Fed> {
    let capacity = usize::try_from(plan.frames)
        .unwrap_or(usize::MAX)
        .min(4_000_000);
    let mut fed = Fed {
        times: Vec::with_capacity(capacity),
        max_lag_ns: 0,
    };
    let start = mono_ns();
    let stop_at = start + u64::try_from(plan.max_duration.as_nanos()).unwrap_or(u64::MAX / 4);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut ends = Vec::with_capacity(64);
    let mut written: u64 = 0;
    while written < plan.frames {
        let now = mono_ns();
        if now >= stop_at {
            break;
        }
        let (upto, scheduled) = match plan.pace {
            Pace::Burst => ((written + BURST_CHUNK).min(plan.frames), now),
            Pace::Rate(rate) => {
                let at = |i: u64| start + (i as f64 * 1e9 / rate) as u64;
                let next_due = at(written);
                if next_due > now {
                    crate::util::sleep_until_ns(next_due);
                    continue;
                }
                // Every frame due by now (the schedule is behind if > 1).
                let due = (((now - start) as f64 * rate / 1e9) as u64 + 1).min(plan.frames);
                (due.max(written + 1), next_due)
            }
        };
        buf.clear();
        ends.clear();
        for i in written..upto {
            push_line(&mut buf, plan.first_seq + i);
            ends.push(buf.len());
        }
        let t = mono_ns();
        fed.max_lag_ns = fed.max_lag_ns.max(t.saturating_sub(scheduled));
        let mut done = pty.write_until(&buf, stop_at)?;
        if done < buf.len() {
            // Out of time: the reader is slower than the schedule. Finish
            // the line in progress (a torn line would corrupt the next
            // step's first frame), count what was written, stop.
            let lines = ends.iter().take_while(|&&end| end <= done).count();
            let line_start = if lines == 0 { 0 } else { ends[lines - 1] };
            if done > line_start {
                let end = ends[lines];
                done += pty.write_until(&buf[done..end], stop_at + 10_000_000_000)?;
                if done < end {
                    bail!(
                        "the reader stopped reading: frame {} stayed half-written for 10 s",
                        plan.first_seq + written + lines as u64
                    );
                }
            }
            let complete = ends.iter().take_while(|&&end| end <= done).count() as u64;
            fed.times.extend(std::iter::repeat_n(t, complete as usize));
            break;
        }
        fed.times
            .extend(std::iter::repeat_n(t, (upto - written) as usize));
        written = upto;
    }
    Ok(fed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key paths of a JSON object, in order.
    fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(map) = value.as_object() {
            for (k, v) in map {
                let path = format!("{prefix}{k}");
                out.push(path.clone());
                key_paths(v, &format!("{path}."), out);
            }
        }
    }

    #[test]
    fn lines_have_the_sample_shape_and_the_sequence_number() {
        // transforms/json-telemetry's SAMPLE_LINE.
        const SAMPLE: &str = r#"{"seq":1042,"n1":{"t":27.6,"h":54.1,"bat":3.71},"n2":{"t":26.0,"h":50.2,"bat":3.65},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}"#;
        let sample: serde_json::Value = serde_json::from_str(SAMPLE).unwrap();
        let mut want = Vec::new();
        key_paths(&sample, "", &mut want);
        for seq in [1, 7, 99, 1042, 123_456_789] {
            let mut buf = Vec::new();
            push_line(&mut buf, seq);
            assert_eq!(buf.last(), Some(&b'\n'));
            let line: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            let mut got = Vec::new();
            key_paths(&line, "", &mut got);
            assert_eq!(got, want);
            assert_eq!(line["seq"].as_u64(), Some(seq));
            // Floats keep one decimal (26.0 stays 26.0), integers stay integers.
            let text = String::from_utf8(buf).unwrap();
            assert!(text.contains(r#""rssi":-"#) && !text.contains("rssi\":-0"));
            assert!(line["n1"]["t"].is_f64() && line["sig"]["rssi"].is_i64());
            assert!((130..=175).contains(&text.len()), "{} bytes", text.len());
        }
    }

    #[test]
    fn a_fixed_rate_feed_keeps_its_schedule_and_writes_every_frame() {
        let mut pty = Pty::open().unwrap();
        let reader_path = pty.path.clone();
        let reader = std::thread::spawn(move || {
            use std::io::Read as _;
            let mut f = std::fs::File::open(reader_path).unwrap();
            let mut buf = vec![0u8; 65536];
            let mut lines = 0;
            while lines < 200 {
                let n = f.read(&mut buf).unwrap();
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
            }
            lines
        });
        let fed = feed(
            &mut pty,
            FeedPlan {
                first_seq: 5,
                frames: 200,
                pace: Pace::Rate(2000.0),
                max_duration: Duration::from_secs(5),
            },
        )
        .unwrap();
        assert_eq!(reader.join().unwrap(), 200);
        assert_eq!(fed.times.len(), 200);
        let span = fed.times[199] - fed.times[0];
        assert!(span >= 90_000_000, "200 frames at 2000/s took {span} ns");
        assert!(fed.times.windows(2).all(|w| w[0] <= w[1]));
    }
}
