//! InfluxDB line protocol, written exactly.
//!
//! ```text
//! measurement[,tag_key=tag_value...] field_key=field_value[,...] timestamp\n
//! ```
//!
//! Escaping follows the InfluxDB 1.x reference and was checked against a
//! real influxd 1.6.7 (see `tests/tests/influx_v1.rs`):
//!
//! * measurement: `,` and space are escaped with a backslash;
//! * tag keys, tag values, field keys: `,`, `=` and space;
//! * string field values are double-quoted; `"` and `\` are escaped;
//! * integers get `i`, unsigned integers `u` (or `i`, see
//!   [`UnsignedMode`]), floats are the shortest representation that parses
//!   back to the same `f64` (`1.5`, `1e+300`, `-2.5e-7`: InfluxDB and Go's
//!   `ParseFloat` accept exponents), booleans `true`/`false`;
//! * tags are sorted by key (byte order, as InfluxDB wants them);
//! * the timestamp is the point's, in the configured precision (floored).
//!
//! What line protocol cannot express is refused with a stable reason instead
//! of being written as something else:
//!
//! * a line break in a measurement, tag or field key, or tag value (lines are
//!   separated by `\n`; there is no escape for it — string *values* may
//!   contain line breaks);
//! * a backslash at the end of a measurement, key or tag value, or right
//!   before `,`, `=` or a space, and in a measurement or field key right
//!   before `"`: InfluxDB 1.x has no escape for a backslash there (`t=a\`
//!   reads as an escaped separator, `k\"` reads back as `k"`; elsewhere
//!   `\\` stays two backslashes);
//! * a measurement starting with a tab or NUL (InfluxDB skips them at the
//!   start of a line; a field key starting with one is written after one
//!   that does not, for the same reason, and refused if all do);
//! * a measurement starting with `#` (the line would be a comment, silently
//!   ignored by the server);
//! * a tag or field key `time` (InfluxDB refuses the tag and silently drops
//!   the field);
//! * NaN and ±infinity (InfluxDB refuses them);
//! * a duplicate tag key (InfluxDB: "duplicate tags") or field key (InfluxDB
//!   silently keeps the last one);
//! * a `u64` above `i64::MAX` when unsigned values are written as integers.

use crate::model::{FieldValue, Point};

use crate::config::influx::{Precision, UnsignedMode};

/// Why a point was not encoded. [`EncodeError::reason`] is the stable label
/// of the drop counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Empty measurement.
    #[error("empty measurement name")]
    EmptyMeasurement,
    /// No fields.
    #[error("point {0:?} has no fields")]
    NoFields(String),
    /// Empty tag key/value or field key.
    #[error("point {0:?} has an empty tag or field key, or an empty tag value")]
    EmptyKey(String),
    /// A line break where line protocol cannot express one.
    #[error("line break in {0}")]
    LineBreak(String),
    /// A backslash line protocol cannot express.
    #[error(
        "backslash that line protocol cannot express (at the end, before ',', '=' or a space, \
         or before '\"' in a measurement or field key) in {0}"
    )]
    Backslash(String),
    /// A measurement starting with a tab or NUL, or only field keys that do.
    #[error("{0} starts with a tab or NUL, which InfluxDB drops")]
    LeadingWhitespace(String),
    /// A tag or field key `time`.
    #[error("{0} is named \"time\", which InfluxDB refuses (tag) or drops (field)")]
    TimeKey(String),
    /// `#` at the start of the measurement makes the line a comment.
    #[error("measurement {0:?} starts with '#', which makes the line a comment")]
    CommentMeasurement(String),
    /// NaN or infinity.
    #[error("field {field:?} of {measurement:?} is not a finite number ({value})")]
    NonFinite {
        /// Measurement.
        measurement: String,
        /// Field key.
        field: String,
        /// The value as text.
        value: String,
    },
    /// The same tag key twice.
    #[error("tag key {0:?} appears twice")]
    DuplicateTag(String),
    /// The same field key twice.
    #[error("field key {0:?} appears twice")]
    DuplicateField(String),
    /// `u64` above `i64::MAX` while unsigned values are written as integers.
    #[error("field {field:?} = {value} does not fit a signed integer (unsigned = \"integer\")")]
    UnsignedOutOfRange {
        /// Field key.
        field: String,
        /// The value.
        value: u64,
    },
}

