//! A transform that tags every frame with its own version, for the hot-swap
//! tests. Never shipped.
//!
//! One source, three crates (`tagger-a`, `tagger-b`, `tagger-flaky`, whose
//! manifests point here): the version is the crate name without `tagger-`,
//! fixed at compile time, so the three components differ in their bytes
//! (and hash) and in what they emit, exactly like two builds of a real
//! decoder.
//!
//! A frame is a decimal sequence number (a trailing `\r`/`\n` is dropped).
//! It becomes one message on `tag/<version>` whose payload is the number as
//! received, QoS 1, not retained. Anything that is not a number is
//! `malformed`. `tagger-flaky` panics (a trap) on every odd number.
//! The config is ignored.

use sluice_sdk::{Config, Error, Frame, Message, Output, Qos, Transform};

/// `a`, `b` or `flaky`.
fn version() -> &'static str {
    env!("CARGO_PKG_NAME")
        .strip_prefix("tagger-")
        .unwrap_or("unknown")
}

/// The tagger.
pub struct Tagger {
    topic: String,
}

sluice_sdk::export!(Tagger);

impl Transform for Tagger {
    fn init(_config: &Config) -> Result<Self, Error> {
        Ok(Tagger {
            topic: format!("tag/{}", version()),
        })
    }

    fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error> {
        let text = frame.text()?.trim_end_matches(['\r', '\n']);
        let seq: u64 = text
            .parse()
            .map_err(|e| Error::malformed(format!("not a sequence number {text:?}: {e}")))?;
        if version() == "flaky" && seq % 2 == 1 {
            panic!("flaky: odd sequence number {seq}");
        }
        out.publish(Message::new(self.topic.as_str(), text).qos(Qos::AtLeastOnce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tags_with_the_crate_version() {
        let mut t = Tagger::init(&Config::new()).unwrap();
        let out = sluice_sdk::process(&mut t, &Frame::from_data("42\n")).unwrap();
        let topic = format!("tag/{}", version());
        assert_eq!(
            out.messages(),
            [Message::new(topic.as_str(), "42").qos(Qos::AtLeastOnce)]
        );
        assert!(sluice_sdk::process(&mut t, &Frame::from_data("x")).is_err());
    }
}
