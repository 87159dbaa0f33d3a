//! What crosses the sandbox boundary from guest to host, read without
//! trusting it: the per-frame output limits, the contract's records as the
//! host lifts them, and guest text.
//!
//! A guest's memory is capped, but what it *describes* there is not: four
//! bytes of packed output become a ~100-byte message on the host, and a
//! 0.1.0 `list<message>` may point every payload at the same region, so
//! lifting it copies that region once per element. So every list's length
//! is checked against its [`Limit`] before the host allocates for it, and
//! every string and byte list is charged to the frame's [`Budget`] before
//! it is copied. A frame over a limit is refused whole.
//!
//! Guest text (error messages, log lines, trap function names) is made safe
//! to print where it enters the host ([`guest_text`]).

use wasmtime::component::{ComponentType, Lift, Lower};

use sluice_core::model::{self, GUEST_TEXT_MAX, guest_text};
use sluice_core::output::{FieldRef, MessageRef, OutputBuilder, PointLike, TransformOutput};

/// What a frame's output may hold ([`Limits::output`](super::Limits)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// MQTT messages per frame.
    pub messages: usize,
    /// Points per frame.
    pub points: usize,
    /// Tags per point.
    pub tags_per_point: usize,
    /// Fields per point.
    pub fields_per_point: usize,
    /// Host memory the output may take: every topic, payload, measurement,
    /// key and text value's bytes, plus [`ITEM_BYTES`] per message, point,
    /// tag and field.
    pub bytes: usize,
}

impl OutputLimits {
    /// The defaults of `[limits]`.
    pub const DEFAULT: OutputLimits = OutputLimits {
        messages: 1_000,
        points: 1_000,
        tags_per_point: 64,
        fields_per_point: 256,
        bytes: 4 << 20,
    };
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What one message, point, tag or field costs the host besides its text.
pub const ITEM_BYTES: usize = 64;

/// The limits a frame's output can go over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`OutputLimits::messages`].
    Messages,
    /// [`OutputLimits::points`].
    Points,
    /// [`OutputLimits::tags_per_point`].
    TagsPerPoint,
    /// [`OutputLimits::fields_per_point`].
    FieldsPerPoint,
    /// [`OutputLimits::bytes`].
    Bytes,
}

impl Limit {
    /// Stable label for the drop counter.
    pub fn reason(self) -> &'static str {
        match self {
            Limit::Messages => "limit_messages",
            Limit::Points => "limit_points",
            Limit::TagsPerPoint => "limit_tags",
            Limit::FieldsPerPoint => "limit_fields",
            Limit::Bytes => "limit_output_bytes",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::Messages => "messages",
            Limit::Points => "points",
            Limit::TagsPerPoint => "tags on one point",
            Limit::FieldsPerPoint => "fields on one point",
            Limit::Bytes => "bytes of output",
        }
    }
}

/// Why a frame's output was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// Over a limit; nothing of the frame's output is kept.
    #[error("output over the limit: {asked} {what} (at most {max})", what = .limit.what())]
    OverLimit {
        /// Which limit.
        limit: Limit,
        /// What the guest asked for (at least; counting stops at the limit).
        asked: usize,
        /// The limit.
        max: usize,
    },
    /// Not what the contract says (a malformed buffer, invalid UTF-8).
    #[error("{0}")]
    Contract(String),
}

/// What is left of one frame's output limits while it is read.
#[derive(Debug)]
pub struct Budget {
    limits: OutputLimits,
    bytes: usize,
}

impl Budget {
    /// A fresh budget for one frame.
    pub fn new(limits: OutputLimits) -> Self {
        Budget { limits, bytes: 0 }
    }

    /// A list of `count` items of kind `limit`: checked against its limit,
    /// and each item's [`ITEM_BYTES`] charged.
    pub fn items(&mut self, limit: Limit, count: usize) -> Result<(), OutputError> {
        let max = match limit {
            Limit::Messages => self.limits.messages,
            Limit::Points => self.limits.points,
            Limit::TagsPerPoint => self.limits.tags_per_point,
            Limit::FieldsPerPoint => self.limits.fields_per_point,
            Limit::Bytes => self.limits.bytes,
        };
        if count > max {
            return Err(OutputError::OverLimit {
                limit,
                asked: count,
                max,
            });
        }
        self.charge(count.saturating_mul(ITEM_BYTES))
    }

