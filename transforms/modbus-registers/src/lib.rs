//! sluice transform for Modbus devices, driven by a register map in its
//! config: no code per device.
//!
//! The host polls the devices and hands each response over as a frame
//! ([`sluice_sdk::modbus`] has the layout). Every map entry whose value lies
//! entirely inside a reading of its table (and of its unit, if it names
//! one) becomes one MQTT message and one field of the reading's InfluxDB
//! point. Entries marked `writable=true` can be set from MQTT (see
//! [Writes](#writes)).
//!
//! # Configuration
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `point.<name>` | (at least one) | a map entry, below; `<name>` is the last topic level and the field key |
//! | `device.<unit id>` | `unit<id>` | the name of unit 0–255 in topics and in the `device` tag |
//! | `prefix` | `modbus` | first topic level(s), e.g. `plant/line1` |
//! | `measurement` | `modbus` | InfluxDB measurement of every point |
//! | `qos` | `1` | MQTT QoS of every message: `0`, `1` or `2` |
//! | `retain` | `true` | whether messages are retained |
//!
//! A map entry is `<table> <address> <type>` and options, separated by
//! spaces:
//!
//! * `<table>`: `coils`, `discrete_inputs` (type `bool`), `holding`,
//!   `input` (any other type);
//! * `<address>`: the protocol address as sent in the request, 0–65535
//!   (decimal or `0x` hex; `40001`-style register numbers are not
//!   addresses: holding register 40001 is `holding 0`);
//! * `<type>`: `bool`, `u16`, `i16` (one register), `u32`, `i32`, `f32`
//!   (two), `u64`, `i64`, `f64` (four);
//! * `scale=<f>`, `offset=<f>`: publish `raw × scale + offset`;
//! * `unit=<text>`: the engineering unit, in the point's `<name>_unit` tag;
//! * `order=low_first`: the least significant register first (default
//!   `high_first`; 32- and 64-bit types only);
//! * `deadband=<f>`: publish only when the value moved by more than this
//!   since it was last published (for `bool`, only `deadband=0`: publish on
//!   change);
//! * `unit_id=<n>`: only in readings of unit `n` (default: every unit);
//! * `writable=true`: commands may write it (`holding` and `coils` only;
//!   default `false`, see [Writes](#writes));
//! * `bit=<n>`: only bit `n` of an integer type (0 = least significant,
//!   counted in the whole value after `order`), as a `bool`: no `scale`,
//!   `offset` or `enum`, only `deadband=0`;
//! * `bits=<low>..<high>`: only bits `low` to `high` (inclusive) of an
//!   integer type, shifted down: an unsigned number, which `scale`,
//!   `offset`, `deadband` and `enum` take as any other;
//! * `enum=<value>:<label>,…`: publish the label of the (raw, unscaled)
//!   value of an integer type or of `bits=`, like
//!   `enum=0:off,1:heating,2:cooling`. Values are integers in the range of
//!   the type or of `bits=` (decimal or `0x` hex), each given once; a label
//!   is text without spaces, `,` or `:`, and not an integer. A value without a label is
//!   published as its number (`7`), so nothing is lost and the field stays
//!   a string. No `scale` or `offset`, only `deadband=0`.
//!
//! So `"point.temperature" = "holding 0 i16 scale=0.1 unit=°C deadband=0.5"`
//! publishes holding register 0 of every unit, read as a signed tenth of a
//! degree, when it moved by more than half a degree. Entries may share
//! registers: a status word is typically mapped once per flag, e.g.
//! `"point.burner" = "holding 8 u16 bit=0"`, `"point.stage" = "holding 8
//! u16 bits=4..7"`. [`EXAMPLE_CONFIG`] is a whole map. Any other key, or a
//! bad entry, is an [`Error::InvalidConfig`] naming the key.
//!
//! # Output
//!
//! For each reading, in address order (then by name): a message
//! `<prefix>/<device>/<name>` whose payload is the value as text (`true`,
//! `1234`, `-1500`, `230.5`, `heating`) and one point: the measurement,
//! tags `device` and `<name>_unit` for each entry with a unit inside the
//! reading (even when its value is held back, so the series stays the
//! same), one field per published value and no timestamp (the host uses
//! the frame's receive time). No value published, no point.
//!
//! Field types are fixed: `bool` and `bit=` boolean, `u16`/`u32`/`u64` and
//! `bits=` unsigned, `i16`/`i32`/`i64` signed integer, `f32`/`f64` and every
//! value with a `scale` or `offset` float, `enum=` string. A scaled value
//! has as many decimals as the raw value plus `scale`'s, or as `offset`'s
//! if more: raw 250 with `scale=0.01 offset=-1` is `1.50`. A float
//! register holding NaN or an infinity is skipped (InfluxDB refuses them).
//!
//! The deadband state lives in the instance: a restart or a new version
//! publishes everything once.
//!
//! A frame that is not a reading is refused as the SDK says
//! ([`Error::Malformed`], or [`Error::Unsupported`] for another format).
//!
//! # Writes
//!
//! With a `[pipeline.downlink]` whose filter takes them (e.g.
//! `plant/+/+/set`), a command on a topic ending in
//! `<device>/<name>/set` writes its payload to the entry `point.<name>`
//! of that device. Whatever comes before `<device>` is not checked: the
//! filter chooses. `<device>` is the name in the entry's topics: the one
//! given by `device.<unit id>`, or `unit<id>` for a unit without one; the
//! write goes to that unit.
//!
//! Only entries with `writable=true` are written, since a write to the
//! wrong register of a drive or a valve does harm: writes are opt-in,
//! entry by entry. Input registers and discrete inputs are read-only in
//! Modbus and cannot be made writable.
//!
//! The payload is the value as published, as text, surrounding whitespace
//! ignored:
//!
//! * a coil (function 5): `true`/`false`, `1`/`0` or `on`/`off`, in any
//!   case;
//! * a `holding` entry: a number (`21.5`, `-3`, `1e3`), written as
//!   `(value − offset) / scale`. Integer types round that to the nearest
//!   integer (halves away from zero) and refuse a value out of the type's
//!   range, never wrap it; `f32`/`f64` write it as a float. `u16`/`i16` use
//!   function 6, the 32- and 64-bit types function 16 with the registers
//!   in the entry's `order`;
//! * an `enum=` entry: one of its labels, exactly as published, written as
//!   its value. A number is refused, even one published because it had no
//!   label: the map lists the values that may be written. A writable
//!   `enum=` needs a different label for each value.
//!
//! `bit=` and `bits=` entries cannot be made writable: Modbus writes whole
//! registers, so setting some bits means reading the register and writing
//! it back, and a change the device or another master makes in between
//! would be undone. Map the whole register to write it.
//!
//! So with [`EXAMPLE_CONFIG`], `plant/boiler/setpoint/set` ← `21.5` sets
//! holding register 6 of unit 1 to 215, `plant/boiler/mode/set` ←
//! `heating` sets holding register 7 to 1, and `plant/boiler/pump/set` ←
//! `off` switches coil 0 of unit 1 off.
//!
//! A command that cannot be written is refused with an error naming its
//! topic and why (the host counts it and writes nothing):
//! [`Error::Malformed`] for a topic not ending in `<device>/<name>/set`, a
//! payload that is not a value of the entry's type, or a value out of its
//! range; [`Error::Unsupported`] for an unknown device or entry, an entry
//! mapped for another unit, a read-only table, or an entry without
//! `writable=true`.
//!
//! ```
//! use modbus_registers::{EXAMPLE_CONFIG, ModbusRegisters};
//! use sluice_sdk::modbus::Write;
//! use sluice_sdk::{Command, Config, Frame, Transform};
//!
//! let mut map = ModbusRegisters::init(&Config::from_pairs(EXAMPLE_CONFIG.iter().copied()))?;
//! // Unit 1, holding registers 0–1: 215, 250.
//! let frame = Frame::from_data([1, 1, 3, 0, 0, 0, 0, 2, 0, 215, 0, 250]);
//! let out = sluice_sdk::process(&mut map, &frame)?;
//! assert_eq!(out.messages()[0].topic, "plant/boiler/temperature");
//! assert_eq!(out.messages()[0].payload, b"21.5");
//! assert_eq!(out.messages()[1].payload, b"1.50");
//!
//! // Set the boiler's setpoint (unit 1, holding register 6) to 21.5 °C.
//! let command = Command::new("plant/boiler/setpoint/set", "21.5");
//! assert_eq!(map.encode_command(&command)?, Write::register(1, 6, 215));
//! # Ok::<(), sluice_sdk::Error>(())
//! ```

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use sluice_sdk::modbus::{Reading, Table, WordOrder, Write};
use sluice_sdk::{
    Command, Config, Error, FieldValue, Frame, Message, Output, Point, Qos, Transform,
};

