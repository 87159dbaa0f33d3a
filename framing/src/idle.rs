//! Idle-gap framing: a frame is everything received until the line has been
//! silent for a gap (Modbus RTU: 3.5 character times).
//!
//! Bytes carry no boundary, so the decoder only accumulates; the port task
//! ([`FrameReader`](super::FrameReader)) measures the silence and calls
//! [`Framer::on_idle`](super::Framer::on_idle), which ends the frame. More
//! than the limit before a gap → the bytes are discarded as they arrive and
//! reported as one `frame_oversized` at the next gap.
//!
//! The gap is measured where the host sees the bytes: after the UART FIFO,
//! the USB adapter's latency timer (16 ms by default on FTDI chips) and the
//! kernel. Gaps shorter than those latencies cannot be seen reliably; and
//! when the pipeline applies backpressure the kernel buffers bytes and their
//! gaps are lost. Pick a gap well above the adapter's latency and below the
//! device's silence between frames.

use std::time::Duration;

use bytes::BytesMut;

use super::{FramingDrop, Step};

/// Accumulates bytes until [`Framer::on_idle`](super::Framer::on_idle).
#[derive(Debug)]
pub struct Idle {
    /// Largest raw frame (payload + CRC).
    limit: usize,
    gap: Duration,
    /// Bytes of an oversized frame discarded so far (`Some` while discarding).
    discarding: Option<usize>,
}

impl Idle {
    pub(super) fn new(limit: usize, gap: Duration) -> Self {
        Self {
            limit,
            gap,
            discarding: None,
        }
    }

    /// The silence that ends a frame.
    pub fn gap(&self) -> Duration {
        self.gap
    }

    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Option<Step> {
        if let Some(discarded) = &mut self.discarding {
            *discarded += buf.len();
            buf.clear();
        } else if buf.len() > self.limit {
            self.discarding = Some(buf.len());
            buf.clear();
        }
        None
    }

    pub(super) fn on_idle(&mut self, buf: &mut BytesMut) -> Option<Step> {
        if let Some(discarded) = self.discarding.take() {
            let bytes = discarded + buf.len();
            buf.clear();
            return Some(Step::Drop(FramingDrop::Oversized, bytes));
        }
        if buf.is_empty() {
            return None;
        }
        if buf.len() > self.limit {
            let bytes = buf.len();
            buf.clear();
            return Some(Step::Drop(FramingDrop::Oversized, bytes));
        }
        let data = buf.split().to_vec();
        let wire = data.len();
        Some(Step::Frame { data, wire })
    }

    /// At the end of the stream the gap never came: what is buffered may
    /// be incomplete, so it is reported as truncated.
    pub(super) fn eof(&mut self, buf: &mut BytesMut) -> Option<Step> {
        let rest = buf.len();
        buf.clear();
        match self.discarding.take() {
            Some(n) => Some(Step::Drop(FramingDrop::Oversized, n + rest)),
            None if rest > 0 => Some(Step::Drop(FramingDrop::Truncated, rest)),
            None => None,
        }
    }
}
