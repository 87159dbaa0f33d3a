//! Write [sluice] transforms in plain Rust.
//!
//! A *transform* turns the frames that sluice reads off a serial device into
//! MQTT messages and InfluxDB points, and optionally encodes downlink
//! commands for the device. It owns all knowledge of the device's format;
//! the host owns every side effect. sluice runs each transform as a sandboxed
//! WebAssembly component, so a buggy or hostile decoder cannot crash the edge
//! box, leak its credentials or touch the network.
//!
//! This crate is the only thing a transform depends on. It hides the
//! component model behind a handful of plain types ([`Frame`], [`Output`],
//! [`Message`], [`Point`], [`Config`], [`Error`]) and one trait,
//! [`Transform`]. [`export!`] turns an implementation into the component's
//! exports when compiled for `wasm32-wasip2`; on any other target it is only
//! a compile-time check, so the very same code is unit-tested with a plain
//! `cargo test`, no WebAssembly involved.
//!
//! For devices behind the host's Modbus sources, [`modbus`] reads the
//! frames (one response each) and builds the write commands.
//!
//! # Hello, world
//!
//! ```
//! use sluice_sdk::{Config, Error, Frame, Message, Output, Transform};
//!
//! pub struct Hello(String);
//!
//! impl Transform for Hello {
//!     fn init(config: &Config) -> Result<Self, Error> {
//!         Ok(Hello(config.get_or("greeting", "hello").to_owned()))
//!     }
//!     fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error> {
//!         let name = frame.text()?.trim(); // not UTF-8? `Error::Malformed`, frame dead-lettered
//!         out.publish(Message::new("hello", format!("{}, {name}", self.0)));
//!         Ok(())
//!     }
//! }
//! sluice_sdk::export!(Hello);
//! #
//! # let mut hello = Hello::init(&Config::from_pairs([("greeting", "hi")]))?;
//! # let out = sluice_sdk::process(&mut hello, &Frame::from_data("world\r\n"))?;
//! # assert_eq!(out.messages(), [Message::new("hello", "hi, world")]);
//! # assert!(sluice_sdk::process(&mut hello, &Frame::from_data([0xff])).is_err());
//! # Ok::<(), Error>(())
//! ```
//!
//! Build it as a component with
//! `cargo build --release --target wasm32-wasip2` from a crate with
//! `crate-type = ["cdylib", "rlib"]` (the `rlib` lets tests and benchmarks
//! link it natively).
//!
//! # Testing natively
//!
//! [`process`] runs one frame exactly as the host does, discarding partial
//! output on error:
//!
//! ```
//! # use sluice_sdk::{Config, Error, Frame, Message, Output, Transform};
//! # pub struct Hello(String);
//! # impl Transform for Hello {
//! #     fn init(config: &Config) -> Result<Self, Error> {
//! #         Ok(Hello(config.get_or("greeting", "hello").to_owned()))
//! #     }
//! #     fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error> {
//! #         let name = frame.text()?.trim();
//! #         out.publish(Message::new("hello", format!("{}, {name}", self.0)));
//! #         Ok(())
//! #     }
//! # }
//! let mut hello = Hello::init(&Config::new())?;
//! let out = sluice_sdk::process(&mut hello, &Frame::from_data("world\r\n"))?;
//! assert_eq!(out.messages()[0].payload, b"hello, world");
//!
//! let err = sluice_sdk::process(&mut hello, &Frame::from_data([0xff])).unwrap_err();
//! assert!(matches!(err, Error::Malformed(_)));
//! # Ok::<(), Error>(())
//! ```
//!
//! # The contract, in short
//!
//! * [`Transform::init`] is called once with the transform's key/value
//!   configuration; an error rejects the module.
//! * [`Transform::process`] is called for every frame and appends to an
//!   [`Output`]. If it returns an error, what it appended for that frame is
//!   discarded and the host dead-letters the frame with the error's message.
//!   The host's batch call is the same loop over `process`, one result per
//!   frame, in order.
//! * A panic (or running out of memory, or looping forever) traps the
//!   instance: the host counts it as a crash and restarts the module. Return
//!   an [`Error`] instead.
//! * Logging goes through [`log`]; there is no other I/O.
//!
//! # Cargo features
//!
//! * `fast-alloc` (default): in components, a free list per power-of-two
//!   size class in front of `std`'s dlmalloc. A transform allocates the same
//!   small strings every frame (topics, payloads, field keys) and the host
//!   frees them after every call; on dlmalloc that was a fifth of the time of
//!   a `json-telemetry` call. Freed blocks are kept for reuse, so memory use
//!   is bounded by each size's peak. Turn default features off to install
//!   your own `#[global_allocator]`. No effect on native targets.
//!
//! [sluice]: https://example.invalid/sluice
#![deny(missing_docs)]

mod config;
mod error;
mod frame;
pub mod log;
pub mod modbus;
mod output;
mod packed;

#[cfg(target_arch = "wasm32")]
mod glue;

#[cfg(any(
    test,
    all(
        target_arch = "wasm32",
        feature = "fast-alloc",
        not(target_feature = "atomics")
    )
))]
mod cache_alloc;

/// See [`cache_alloc`]: the `fast-alloc` feature (on by default).
#[cfg(all(
    target_arch = "wasm32",
    feature = "fast-alloc",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: cache_alloc::CachingAlloc = cache_alloc::CachingAlloc::new();

