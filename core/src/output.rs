//! One frame's output as the host holds it between the transform and the
//! sinks: the text and bytes of all its messages and points in one buffer,
//! and an index of where each part lies in it.
//!
//! A transform's packed output becomes a [`TransformOutput`] by indexing
//! the bytes the guest returned, in place: no allocation or copy per
//! message, point or string. Routing then reads the parts where they are,
//! into the durable log's records or, for a sink that queues them in
//! memory, into owned [`MqttMessage`]s and [`Point`]s. The parts are read
//! through [`MessageRef`], [`PointRef`] and [`FieldRef`]; [`PointLike`] is
//! what a point is to a validator or an encoder, owned or not.
//!
//! Every text part was checked to be UTF-8, and every part to lie in the
//! buffer, when the [`OutputBuilder`] took it, which is what lets
//! [`TransformOutput`] hand out `&str`s without checking again.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use compact_str::CompactString;

use crate::model::{FieldValue, InvalidOutput, MqttMessage, Point, Qos, guest_text};

/// Where bytes lie in an output's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn range(self) -> Range<usize> {
        self.start..self.end
    }

    /// Where it starts in the buffer.
    pub fn start(self) -> usize {
        self.start
    }

    /// Its length in bytes.
    pub fn len(self) -> usize {
        self.end - self.start
    }

    /// Whether it holds no byte.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// A [`Span`] of an output's own buffer, checked to hold UTF-8: made only
/// inside this module, so never one of another buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TextSpan(Span);

/// Why a builder refused a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPart {
    /// Text whose bytes are not UTF-8.
    #[error("text that is not UTF-8")]
    NotUtf8,
    /// A span past the end of the buffer.
    #[error("a part past the end of the buffer")]
    OutOfRange,
}

/// A field's value as it is handed to [`OutputBuilder::field`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldAt {
    /// 64-bit float.
    Float(f64),
    /// Signed integer.
    Int(i64),
    /// Unsigned integer.
    UInt(u64),
    /// Boolean.
    Bool(bool),
    /// Text in the buffer.
    Text(Span),
}

/// A field's value as the index holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StoredValue {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Text(TextSpan),
}

#[derive(Debug, Clone, Copy)]
struct MessageAt {
    topic: TextSpan,
    payload: Span,
    qos: Qos,
    retain: bool,
}

#[derive(Debug, Clone)]
struct PointAt {
    measurement: TextSpan,
    tags: Range<usize>,
    fields: Range<usize>,
    timestamp_ns: Option<i64>,
}

/// Everything a transform produced for one frame, in emission order.
///
/// Built by an [`OutputBuilder`]; read with [`messages`](Self::messages)
/// and [`points`](Self::points). Two outputs are equal when their messages
/// and points are, wherever their bytes lie.
#[derive(Clone, Default)]
pub struct TransformOutput {
    data: Bytes,
    messages: Vec<MessageAt>,
    points: Vec<PointAt>,
    tags: Vec<(TextSpan, TextSpan)>,
    fields: Vec<(TextSpan, StoredValue)>,
}

impl TransformOutput {
    /// An output holding `messages` and `points` (copied).
    pub fn from_parts(messages: &[MqttMessage], points: &[Point]) -> Self {
        let mut builder = OutputBuilder::new(Vec::new());
        for message in messages {
            builder.push_message_ref(message.as_ref());
        }
        for point in points {
            builder.push_point_like(point);
        }
        builder.finish()
    }

