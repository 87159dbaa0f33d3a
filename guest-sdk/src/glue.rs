//! The component glue behind [`export!`](crate::export), compiled only for
//! `wasm32`.
//!
//! The generated bindings want a type implementing their `Guest` trait with
//! static functions. [`Adapter`] is that type, generic over a [`Slot`]: the
//! per-component storage for the transform instance that `export!` declares
//! in the author's crate (a static cannot be generic, so it has to live
//! there). Conversions between the bindings' types and the SDK's move every
//! string and vector; nothing is copied.

use std::marker::PhantomData;

use crate::__bindings::exports::sluice::transform::transform as wit;
use crate::__bindings::sluice::transform::types as wit_types;
use crate::{Command, Config, Error, FieldValue, Frame, Message, Output, Point, Qos, Transform};

/// Storage for the one transform instance of a component.
pub trait Slot: 'static {
    /// The exported transform.
    type Transform: Transform;

    /// Runs `f` with the instance (`None` until `init` succeeded).
    fn with<R>(f: impl FnOnce(&mut Option<Self::Transform>) -> R) -> R;
}

/// Implements the bindings' `Guest` trait on top of a [`Transform`].
pub struct Adapter<S>(PhantomData<S>);

fn not_initialised() -> Error {
    Error::internal("the host called the transform before a successful init")
}

impl<S: Slot> wit::Guest for Adapter<S> {
    fn init(config: Vec<(String, String)>) -> Result<(), wit::Error> {
        let config = Config::from_vec(config);
        let transform = S::Transform::init(&config).map_err(error_to_wit)?;
        S::with(|slot| *slot = Some(transform));
        Ok(())
    }

    fn process(frame: wit::Frame) -> Result<wit::Output, wit::Error> {
        let frame = frame_from_wit(frame);
        S::with(|slot| match slot {
            Some(transform) => crate::process(transform, &frame),
            None => Err(not_initialised()),
        })
        .map(output_to_wit)
        .map_err(error_to_wit)
    }

    fn process_batch(frames: Vec<wit::Frame>) -> Vec<Result<wit::Output, wit::Error>> {
        let frames: Vec<Frame> = frames.into_iter().map(frame_from_wit).collect();
        S::with(|slot| match slot {
            Some(transform) => crate::process_batch(transform, &frames),
            None => frames.iter().map(|_| Err(not_initialised())).collect(),
        })
        .into_iter()
        .map(|result| result.map(output_to_wit).map_err(error_to_wit))
        .collect()
    }

    fn encode_command(command: wit::Command) -> Result<Vec<u8>, wit::Error> {
        let command = Command {
            topic: command.topic,
            payload: command.payload,
        };
        S::with(|slot| match slot {
            Some(transform) => transform.encode_command(&command),
            None => Err(not_initialised()),
        })
        .map_err(error_to_wit)
    }
}

fn frame_from_wit(frame: wit::Frame) -> Frame {
    Frame::new(frame.source, frame.received_at_ns, frame.data)
}

fn error_to_wit(error: Error) -> wit::Error {
    match error {
        Error::Malformed(m) => wit::Error::Malformed(m),
        Error::Unsupported(m) => wit::Error::Unsupported(m),
        Error::InvalidConfig(m) => wit::Error::InvalidConfig(m),
        Error::Internal(m) => wit::Error::Internal(m),
    }
}

fn output_to_wit(output: Output) -> wit::Output {
    let (messages, points) = output.into_parts();
    wit::Output {
        messages: messages.into_iter().map(message_to_wit).collect(),
        points: points.into_iter().map(point_to_wit).collect(),
    }
}

fn message_to_wit(m: Message) -> wit_types::Message {
    wit_types::Message {
        topic: m.topic,
        payload: m.payload,
        qos: match m.qos {
            Qos::AtMostOnce => wit_types::Qos::AtMostOnce,
            Qos::AtLeastOnce => wit_types::Qos::AtLeastOnce,
            Qos::ExactlyOnce => wit_types::Qos::ExactlyOnce,
        },
        retain: m.retain,
    }
}

fn point_to_wit(p: Point) -> wit_types::Point {
    wit_types::Point {
        measurement: p.measurement,
        tags: p
            .tags
            .into_iter()
            .map(|(key, value)| wit_types::Tag { key, value })
            .collect(),
        fields: p
            .fields
            .into_iter()
            .map(|(key, value)| wit_types::Field {
                key,
                value: match value {
                    FieldValue::Float(v) => wit_types::FieldValue::Float(v),
                    FieldValue::Int(v) => wit_types::FieldValue::Int(v),
                    FieldValue::Uint(v) => wit_types::FieldValue::Uint(v),
                    FieldValue::Boolean(v) => wit_types::FieldValue::Boolean(v),
                    FieldValue::Text(v) => wit_types::FieldValue::Text(v),
                },
            })
            .collect(),
        timestamp_ns: p.timestamp_ns,
    }
}
