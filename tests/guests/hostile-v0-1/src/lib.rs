//! A transform of the old contract, `sluice:transform@0.1.0`, whose output
//! aliases guest memory: in 0.1.0 a `list<message>` is lifted value by
//! value, and nothing stops every payload from pointing at the same region,
//! so a host that lifts it whole copies that region once per message. Never
//! shipped.
//!
//! The frame `alias:<n>:<mib>` returns `<n>` messages on `hostile/alias`
//! whose payloads are all the same `<mib>` MiB buffer; `ok:<text>` returns
//! one message `hostile/ok` = `<text>`. Anything else is `unsupported`.
//!
//! The aliased payloads are built with `Vec::from_raw_parts` over one
//! allocation: after the host has lifted (or refused) the output, the
//! guest's post-return frees that allocation again for every message, and
//! the instance traps there — by design, the guest is hostile; the host
//! replaces it.

#![allow(missing_docs)]

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "transform-module",
});

use exports::sluice::transform::transform::{Command, Error, Frame, Guest, Output};
use sluice::transform::types::{Message, Qos};

struct HostileV01;

export!(HostileV01);

impl Guest for HostileV01 {
    fn init(_config: Vec<(String, String)>) -> Result<(), Error> {
        Ok(())
    }

    fn process(frame: Frame) -> Result<Output, Error> {
        let text = String::from_utf8_lossy(&frame.data).into_owned();
        let text = text.trim_end_matches(['\r', '\n']);
        let mut parts = text.split(':');
        let message = |topic: &str, payload: Vec<u8>| Message {
            topic: topic.into(),
            payload,
            qos: Qos::AtMostOnce,
            retain: false,
        };
        match (parts.next(), parts.next(), parts.next()) {
            (Some("ok"), Some(text), None) => Ok(Output {
                messages: vec![message("hostile/ok", text.as_bytes().to_vec())],
                points: vec![],
            }),
            (Some("alias"), Some(n), Some(mib)) => {
                let bad = |e: std::num::ParseIntError| Error::Malformed(e.to_string());
                let (n, mib): (usize, usize) = (n.parse().map_err(bad)?, mib.parse().map_err(bad)?);
                let mut buffer = std::mem::ManuallyDrop::new(vec![b'x'; mib << 20]);
                let (ptr, len) = (buffer.as_mut_ptr(), buffer.len());
                let messages = (0..n)
                    .map(|_| {
                        // SAFETY: not safe at all, on purpose: `n` vectors own
                        // one buffer (see the module docs).
                        message("hostile/alias", unsafe {
                            Vec::from_raw_parts(ptr, len, len)
                        })
                    })
                    .collect();
                Ok(Output {
                    messages,
                    points: vec![],
                })
            }
            _ => Err(Error::Unsupported(format!("unknown command: {text:?}"))),
        }
    }

    fn process_batch(frames: Vec<Frame>) -> Vec<Result<Output, Error>> {
        frames.into_iter().map(Self::process).collect()
    }

    fn encode_command(command: Command) -> Result<Vec<u8>, Error> {
        Ok(command.payload)
    }
}
