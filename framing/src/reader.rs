//! [`FrameReader`]: a reader plus a [`Framer`], including idle gaps.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::{Framer, FramerEvent};

/// How much is read at a time (serial reads are usually far smaller).
const READ_CHUNK: usize = 8 << 10;

/// Reads framer events from an async reader, like `FramedRead`, and also
/// ends idle-gap frames when the line has been silent for the gap.
///
/// [`next`](Self::next) is cancel-safe (its state lives in `self`), so it can
/// sit in a `tokio::select!` with a shutdown signal.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    framer: Framer,
    buf: BytesMut,
    /// When the last bytes arrived, if no idle gap has been handled since.
    last_read: Option<Instant>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `reader`.
    pub fn new(reader: R, framer: Framer) -> Self {
        Self {
            reader,
            framer,
            buf: BytesMut::with_capacity(READ_CHUNK),
            last_read: None,
            eof: false,
        }
    }

    /// The framer (for [`Framer::encode`] of downlink writes).
    pub fn framer(&self) -> &Framer {
        &self.framer
    }

    /// The reader (e.g. to write to a serial port).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    /// Gives back the reader and the framer; buffered bytes are lost.
    pub fn into_parts(self) -> (R, Framer) {
        (self.reader, self.framer)
    }

    /// The next event; `None` once the reader ended and every buffered byte
    /// was reported; `Some(Err)` on a read error (the reader is then
    /// unusable: the port task reopens the device).
    pub async fn next(&mut self) -> Option<io::Result<FramerEvent>> {
        loop {
            match self.framer.decode(&mut self.buf) {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => {}
                Err(err) => return Some(Err(err)),
            }
            if self.eof {
                return self.framer.decode_eof(&mut self.buf).transpose();
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(READ_CHUNK);
            }
            let deadline = self
                .framer
                .idle_gap()
                .zip(self.last_read)
                .map(|(gap, last)| last + gap);
            let read = match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.buf))
                        .await
                    {
                        Ok(read) => read,
                        Err(_elapsed) => {
                            self.last_read = None;
                            match self.framer.on_idle(&mut self.buf) {
                                Some(event) => return Some(Ok(event)),
                                None => continue,
                            }
                        }
                    }
                }
                None => self.reader.read_buf(&mut self.buf).await,
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => self.last_read = Some(Instant::now()),
                Err(err) => return Some(Err(err)),
            }
        }
    }
}