    /// `bytes` more of output, before they are copied.
    pub fn charge(&mut self, bytes: usize) -> Result<(), OutputError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limits.bytes {
            return Err(OutputError::OverLimit {
                limit: Limit::Bytes,
                asked: self.bytes,
                max: self.limits.bytes,
            });
        }
        Ok(())
    }
}

// Lifting within limits. wasmtime lifts a call's result inside the call
// and frees the guest's copy right after (post-return), so the limits must
// be applied while lifting: the wrappers below check each list's length and
// charge each string's bytes to the call's budget before the host copies
// anything, then lift as wasmtime would. They reach wasmtime's lifting
// through `component::__internal`, which is not a stable API; wasmtime is
// pinned to one version, and the contract tests exercise every wrapper.

use std::cell::RefCell;
use wasmtime::ValRaw;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};

thread_local! {
    /// The budget of the call being lifted on this thread.
    static BUDGET: RefCell<Option<Budget>> = const { RefCell::new(None) };
}

/// Runs `call` with `limits` applied to what it lifts. An over-limit error
/// comes back as the call's error (a [`wasmtime::Error`] that downcasts to
/// [`OutputError`]).
pub fn within<R>(limits: OutputLimits, call: impl FnOnce() -> R) -> R {
    BUDGET.with(|b| *b.borrow_mut() = Some(Budget::new(limits)));
    let result = call();
    BUDGET.with(|b| *b.borrow_mut() = None);
    result
}

/// Applies `charge` to the budget of the call being lifted.
fn charge(charge: impl FnOnce(&mut Budget) -> Result<(), OutputError>) -> wasmtime::Result<()> {
    BUDGET.with(|b| match b.borrow_mut().as_mut() {
        Some(budget) => charge(budget).map_err(wasmtime::Error::new),
        None => Err(wasmtime::format_err!(
            "guest output lifted outside a budget"
        )),
    })
}

/// A string lifted within the call's budget.
pub struct Text(pub String);

/// A `list<u8>` lifted within the call's budget.
pub struct Bytes(pub Vec<u8>);

/// A list whose length is checked against limit `L` (a [`Limit`] as `u8`)
/// before it is lifted.
pub struct List<T, const L: u8>(pub Vec<T>);

/// The `L` of [`List`].
pub mod kind {
    /// [`super::Limit::Messages`].
    pub const MESSAGES: u8 = 0;
    /// [`super::Limit::Points`].
    pub const POINTS: u8 = 1;
    /// [`super::Limit::TagsPerPoint`].
    pub const TAGS: u8 = 2;
    /// [`super::Limit::FieldsPerPoint`].
    pub const FIELDS: u8 = 3;
}

fn limit_of(kind: u8) -> Limit {
    match kind {
        kind::MESSAGES => Limit::Messages,
        kind::POINTS => Limit::Points,
        kind::TAGS => Limit::TagsPerPoint,
        _ => Limit::FieldsPerPoint,
    }
}

/// A string's or list's length from its lowered (pointer, length) pair.
fn flat_len(src: &[ValRaw; 2]) -> usize {
    src[1].get_u32() as usize
}

fn memory_len(bytes: &[u8]) -> usize {
    bytes
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map_or(usize::MAX, |b| u32::from_le_bytes(b) as usize)
}

/// Implements `ComponentType` for a wrapper as the type it wraps.
macro_rules! same_type_as {
    (impl[$($generics:tt)*] $wrapper:ty => $inner:ty) => {
        // SAFETY: the same type as `$inner`, lowered and lifted as it is.
        unsafe impl<$($generics)*> wasmtime::component::ComponentType for $wrapper {
            type Lower = <$inner as wasmtime::component::ComponentType>::Lower;
            const ABI: CanonicalAbiInfo = <$inner as wasmtime::component::ComponentType>::ABI;

            fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
                <$inner as wasmtime::component::ComponentType>::typecheck(ty, types)
            }
        }
    };
}