/// A whole configuration: the one in docs/transforms.md and the one
/// `modbus_registers.vectors.jsonl` (beside this crate's `Cargo.toml`)
/// expects.
pub const EXAMPLE_CONFIG: &[(&str, &str)] = &[
    ("prefix", "plant"),
    ("measurement", "modbus"),
    ("qos", "1"),
    ("retain", "true"),
    ("device.1", "boiler"),
    ("device.2", "meter"),
    (
        "point.temperature",
        "holding 0 i16 scale=0.1 unit=°C deadband=0.5 unit_id=1",
    ),
    (
        "point.pressure",
        "holding 1 u16 scale=0.01 offset=-1 unit=bar unit_id=1",
    ),
    ("point.run_hours", "holding 2 u32 unit=h unit_id=1"),
    (
        "point.heat_flow",
        "holding 4 i32 order=low_first unit=W unit_id=1",
    ),
    (
        "point.setpoint",
        "holding 6 i16 scale=0.1 unit=°C unit_id=1 writable=true",
    ),
    (
        "point.mode",
        "holding 7 u16 enum=0:off,1:heating,2:cooling unit_id=1 writable=true",
    ),
    ("point.burner", "holding 8 u16 bit=0 deadband=0 unit_id=1"),
    ("point.fault", "holding 8 u16 bit=1 unit_id=1"),
    ("point.stage", "holding 8 u16 bits=4..7 unit_id=1"),
    ("point.pump", "coils 0 bool unit_id=1 writable=true"),
    ("point.alarm", "discrete_inputs 0 bool deadband=0 unit_id=1"),
    ("point.voltage", "input 0 f32 unit=V unit_id=2"),
    (
        "point.energy_import",
        "input 2 f64 order=low_first unit=kWh unit_id=2",
    ),
    ("point.pulse_count", "input 6 u64 unit_id=2"),
    (
        "point.energy_net",
        "input 10 i64 order=low_first unit=Wh unit_id=2",
    ),
    ("point.status", "holding 100 u16"),
];

/// The transform. Create it with [`Transform::init`].
#[derive(Debug, Clone)]
pub struct ModbusRegisters {
    prefix: String,
    measurement: String,
    qos: Qos,
    retain: bool,
    devices: BTreeMap<u8, String>,
    /// Sorted by table, address and name: output comes in address order.
    entries: Vec<Entry>,
    /// The last published value per (unit, index in `entries`), for entries
    /// with a deadband.
    published: BTreeMap<(u8, usize), Value>,
}

