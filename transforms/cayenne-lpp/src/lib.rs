//! sluice transform for Cayenne Low Power Payload (LPP) frames.
//!
//! Cayenne LPP (myDevices) is the compact binary format many LoRaWAN and
//! serial sensor nodes send: a sequence of items, each
//!
//! ```text
//! [channel: 1 byte][type: 1 byte][value: size bytes, big-endian]
//! ```
//!
//! The types are the IPSO smart objects, numbered `IPSO id − 3200`:
//!
//! | type | hex | name (topic) | bytes | per value | signed | unit |
//! |---|---|---|---|---|---|---|
//! | 0 | `00` | `digital_input` | 1 | 1 | no | |
//! | 1 | `01` | `digital_output` | 1 | 1 | no | |
//! | 2 | `02` | `analog_input` | 2 | 0.01 | yes | |
//! | 3 | `03` | `analog_output` | 2 | 0.01 | yes | |
//! | 101 | `65` | `illuminance` | 2 | 1 | no | lux |
//! | 102 | `66` | `presence` | 1 | 1 | no | |
//! | 103 | `67` | `temperature` | 2 | 0.1 | yes | °C |
//! | 104 | `68` | `humidity` | 1 | 0.5 | no | %RH |
//! | 113 | `71` | `accelerometer` (`x`, `y`, `z`) | 6 | 0.001 | yes | G |
//! | 115 | `73` | `barometer` | 2 | 0.1 | no | hPa |
//! | 134 | `86` | `gyrometer` (`x`, `y`, `z`) | 6 | 0.01 | yes | °/s |
//! | 136 | `88` | `gps` (`latitude`, `longitude`, `altitude`) | 9 | 0.0001°, 0.0001°, 0.01 m | yes | |
//!
//! So `03 67 01 10 05 67 00 FF` is 27.2 °C on channel 3 and 25.5 °C on
//! channel 5; `06 71 04 D2 FB 2E 00 00` is an accelerometer on channel 6
//! reading x = 1.234 G, y = −1.234 G, z = 0 G.
//!
//! # MQTT messages
//!
//! One message per channel and measurement, in frame order:
//!
//! * `<prefix>/<device>/<name>_<channel>` for single values
//!   (`lpp/node1/temperature_3` → `27.2`);
//! * `<prefix>/<device>/<name>_<channel>/<component>` for the multi-value
//!   types (`lpp/node1/accelerometer_6/y` → `-1.234`,
//!   `lpp/node1/gps_1/latitude` → `42.3519`).
//!
//! The payload is the decimal value with exactly as many fraction digits as
//! the type's resolution (`27.2`, `20.0`, `48.5`, `1.234`, `-87.9094`,
//! `10.00`); integer types have none (`1`, `540`). Formatting is done on the
//! integers, so there are no binary floating-point artefacts. Every message
//! is QoS `qos` (1) and retained (`retain`, default true): a new subscriber
//! sees the last reading.
//!
//! # InfluxDB points
//!
//! One point per channel present in the frame, in order of first
//! appearance: measurement `lpp`, tags `device` and `channel`, one field per
//! measurement on that channel — `temperature`, `humidity`, …, and
//! `accelerometer_x`, `gps_latitude`, … for the multi-value types. Field
//! types are fixed (InfluxDB refuses a change of type): `digital_input`,
//! `digital_output`, `presence` and `illuminance` are integers, everything
//! else is a float. If a frame repeats a type on a channel, the point keeps
//! the last value (the messages carry both). No timestamp: the host stamps
//! points with the frame's receive time.
//!
//! # Errors
//!
//! The whole frame is refused with [`Error::Malformed`] (and dead-lettered by
//! the host) when it is empty, when an item's header is cut off, when a type
//! is not one of the above, or when a value is shorter than its type needs;
//! the message names the byte offset, e.g. `unknown LPP type 0x74 at byte 4`
//! or `truncated temperature on channel 3 at byte 2: needs 2 bytes, 1 left`.
//!
//! # Configuration
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `device` | the frame's source (pipeline name) | the device level of every topic and the `device` tag |
//! | `prefix` | `lpp` | first topic level(s), e.g. `plant/line1` |
//! | `qos` | `1` | MQTT QoS of every message: `0`, `1` or `2` |
//! | `retain` | `true` | whether messages are retained |
//!
//! Unknown keys are refused ([`Error::InvalidConfig`]), to catch typos.
//!
//! ```
//! use cayenne_lpp::CayenneLpp;
//! use sluice_sdk::{Config, Frame, Transform};
//!
//! let mut lpp = CayenneLpp::init(&Config::from_pairs([("device", "node1")]))?;
//! let frame = Frame::from_data([0x03, 0x67, 0x01, 0x10, 0x05, 0x67, 0x00, 0xFF]);
//! let out = sluice_sdk::process(&mut lpp, &frame)?;
//! assert_eq!(out.messages()[0].topic, "lpp/node1/temperature_3");
//! assert_eq!(out.messages()[0].payload, b"27.2");
//! assert_eq!(out.messages()[1].payload, b"25.5");
//! # Ok::<(), sluice_sdk::Error>(())
//! ```