/// A wrapper that is, on the wire, the type it wraps, and lifts as that
/// type after `check(budget, length)` — the string's or list's length, read
/// from its lowered (pointer, length) pair before anything is copied — has
/// passed.
macro_rules! lift_within_budget {
    (impl[$($generics:tt)*] $wrapper:ty => $inner:ty, $wrap:path, $check:expr) => {
        same_type_as!(impl[$($generics)*] $wrapper => $inner);

        // SAFETY: lifts as `$inner` does, after a check that copies nothing.
        unsafe impl<$($generics)*> Lift for $wrapper {
            fn linear_lift_from_flat(
                cx: &mut LiftContext<'_>,
                ty: InterfaceType,
                src: &Self::Lower,
            ) -> wasmtime::Result<Self> {
                charge(|budget| ($check)(budget, flat_len(src)))?;
                <$inner>::linear_lift_from_flat(cx, ty, src).map($wrap)
            }

            fn linear_lift_from_memory(
                cx: &mut LiftContext<'_>,
                ty: InterfaceType,
                bytes: &[u8],
            ) -> wasmtime::Result<Self> {
                charge(|budget| ($check)(budget, memory_len(bytes)))?;
                <$inner>::linear_lift_from_memory(cx, ty, bytes).map($wrap)
            }
        }
    };
}

lift_within_budget!(impl[] Text => String, Text, Budget::charge);
lift_within_budget!(impl[] Bytes => Vec<u8>, Bytes, Budget::charge);
lift_within_budget!(
    impl[T: Lift, const L: u8] List<T, L> => Vec<T>,
    List,
    |budget: &mut Budget, len| budget.items(limit_of(L), len)
);

/// Guest text for a message ([`guest_text`]): only its first
/// [`MESSAGE_LIFTED`] bytes are copied out of the guest.
pub struct Message(pub String);

/// How much of a guest's error message is lifted (then cut to
/// [`GUEST_TEXT_MAX`]).
const MESSAGE_LIFTED: u32 = 4 * GUEST_TEXT_MAX as u32;

same_type_as!(impl[] Message => String);

/// A (pointer, length) pair laid out as in guest memory, aligned as a
/// string must be.
#[repr(C, align(4))]
struct PointerPair([u8; 8]);

// SAFETY: lifts a string (a prefix of the guest's) as `String` does.
unsafe impl Lift for Message {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let (ptr, len) = (src[0].get_u32(), src[1].get_u32());
        let mut pair = PointerPair([0; 8]);
        Ok(Message(lift_prefix(len, |cut| {
            pair.0[..4].copy_from_slice(&ptr.to_le_bytes());
            pair.0[4..].copy_from_slice(&cut.to_le_bytes());
            String::linear_lift_from_memory(cx, ty, &pair.0)
        })))
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let mut pair = PointerPair([0; 8]);
        pair.0.copy_from_slice(bytes.get(..8).unwrap_or(&[0; 8]));
        let len = u32::from_le_bytes([pair.0[4], pair.0[5], pair.0[6], pair.0[7]]);
        Ok(Message(lift_prefix(len, |cut| {
            pair.0[4..].copy_from_slice(&cut.to_le_bytes());
            String::linear_lift_from_memory(cx, ty, &pair.0)
        })))
    }
}

/// Lifts at most [`MESSAGE_LIFTED`] bytes of a `len`-byte string (backing
/// off up to three bytes when the cut splits a character) and makes them
/// safe to print; anything that does not lift is described instead.
fn lift_prefix(len: u32, mut lift: impl FnMut(u32) -> wasmtime::Result<String>) -> String {
    let cut = len.min(MESSAGE_LIFTED);
    let floor = if cut < len {
        cut.saturating_sub(3)
    } else {
        cut
    };
    let mut last_error = None;
    for at in (floor..=cut).rev() {
        match lift(at) {
            Ok(text) if at < len => return guest_text(&format!("{text}…")),
            Ok(text) => return guest_text(&text),
            Err(e) => last_error = Some(e),
        }
    }
    format!(
        "<a message the host cannot read: {}>",
        last_error.map_or_else(String::new, |e| guest_text(&format!("{e:#}")))
    )
}

/// The contract's `frame` record (the same in every version).
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct WitFrame<'a> {
    pub source: &'a str,
    #[component(name = "received-at-ns")]
    pub received_at_ns: u64,
    pub data: &'a [u8],
}

/// The contract's `command` record (the same in every version).
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct WitCommand<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
}

/// The contract's `error` variant (the same in every version).
#[derive(ComponentType, Lift)]
#[component(variant)]
pub enum WitError {
    #[component(name = "malformed")]
    Malformed(Message),
    #[component(name = "unsupported")]
    Unsupported(Message),
    #[component(name = "invalid-config")]
    InvalidConfig(Message),
    #[component(name = "internal")]
    Internal(Message),
}