sluice_sdk::export!(ModbusRegisters);

/// One `point.<name>` of the map.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    table: Table,
    address: u16,
    kind: Kind,
    order: WordOrder,
    scaling: Option<Scaling>,
    /// The `<name>_unit` tag and the engineering unit.
    unit: Option<(String, String)>,
    deadband: Option<f64>,
    unit_id: Option<u8>,
    /// `writable=true`: commands may write it (holding and coils only).
    writable: bool,
    /// `bit=` or `bits=`: part of the integer value, instead of all of it.
    bit_field: Option<BitField>,
    /// `enum=`: the text published for each raw value.
    labels: Option<BTreeMap<i128, String>>,
}

/// Bits of an integer value, counted from its least significant bit (0),
/// after the registers are put in `order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BitField {
    /// `bit=<n>`: one bit, a `bool`.
    Flag(u32),
    /// `bits=<low>..<high>`: those bits (inclusive), shifted down, unsigned.
    Range { low: u32, high: u32 },
}

impl BitField {
    fn extract(self, word: u64) -> Value {
        match self {
            BitField::Flag(bit) => Value::Bool(word >> bit & 1 == 1),
            BitField::Range { low, high } => {
                Value::Uint(word >> low & (u64::MAX >> (63 - (high - low))))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

const KINDS: &[(&str, Kind)] = &[
    ("bool", Kind::Bool),
    ("u16", Kind::U16),
    ("i16", Kind::I16),
    ("u32", Kind::U32),
    ("i32", Kind::I32),
    ("f32", Kind::F32),
    ("u64", Kind::U64),
    ("i64", Kind::I64),
    ("f64", Kind::F64),
];

const TABLES: &[(&str, Table)] = &[
    ("coils", Table::Coils),
    ("discrete_inputs", Table::DiscreteInputs),
    ("holding", Table::HoldingRegisters),
    ("input", Table::InputRegisters),
];

impl Kind {
    /// Registers (or bits) the value takes.
    fn width(self) -> u16 {
        match self {
            Kind::Bool | Kind::U16 | Kind::I16 => 1,
            Kind::U32 | Kind::I32 | Kind::F32 => 2,
            Kind::U64 | Kind::I64 | Kind::F64 => 4,
        }
    }

    /// `u16`, as in the config.
    fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or("", |(name, _)| name)
    }

    /// The lowest and highest value of an integer type.
    fn integer_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Kind::U16 => (0, u16::MAX.into()),
            Kind::I16 => (i16::MIN.into(), i16::MAX.into()),
            Kind::U32 => (0, u32::MAX.into()),
            Kind::I32 => (i32::MIN.into(), i32::MAX.into()),
            Kind::U64 => (0, u64::MAX.into()),
            Kind::I64 => (i64::MIN.into(), i64::MAX.into()),
            Kind::Bool | Kind::F32 | Kind::F64 => return None,
        })
    }
}

/// `raw × scale + offset`, with the decimals of `scale` and `offset`.
#[derive(Debug, Clone, Copy)]
struct Scaling {
    scale: f64,
    offset: f64,
    scale_decimals: usize,
    offset_decimals: usize,
}

/// A decoded value, as published.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
}

impl Value {
    /// Whether `self` differs from `last` by more than `deadband`.
    fn moved(self, last: Value, deadband: f64) -> bool {
        match (self, last) {
            (Value::Bool(a), Value::Bool(b)) => a != b,
            (Value::Uint(a), Value::Uint(b)) => a.abs_diff(b) as f64 > deadband,
            (Value::Int(a), Value::Int(b)) => a.abs_diff(b) as f64 > deadband,
            // The slack keeps float noise (1.5 - 1.2 = 0.30000000000000004)
            // from counting as a move at the deadband's edge.
            (Value::Float(a), Value::Float(b)) => {
                (a - b).abs() > deadband + 16.0 * f64::EPSILON * a.abs().max(b.abs())
            }
            _ => true,
        }
    }

    fn field(self) -> FieldValue {
        match self {
            Value::Bool(v) => FieldValue::Boolean(v),
            Value::Uint(v) => FieldValue::Uint(v),
            Value::Int(v) => FieldValue::Int(v),
            Value::Float(v) => FieldValue::Float(v),
        }
    }
}

impl Entry {
    /// The raw value, if it is entirely inside `reading`.
    fn read(&self, reading: &Reading<'_>) -> Option<Value> {
        let (a, order) = (self.address, self.order);
        if let Some(bit_field) = self.bit_field {
            // The two's complement bits for a signed type.
            let word = match self.kind {
                Kind::U16 | Kind::I16 => reading.u16(a)?.into(),
                Kind::U32 | Kind::I32 => reading.u32(a, order)?.into(),
                Kind::U64 | Kind::I64 => reading.u64(a, order)?,
                Kind::Bool | Kind::F32 | Kind::F64 => return None,
            };
            return Some(bit_field.extract(word));
        }
        Some(match self.kind {
            Kind::Bool => Value::Bool(reading.bit(a)?),
            Kind::U16 => Value::Uint(reading.u16(a)?.into()),
            Kind::I16 => Value::Int(reading.i16(a)?.into()),
            Kind::U32 => Value::Uint(reading.u32(a, order)?.into()),
            Kind::I32 => Value::Int(reading.i32(a, order)?.into()),
            // Through its shortest decimal form: 21.1f32 is 21.1, not
            // 21.100000381469727.
            Kind::F32 => {
                let v = reading.f32(a, order)?;
                Value::Float(v.to_string().parse().unwrap_or(f64::from(v)))
            }
            Kind::U64 => Value::Uint(reading.u64(a, order)?),
            Kind::I64 => Value::Int(reading.i64(a, order)?),
            Kind::F64 => Value::Float(reading.f64(a, order)?),
        })
    }

