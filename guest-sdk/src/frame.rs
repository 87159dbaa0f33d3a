//! What comes in: frames from a source, and commands for the downlink.

use crate::Error;

/// One frame read from a source, as the host's framer split it (a line, a
/// length-prefixed packet, ...), without the framing itself.
///
/// ```
/// use sluice_sdk::{Error, Frame};
///
/// let frame = Frame::new("ttyUSB0", 1_700_000_000_000_000_000, "21.5\r\n");
/// assert_eq!(frame.source(), "ttyUSB0");
/// assert_eq!(frame.text()?.trim(), "21.5");
///
/// let binary = Frame::from_data([0xff, 0xfe]);
/// assert!(matches!(binary.text(), Err(Error::Malformed(_))));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    source: String,
    received_at_ns: u64,
    data: Vec<u8>,
}

impl Frame {
    /// A frame from `source` (the pipeline or port name), read at
    /// `received_at_ns` nanoseconds since the Unix epoch.
    pub fn new(source: impl Into<String>, received_at_ns: u64, data: impl Into<Vec<u8>>) -> Self {
        Frame {
            source: source.into(),
            received_at_ns,
            data: data.into(),
        }
    }

    /// A frame with just data: empty source, received at time 0. Handy in
    /// tests.
    pub fn from_data(data: impl Into<Vec<u8>>) -> Self {
        Self::new(String::new(), 0, data)
    }

    /// The pipeline (port) the frame came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// When the host read the frame, in nanoseconds since the Unix epoch.
    pub fn received_at_ns(&self) -> u64 {
        self.received_at_ns
    }

    /// The raw bytes. Not necessarily UTF-8.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The bytes as UTF-8 text, untrimmed.
    ///
    /// Invalid UTF-8 gives an [`Error::Malformed`] that says where, so a
    /// text protocol can simply write `frame.text()?`.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.data)
            .map_err(|e| Error::malformed(format!("frame is not valid UTF-8: {e}")))
    }

    /// Takes the raw bytes out of the frame.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

/// A command received on the pipeline's command topic, to be encoded for the
/// device by [`Transform::encode_command`](crate::Transform::encode_command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The MQTT topic the command arrived on.
    pub topic: String,
    /// The MQTT payload, as received.
    pub payload: Vec<u8>,
}

impl Command {
    /// A command received on `topic` with `payload`.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Command {
            topic: topic.into(),
            payload: payload.into(),
        }
    }

    /// The payload as UTF-8 text, or an [`Error::Malformed`].
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| Error::malformed(format!("command payload is not valid UTF-8: {e}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn accessors() {
        let f = Frame::new(String::from("port-a"), 42, vec![b'h', b'i']);
        assert_eq!(f.source(), "port-a");
        assert_eq!(f.received_at_ns(), 42);
        assert_eq!(f.data(), b"hi");
        assert_eq!(f.text(), Ok("hi"));
        assert_eq!(f.into_data(), b"hi");
    }

    #[test]
    fn from_data_has_defaults() {
        let f = Frame::from_data(&b"x"[..]);
        assert_eq!(f.source(), "");
        assert_eq!(f.received_at_ns(), 0);
    }

    #[test]
    fn text_rejects_invalid_utf8_as_malformed() {
        let f = Frame::from_data(vec![b'o', b'k', 0xc3, 0x28]);
        let err = f.text().unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err:?}");
        assert!(err.message().contains("not valid UTF-8"), "{err}");
        assert!(err.message().contains("index 2"), "{err}");
    }

    #[test]
    fn command_text() {
        assert_eq!(Command::new("t", "on").text(), Ok("on"));
        assert!(matches!(
            Command::new("t", vec![0xff]).text(),
            Err(Error::Malformed(_))
        ));
    }
}