    /// The messages, in emission order.
    pub fn messages(&self) -> impl ExactSizeIterator<Item = MessageRef<'_>> + Clone {
        self.messages.iter().map(|at| self.message(at))
    }

    /// The points, in emission order.
    pub fn points(&self) -> impl ExactSizeIterator<Item = PointRef<'_>> + Clone {
        self.points.iter().map(|at| self.point(at))
    }

    /// How many messages it holds.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// How many points it holds.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// Whether it holds neither message nor point.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.points.is_empty()
    }

    /// Keeps the messages for which `keep` says true, in order.
    pub fn retain_messages(&mut self, mut keep: impl FnMut(MessageRef<'_>) -> bool) {
        let TransformOutput { data, messages, .. } = self;
        messages.retain(|at| keep(message_ref(data, at)));
    }

    /// Keeps the points for which `keep` says true, in order.
    pub fn retain_points(&mut self, mut keep: impl FnMut(PointRef<'_>) -> bool) {
        let TransformOutput {
            data,
            points,
            tags,
            fields,
            ..
        } = self;
        points.retain(|at| keep(point_ref(data, tags, fields, at)));
    }

    /// Gives every point without a timestamp `timestamp_ns`.
    pub fn stamp_points(&mut self, timestamp_ns: i64) {
        for point in &mut self.points {
            point.timestamp_ns.get_or_insert(timestamp_ns);
        }
    }

    /// The messages as owned values. Their payloads are views of one new
    /// buffer that holds them alone, so a message waiting in a queue keeps
    /// alive at most its siblings' payloads, never the rest of the output.
    pub fn owned_messages(&self) -> Vec<MqttMessage> {
        let total = self.messages.iter().map(|at| at.payload.len()).sum();
        let mut payloads = Vec::with_capacity(total);
        for at in &self.messages {
            payloads.extend_from_slice(&self.data[at.payload.range()]);
        }
        let payloads = Bytes::from(payloads);
        let mut start = 0;
        self.messages()
            .map(|message| {
                let end = start + message.payload.len();
                let payload = payloads.slice(start..end);
                start = end;
                MqttMessage {
                    topic: message.topic.into(),
                    payload,
                    qos: message.qos,
                    retain: message.retain,
                }
            })
            .collect()
    }

    /// The points as owned values.
    pub fn owned_points(&self) -> Vec<Point> {
        self.points().map(|point| point.to_owned()).collect()
    }

    fn message(&self, at: &MessageAt) -> MessageRef<'_> {
        message_ref(&self.data, at)
    }

    fn point<'a>(&'a self, at: &'a PointAt) -> PointRef<'a> {
        point_ref(&self.data, &self.tags, &self.fields, at)
    }
}

fn text(data: &[u8], span: TextSpan) -> &str {
    let bytes = &data[span.0.range()];
    debug_assert!(std::str::from_utf8(bytes).is_ok());
    // SAFETY: a `TextSpan` is made only by `OutputBuilder`, of its own
    // buffer, after checking that its bytes are UTF-8 (or from a `&str` it
    // appended); the buffer becomes the output's and is never changed.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

fn message_ref<'a>(data: &'a [u8], at: &MessageAt) -> MessageRef<'a> {
    MessageRef {
        topic: text(data, at.topic),
        payload: &data[at.payload.range()],
        qos: at.qos,
        retain: at.retain,
    }
}

fn point_ref<'a>(
    data: &'a [u8],
    tags: &'a [(TextSpan, TextSpan)],
    fields: &'a [(TextSpan, StoredValue)],
    at: &'a PointAt,
) -> PointRef<'a> {
    PointRef {
        data,
        measurement: text(data, at.measurement),
        tags: &tags[at.tags.clone()],
        fields: &fields[at.fields.clone()],
        timestamp_ns: at.timestamp_ns,
    }
}

impl PartialEq for TransformOutput {
    fn eq(&self, other: &Self) -> bool {
        self.messages().eq(other.messages())
            && self.points().len() == other.points().len()
            && self.points().zip(other.points()).all(|(a, b)| a.same(&b))
    }
}