    /// The value to publish and its text; `None` when it is not a finite
    /// number.
    fn publish(&self, raw: Value) -> Option<(Value, String)> {
        if let Some(labels) = &self.labels {
            let key = match raw {
                Value::Uint(v) => i128::from(v),
                Value::Int(v) => i128::from(v),
                Value::Bool(_) | Value::Float(_) => return None,
            };
            // A value without a label is published as its number.
            let text = labels.get(&key).cloned().unwrap_or_else(|| key.to_string());
            return Some((raw, text));
        }
        let Some(s) = self.scaling else {
            if let Value::Float(v) = raw
                && !v.is_finite()
            {
                return None;
            }
            let text = match raw {
                Value::Bool(v) => v.to_string(),
                Value::Uint(v) => v.to_string(),
                Value::Int(v) => v.to_string(),
                Value::Float(v) => v.to_string(),
            };
            return Some((raw, text));
        };
        let (raw, raw_decimals) = match raw {
            Value::Uint(v) => (v as f64, 0),
            Value::Int(v) => (v as f64, 0),
            Value::Float(v) if v.is_finite() => (v, decimals(v)),
            Value::Float(_) | Value::Bool(_) => return None,
        };
        let scaled = raw * s.scale + s.offset;
        if !scaled.is_finite() {
            return None;
        }
        let places = (raw_decimals + s.scale_decimals).max(s.offset_decimals);
        let text = format!("{scaled:.places$}");
        let value = text.parse().unwrap_or(scaled);
        Some((Value::Float(value), text))
    }

    /// The InfluxDB field of a published value: the text for an `enum=`.
    fn field(&self, value: Value, text: &str) -> FieldValue {
        if self.labels.is_some() {
            FieldValue::Text(text.to_owned())
        } else {
            value.field()
        }
    }

    /// The write command setting this entry of unit `unit_id` to `text`,
    /// the inverse of [`publish`](Self::publish); `Err` says why not.
    fn write(&self, unit_id: u8, text: &str) -> Result<Vec<u8>, String> {
        if text.is_empty() {
            return Err("empty payload: expected the value to write".into());
        }
        if self.kind == Kind::Bool {
            let on = parse_bool(text).ok_or_else(|| {
                format!(
                    "{} is not a coil state (true/false, 1/0, on/off)",
                    quoted(text)
                )
            })?;
            return Ok(Write::coil(unit_id, self.address, on));
        }
        let bits = match &self.labels {
            Some(labels) => self.label_bits(labels, text)?,
            None => self.raw_bits(text)?,
        };
        let width = self.kind.width();
        if width == 1 {
            return Ok(Write::register(unit_id, self.address, bits as u16));
        }
        // Most significant register first, then as `order` says.
        let mut words: Vec<u16> = (0..width)
            .rev()
            .map(|i| (bits >> (16 * i)) as u16)
            .collect();
        if self.order == WordOrder::LowFirst {
            words.reverse();
        }
        Write::registers(unit_id, self.address, &words).map_err(|e| e.message().to_owned())
    }

    /// The register value of the label `text`, in the low `16 × width`
    /// bits; only labels are written, never a value missing from the map.
    fn label_bits(&self, labels: &BTreeMap<i128, String>, text: &str) -> Result<u64, String> {
        let value = labels
            .iter()
            .find(|(_, label)| *label == text)
            .map(|(&value, _)| value)
            .ok_or_else(|| {
                let known: Vec<&str> = labels.values().map(String::as_str).collect();
                format!(
                    "{} is not a label of `point.{}` ({})",
                    quoted(text),
                    self.name,
                    known.join(", ")
                )
            })?;
        // Labels are checked against the type's range in `parse_entry`.
        self.integer_bits(value)
            .ok_or_else(|| format!("{value} does not fit `point.{}`", self.name))
    }

    /// The register value for `text`: `(value − offset) / scale`, rounded
    /// to the nearest integer (halves away from zero) for integer types; in
    /// the low `16 × width` bits.
    fn raw_bits(&self, text: &str) -> Result<u64, String> {
        let out_of_range = || {
            format!(
                "{} is out of range: `point.{}` ({}) takes {}",
                quoted(text),
                self.name,
                self.describe(),
                self.range()
            )
        };
        match self.kind {
            Kind::F32 => {
                let raw = self.unscale(parse_number(text)?) as f32;
                return raw
                    .is_finite()
                    .then(|| raw.to_bits().into())
                    .ok_or_else(out_of_range);
            }
            Kind::F64 => {
                let raw = self.unscale(parse_number(text)?);
                return raw
                    .is_finite()
                    .then(|| raw.to_bits())
                    .ok_or_else(out_of_range);
            }
            _ => {}
        }
        // An integer without scaling is taken exactly (u64 and i64 have
        // more digits than an f64).
        let raw: i128 = match text.parse() {
            Ok(raw) if self.scaling.is_none() => raw,
            // `as` saturates: too large for an i128 is out of every range.
            _ => self.unscale(parse_number(text)?).round() as i128,
        };
        self.integer_bits(raw).ok_or_else(out_of_range)
    }

