//! An open port's reads and writes, through tokio's reactor.
//!
//! Hand-written over [`AsyncFd`] rather than tokio-serial's stream, whose
//! read keeps the port marked readable after a short read: every frame
//! then cost a second `read` that returned `EAGAIN` before the task could
//! sleep. A short read from a tty means its input queue was drained, so
//! this one clears readiness then, as tokio's own sockets do (an event
//! that arrives meanwhile is not lost: tokio clears only the readiness it
//! reported). Reads go to a scratch buffer initialised once, where a read
//! into spare capacity zeroes it first (8 KiB per read). A flush returns
//! at once: the bytes are the kernel's to send, and waiting for the UART
//! to drain (`tcdrain`, as tokio-serial does) would block a runtime thread.

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An open serial port registered with the tokio reactor.
pub struct Port {
    device: AsyncFd<mio_serial::SerialStream>,
    scratch: Box<[u8]>,
}

impl Port {
    /// Registers an opened (non-blocking) device; one read takes at most
    /// `read_chunk` bytes. Must run inside a tokio runtime.
    pub fn new(device: mio_serial::SerialStream, read_chunk: usize) -> io::Result<Self> {
        // SAFETY: the `SerialStream` owns its descriptor and keeps it open
        // until it is dropped, which only `AsyncFd` does.
        let device = unsafe { AsyncFd::register(device) }.map_err(io::Error::from)?;
        Ok(Self {
            device,
            scratch: vec![0; read_chunk.max(1)].into_boxed_slice(),
        })
    }

    /// Waits for bytes and appends what one read returns to `buf`: the
    /// count, 0 at end of stream. Cancel-safe: nothing is read unless the
    /// call returns.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let n = std::future::poll_fn(|cx| self.poll_read_scratch(cx, usize::MAX)).await?;
        buf.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }

    /// One read of at most `max` bytes into the scratch buffer.
    fn poll_read_scratch(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        let want = max.min(self.scratch.len());
        loop {
            let mut ready = ready!(self.device.poll_read_ready(cx))?;
            match ready.try_io(|device| device.get_ref().read(&mut self.scratch[..want])) {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsRawFd for Port {
    fn as_raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}

impl AsyncRead for Port {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = ready!(this.poll_read_scratch(cx, buf.remaining()))?;
        buf.put_slice(&this.scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.device.poll_write_ready(cx))?;
            match ready.try_io(|device| device.get_ref().write(data)) {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;

    use super::*;
    use crate::pty::Pty;

    /// Read system calls this thread has made (`syscr` of
    /// `/proc/thread-self/io`; reading the file counts too).
    fn reads_so_far() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|line| line.strip_prefix("syscr: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn open(pty: &Pty) -> Port {
        let builder = mio_serial::new(pty.path.to_string_lossy(), 115_200);
        Port::new(mio_serial::SerialStream::open(&builder).unwrap(), 8 << 10).unwrap()
    }

    /// Polls `read_into` once; true if it returned.
    async fn read_once(port: &mut Port, buf: &mut BytesMut) -> bool {
        tokio::select! {
            biased;
            read = port.read_into(buf) => { read.unwrap(); true }
            () = std::future::ready(()) => false,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn after_a_short_read_the_port_waits_without_reading_again() {
        let mut pty = Pty::open().unwrap();
        let mut port = open(&pty);
        let mut buf = BytesMut::new();
        pty.master.write_all(b"first line\n").unwrap();
        assert_eq!(port.read_into(&mut buf).await.unwrap(), 11);

        // What one reading of the counter costs, then the same around a poll
        // of the drained port: it must sleep without a read (`EAGAIN`).
        let cost = reads_so_far().abs_diff(reads_so_far());
        let before = reads_so_far();
        assert!(!read_once(&mut port, &mut buf).await, "nothing to read");
        let reads = reads_so_far() - before - cost;
        assert_eq!(reads, 0, "a drained port was read again");

        // New bytes wake it, and they all come in one read.
        pty.master.write_all(b"second line\n").unwrap();
        assert_eq!(port.read_into(&mut buf).await.unwrap(), 12);
        assert_eq!(&buf[..], b"first line\nsecond line\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_takes_at_most_the_chunk_and_the_rest_comes_next() {
        let mut pty = Pty::open().unwrap();
        let builder = mio_serial::new(pty.path.to_string_lossy(), 115_200);
        let mut port = Port::new(mio_serial::SerialStream::open(&builder).unwrap(), 4).unwrap();
        let mut buf = BytesMut::new();
        pty.master.write_all(b"abcdef").unwrap();
        assert_eq!(port.read_into(&mut buf).await.unwrap(), 4);
        // A full read leaves the port readable: the rest is read at once.
        assert!(read_once(&mut port, &mut buf).await);
        assert_eq!(&buf[..], b"abcdef");
    }
}