impl fmt::Debug for TransformOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransformOutput")
            .field("messages", &self.messages().collect::<Vec<_>>())
            .field("points", &self.points().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds a [`TransformOutput`] over a buffer: parts that are already in it
/// are added by where they lie ([`span_at`](Self::span_at)), others are
/// appended to it ([`push_bytes`](Self::push_bytes),
/// [`push_text`](Self::push_text)). Text is checked to be UTF-8 as it is
/// added, and every span to lie in the buffer.
#[derive(Debug, Default)]
pub struct OutputBuilder {
    data: Vec<u8>,
    output: TransformOutput,
    /// Where the tags and fields of the point being added start.
    open_point: Option<PointAt>,
}

impl OutputBuilder {
    /// A builder over `data`, which no part refers to yet.
    pub fn new(data: Vec<u8>) -> Self {
        OutputBuilder {
            data,
            output: TransformOutput::default(),
            open_point: None,
        }
    }

    /// Room for `messages` more messages.
    pub fn reserve_messages(&mut self, messages: usize) {
        self.output.messages.reserve(messages);
    }

    /// Room for `points` more points.
    pub fn reserve_points(&mut self, points: usize) {
        self.output.points.reserve(points);
    }

    /// Room for `tags` more tags.
    pub fn reserve_tags(&mut self, tags: usize) {
        self.output.tags.reserve(tags);
    }

    /// Room for `fields` more fields.
    pub fn reserve_fields(&mut self, fields: usize) {
        self.output.fields.reserve(fields);
    }

    /// The buffer so far.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The bytes `range` of the buffer; `None` past its end.
    #[inline]
    pub fn span_at(&self, range: Range<usize>) -> Option<Span> {
        (range.start <= range.end && range.end <= self.data.len()).then_some(Span {
            start: range.start,
            end: range.end,
        })
    }

    /// Appends `bytes` to the buffer.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Span {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        Span {
            start,
            end: self.data.len(),
        }
    }

    /// Appends `text` to the buffer.
    pub fn push_text(&mut self, text: &str) -> Span {
        self.push_bytes(text.as_bytes())
    }

    /// Adds a message.
    #[inline]
    pub fn message(
        &mut self,
        topic: Span,
        payload: Span,
        qos: Qos,
        retain: bool,
    ) -> Result<(), BadPart> {
        let topic = self.text(topic)?;
        let payload = self.within(payload)?;
        self.add_message(topic, payload, qos, retain);
        Ok(())
    }

    /// Adds a point, with no tags or fields yet: those added next are its
    /// own, until the next point.
    #[inline]
    pub fn point(&mut self, measurement: Span, timestamp_ns: Option<i64>) -> Result<(), BadPart> {
        let measurement = self.text(measurement)?;
        self.add_point(measurement, timestamp_ns);
        Ok(())
    }

    /// Sets the last point's timestamp.
    #[inline]
    pub fn set_timestamp(&mut self, timestamp_ns: Option<i64>) {
        if let Some(point) = &mut self.open_point {
            point.timestamp_ns = timestamp_ns;
        }
    }

    /// Adds a tag to the last point (none before the first point).
    #[inline]
    pub fn tag(&mut self, key: Span, value: Span) -> Result<(), BadPart> {
        let tag = (self.text(key)?, self.text(value)?);
        if self.open_point.is_some() {
            self.output.tags.push(tag);
        }
        Ok(())
    }

    /// Adds a field to the last point (none before the first point).
    #[inline]
    pub fn field(&mut self, key: Span, value: FieldAt) -> Result<(), BadPart> {
        let key = self.text(key)?;
        let value = match value {
            FieldAt::Float(v) => StoredValue::Float(v),
            FieldAt::Int(v) => StoredValue::Int(v),
            FieldAt::UInt(v) => StoredValue::UInt(v),
            FieldAt::Bool(v) => StoredValue::Bool(v),
            FieldAt::Text(text) => StoredValue::Text(self.text(text)?),
        };
        if self.open_point.is_some() {
            self.output.fields.push((key, value));
        }
        Ok(())
    }

    /// Appends a copy of `message`.
    pub fn push_message_ref(&mut self, message: MessageRef<'_>) {
        let topic = TextSpan(self.push_text(message.topic));
        let payload = self.push_bytes(message.payload);
        self.add_message(topic, payload, message.qos, message.retain);
    }

    /// Appends a copy of `point`.
    pub fn push_point_like(&mut self, point: &impl PointLike) {
        let measurement = TextSpan(self.push_text(point.measurement()));
        self.add_point(measurement, point.timestamp_ns());
        for (key, value) in point.tags() {
            let tag = (
                TextSpan(self.push_text(key)),
                TextSpan(self.push_text(value)),
            );
            self.output.tags.push(tag);
        }
        for (key, value) in point.fields() {
            let key = TextSpan(self.push_text(key));
            let value = match value {
                FieldRef::Float(v) => StoredValue::Float(v),
                FieldRef::Int(v) => StoredValue::Int(v),
                FieldRef::UInt(v) => StoredValue::UInt(v),
                FieldRef::Bool(v) => StoredValue::Bool(v),
                FieldRef::Text(text) => StoredValue::Text(TextSpan(self.push_text(text))),
            };
            self.output.fields.push((key, value));
        }
    }

    /// The output.
    pub fn finish(mut self) -> TransformOutput {
        self.close_point();
        self.output.data = Bytes::from(self.data);
        self.output
    }

    #[inline]
    fn within(&self, span: Span) -> Result<Span, BadPart> {
        self.span_at(span.range()).ok_or(BadPart::OutOfRange)
    }

    #[inline]
    fn text(&self, span: Span) -> Result<TextSpan, BadPart> {
        let bytes = &self.data[self.within(span)?.range()];
        // Names and topics are ASCII nearly always: a cheaper check first.
        if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
            Ok(TextSpan(span))
        } else {
            Err(BadPart::NotUtf8)
        }
    }

    #[inline]
    fn add_message(&mut self, topic: TextSpan, payload: Span, qos: Qos, retain: bool) {
        self.output.messages.push(MessageAt {
            topic,
            payload,
            qos,
            retain,
        });
    }

    #[inline]
    fn add_point(&mut self, measurement: TextSpan, timestamp_ns: Option<i64>) {
        self.close_point();
        let (tags, fields) = (self.output.tags.len(), self.output.fields.len());
        self.open_point = Some(PointAt {
            measurement,
            tags: tags..tags,
            fields: fields..fields,
            timestamp_ns,
        });
    }

    #[inline]
    fn close_point(&mut self) {
        if let Some(mut point) = self.open_point.take() {
            point.tags.end = self.output.tags.len();
            point.fields.end = self.output.fields.len();
            self.output.points.push(point);
        }
    }
}