    /// `raw` in the low `16 × width` bits; `None` outside the type's range.
    fn integer_bits(&self, raw: i128) -> Option<u64> {
        match self.kind {
            Kind::U16 => u16::try_from(raw).ok().map(u64::from),
            Kind::I16 => i16::try_from(raw).ok().map(|v| u64::from(v as u16)),
            Kind::U32 => u32::try_from(raw).ok().map(u64::from),
            Kind::I32 => i32::try_from(raw).ok().map(|v| u64::from(v as u32)),
            Kind::U64 => u64::try_from(raw).ok(),
            Kind::I64 => i64::try_from(raw).ok().map(|v| v as u64),
            Kind::Bool | Kind::F32 | Kind::F64 => None,
        }
    }

    /// `(value − offset) / scale`.
    fn unscale(&self, value: f64) -> f64 {
        match self.scaling {
            Some(s) => (value - s.offset) / s.scale,
            None => value,
        }
    }

    /// `i16`, `u16 scale=0.01 offset=-1`.
    fn describe(&self) -> String {
        let mut text = self.kind.name().to_owned();
        if let Some(s) = self.scaling {
            if s.scale != 1.0 {
                text.push_str(&format!(" scale={}", s.scale));
            }
            if s.offset != 0.0 {
                text.push_str(&format!(" offset={}", s.offset));
            }
        }
        text
    }

    /// The values a write can set, as published: `-3276.8 to 3276.7`.
    fn range(&self) -> String {
        let (min, max) = match self.kind {
            Kind::U16 => (Value::Uint(0), Value::Uint(u16::MAX.into())),
            Kind::I16 => (Value::Int(i16::MIN.into()), Value::Int(i16::MAX.into())),
            Kind::U32 => (Value::Uint(0), Value::Uint(u32::MAX.into())),
            Kind::I32 => (Value::Int(i32::MIN.into()), Value::Int(i32::MAX.into())),
            Kind::U64 => (Value::Uint(0), Value::Uint(u64::MAX)),
            Kind::I64 => (Value::Int(i64::MIN), Value::Int(i64::MAX)),
            Kind::Bool => return "true or false".into(),
            Kind::F32 | Kind::F64 => {
                let max = if self.kind == Kind::F32 {
                    f64::from(f32::MAX)
                } else {
                    f64::MAX
                };
                let (scale, offset) = self.scaling.map_or((1.0, 0.0), |s| (s.scale, s.offset));
                let bound = max * scale.abs();
                return format!("{:e} to {:e}", offset - bound, offset + bound);
            }
        };
        let text = |v: Value| self.publish(v).map_or_else(String::new, |(_, text)| text);
        let (mut low, mut high) = (text(min), text(max));
        if self.scaling.is_some_and(|s| s.scale < 0.0) {
            std::mem::swap(&mut low, &mut high);
        }
        format!("{low} to {high}")
    }
}

/// A coil state: `true`/`false`, `1`/`0`, `on`/`off`, in any case.
fn parse_bool(text: &str) -> Option<bool> {
    let is = |words: [&str; 3]| words.iter().any(|w| w.eq_ignore_ascii_case(text));
    if is(["true", "1", "on"]) {
        Some(true)
    } else if is(["false", "0", "off"]) {
        Some(false)
    } else {
        None
    }
}

/// A finite number, like `21.5`, `-3` or `1e3`.
fn parse_number(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("{} is not a number", quoted(text)))
}

/// A payload in a message: quoted, at most 40 characters of it.
fn quoted(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Fraction digits of `v`'s shortest decimal form.
fn decimals(v: f64) -> usize {
    v.to_string().split_once('.').map_or(0, |(_, f)| f.len())
}

impl Transform for ModbusRegisters {
    fn init(config: &Config) -> Result<Self, Error> {
        let mut devices = BTreeMap::new();
        let mut entries: Vec<Entry> = Vec::new();
        for (key, _) in config.iter() {
            // The last value of a repeated key wins, as in `Config::get`.
            let Some(value) = config.get(key) else {
                continue;
            };
            if let Some(name) = key.strip_prefix("point.") {
                check_level(key, name, "a point name")?;
                entries.retain(|e| e.name != name);
                entries.push(parse_entry(key, name, value)?);
            } else if let Some(id) = key.strip_prefix("device.") {
                let id: u8 = id.parse().map_err(|_| {
                    Error::invalid_config(format!(
                        "`{key}`: a unit id is a number from 0 to 255, like `device.1`"
                    ))
                })?;
                check_level(key, value, "a device name")?;
                devices.insert(id, value.to_owned());
            } else if !matches!(key, "prefix" | "measurement" | "qos" | "retain") {
                return Err(Error::invalid_config(format!(
                    "unknown key `{key}` (known: `point.<name>`, `device.<unit id>`, `prefix`, `measurement`, `qos`, `retain`)"
                )));
            }
        }
        if entries.is_empty() {
            return Err(Error::invalid_config(
                "the register map is empty: add `point.<name>` keys, like `point.temperature` = \"holding 0 i16 scale=0.1\"",
            ));
        }
        entries.sort_by(|a, b| {
            (a.table.function(), a.address, &a.name).cmp(&(b.table.function(), b.address, &b.name))
        });

        let prefix = config.get_or("prefix", "modbus");
        check_prefix(prefix)?;
        let measurement = config.get_or("measurement", "modbus");
        if measurement.is_empty() {
            return Err(Error::invalid_config("`measurement` must not be empty"));
        }
        Ok(ModbusRegisters {
            prefix: prefix.to_owned(),
            measurement: measurement.to_owned(),
            qos: config.parse_or("qos", Qos::AtLeastOnce)?,
            retain: config.parse_or("retain", true)?,
            devices,
            entries,
            published: BTreeMap::new(),
        })
    }

    fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error> {
        let reading = Reading::parse(frame)?;
        let unit_id = reading.unit();
        let device = match self.devices.get(&unit_id) {
            Some(name) => name.clone(),
            None => format!("unit{unit_id}"),
        };
        let mut point = Point::new(self.measurement.as_str()).tag("device", device.as_str());
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.table != reading.table() || entry.unit_id.is_some_and(|id| id != unit_id) {
                continue;
            }
            let Some(raw) = entry.read(&reading) else {
                continue;
            };
            if let Some((tag, unit)) = &entry.unit {
                point.tags.push((tag.clone(), unit.clone()));
            }
            let Some((value, text)) = entry.publish(raw) else {
                sluice_sdk::log::debug(&format!(
                    "`point.{}` of unit {unit_id}: not a finite number, skipped",
                    entry.name
                ));
                continue;
            };
            if let Some(deadband) = entry.deadband {
                let key = (unit_id, index);
                if let Some(&last) = self.published.get(&key)
                    && !value.moved(last, deadband)
                {
                    continue;
                }
                self.published.insert(key, value);
            }
            let topic = format!("{}/{device}/{}", self.prefix, entry.name);
            point
                .fields
                .push((entry.name.clone(), entry.field(value, &text)));
            out.publish(Message::new(topic, text).qos(self.qos).retain(self.retain));
        }
        if !point.fields.is_empty() {
            out.point(point);
        }
        Ok(())
    }

    /// A command on `…/<device>/<name>/set` writes its payload to
    /// `point.<name>` of that device (see the crate docs).
    fn encode_command(&mut self, command: &Command) -> Result<Vec<u8>, Error> {
        let topic = command.topic.as_str();
        let (device, name) = command_target(topic).ok_or_else(|| {
            Error::malformed(format!(
                "`{topic}`: a write goes to `<prefix>/<device>/<name>/set`"
            ))
        })?;
        let unit_id = self.unit_named(topic, device)?;
        let entry = self.writable_entry(topic, name, device, unit_id)?;
        let text = command
            .text()
            .map_err(|e| Error::malformed(format!("`{topic}`: {}", e.message())))?;
        entry
            .write(unit_id, text.trim())
            .map_err(|why| Error::malformed(format!("`{topic}`: {why}")))
    }
}