#[cfg(test)]
mod tests;

use sluice_sdk::{Config, Error, FieldValue, Frame, Message, Output, Point, Qos, Transform};

/// The measurement of every point.
pub const MEASUREMENT: &str = "lpp";

/// The transform. Create it with [`Transform::init`].
#[derive(Debug, Clone)]
pub struct CayenneLpp {
    prefix: String,
    device: Option<String>,
    qos: Qos,
    retain: bool,
}

sluice_sdk::export!(CayenneLpp);

/// How one value of a type is read and written.
#[derive(Debug, Clone, Copy)]
struct Component {
    /// Topic suffix and field-name suffix (`""` for single-value types).
    name: &'static str,
    /// Bytes of this value.
    bytes: usize,
    signed: bool,
    /// Resolution as `numerator / 10^decimals`: humidity is 5 / 10^1.
    numerator: i64,
    decimals: u32,
}

/// One Cayenne LPP type.
#[derive(Debug, Clone, Copy)]
struct LppType {
    name: &'static str,
    components: &'static [Component],
    /// Written as an integer field (else float).
    integer: bool,
}

impl LppType {
    fn size(&self) -> usize {
        self.components.iter().map(|c| c.bytes).sum()
    }
}

const fn one(bytes: usize, signed: bool, numerator: i64, decimals: u32) -> Component {
    Component {
        name: "",
        bytes,
        signed,
        numerator,
        decimals,
    }
}

const fn axis(name: &'static str, bytes: usize, numerator: i64, decimals: u32) -> Component {
    Component {
        name,
        bytes,
        signed: true,
        numerator,
        decimals,
    }
}

const U8: &[Component] = &[one(1, false, 1, 0)];
const LUX: &[Component] = &[one(2, false, 1, 0)];
const TEMPERATURE: &[Component] = &[one(2, true, 1, 1)];
const HUMIDITY: &[Component] = &[one(1, false, 5, 1)];
const BAROMETER: &[Component] = &[one(2, false, 1, 1)];
const ANALOG: &[Component] = &[one(2, true, 1, 2)];
const ACCEL: &[Component] = &[axis("x", 2, 1, 3), axis("y", 2, 1, 3), axis("z", 2, 1, 3)];
const GYRO: &[Component] = &[axis("x", 2, 1, 2), axis("y", 2, 1, 2), axis("z", 2, 1, 2)];
const GPS: &[Component] = &[
    axis("latitude", 3, 1, 4),
    axis("longitude", 3, 1, 4),
    axis("altitude", 3, 1, 2),
];

/// The standard types by LPP type byte.
fn lpp_type(code: u8) -> Option<LppType> {
    let (name, components, integer) = match code {
        0 => ("digital_input", U8, true),
        1 => ("digital_output", U8, true),
        2 => ("analog_input", ANALOG, false),
        3 => ("analog_output", ANALOG, false),
        101 => ("illuminance", LUX, true),
        102 => ("presence", U8, true),
        103 => ("temperature", TEMPERATURE, false),
        104 => ("humidity", HUMIDITY, false),
        113 => ("accelerometer", ACCEL, false),
        115 => ("barometer", BAROMETER, false),
        134 => ("gyrometer", GYRO, false),
        136 => ("gps", GPS, false),
        _ => return None,
    };
    Some(LppType {
        name,
        components,
        integer,
    })
}

/// A big-endian integer of 1–3 bytes, sign-extended if `signed`.
fn read_int(bytes: &[u8], signed: bool) -> i64 {
    let mut value: i64 = 0;
    for &b in bytes {
        value = (value << 8) | i64::from(b);
    }
    let bits = 8 * bytes.len() as u32;
    if signed && bits > 0 && value & (1 << (bits - 1)) != 0 {
        value -= 1 << bits;
    }
    value
}