pub use config::Config;
pub use error::Error;
pub use frame::{Command, Frame};
pub use output::{FieldValue, Message, Output, ParseQosError, Point, Qos};

/// A transform: a decoder from a device's frames to messages and points.
///
/// Implement it and pass the type to [`export!`]. One instance is created by
/// [`init`](Self::init) and then lives as long as the component.
pub trait Transform: Sized + 'static {
    /// Creates the instance from the transform's configuration.
    ///
    /// Read everything you need from `config` here and store it in `Self`;
    /// return [`Error::InvalidConfig`] naming the key when a value is wrong
    /// ([`Config::parse`] does that for you).
    fn init(config: &Config) -> Result<Self, Error>;

    /// Decodes one frame, appending messages and points to `out`.
    ///
    /// If this returns an error, whatever it appended to `out` for this frame
    /// is discarded.
    fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error>;

    /// Encodes a downlink command into the bytes to write to the device
    /// (without framing; the host frames them like the port's input).
    ///
    /// The default refuses every command with [`Error::Unsupported`].
    fn encode_command(&mut self, command: &Command) -> Result<Vec<u8>, Error> {
        let _ = command;
        Err(Error::unsupported("this transform has no downlink"))
    }
}

/// Runs [`Transform::process`] on one frame the way the host does: into a
/// fresh [`Output`], which is dropped if `process` fails.
///
/// Use it in unit tests and native benchmarks.
pub fn process<T: Transform>(transform: &mut T, frame: &Frame) -> Result<Output, Error> {
    let mut out = Output::new();
    transform.process(frame, &mut out)?;
    Ok(out)
}

/// Runs [`process`] on each frame in turn: one result per frame, in order.
/// This is how the SDK answers the host's `process-batch` call.
pub fn process_batch<T: Transform>(
    transform: &mut T,
    frames: &[Frame],
) -> Vec<Result<Output, Error>> {
    frames
        .iter()
        .map(|frame| process(transform, frame))
        .collect()
}

/// Exports a [`Transform`] implementation as the component's transform.
///
/// Invoke it once per transform crate, at module level, with the type:
///
/// ```
/// # use sluice_sdk::{Config, Error, Frame, Output, Transform};
/// # pub struct MyTransform;
/// # impl Transform for MyTransform {
/// #     fn init(_: &Config) -> Result<Self, Error> { Ok(MyTransform) }
/// #     fn process(&mut self, _: &Frame, _: &mut Output) -> Result<(), Error> { Ok(()) }
/// # }
/// sluice_sdk::export!(MyTransform);
/// ```
///
/// Compiled for `wasm32`, it generates the component's exports: storage for
/// the instance created by `init` (calls before a successful `init` return
/// [`Error::Internal`], never panic), `process`, `process-batch` (a loop over
/// `process`) and `encode-command`, converting between the SDK's types and
/// the wire types by moving, not copying. On any other target it expands to
/// nothing but a check that the type implements [`Transform`]:
///
/// ```compile_fail
/// struct NotATransform;
/// sluice_sdk::export!(NotATransform); // error: `Transform` is not implemented
/// ```
#[macro_export]
macro_rules! export {
    ($ty:ty $(,)?) => {
        $crate::__export_impl!($ty);
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_impl {
    ($ty:ty) => {
        const _: () = {
            struct __SluiceSlot;

            impl $crate::__private::Slot for __SluiceSlot {
                type Transform = $ty;

                fn with<R>(
                    f: impl ::core::ops::FnOnce(&mut ::core::option::Option<$ty>) -> R,
                ) -> R {
                    ::std::thread_local! {
                        static INSTANCE: ::core::cell::RefCell<::core::option::Option<$ty>> =
                            const { ::core::cell::RefCell::new(::core::option::Option::None) };
                    }
                    INSTANCE.with_borrow_mut(f)
                }
            }

            type __SluiceGuest = $crate::__private::Adapter<__SluiceSlot>;

            $crate::__bindings::__export_transform_module!(
                __SluiceGuest with_types_in $crate::__bindings
            );
        };
    };
}

#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_impl {
    ($ty:ty) => {
        const _: () = {
            $crate::__private::assert_transform::<$ty>();
        };
    };
}

#[doc(hidden)]
pub mod __private {
    //! Not public API: what [`export!`](crate::export) expands to.

    #[cfg(target_arch = "wasm32")]
    pub use crate::glue::{Adapter, Slot};

    /// Fails to compile unless `T` implements [`Transform`](crate::Transform).
    pub const fn assert_transform<T: crate::Transform>() {}

    /// `output` as the `packed-output` buffer of `sluice:transform@0.2.0`
    /// (what the component returns to the host; public for the host's
    /// round-trip tests).
    pub fn encode_output(output: &crate::Output) -> Vec<u8> {
        crate::packed::encode(output.messages(), output.points())
    }

    /// The pinned sample encoding of the packed output, in hex.
    pub const PACKED_GOLDEN_HEX: &str = crate::packed::GOLDEN_HEX;
}

/// The raw bindings generated by `wit-bindgen` from
/// `wit/v0.2.0/transform.wit`.
/// Not public API; only [`export!`] uses them.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(missing_docs, clippy::unwrap_used)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "transform-module",
        pub_export_macro: true,
        export_macro_name: "__export_transform_module",
        default_bindings_module: "sluice_sdk::__bindings",
    });
}