impl ModbusRegisters {
    /// The unit whose readings publish as `device`: the one `device.<id>`
    /// names so, or unit `<id>` for `unit<id>` if that unit is not renamed.
    fn unit_named(&self, topic: &str, device: &str) -> Result<u8, Error> {
        let mut units: Vec<u8> = self
            .devices
            .iter()
            .filter(|(_, name)| *name == device)
            .map(|(&id, _)| id)
            .collect();
        if let Some(id) = default_unit_id(device)
            && !self.devices.contains_key(&id)
        {
            units.push(id);
            units.sort_unstable();
        }
        match units[..] {
            [unit] => Ok(unit),
            [] => Err(Error::unsupported(format!(
                "`{topic}`: unknown device `{device}` (a name from `device.<unit id>`, or `unit<id>` for a unit without one)"
            ))),
            _ => {
                let units: Vec<String> = units.iter().map(u8::to_string).collect();
                Err(Error::unsupported(format!(
                    "`{topic}`: device `{device}` is the name of units {}: give each its own name to write to it",
                    units.join(", ")
                )))
            }
        }
    }

    /// `point.<name>`, if it may be written on unit `unit_id`.
    fn writable_entry(
        &self,
        topic: &str,
        name: &str,
        device: &str,
        unit_id: u8,
    ) -> Result<&Entry, Error> {
        let refuse = |why: String| Error::unsupported(format!("`{topic}`: {why}"));
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| refuse(format!("unknown entry: no `point.{name}` in the map")))?;
        if let Some(id) = entry.unit_id
            && id != unit_id
        {
            return Err(refuse(format!(
                "`point.{name}` is mapped for unit {id} only, not for `{device}` (unit {unit_id})"
            )));
        }
        let read_only = match entry.table {
            Table::InputRegisters => Some("an input register"),
            Table::DiscreteInputs => Some("a discrete input"),
            Table::HoldingRegisters | Table::Coils => None,
        };
        if let Some(what) = read_only {
            return Err(refuse(format!(
                "`point.{name}` is {what}, read-only in Modbus"
            )));
        }
        if !entry.writable {
            return Err(refuse(format!(
                "`point.{name}` is not writable: add `writable=true` to its entry to allow writes"
            )));
        }
        Ok(entry)
    }
}

/// `(device, name)` of a topic ending in `<device>/<name>/set`.
fn command_target(topic: &str) -> Option<(&str, &str)> {
    let mut levels = topic.rsplit('/');
    if levels.next()? != "set" {
        return None;
    }
    let name = levels.next()?;
    let device = levels.next()?;
    Some((device, name))
}