/// `scaled / 10^decimals` as a decimal string with exactly `decimals`
/// fraction digits.
fn format_fixed(scaled: i64, decimals: u32) -> String {
    if decimals == 0 {
        return scaled.to_string();
    }
    let pow = 10u64.pow(decimals);
    let magnitude = scaled.unsigned_abs();
    let sign = if scaled < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        magnitude / pow,
        magnitude % pow,
        width = decimals as usize
    )
}

impl Transform for CayenneLpp {
    fn init(config: &Config) -> Result<Self, Error> {
        for (key, _) in config.iter() {
            if !matches!(key, "device" | "prefix" | "qos" | "retain") {
                return Err(Error::invalid_config(format!(
                    "unknown key `{key}` (known: `device`, `prefix`, `qos`, `retain`)"
                )));
            }
        }
        let prefix = config.get_or("prefix", "lpp");
        check_prefix(prefix)?;
        let device = config.get("device");
        if let Some(device) = device {
            check_level("device", device)?;
        }
        Ok(CayenneLpp {
            prefix: prefix.to_owned(),
            device: device.map(str::to_owned),
            qos: config.parse_or("qos", Qos::AtLeastOnce)?,
            retain: config.parse_or("retain", true)?,
        })
    }

    fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error> {
        let data = frame.data();
        if data.is_empty() {
            return Err(Error::malformed("empty LPP payload"));
        }
        let device = match &self.device {
            Some(device) => device.as_str(),
            None => {
                check_level("the frame source", frame.source())
                    .map_err(|e| Error::internal(format!("{}; set `device`", e.message())))?;
                frame.source()
            }
        };
        // (channel, point) in order of first appearance.
        let mut points: Vec<(u8, Point)> = Vec::new();
        let mut offset = 0;
        while offset < data.len() {
            let (channel, code) = match data.get(offset..offset + 2) {
                Some(&[channel, code]) => (channel, code),
                _ => {
                    return Err(Error::malformed(format!(
                        "truncated item header at byte {offset}: needs channel and type, 1 byte left"
                    )));
                }
            };
            let lpp = lpp_type(code).ok_or_else(|| {
                Error::malformed(format!(
                    "unknown LPP type 0x{code:02x} at byte {}",
                    offset + 1
                ))
            })?;
            let start = offset + 2;
            let size = lpp.size();
            let Some(value) = data.get(start..start + size) else {
                return Err(Error::malformed(format!(
                    "truncated {} on channel {channel} at byte {start}: needs {size} bytes, {} left",
                    lpp.name,
                    data.len() - start
                )));
            };
            let index = match points.iter().position(|(c, _)| *c == channel) {
                Some(i) => i,
                None => {
                    points.push((
                        channel,
                        Point::new(MEASUREMENT)
                            .tag("device", device)
                            .tag("channel", channel.to_string()),
                    ));
                    points.len() - 1
                }
            };
            let point = &mut points[index].1;
            let mut rest = value;
            for component in lpp.components {
                let (bytes, tail) = rest.split_at(component.bytes);
                rest = tail;
                let raw = read_int(bytes, component.signed);
                let scaled = raw * component.numerator;
                let mut topic = format!("{}/{device}/{}_{channel}", self.prefix, lpp.name);
                let mut field = lpp.name.to_owned();
                if !component.name.is_empty() {
                    topic.push('/');
                    topic.push_str(component.name);
                    field.push('_');
                    field.push_str(component.name);
                }
                out.publish(
                    Message::new(topic, format_fixed(scaled, component.decimals))
                        .qos(self.qos)
                        .retain(self.retain),
                );
                let value = if lpp.integer {
                    FieldValue::Int(scaled)
                } else {
                    FieldValue::Float(scaled as f64 / 10f64.powi(component.decimals as i32))
                };
                point.fields.retain(|(k, _)| *k != field);
                point.fields.push((field, value));
            }
            offset = start + size;
        }
        for (_, point) in points {
            out.point(point);
        }
        Ok(())
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

fn check_level(what: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
        return Err(Error::invalid_config(format!(
            "`{what}` = {value:?}: must be a non-empty topic level without `/`, `+`, `#` or NUL"
        )));
    }
    Ok(())
}