impl EncodeError {
    /// The label used for `sink_dropped{sink="influx", reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            EncodeError::EmptyMeasurement => "empty_measurement",
            EncodeError::NoFields(_) => "point_without_fields",
            EncodeError::EmptyKey(_) => "empty_key",
            EncodeError::LineBreak(_) => "line_break_in_name",
            EncodeError::Backslash(_) => "unrepresentable_backslash",
            EncodeError::LeadingWhitespace(_) => "leading_whitespace",
            EncodeError::TimeKey(_) => "time_key",
            EncodeError::CommentMeasurement(_) => "comment_measurement",
            EncodeError::NonFinite { .. } => "non_finite_field",
            EncodeError::DuplicateTag(_) => "duplicate_tag_key",
            EncodeError::DuplicateField(_) => "duplicate_field_key",
            EncodeError::UnsignedOutOfRange { .. } => "unsigned_out_of_range",
        }
    }
}

/// Which part of a line a name is in (decides what is escaped, and which
/// backslashes InfluxDB reads as escapes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Measurement,
    /// Tag keys and values.
    Tag,
    FieldKey,
}

/// What InfluxDB skips at the start of a line and of the field set.
fn starts_with_skipped(name: &str) -> bool {
    name.starts_with(['\t', '\0'])
}

/// Encodes points into line protocol. Cheap to create; keeps a scratch
/// buffer for sorting tags.
#[derive(Debug, Clone)]
pub struct Encoder {
    precision: Precision,
    unsigned: UnsignedMode,
    order: Vec<usize>,
}

impl Encoder {
    /// An encoder for `precision` and `unsigned` mode.
    pub fn new(precision: Precision, unsigned: UnsignedMode) -> Self {
        Self {
            precision,
            unsigned,
            order: Vec::new(),
        }
    }

    /// Appends `point` as one line (with its trailing `\n`) to `out`. On
    /// error nothing is appended. A point without a timestamp gets `now_ns`.
    pub fn encode(&mut self, point: &Point, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self.encode_inner(point, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_inner(&mut self, point: &Point, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let measurement = &point.measurement;
        if measurement.is_empty() {
            return Err(EncodeError::EmptyMeasurement);
        }
        if point.fields.is_empty() {
            return Err(EncodeError::NoFields(measurement.to_string()));
        }
        if measurement.starts_with('#') {
            return Err(EncodeError::CommentMeasurement(measurement.to_string()));
        }
        if starts_with_skipped(measurement) {
            return Err(EncodeError::LeadingWhitespace(format!(
                "measurement {measurement:?}"
            )));
        }
        write_name(out, measurement, Part::Measurement)
            .map_err(|e| e.describe(|| format!("measurement {measurement:?}")))?;

        // Tags, sorted by key (stable, so the check for duplicates is local).
        self.order.clear();
        self.order.extend(0..point.tags.len());
        let tags = &point.tags;
        if !tags.windows(2).all(|w| w[0].0 <= w[1].0) {
            self.order.sort_by(|&a, &b| tags[a].0.cmp(&tags[b].0));
        }
        let mut previous: Option<&str> = None;
        for &i in &self.order {
            let (key, value) = &tags[i];
            if key.is_empty() || value.is_empty() {
                return Err(EncodeError::EmptyKey(measurement.to_string()));
            }
            if previous == Some(&**key) {
                return Err(EncodeError::DuplicateTag(key.to_string()));
            }
            if key == "time" {
                return Err(EncodeError::TimeKey(format!("tag key of {measurement:?}")));
            }
            previous = Some(key);
            out.push(b',');
            write_name(out, key, Part::Tag)
                .map_err(|e| e.describe(|| format!("tag key {key:?}")))?;
            out.push(b'=');
            write_name(out, value, Part::Tag)
                .map_err(|e| e.describe(|| format!("tag value {value:?} (tag {key:?})")))?;
        }

        // InfluxDB skips tabs and NULs before the first field key: put a
        // field whose key does not start with one first.
        let fields = &point.fields;
        let first = fields
            .iter()
            .position(|(key, _)| !starts_with_skipped(key))
            .ok_or_else(|| {
                EncodeError::LeadingWhitespace(format!("every field key of {measurement:?}"))
            })?;
        out.push(b' ');
        let order = std::iter::once(first).chain((0..fields.len()).filter(|&n| n != first));
        for (written, n) in order.enumerate() {
            let (key, value) = &fields[n];
            if key.is_empty() {
                return Err(EncodeError::EmptyKey(measurement.to_string()));
            }
            if fields[..n].iter().any(|(k, _)| k == key) {
                return Err(EncodeError::DuplicateField(key.to_string()));
            }
            if key == "time" {
                return Err(EncodeError::TimeKey(format!(
                    "field key of {measurement:?}"
                )));
            }
            if written > 0 {
                out.push(b',');
            }
            write_name(out, key, Part::FieldKey)
                .map_err(|e| e.describe(|| format!("field key {key:?}")))?;
            out.push(b'=');
            match value {
                FieldValue::Float(f) => {
                    if !f.is_finite() {
                        return Err(EncodeError::NonFinite {
                            measurement: measurement.to_string(),
                            field: key.to_string(),
                            value: f.to_string(),
                        });
                    }
                    let mut buffer = zmij::Buffer::new();
                    out.extend_from_slice(buffer.format_finite(*f).as_bytes());
                }
                FieldValue::Int(i) => {
                    out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes());
                    out.push(b'i');
                }
                FieldValue::UInt(u) => match self.unsigned {
                    UnsignedMode::Native => {
                        out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes());
                        out.push(b'u');
                    }
                    UnsignedMode::Integer => {
                        if i64::try_from(*u).is_err() {
                            return Err(EncodeError::UnsignedOutOfRange {
                                field: key.to_string(),
                                value: *u,
                            });
                        }
                        out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes());
                        out.push(b'i');
                    }
                },
                FieldValue::Bool(b) => {
                    out.extend_from_slice(if *b { b"true" } else { b"false" });
                }
                FieldValue::Text(s) => write_string_value(out, s),
            }
        }