/// `7` for `unit7`, the name of a unit without `device.<id>`; `None` for
/// anything else (`unit07`, `unit256`).
fn default_unit_id(device: &str) -> Option<u8> {
    let digits = device.strip_prefix("unit")?;
    let id: u8 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// Parses the value of `point.<name>`.
fn parse_entry(key: &str, name: &str, spec: &str) -> Result<Entry, Error> {
    let bad = |why: String| Error::invalid_config(format!("`{key}` = {spec:?}: {why}"));
    let mut words = spec.split_whitespace();
    let (Some(table), Some(address), Some(kind)) = (words.next(), words.next(), words.next())
    else {
        return Err(bad(
            "expected `<table> <address> <type> [options]`, like \"holding 0 i16 scale=0.1\""
                .into(),
        ));
    };
    let table = lookup(TABLES, table).ok_or_else(|| {
        bad(format!(
            "unknown table `{table}` (coils, discrete_inputs, holding, input)"
        ))
    })?;
    let address = parse_address(address).ok_or_else(|| {
        bad(format!(
            "address `{address}` is not a number from 0 to 65535"
        ))
    })?;
    let kind = lookup(KINDS, kind).ok_or_else(|| {
        bad(format!(
            "unknown type `{kind}` (bool, u16, i16, u32, i32, f32, u64, i64, f64)"
        ))
    })?;
    match (table.is_bits(), kind == Kind::Bool) {
        (true, false) => return Err(bad("coils and discrete_inputs are `bool`".into())),
        (false, true) => {
            return Err(bad(
                "holding and input registers are numbers, not `bool`".into()
            ));
        }
        _ => {}
    }
    if u32::from(address) + u32::from(kind.width()) > 0x1_0000 {
        return Err(bad(format!(
            "{} registers from address {address} run past address 65535",
            kind.width()
        )));
    }

    let mut entry = Entry {
        name: name.to_owned(),
        table,
        address,
        kind,
        order: WordOrder::HighFirst,
        scaling: None,
        unit: None,
        deadband: None,
        unit_id: None,
        writable: false,
        bit_field: None,
        labels: None,
    };
    let (mut scale, mut offset, mut order) = (None, None, None);
    let mut seen: Vec<&str> = Vec::new();
    for option in words {
        let Some((option, value)) = option.split_once('=') else {
            let hint = if seen.last() == Some(&"enum") {
                "; labels in `enum=` cannot contain spaces"
            } else {
                ""
            };
            return Err(bad(format!(
                "`{option}` is not an option (`scale=`, `offset=`, `unit=`, `order=`, `deadband=`, `unit_id=`, `writable=`, `bit=`, `bits=`, `enum=`){hint}"
            )));
        };
        if seen.contains(&option) {
            return Err(bad(format!("`{option}` is given twice")));
        }
        seen.push(option);
        let number = || -> Result<f64, Error> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(format!("`{option}={value}`: expected a number")))
        };
        match option {
            "scale" => {
                let v = number()?;
                if v == 0.0 {
                    return Err(bad("`scale=0` makes every value 0".into()));
                }
                scale = Some(v);
            }
            "offset" => offset = Some(number()?),
            "deadband" => {
                let v = number()?;
                if v < 0.0 {
                    return Err(bad(format!("`deadband={value}` must not be negative")));
                }
                entry.deadband = Some(v);
            }
            "unit" => {
                if value.is_empty() {
                    return Err(bad("`unit=` needs a unit, like `unit=°C`".into()));
                }
                entry.unit = Some((format!("{name}_unit"), value.to_owned()));
            }
            "order" => {
                order = Some(match value {
                    "high_first" => WordOrder::HighFirst,
                    "low_first" => WordOrder::LowFirst,
                    _ => {
                        return Err(bad(format!(
                            "`order={value}`: expected `high_first` or `low_first`"
                        )));
                    }
                });
            }
            "unit_id" => {
                entry.unit_id = Some(value.parse().map_err(|_| {
                    bad(format!(
                        "`unit_id={value}`: expected a number from 0 to 255"
                    ))
                })?);
            }
            "writable" => {
                entry.writable = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(bad(format!(
                            "`writable={value}`: expected `true` or `false`"
                        )));
                    }
                };
            }
            "bit" | "bits" => {
                if kind.integer_range().is_none() {
                    return Err(bad(format!(
                        "`{option}=` selects bits of an integer register (u16, i16, u32, i32, u64, i64), not of `{}`",
                        kind.name()
                    )));
                }
                let bit_field = parse_bit_field(option, value).map_err(bad)?;
                let last_bit = 16 * u32::from(kind.width()) - 1;
                let highest = match bit_field {
                    BitField::Flag(bit) => bit,
                    BitField::Range { high, .. } => high,
                };
                if highest > last_bit {
                    return Err(bad(format!(
                        "`{option}={value}`: the bits of `{}` are 0 to {last_bit}",
                        kind.name()
                    )));
                }
                if entry.bit_field.is_some() {
                    return Err(bad("give `bit=` or `bits=`, not both".into()));
                }
                entry.bit_field = Some(bit_field);
            }
            "enum" => entry.labels = Some(parse_labels(value).map_err(bad)?),
            _ => {
                return Err(bad(format!(
                    "unknown option `{option}` (scale, offset, unit, order, deadband, unit_id, writable, bit, bits, enum)"
                )));
            }
        }
    }
    if entry.writable && !matches!(table, Table::HoldingRegisters | Table::Coils) {
        return Err(bad(
            "`writable=true`: only `holding` and `coils` can be written, this table is read-only"
                .into(),
        ));
    }
    let scaled = scale.is_some() || offset.is_some();
    if kind == Kind::Bool && scaled {
        return Err(bad("a `bool` cannot be scaled".into()));
    }
    let flag = matches!(entry.bit_field, Some(BitField::Flag(_)));
    if flag && scaled {
        return Err(bad("`bit=` is a `bool`, it cannot be scaled".into()));
    }
    if entry.bit_field.is_some() && entry.writable {
        let option = if flag { "bit" } else { "bits" };
        return Err(bad(format!(
            "`writable=true` with `{option}=`: writing part of a register means reading the whole of it and writing it back, which is not atomic in Modbus and could undo a change to its other bits; map the whole register to write it"
        )));
    }
    if let Some(labels) = &entry.labels {
        check_labels(&entry, labels, scaled).map_err(bad)?;
    }
    if let Some(v) = entry.deadband
        && v != 0.0
    {
        let only_on_change = if kind == Kind::Bool {
            Some("a `bool`")
        } else if flag {
            Some("`bit=`")
        } else if entry.labels.is_some() {
            Some("`enum=`")
        } else {
            None
        };
        if let Some(what) = only_on_change {
            return Err(bad(format!(
                "{what} takes only `deadband=0` (publish on change)"
            )));
        }
    }
    if scaled {
        let (scale, offset) = (scale.unwrap_or(1.0), offset.unwrap_or(0.0));
        entry.scaling = Some(Scaling {
            scale,
            offset,
            scale_decimals: decimals(scale),
            offset_decimals: decimals(offset),
        });
    }
    if let Some(order) = order {
        if kind.width() == 1 {
            return Err(bad(
                "`order` applies to 32- and 64-bit types, not to one register".into(),
            ));
        }
        entry.order = order;
    }
    Ok(entry)
}