/// A message of a [`TransformOutput`] (or an [`MqttMessage`]), read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// Publish topic.
    pub topic: &'a str,
    /// Payload bytes.
    pub payload: &'a [u8],
    /// Quality of service.
    pub qos: Qos,
    /// Retain flag.
    pub retain: bool,
}

impl MessageRef<'_> {
    /// Validates topic and payload size.
    pub fn validate(&self, max_payload: usize) -> Result<(), InvalidOutput> {
        crate::model::validate_topic(self.topic)?;
        if self.payload.len() > max_payload {
            return Err(InvalidOutput::PayloadTooLarge {
                size: self.payload.len(),
                max: max_payload,
            });
        }
        Ok(())
    }

    /// An owned copy.
    pub fn to_owned(&self) -> MqttMessage {
        MqttMessage {
            topic: self.topic.into(),
            payload: Bytes::copy_from_slice(self.payload),
            qos: self.qos,
            retain: self.retain,
        }
    }
}

/// A field value read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldRef<'a> {
    /// 64-bit float.
    Float(f64),
    /// Signed integer.
    Int(i64),
    /// Unsigned integer.
    UInt(u64),
    /// Boolean.
    Bool(bool),
    /// Text.
    Text(&'a str),
}

impl FieldRef<'_> {
    /// An owned copy.
    pub fn to_owned(self) -> FieldValue {
        match self {
            FieldRef::Float(v) => FieldValue::Float(v),
            FieldRef::Int(v) => FieldValue::Int(v),
            FieldRef::UInt(v) => FieldValue::UInt(v),
            FieldRef::Bool(v) => FieldValue::Bool(v),
            FieldRef::Text(text) => FieldValue::Text(CompactString::new(text)),
        }
    }
}

impl MqttMessage {
    /// The message read in place.
    pub fn as_ref(&self) -> MessageRef<'_> {
        MessageRef {
            topic: &self.topic,
            payload: &self.payload,
            qos: self.qos,
            retain: self.retain,
        }
    }

    /// Validates topic and payload size.
    pub fn validate(&self, max_payload: usize) -> Result<(), InvalidOutput> {
        self.as_ref().validate(max_payload)
    }
}

impl FieldValue {
    /// The value read in place.
    pub fn as_ref(&self) -> FieldRef<'_> {
        match self {
            FieldValue::Float(v) => FieldRef::Float(*v),
            FieldValue::Int(v) => FieldRef::Int(*v),
            FieldValue::UInt(v) => FieldRef::UInt(*v),
            FieldValue::Bool(v) => FieldRef::Bool(*v),
            FieldValue::Text(text) => FieldRef::Text(text),
        }
    }
}

/// A point of a [`TransformOutput`], read in place.
#[derive(Clone, Copy)]
pub struct PointRef<'a> {
    data: &'a [u8],
    measurement: &'a str,
    tags: &'a [(TextSpan, TextSpan)],
    fields: &'a [(TextSpan, StoredValue)],
    timestamp_ns: Option<i64>,
}

impl<'a> PointRef<'a> {
    /// The tags, in the order the transform gave them.
    pub fn tags(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone + use<'a> {
        let data = self.data;
        self.tags
            .iter()
            .map(move |&(key, value)| (text(data, key), text(data, value)))
    }