        let ns = point
            .timestamp_ns
            .unwrap_or_else(|| i64::try_from(crate::model::now_ns()).unwrap_or(i64::MAX));
        let ts = ns.div_euclid(self.precision.divisor());
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
        out.push(b'\n');
        Ok(())
    }
}

/// A name-level problem, before we know which name it was.
enum NameError {
    LineBreak,
    Backslash,
}

impl NameError {
    fn describe(self, what: impl FnOnce() -> String) -> EncodeError {
        match self {
            NameError::LineBreak => EncodeError::LineBreak(what()),
            NameError::Backslash => EncodeError::Backslash(what()),
        }
    }
}

/// Bytes that need a look: separators, backslash and line breaks.
const fn attention_table() -> [bool; 256] {
    let mut table = [false; 256];
    table[b',' as usize] = true;
    table[b' ' as usize] = true;
    table[b'=' as usize] = true;
    table[b'\\' as usize] = true;
    table[b'\n' as usize] = true;
    table
}
static ATTENTION: [bool; 256] = attention_table();

fn write_name(out: &mut Vec<u8>, name: &str, part: Part) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    if !bytes.iter().any(|&b| ATTENTION[usize::from(b)]) {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' => return Err(NameError::LineBreak),
            b'\\' => match bytes.get(i + 1) {
                None | Some(b',' | b' ' | b'=') => return Err(NameError::Backslash),
                // InfluxDB 1.x unescapes `\"` in these (and nowhere else).
                Some(b'"') if part != Part::Tag => return Err(NameError::Backslash),
                Some(_) => out.push(b),
            },
            b',' | b' ' => {
                out.push(b'\\');
                out.push(b);
            }
            b'=' => {
                if part != Part::Measurement {
                    out.push(b'\\');
                }
                out.push(b);
            }
            _ => out.push(b),
        }
    }
    Ok(())
}