impl From<WitError> for super::GuestError {
    fn from(e: WitError) -> Self {
        use super::GuestErrorKind as K;
        let (kind, Message(message)) = match e {
            WitError::Malformed(m) => (K::Malformed, m),
            WitError::Unsupported(m) => (K::Unsupported, m),
            WitError::InvalidConfig(m) => (K::InvalidConfig, m),
            WitError::Internal(m) => (K::Internal, m),
        };
        super::GuestError { kind, message }
    }
}

/// `sluice:transform@0.1.0`'s `output` record, lifted within the budget.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct WitOutputV01 {
    messages: List<WitMessage, { kind::MESSAGES }>,
    points: List<WitPoint, { kind::POINTS }>,
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub struct WitMessage {
    topic: Text,
    payload: Bytes,
    qos: WitQos,
    retain: bool,
}

#[derive(ComponentType, Lift, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
#[allow(dead_code)] // Made by lifting only.
pub enum WitQos {
    #[component(name = "at-most-once")]
    AtMostOnce,
    #[component(name = "at-least-once")]
    AtLeastOnce,
    #[component(name = "exactly-once")]
    ExactlyOnce,
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub struct WitPoint {
    measurement: Text,
    tags: List<WitTag, { kind::TAGS }>,
    fields: List<WitField, { kind::FIELDS }>,
    #[component(name = "timestamp-ns")]
    timestamp_ns: Option<i64>,
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub struct WitTag {
    key: Text,
    value: Text,
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub struct WitField {
    key: Text,
    value: WitFieldValue,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
pub enum WitFieldValue {
    #[component(name = "float")]
    Float(f64),
    #[component(name = "int")]
    Int(i64),
    #[component(name = "uint")]
    Uint(u64),
    #[component(name = "boolean")]
    Boolean(bool),
    #[component(name = "text")]
    Text(Text),
}

impl From<WitOutputV01> for TransformOutput {
    fn from(output: WitOutputV01) -> Self {
        let mut builder = OutputBuilder::new(Vec::new());
        builder.reserve_messages(output.messages.0.len());
        for m in &output.messages.0 {
            builder.push_message_ref(MessageRef {
                topic: &m.topic.0,
                payload: &m.payload.0,
                qos: match m.qos {
                    WitQos::AtMostOnce => model::Qos::AtMostOnce,
                    WitQos::AtLeastOnce => model::Qos::AtLeastOnce,
                    WitQos::ExactlyOnce => model::Qos::ExactlyOnce,
                },
                retain: m.retain,
            });
        }
        builder.reserve_points(output.points.0.len());
        for point in &output.points.0 {
            builder.push_point_like(point);
        }
        builder.finish()
    }
}

/// A lifted 0.1.0 point is copied into the output's buffer as it is.
impl PointLike for WitPoint {
    fn measurement(&self) -> &str {
        &self.measurement.0
    }

    fn tags(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        (self.tags.0.iter()).map(|t| (t.key.0.as_str(), t.value.0.as_str()))
    }

    fn fields(&self) -> impl ExactSizeIterator<Item = (&str, FieldRef<'_>)> {
        self.fields.0.iter().map(|f| {
            let value = match &f.value {
                WitFieldValue::Float(v) => FieldRef::Float(*v),
                WitFieldValue::Int(v) => FieldRef::Int(*v),
                WitFieldValue::Uint(v) => FieldRef::UInt(*v),
                WitFieldValue::Boolean(v) => FieldRef::Bool(*v),
                WitFieldValue::Text(t) => FieldRef::Text(&t.0),
            };
            (f.key.0.as_str(), value)
        })
    }

    fn timestamp_ns(&self) -> Option<i64> {
        self.timestamp_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_before_the_limit_is_passed() {
        let limits = OutputLimits {
            messages: 2,
            bytes: 200,
            ..OutputLimits::default()
        };
        let mut budget = Budget::new(limits);
        budget
            .items(Limit::Messages, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Budget::new(limits).items(Limit::Messages, 3),
            Err(OutputError::OverLimit {
                limit: Limit::Messages,
                asked: 3,
                max: 2
            })
        );
        // 2 × ITEM_BYTES charged; 72 bytes of text are the most that fit.
        budget.charge(72).unwrap_or_else(|e| panic!("{e}"));
        let err = budget.charge(1).unwrap_err();
        assert!(
            matches!(
                err,
                OutputError::OverLimit {
                    limit: Limit::Bytes,
                    asked: 201,
                    max: 200
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            Budget::new(limits).charge(usize::MAX).map_err(|_| ()),
            Err(())
        );
    }
}
