//! The component glue behind [`export!`](crate::export), compiled only for
//! `wasm32`.
//!
//! The generated bindings want a type implementing their `Guest` trait with
//! static functions. [`Adapter`] is that type, generic over a [`Slot`]: the
//! per-component storage for the transform instance that `export!` declares
//! in the author's crate (a static cannot be generic, so it has to live
//! there). Frames and commands move from the bindings' types into the SDK's
//! without a copy; each frame's output goes back as one `packed-output`
//! buffer (see [`crate::packed`]).

use std::marker::PhantomData;

use crate::__bindings::exports::sluice::transform::transform as wit;
use crate::{Command, Config, Error, Frame, Output, Transform};

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

    fn process(frame: wit::Frame) -> Result<wit::PackedOutput, wit::Error> {
        let frame = frame_from_wit(frame);
        S::with(|slot| match slot {
            Some(transform) => crate::process(transform, &frame),
            None => Err(not_initialised()),
        })
        .map(|output| pack(&output))
        .map_err(error_to_wit)
    }

    fn process_batch(frames: Vec<wit::Frame>) -> Vec<Result<wit::PackedOutput, wit::Error>> {
        let frames: Vec<Frame> = frames.into_iter().map(frame_from_wit).collect();
        S::with(|slot| match slot {
            Some(transform) => crate::process_batch(transform, &frames),
            None => frames.iter().map(|_| Err(not_initialised())).collect(),
        })
        .into_iter()
        .map(|result| result.map(|output| pack(&output)).map_err(error_to_wit))
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

fn pack(output: &Output) -> Vec<u8> {
    crate::packed::encode(output.messages(), output.points())
}