/// `bit=<n>` or `bits=<low>..<high>`.
fn parse_bit_field(option: &str, value: &str) -> Result<BitField, String> {
    let bit = |text: &str| text.parse::<u32>().ok();
    if option == "bit" {
        return bit(value).map(BitField::Flag).ok_or_else(|| {
            format!("`bit={value}`: expected a bit number (0 = least significant), like `bit=3`")
        });
    }
    let (low, high) = value
        .split_once("..")
        .and_then(|(low, high)| Some((bit(low)?, bit(high)?)))
        .ok_or_else(|| {
            format!("`bits={value}`: expected `<low>..<high>` (inclusive, 0 = least significant), like `bits=4..7`")
        })?;
    if low > high {
        return Err(format!(
            "`bits={value}`: the lower bit comes first, like `bits={high}..{low}`"
        ));
    }
    Ok(BitField::Range { low, high })
}

/// `enum=<value>:<label>,…`: values are integers (decimal or `0x` hex),
/// labels are text without spaces, `,` or `:` that is not an integer.
fn parse_labels(spec: &str) -> Result<BTreeMap<i128, String>, String> {
    if spec.is_empty() {
        return Err("`enum=` needs `<value>:<label>` pairs, like `enum=0:off,1:on`".into());
    }
    let mut labels = BTreeMap::new();
    for pair in spec.split(',') {
        let (value, label) = pair.split_once(':').ok_or_else(|| {
            format!("`enum=`: `{pair}` is not `<value>:<label>` (labels cannot contain `,`, `:` or spaces)")
        })?;
        let value = parse_integer(value)
            .ok_or_else(|| format!("`enum=`: `{value}` in `{pair}` is not an integer"))?;
        if label.is_empty() {
            return Err(format!("`enum=`: `{pair}` has an empty label"));
        }
        if label.contains(':') {
            return Err(format!(
                "`enum=`: the label `{label}` contains `:` (labels cannot contain `,`, `:` or spaces)"
            ));
        }
        if label.parse::<i128>().is_ok() {
            return Err(format!(
                "`enum=`: the label `{label}` is a number, which is how a value without a label is published: use a word"
            ));
        }
        if labels.insert(value, label.to_owned()).is_some() {
            return Err(format!("`enum=`: the value {value} is given twice"));
        }
    }
    Ok(labels)
}

/// The `enum=` labels of `entry` fit its type and options.
fn check_labels(
    entry: &Entry,
    labels: &BTreeMap<i128, String>,
    scaled: bool,
) -> Result<(), String> {
    let (min, max, of) = match entry.bit_field {
        Some(BitField::Flag(_)) => {
            return Err(
                "`enum=` maps integers and `bit=` is a `bool`: use `bits=<n>..<n>` for an enum of one bit"
                    .into(),
            );
        }
        Some(BitField::Range { low, high }) => (
            0,
            (1i128 << (high - low + 1)) - 1,
            format!("`bits={low}..{high}`"),
        ),
        None => {
            let (min, max) = entry.kind.integer_range().ok_or_else(|| {
                format!("`enum=` maps integer values, not `{}`", entry.kind.name())
            })?;
            (min, max, format!("`{}`", entry.kind.name()))
        }
    };
    if scaled {
        return Err("`enum=` maps the raw value, it cannot be scaled".into());
    }
    if let Some(value) = labels.keys().find(|&&v| v < min || v > max) {
        return Err(format!(
            "`enum=`: {value} is not a value of {of} ({min} to {max})"
        ));
    }
    if entry.writable {
        for (value, label) in labels {
            if let Some((other, _)) = labels.iter().find(|(v, l)| *l == label && *v != value) {
                return Err(format!(
                    "`enum=`: the label `{label}` stands for {value} and {other}: a writable entry needs a label per value"
                ));
            }
        }
    }
    Ok(())
}

/// A decimal integer, or `0x` hex.
fn parse_integer(text: &str) -> Option<i128> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok().map(i128::from),
        None => text.parse().ok(),
    }
}

fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// `0`–`65535`, or `0x0`–`0xFFFF`.
fn parse_address(text: &str) -> Option<u16> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn check_prefix(prefix: &str) -> Result<(), Error> {
    let problem = if prefix.is_empty() {
        "must not be empty"
    } else if prefix.contains(['+', '#', '\0']) {
        "must not contain `+`, `#` or NUL"
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        "must not start or end with `/`"
    } else {
        return Ok(());
    };
    Err(Error::invalid_config(format!(
        "`prefix` = {prefix:?}: {problem}"
    )))
}

/// A name that becomes one topic level.
fn check_level(key: &str, value: &str, what: &str) -> Result<(), Error> {
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
        return Err(Error::invalid_config(format!(
            "`{key}`: {what} must be a non-empty topic level without `/`, `+`, `#` or NUL, not {value:?}"
        )));
    }
    Ok(())
}
