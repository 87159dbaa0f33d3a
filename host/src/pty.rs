//! Pseudo-terminal pairs (openpty), for the simulated sensor node.
//!
//! The demo, the tests and the benchmarks all need "a serial port with a
//! device on the other end". A pty is exactly that: the host opens the slave
//! path like any tty (sluice sets its line settings), and whoever holds
//! the master writes what the device would send.

use std::fs::File;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, FdFlag};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

/// A pty pair. Dropping it closes both ends (the "device" vanishes).
#[derive(Debug)]
pub struct Pty {
    /// The device side: write here what the sensor node sends.
    pub master: File,
    /// Kept open so writes before the host opens the port are buffered
    /// rather than failing.
    slave: OwnedFd,
    /// The path the host opens, e.g. `/dev/pts/7`.
    pub path: PathBuf,
}

impl Pty {
    /// Opens a new pair with the slave in raw mode (no echo, no line
    /// editing, no CR/LF translation), like a real serial line.
    pub fn open() -> nix::Result<Pty> {
        let pair = openpty(None, None)?;
        // openpty does not set close-on-exec: without it every child process
        // (a spawned `sluice`, a broker) would keep the "device" alive.
        for fd in [&pair.master, &pair.slave] {
            nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        let mut termios = tcgetattr(&pair.slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &termios)?;
        let path = nix::unistd::ttyname(&pair.slave)?;
        Ok(Pty {
            master: File::from(pair.master),
            slave: pair.slave,
            path,
        })
    }

    /// The slave side's file descriptor (kept open while the pair lives).
    pub fn slave_fd(&self) -> &OwnedFd {
        &self.slave
    }
}
