//! A transform of the old contract, `sluice:transform@0.1.0`, written
//! straight against its WIT bindings (no SDK, which now builds 0.2.0): the
//! host must keep loading modules built before 0.2.0 existed. Never shipped.
//!
//! A frame becomes one message on `legacy/<source>` whose payload is the
//! frame's bytes (QoS 1, retained) and one `legacy` point tagged
//! `source=<source>` with a field of every type, stamped with the frame's
//! receive time. The frame `fail` is `malformed`; a command is encoded as
//! `<topic>=<payload>`. Config is ignored.

#![allow(missing_docs)]

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "transform-module",
});

use exports::sluice::transform::transform::{Command, Error, Frame, Guest, Output};
use sluice::transform::types::{Field, FieldValue, Message, Point, Qos, Tag};

struct Legacy;

export!(Legacy);

impl Guest for Legacy {
    fn init(_config: Vec<(String, String)>) -> Result<(), Error> {
        sluice::transform::log::log(sluice::transform::log::Level::Info, "legacy 0.1.0 guest up");
        Ok(())
    }

    fn process(frame: Frame) -> Result<Output, Error> {
        if frame.data == b"fail" {
            return Err(Error::Malformed("the frame says fail".into()));
        }
        let text = String::from_utf8_lossy(&frame.data).into_owned();
        let point = Point {
            measurement: "legacy".into(),
            tags: vec![Tag {
                key: "source".into(),
                value: frame.source.clone(),
            }],
            fields: vec![
                field("len", FieldValue::Uint(frame.data.len() as u64)),
                field("neg", FieldValue::Int(-(frame.data.len() as i64))),
                field("half", FieldValue::Float(frame.data.len() as f64 / 2.0)),
                field(
                    "even",
                    FieldValue::Boolean(frame.data.len().is_multiple_of(2)),
                ),
                field("text", FieldValue::Text(text)),
            ],
            timestamp_ns: i64::try_from(frame.received_at_ns).ok(),
        };
        Ok(Output {
            messages: vec![Message {
                topic: format!("legacy/{}", frame.source),
                payload: frame.data,
                qos: Qos::AtLeastOnce,
                retain: true,
            }],
            points: vec![point],
        })
    }

    fn process_batch(frames: Vec<Frame>) -> Vec<Result<Output, Error>> {
        frames.into_iter().map(Self::process).collect()
    }

    fn encode_command(command: Command) -> Result<Vec<u8>, Error> {
        let mut bytes = command.topic.into_bytes();
        bytes.push(b'=');
        bytes.extend(command.payload);
        Ok(bytes)
    }
}

fn field(key: &str, value: FieldValue) -> Field {
    Field {
        key: key.into(),
        value,
    }
}