    /// The fields, in the order the transform gave them.
    pub fn fields(
        &self,
    ) -> impl ExactSizeIterator<Item = (&'a str, FieldRef<'a>)> + Clone + use<'a> {
        let data = self.data;
        self.fields.iter().map(move |&(key, value)| {
            let value = match value {
                StoredValue::Float(v) => FieldRef::Float(v),
                StoredValue::Int(v) => FieldRef::Int(v),
                StoredValue::UInt(v) => FieldRef::UInt(v),
                StoredValue::Bool(v) => FieldRef::Bool(v),
                StoredValue::Text(span) => FieldRef::Text(text(data, span)),
            };
            (text(data, key), value)
        })
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Point {
        Point {
            measurement: self.measurement.into(),
            tags: self.tags().map(|(k, v)| (k.into(), v.into())).collect(),
            fields: self
                .fields()
                .map(|(k, v)| (k.into(), v.to_owned()))
                .collect(),
            timestamp_ns: self.timestamp_ns,
        }
    }
}

impl fmt::Debug for PointRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Point")
            .field("measurement", &self.measurement)
            .field("tags", &self.tags().collect::<Vec<_>>())
            .field("fields", &self.fields().collect::<Vec<_>>())
            .field("timestamp_ns", &self.timestamp_ns)
            .finish()
    }
}

