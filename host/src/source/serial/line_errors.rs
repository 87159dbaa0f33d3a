//! UART error counters (`TIOCGICOUNT`): the data loss the host can detect.
//!
//! When the host reads too slowly, bytes wait in the kernel's tty buffer;
//! when that is full, or the UART's FIFO overflows before the driver empties
//! it, bytes are lost. Drivers that implement `TIOCGICOUNT` (8250/16550
//! UARTs, many USB-serial adapters) count those events: `overrun` (FIFO)
//! and `buf_overrun` (tty buffer), and line errors that usually mean wrong
//! settings: `frame` (baud/stop bits), `parity`, `brk` (break). The counters
//! are cumulative since the driver loaded, so the first reading of a session
//! is the baseline and only increases are added to
//! `serial_line_errors{pipeline,kind}`.
//!
//! Pseudo-terminals and some drivers do not implement the ioctl (`ENOTTY` or
//! `EINVAL`); that is not an error — there is just nothing to count.

use std::os::fd::RawFd;

/// The counters this module reads, in a fixed order with their labels.
pub const KINDS: [&str; 5] = ["overrun", "buf_overrun", "frame", "parity", "brk"];

/// One reading of the counters in [`KINDS`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts(pub [u64; 5]);

impl LineCounts {
    /// Per-kind increases since `earlier` (a counter that went down — a
    /// driver reset — counts from zero).
    pub fn increase_since(&self, earlier: &LineCounts) -> LineCounts {
        let mut out = [0; 5];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = if self.0[i] >= earlier.0[i] {
                self.0[i] - earlier.0[i]
            } else {
                self.0[i]
            };
        }
        LineCounts(out)
    }

    /// Bytes lost (overrun + buf_overrun).
    pub fn lost(&self) -> u64 {
        self.0[0] + self.0[1]
    }

    /// Framing, parity and break errors.
    pub fn line(&self) -> u64 {
        self.0[2] + self.0[3] + self.0[4]
    }
}

/// `struct serial_icounter_struct` from `<linux/serial.h>`.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)] // Fields the host does not use are still part of the layout.
struct SerialIcounter {
    cts: i32,
    dsr: i32,
    rng: i32,
    dcd: i32,
    rx: i32,
    tx: i32,
    frame: i32,
    overrun: i32,
    parity: i32,
    brk: i32,
    buf_overrun: i32,
    reserved: [i32; 9],
}

/// Reads the counters of the tty `fd`; `None` if the driver has none.
#[cfg(target_os = "linux")]
pub fn read(fd: RawFd) -> std::io::Result<Option<LineCounts>> {
    use nix::libc;
    let mut counts = SerialIcounter::default();
    // SAFETY: TIOCGICOUNT writes one `serial_icounter_struct` to the pointer,
    // which points to a properly sized, aligned and owned value.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGICOUNT, &mut counts as *mut SerialIcounter) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(err),
        };
    }
    let c = |v: i32| u64::from(v.max(0).unsigned_abs());
    Ok(Some(LineCounts([
        c(counts.overrun),
        c(counts.buf_overrun),
        c(counts.frame),
        c(counts.parity),
        c(counts.brk),
    ])))
}

/// Not implemented outside Linux.
#[cfg(not(target_os = "linux"))]
pub fn read(_fd: RawFd) -> std::io::Result<Option<LineCounts>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increases_and_resets() {
        let a = LineCounts([1, 2, 3, 4, 5]);
        let b = LineCounts([3, 2, 1, 4, 6]);
        assert_eq!(b.increase_since(&a), LineCounts([2, 0, 1, 0, 1]));
        assert_eq!(b.increase_since(&a).lost(), 2);
        assert_eq!(b.increase_since(&a).line(), 2);
    }

    #[test]
    fn a_pty_has_no_counters() {
        use std::os::fd::AsRawFd as _;
        let pty = crate::pty::Pty::open().expect("openpty");
        assert_eq!(read(pty.slave_fd().as_raw_fd()).expect("quiet"), None);
    }
}