fn write_string_value(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn point(
        measurement: &str,
        tags: &[(&str, &str)],
        fields: Vec<(&str, FieldValue)>,
        ts: i64,
    ) -> Point {
        Point {
            measurement: measurement.into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            timestamp_ns: Some(ts),
        }
    }

    fn encode_with(
        p: &Point,
        precision: Precision,
        unsigned: UnsignedMode,
    ) -> Result<String, EncodeError> {
        let mut out = Vec::new();
        Encoder::new(precision, unsigned).encode(p, &mut out)?;
        Ok(String::from_utf8(out).expect("utf-8"))
    }

    fn encode(p: &Point) -> Result<String, EncodeError> {
        encode_with(p, Precision::Ns, UnsignedMode::Native)
    }

    use FieldValue::{Bool, Float, Int, Text, UInt};

    #[test]
    fn table() {
        let cases: Vec<(Point, &str)> = vec![
            (point("m", &[], vec![("v", Float(1.5))], 7), "m v=1.5 7\n"),
            (point("m", &[], vec![("v", Float(1.0))], 7), "m v=1.0 7\n"),
            (point("m", &[], vec![("v", Float(-0.0))], 7), "m v=-0.0 7\n"),
            (
                point("m", &[], vec![("v", Float(1e300))], 7),
                "m v=1e+300 7\n",
            ),
            (
                point("m", &[], vec![("v", Float(-2.5e-7))], 7),
                "m v=-2.5e-7 7\n",
            ),
            (point("m", &[], vec![("v", Float(0.1))], 7), "m v=0.1 7\n"),
            (
                point("m", &[], vec![("v", Int(i64::MIN))], 7),
                "m v=-9223372036854775808i 7\n",
            ),
            (
                point("m", &[], vec![("v", UInt(u64::MAX))], 7),
                "m v=18446744073709551615u 7\n",
            ),
            (
                point("m", &[], vec![("a", Bool(true)), ("b", Bool(false))], 7),
                "m a=true,b=false 7\n",
            ),
            (
                point(
                    "m",
                    &[],
                    vec![("s", Text("say \"hi\" \\ there\nnext".into()))],
                    7,
                ),
                "m s=\"say \\\"hi\\\" \\\\ there\nnext\" 7\n",
            ),
            (
                point("my m,x=y", &[], vec![("v", Int(1))], 7),
                "my\\ m\\,x=y v=1i 7\n",
            ),
            (
                point(
                    "m",
                    &[("z", "1"), ("a b", "c,d=e")],
                    vec![("f k=,", Int(1))],
                    -5,
                ),
                "m,a\\ b=c\\,d\\=e,z=1 f\\ k\\=\\,=1i -5\n",
            ),
            (
                point(
                    "m",
                    &[("path", "C:\\temp"), ("u", "ü€😀")],
                    vec![("v", Int(1))],
                    0,
                ),
                "m,path=C:\\temp,u=ü€😀 v=1i 0\n",
            ),
            (
                point("m", &[], vec![("t\"q", Text("".into()))], 1),
                "m t\"q=\"\" 1\n",
            ),
            // A backslash before a quote is literal in tags only.
            (
                point("m\"", &[("k\\\"", "v\\\"")], vec![("f\\\\x", Int(1))], 1),
                "m\",k\\\"=v\\\" f\\\\x=1i 1\n",
            ),
            // InfluxDB skips a tab or NUL before the first field key.
            (
                point(
                    "m",
                    &[("\tt", "\tv")],
                    vec![("\tf", Int(1)), ("\0g", Int(2)), ("h\t", Int(3))],
                    1,
                ),
                "m,\tt=\tv h\t=3i,\tf=1i,\0g=2i 1\n",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(encode(&p).as_deref(), Ok(want), "{p:?}");
        }
    }

    #[test]
    fn precision_floors() {
        let p = point("m", &[], vec![("v", Int(1))], 1_999_999_999);
        let got = |precision| encode_with(&p, precision, UnsignedMode::Native).expect("ok");
        assert_eq!(got(Precision::Ns), "m v=1i 1999999999\n");
        assert_eq!(got(Precision::Us), "m v=1i 1999999\n");
        assert_eq!(got(Precision::Ms), "m v=1i 1999\n");
        assert_eq!(got(Precision::S), "m v=1i 1\n");
        let negative = point("m", &[], vec![("v", Int(1))], -1);
        assert_eq!(
            encode_with(&negative, Precision::S, UnsignedMode::Native).expect("ok"),
            "m v=1i -1\n"
        );
    }

    #[test]
    fn unsigned_as_integer() {
        let small = point("m", &[], vec![("v", UInt(42))], 1);
        assert_eq!(
            encode_with(&small, Precision::Ns, UnsignedMode::Integer).expect("ok"),
            "m v=42i 1\n"
        );
        let max = point("m", &[], vec![("v", UInt(i64::MAX as u64))], 1);
        assert!(encode_with(&max, Precision::Ns, UnsignedMode::Integer).is_ok());
        let big = point("m", &[], vec![("v", UInt(i64::MAX as u64 + 1))], 1);
        assert_eq!(
            encode_with(&big, Precision::Ns, UnsignedMode::Integer)
                .unwrap_err()
                .reason(),
            "unsigned_out_of_range"
        );
    }

    #[test]
    fn refusals_have_reasons_and_leave_the_buffer_alone() {
        let cases: Vec<(Point, &str)> = vec![
            (point("", &[], vec![("v", Int(1))], 1), "empty_measurement"),
            (point("m", &[], vec![], 1), "point_without_fields"),
            (
                point("m", &[("t", "")], vec![("v", Int(1))], 1),
                "empty_key",
            ),
            (point("m", &[], vec![("", Int(1))], 1), "empty_key"),
            (
                point("m", &[], vec![("v", Float(f64::NAN))], 1),
                "non_finite_field",
            ),
            (
                point("m", &[], vec![("v", Float(f64::INFINITY))], 1),
                "non_finite_field",
            ),
            (
                point("m\n", &[], vec![("v", Int(1))], 1),
                "line_break_in_name",
            ),
            (
                point("m", &[("t", "a\nb")], vec![("v", Int(1))], 1),
                "line_break_in_name",
            ),
            (
                point("m", &[], vec![("a\nb", Int(1))], 1),
                "line_break_in_name",
            ),
            (
                point("m", &[("t", "a\\")], vec![("v", Int(1))], 1),
                "unrepresentable_backslash",
            ),
            (
                point("m", &[("t", "a\\ b")], vec![("v", Int(1))], 1),
                "unrepresentable_backslash",
            ),
            (
                point("m\\,", &[], vec![("v", Int(1))], 1),
                "unrepresentable_backslash",
            ),
            (
                point("m", &[], vec![("k\\=", Int(1))], 1),
                "unrepresentable_backslash",
            ),
            (
                point("m\\\"", &[], vec![("v", Int(1))], 1),
                "unrepresentable_backslash",
            ),
            (
                point("m", &[], vec![("f\\\"x", Int(1))], 1),
                "unrepresentable_backslash",
            ),
            (
                point("#m", &[], vec![("v", Int(1))], 1),
                "comment_measurement",
            ),
            (
                point("\tm", &[], vec![("v", Int(1))], 1),
                "leading_whitespace",
            ),
            (
                point("\0m", &[], vec![("v", Int(1))], 1),
                "leading_whitespace",
            ),
            (
                point("m", &[], vec![("\tv", Int(1)), ("\0w", Int(1))], 1),
                "leading_whitespace",
            ),
            (
                point("m", &[("time", "x")], vec![("v", Int(1))], 1),
                "time_key",
            ),
            (
                point("m", &[], vec![("v", Int(1)), ("time", Int(1))], 1),
                "time_key",
            ),
            (
                point("m", &[("a", "1"), ("a", "2")], vec![("v", Int(1))], 1),
                "duplicate_tag_key",
            ),
            (
                point("m", &[], vec![("v", Int(1)), ("v", Int(2))], 1),
                "duplicate_field_key",
            ),
        ];
        for (p, reason) in cases {
            let mut out = b"kept\n".to_vec();
            let err = Encoder::new(Precision::Ns, UnsignedMode::Native)
                .encode(&p, &mut out)
                .expect_err("refused");
            assert_eq!(err.reason(), reason, "{p:?}: {err}");
            assert_eq!(out, b"kept\n", "{p:?}");
        }
    }

    /// A small, strict line-protocol parser (InfluxDB 1.x rules) used to
    /// check that what we encode reads back as the same point.
    pub(crate) fn parse_line(line: &str) -> Option<Point> {
        let bytes = line.as_bytes();
        let mut i = 0;
        // Splits at an unescaped byte in `stops`, unescaping `escapes`.
        let scan = |i: &mut usize, stops: &[u8], escapes: &[u8]| -> (String, Option<u8>) {
            let mut out = Vec::new();
            while *i < bytes.len() {
                let b = bytes[*i];
                if b == b'\\' && *i + 1 < bytes.len() && escapes.contains(&bytes[*i + 1]) {
                    out.push(bytes[*i + 1]);
                    *i += 2;
                    continue;
                }
                if stops.contains(&b) {
                    *i += 1;
                    return (String::from_utf8(out).unwrap_or_default(), Some(b));
                }
                out.push(b);
                *i += 1;
            }
            (String::from_utf8(out).unwrap_or_default(), None)
        };
        let (measurement, mut stop) = scan(&mut i, b", ", b", ");
        let mut tags = Vec::new();
        while stop == Some(b',') {
            let (key, s) = scan(&mut i, b"=", b", =");
            if s != Some(b'=') {
                return None;
            }
            let (value, s) = scan(&mut i, b", ", b", =");
            tags.push((key.into(), value.into()));
            stop = s;
        }
        if stop != Some(b' ') {
            return None;
        }
        let mut fields = Vec::new();
        loop {
            let (key, s) = scan(&mut i, b"=", b", =");
            if s != Some(b'=') {
                return None;
            }
            let value = if bytes.get(i) == Some(&b'"') {
                i += 1;
                let mut out = Vec::new();
                loop {
                    match bytes.get(i)? {
                        b'\\' if matches!(bytes.get(i + 1), Some(b'"' | b'\\')) => {
                            out.push(bytes[i + 1]);
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            break;
                        }
                        &b => {
                            out.push(b);
                            i += 1;
                        }
                    }
                }
                FieldValue::Text(String::from_utf8(out).ok()?.into())
            } else {
                let start = i;
                while i < bytes.len() && bytes[i] != b',' && bytes[i] != b' ' {
                    i += 1;
                }
                let raw = &line[start..i];
                if let Some(n) = raw.strip_suffix('i') {
                    FieldValue::Int(n.parse().ok()?)
                } else if let Some(n) = raw.strip_suffix('u') {
                    FieldValue::UInt(n.parse().ok()?)
                } else if raw == "true" || raw == "false" {
                    FieldValue::Bool(raw == "true")
                } else {
                    FieldValue::Float(raw.parse().ok()?)
                }
            };
            fields.push((key.into(), value));
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b' ') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
        let ts = line[i..].strip_suffix('\n')?.parse().ok()?;
        Some(Point {
            measurement: measurement.into(),
            tags,
            fields,
            timestamp_ns: Some(ts),
        })
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            // Printable ASCII, tabs and some unicode, including every
            // character that needs escaping; backslashes only where
            // expressible.
            proptest::string::string_regex("([a-zA-Z0-9 \t,=\"'_.:/#ü€😀-]|\\\\[a-z]){1,12}")
                .expect("regex")
                .prop_filter("refused names", |s| {
                    !s.starts_with(['#', '\t']) && s != "time"
                })
        }

        fn field_value() -> impl Strategy<Value = FieldValue> {
            prop_oneof![
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(FieldValue::Float),
                any::<i64>().prop_map(FieldValue::Int),
                any::<u64>().prop_map(FieldValue::UInt),
                any::<bool>().prop_map(FieldValue::Bool),
                ".{0,20}".prop_map(|s| FieldValue::Text(s.into())),
            ]
        }

        fn a_point() -> impl Strategy<Value = Point> {
            (
                name(),
                proptest::collection::btree_map(name(), name(), 0..5),
                proptest::collection::btree_map(name(), field_value(), 1..6),
                any::<i64>(),
            )
                .prop_map(|(measurement, tags, fields, ts)| Point {
                    measurement: measurement.into(),
                    // Unsorted on purpose: the encoder sorts.
                    tags: (tags.into_iter().rev())
                        .map(|(k, v)| (k.into(), v.into()))
                        .collect(),
                    fields: (fields.into_iter()).map(|(k, v)| (k.into(), v)).collect(),
                    timestamp_ns: Some(ts),
                })
        }

        proptest! {
            #[test]
            fn encode_then_parse_is_identity(p in a_point()) {
                let line = encode(&p).expect("encodable");
                let mut parsed = parse_line(&line).expect("parses");
                prop_assert!(!starts_with_skipped(&parsed.fields[0].0), "line {:?}", line);
                parsed.fields.sort_by(|a, b| a.0.cmp(&b.0));
                let mut want = p.clone();
                want.tags.sort();
                prop_assert_eq!(parsed, want, "line {:?}", line);
            }

            #[test]
            fn refused_points_never_write(p in a_point(), bad in prop_oneof![
                Just("a\\".to_string()), Just("a\nb".to_string()), Just("x\\ y".to_string())
            ]) {
                let mut bad_point = p.clone();
                bad_point.tags.push(("zz".into(), bad.into()));
                let mut out = Vec::new();
                prop_assert!(Encoder::new(Precision::Ns, UnsignedMode::Native).encode(&bad_point, &mut out).is_err());
                prop_assert!(out.is_empty());
            }
        }
    }
}