/// What a point is to a validator or an encoder: an owned [`Point`] or a
/// [`PointRef`] alike.
pub trait PointLike {
    /// Measurement name.
    fn measurement(&self) -> &str;
    /// Tags in the order the transform gave them.
    fn tags(&self) -> impl ExactSizeIterator<Item = (&str, &str)>;
    /// Fields in the order the transform gave them.
    fn fields(&self) -> impl ExactSizeIterator<Item = (&str, FieldRef<'_>)>;
    /// Nanoseconds since the epoch; `None` means "the frame's receive time".
    fn timestamp_ns(&self) -> Option<i64>;

    /// Checks what line protocol cannot express or InfluxDB refuses.
    fn validate(&self) -> Result<(), InvalidOutput> {
        let measurement = self.measurement();
        if measurement.is_empty() {
            return Err(InvalidOutput::EmptyMeasurement);
        }
        if self.fields().len() == 0 {
            return Err(InvalidOutput::NoFields(guest_text(measurement)));
        }
        let empty_tag = self.tags().any(|(k, v)| k.is_empty() || v.is_empty());
        let empty_field = self.fields().any(|(k, _)| k.is_empty());
        if empty_tag || empty_field {
            return Err(InvalidOutput::EmptyKey(guest_text(measurement)));
        }
        for (key, value) in self.fields() {
            if let FieldRef::Float(f) = value
                && !f.is_finite()
            {
                return Err(InvalidOutput::NonFiniteField {
                    measurement: guest_text(measurement),
                    field: guest_text(key),
                    value: f.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Whether it is the same point as `other`.
    fn same(&self, other: &impl PointLike) -> bool {
        self.measurement() == other.measurement()
            && self.timestamp_ns() == other.timestamp_ns()
            && self.tags().eq(other.tags())
            && self.fields().eq(other.fields())
    }
}

impl PointLike for PointRef<'_> {
    fn measurement(&self) -> &str {
        self.measurement
    }

    fn tags(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        PointRef::tags(self)
    }

    fn fields(&self) -> impl ExactSizeIterator<Item = (&str, FieldRef<'_>)> {
        PointRef::fields(self)
    }

    fn timestamp_ns(&self) -> Option<i64> {
        self.timestamp_ns
    }
}

impl PointLike for Point {
    fn measurement(&self) -> &str {
        &self.measurement
    }

    fn tags(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn fields(&self) -> impl ExactSizeIterator<Item = (&str, FieldRef<'_>)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    fn timestamp_ns(&self) -> Option<i64> {
        self.timestamp_ns
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn message(topic: &str, payload: &[u8]) -> MqttMessage {
        MqttMessage {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos: Qos::AtLeastOnce,
            retain: true,
        }
    }

    fn point(measurement: &str, timestamp_ns: Option<i64>) -> Point {
        Point {
            measurement: measurement.into(),
            tags: vec![("node".into(), "n1".into())],
            fields: vec![
                ("t".into(), FieldValue::Float(27.6)),
                ("s".into(), FieldValue::Text("é".into())),
            ],
            timestamp_ns,
        }
    }

    #[test]
    fn what_goes_in_comes_out_in_order() {
        let messages = [message("a/b", b"27"), message("c", &[0xff, 0, 1])];
        let points = [point("env", Some(1)), point("sig", None)];
        let output = TransformOutput::from_parts(&messages, &points);
        assert_eq!(output.owned_messages(), messages);
        assert_eq!(output.owned_points(), points);
        assert_eq!((output.message_count(), output.point_count()), (2, 2));
        assert_eq!(output, output.clone());
        assert_ne!(output, TransformOutput::from_parts(&messages, &[]));
    }

    #[test]
    fn a_point_owns_the_tags_and_fields_added_after_it() {
        let mut builder = OutputBuilder::new(b"abc".to_vec());
        let (a, b, c) = (
            builder.span_at(0..1).unwrap(),
            builder.span_at(1..2).unwrap(),
            builder.span_at(2..3).unwrap(),
        );
        builder.point(a, None).unwrap();
        builder.field(b, FieldAt::Int(1)).unwrap();
        builder.point(c, None).unwrap();
        builder.tag(a, b).unwrap();
        builder.field(c, FieldAt::Bool(true)).unwrap();
        builder.field(a, FieldAt::Text(b)).unwrap();
        builder.set_timestamp(Some(5));
        let output = builder.finish();
        let points: Vec<_> = output.points().collect();
        assert_eq!(
            points[0].fields().collect::<Vec<_>>(),
            [("b", FieldRef::Int(1))]
        );
        assert_eq!((points[0].tags().len(), points[0].timestamp_ns), (0, None));
        assert_eq!(points[1].tags().collect::<Vec<_>>(), [("a", "b")]);
        assert_eq!(
            points[1].fields().collect::<Vec<_>>(),
            [("c", FieldRef::Bool(true)), ("a", FieldRef::Text("b"))]
        );
        assert_eq!(points[1].timestamp_ns, Some(5));
    }

    #[test]
    fn text_is_checked_and_spans_must_lie_in_the_buffer() {
        let mut builder = OutputBuilder::new("é".as_bytes().to_vec());
        let (whole, half) = (
            builder.span_at(0..2).unwrap(),
            builder.span_at(0..1).unwrap(),
        );
        assert!(builder.span_at(1..3).is_none(), "past the end");
        let (start, end) = (2, 1);
        assert!(builder.span_at(start..end).is_none(), "backwards");
        assert_eq!(builder.message(whole, half, Qos::AtMostOnce, false), Ok(()));
        assert_eq!(
            builder.message(half, whole, Qos::AtMostOnce, false),
            Err(BadPart::NotUtf8),
            "half a character"
        );
        // A span of a longer buffer is refused by a shorter one.
        let mut other = OutputBuilder::new(vec![b'x'; 10]);
        let long = other.span_at(0..10).unwrap();
        assert_eq!(builder.point(long, None), Err(BadPart::OutOfRange));
        assert_eq!(
            builder.message(whole, long, Qos::AtMostOnce, false),
            Err(BadPart::OutOfRange)
        );
        assert_eq!(other.field(long, FieldAt::Text(half)), Ok(()));
        let output = builder.finish();
        assert_eq!(output.message_count(), 1);
        assert_eq!(output.messages().next().unwrap().topic, "é");
    }

    #[test]
    fn retain_and_stamp() {
        let messages = [message("a", b"1"), message("b", b"2"), message("c", b"3")];
        let points = [point("env", Some(1)), point("", None), point("sig", None)];
        let mut output = TransformOutput::from_parts(&messages, &points);
        output.retain_messages(|m| m.topic != "b");
        output.retain_points(|p| p.validate().is_ok());
        output.stamp_points(7);
        let topics: Vec<_> = output.messages().map(|m| m.topic).collect();
        assert_eq!(topics, ["a", "c"]);
        let stamped: Vec<_> = output
            .points()
            .map(|p| (p.measurement, p.timestamp_ns))
            .collect();
        assert_eq!(stamped, [("env", Some(1)), ("sig", Some(7))]);
    }

    #[test]
    fn owned_messages_share_one_buffer_of_payloads_alone() {
        let big = point("m", None);
        let mut builder = OutputBuilder::new(Vec::new());
        builder.push_message_ref(message("a", b"27.6").as_ref());
        builder.push_point_like(&Point {
            fields: vec![("text".into(), FieldValue::Text("x".repeat(100_000).into()))],
            ..big
        });
        builder.push_message_ref(message("b", b"54.1").as_ref());
        let owned = builder.finish().owned_messages();
        let (a, b) = (&owned[0].payload, &owned[1].payload);
        assert_eq!((&a[..], &b[..]), (&b"27.6"[..], &b"54.1"[..]));
        assert_eq!(a.as_ptr_range().end, b.as_ptr(), "views of one buffer");
        let last = a.clone();
        drop(owned);
        let backing = last.try_into_mut().unwrap().capacity();
        assert!(backing < 1000, "a payload keeps {backing} bytes alive");
    }
}
