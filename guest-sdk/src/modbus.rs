//! Modbus readings and write commands, in the layout the host's Modbus
//! sources use.
//!
//! The host polls a device and hands each response to the transform as one
//! frame; [`Reading`] reads it in place, by absolute register address. For
//! the downlink, [`Write`] builds the command that the host turns into a
//! Modbus write request.
//!
//! # Layout
//!
//! Every multi-byte number is big-endian, as on the Modbus wire. The frame's
//! length must match exactly; anything else is malformed.
//!
//! A reading (one response), format 1:
//!
//! | bytes | content |
//! |---|---|
//! | 0 | format: 1 |
//! | 1 | unit id (slave address) |
//! | 2 | function: 1 coils, 2 discrete inputs, 3 holding registers, 4 input registers |
//! | 3 | 0 (reserved) |
//! | 4–5 | start address (u16) |
//! | 6–7 | count (u16): registers for 3 and 4 (at most 125), bits for 1 and 2 (at most 2000) |
//! | 8– | the data as on the wire: registers, count × u16; bits, ⌈count/8⌉ bytes, bit 0 of byte 0 being the first address |
//!
//! A write command (what [`Transform::encode_command`] returns), format 1:
//!
//! | bytes | content |
//! |---|---|
//! | 0 | format: 1 |
//! | 1 | unit id |
//! | 2 | function: 5 one coil, 6 one register, 15 coils, 16 registers |
//! | 3 | 0 (reserved) |
//! | 4–5 | address (u16) |
//! | 6–7 | count (u16): 1 for 5 and 6, at most 1968 coils for 15, 123 registers for 16 |
//! | 8– | 5: one byte, 0 or 1; 6: u16; 15: ⌈count/8⌉ bytes packed as above; 16: count × u16 |
//!
//! # Example
//!
//! ```
//! use sluice_sdk::Frame;
//! use sluice_sdk::modbus::{Reading, Table, WordOrder, Write};
//!
//! // Unit 1, holding registers 100–102: 215, then 100000 in two registers.
//! let frame = Frame::from_data([1, 1, 3, 0, 0, 100, 0, 3, 0x00, 0xD7, 0x00, 0x01, 0x86, 0xA0]);
//! let reading = Reading::parse(&frame)?;
//! assert_eq!((reading.unit(), reading.table()), (1, Table::HoldingRegisters));
//! assert_eq!(reading.i16(100), Some(215));
//! assert_eq!(reading.u32(101, WordOrder::HighFirst), Some(100_000));
//! assert_eq!(reading.u32(102, WordOrder::HighFirst), None); // runs past the reading
//!
//! // Switch on coil 7 of unit 1.
//! assert_eq!(Write::coil(1, 7, true), [1, 1, 5, 0, 0, 7, 0, 1, 1]);
//! # Ok::<(), sluice_sdk::Error>(())
//! ```
//!
//! [`Transform::encode_command`]: crate::Transform::encode_command

use crate::{Error, Frame};

/// The layout version this module reads and writes (byte 0).
pub const FORMAT: u8 = 1;
/// The most registers one Modbus read returns.
pub const MAX_READ_REGISTERS: u16 = 125;
/// The most coils or discrete inputs one Modbus read returns.
pub const MAX_READ_BITS: u16 = 2000;
/// The most registers one Modbus write (function 16) sets.
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// The most coils one Modbus write (function 15) sets.
pub const MAX_WRITE_COILS: u16 = 1968;

/// Bytes before the data, in readings and write commands alike.
const HEADER_LEN: usize = 8;

/// The Modbus data table a reading comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Read/write bits (function 1).
    Coils,
    /// Read-only bits (function 2).
    DiscreteInputs,
    /// Read/write 16-bit registers (function 3).
    HoldingRegisters,
    /// Read-only 16-bit registers (function 4).
    InputRegisters,
}

impl Table {
    /// The table read by Modbus function `code` (1–4); `None` for any other
    /// code.
    pub fn from_function(code: u8) -> Option<Self> {
        match code {
            1 => Some(Table::Coils),
            2 => Some(Table::DiscreteInputs),
            3 => Some(Table::HoldingRegisters),
            4 => Some(Table::InputRegisters),
            _ => None,
        }
    }

    /// The Modbus function code that reads this table.
    pub fn function(self) -> u8 {
        match self {
            Table::Coils => 1,
            Table::DiscreteInputs => 2,
            Table::HoldingRegisters => 3,
            Table::InputRegisters => 4,
        }
    }

    /// Whether the table holds bits (coils, discrete inputs) rather than
    /// registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coils | Table::DiscreteInputs)
    }
}

/// How a value spanning several registers is split across them. Within a
/// register the bytes are always big-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WordOrder {
    /// The most significant register first, at the lowest address
    /// (big-endian words; `ABCD`). What most devices do.
    #[default]
    HighFirst,
    /// The least significant register first (`CDAB`).
    LowFirst,
}

/// One Modbus response, read in place from a frame.
///
/// Every accessor takes an absolute address (the one in the device's
/// register map, as sent in the request) and returns `None` when the value
/// is not entirely inside the reading, or when it asks for bits of a
/// register table or registers of a bit table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading<'a> {
    unit: u8,
    table: Table,
    address: u16,
    count: u16,
    data: &'a [u8],
}

impl<'a> Reading<'a> {
    /// Reads a frame from a Modbus source.
    ///
    /// [`Error::Malformed`] when the frame does not follow the layout (see
    /// the [module docs](self)), [`Error::Unsupported`] when its format is
    /// not 1.
    pub fn parse(frame: &'a Frame) -> Result<Self, Error> {
        Self::from_bytes(frame.data())
    }

    /// [`parse`](Self::parse) on bare bytes.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        let malformed = |why: String| Error::malformed(format!("modbus reading: {why}"));
        let Some((&header, data)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(malformed(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        };
        let [format, unit, function, reserved, a0, a1, c0, c1] = header;
        check_format("modbus reading", format)?;
        let table = Table::from_function(function).ok_or_else(|| {
            malformed(format!(
                "function {function} is not a read (1 coils, 2 discrete inputs, 3 holding registers, 4 input registers)"
            ))
        })?;
        check_reserved(reserved).map_err(malformed)?;
        let address = u16::from_be_bytes([a0, a1]);
        let count = u16::from_be_bytes([c0, c1]);
        let (what, max) = if table.is_bits() {
            ("bit", MAX_READ_BITS)
        } else {
            ("register", MAX_READ_REGISTERS)
        };
        check_count(address, count, what, max).map_err(malformed)?;
        let expected = data_len(table.is_bits(), count);
        if data.len() != expected {
            return Err(malformed(format!(
                "expected {expected} data bytes for {}, the frame has {}",
                items(count, what),
                data.len()
            )));
        }
        Ok(Reading {
            unit,
            table,
            address,
            count,
            data,
        })
    }

    /// The unit id (slave address) that answered.
    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// The table read.
    pub fn table(&self) -> Table {
        self.table
    }

    /// The first address read.
    pub fn address(&self) -> u16 {
        self.address
    }

    /// How many registers or bits were read.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The data bytes as on the wire (after the 8-byte header).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The bit at `address` of a coil or discrete-input reading.
    pub fn bit(&self, address: u16) -> Option<bool> {
        if !self.table.is_bits() {
            return None;
        }
        let index = usize::from(self.offset(address, 1)?);
        Some(self.data[index / 8] >> (index % 8) & 1 == 1)
    }

    /// The register at `address` of a holding- or input-register reading.
    pub fn register(&self, address: u16) -> Option<u16> {
        self.u16(address)
    }

    /// The register at `address`, unsigned (the same as
    /// [`register`](Self::register)).
    pub fn u16(&self, address: u16) -> Option<u16> {
        self.words(address, 1, WordOrder::HighFirst)
            .map(|v| v as u16)
    }

    /// The register at `address`, two's complement.
    pub fn i16(&self, address: u16) -> Option<i16> {
        self.u16(address).map(|v| v as i16)
    }

    /// The two registers from `address`, unsigned.
    pub fn u32(&self, address: u16, order: WordOrder) -> Option<u32> {
        self.words(address, 2, order).map(|v| v as u32)
    }

    /// The two registers from `address`, two's complement.
    pub fn i32(&self, address: u16, order: WordOrder) -> Option<i32> {
        self.u32(address, order).map(|v| v as i32)
    }

    /// The two registers from `address`, an IEEE 754 single.
    pub fn f32(&self, address: u16, order: WordOrder) -> Option<f32> {
        self.u32(address, order).map(f32::from_bits)
    }

    /// The four registers from `address`, unsigned.
    pub fn u64(&self, address: u16, order: WordOrder) -> Option<u64> {
        self.words(address, 4, order)
    }

    /// The four registers from `address`, two's complement.
    pub fn i64(&self, address: u16, order: WordOrder) -> Option<i64> {
        self.u64(address, order).map(|v| v as i64)
    }

    /// The four registers from `address`, an IEEE 754 double.
    pub fn f64(&self, address: u16, order: WordOrder) -> Option<f64> {
        self.u64(address, order).map(f64::from_bits)
    }

    /// The index of `address` in the reading, if `len` items from there are
    /// all inside it.
    fn offset(&self, address: u16, len: u16) -> Option<u16> {
        let index = address.checked_sub(self.address)?;
        (u32::from(index) + u32::from(len) <= u32::from(self.count)).then_some(index)
    }

    /// `n` (1–4) registers from `address` as one number.
    fn words(&self, address: u16, n: u16, order: WordOrder) -> Option<u64> {
        if self.table.is_bits() {
            return None;
        }
        let start = 2 * usize::from(self.offset(address, n)?);
        let words = self.data[start..start + 2 * usize::from(n)]
            .chunks_exact(2)
            .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])));
        let combine = |value: u64, word: u64| value << 16 | word;
        Some(match order {
            WordOrder::HighFirst => words.fold(0, combine),
            WordOrder::LowFirst => words.rev().fold(0, combine),
        })
    }
}

/// A write command: build one with [`coil`](Self::coil),
/// [`register`](Self::register), [`coils`](Self::coils) or
/// [`registers`](Self::registers) (they return its bytes), decode one with
/// [`parse`](Self::parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The unit id (slave address) to write to.
    pub unit: u8,
    /// The first address written.
    pub address: u16,
    /// What is written there.
    pub values: WriteValues,
}

/// What a [`Write`] sets, by Modbus function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteValues {
    /// Function 5: one coil.
    Coil(bool),
    /// Function 6: one register.
    Register(u16),
    /// Function 15: consecutive coils.
    Coils(Vec<bool>),
    /// Function 16: consecutive registers.
    Registers(Vec<u16>),
}

impl Write {
    /// Sets one coil (function 5).
    pub fn coil(unit: u8, address: u16, value: bool) -> Vec<u8> {
        let mut bytes = header(unit, 5, address, 1);
        bytes.push(u8::from(value));
        bytes
    }

    /// Sets one register (function 6).
    pub fn register(unit: u8, address: u16, value: u16) -> Vec<u8> {
        let mut bytes = header(unit, 6, address, 1);
        bytes.extend_from_slice(&value.to_be_bytes());
        bytes
    }

    /// Sets consecutive coils from `address` (function 15).
    ///
    /// [`Error::Malformed`] for none, more than [`MAX_WRITE_COILS`], or
    /// coils past address 65535.
    pub fn coils(unit: u8, address: u16, values: &[bool]) -> Result<Vec<u8>, Error> {
        let count = write_count(address, values.len(), "coil", MAX_WRITE_COILS)?;
        let mut bytes = header(unit, 15, address, count);
        bytes.resize(HEADER_LEN + data_len(true, count), 0);
        for (i, _) in values.iter().enumerate().filter(|(_, on)| **on) {
            bytes[HEADER_LEN + i / 8] |= 1 << (i % 8);
        }
        Ok(bytes)
    }

    /// Sets consecutive registers from `address` (function 16).
    ///
    /// [`Error::Malformed`] for none, more than [`MAX_WRITE_REGISTERS`], or
    /// registers past address 65535.
    pub fn registers(unit: u8, address: u16, values: &[u16]) -> Result<Vec<u8>, Error> {
        let count = write_count(address, values.len(), "register", MAX_WRITE_REGISTERS)?;
        let mut bytes = header(unit, 16, address, count);
        bytes.reserve(data_len(false, count));
        for value in values {
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        Ok(bytes)
    }

    /// Decodes a write command, strictly: the length must match, a single
    /// coil is 0 or 1 and the unused bits of packed coils are 0.
    ///
    /// [`Error::Malformed`] when it does not follow the layout,
    /// [`Error::Unsupported`] when its format is not 1.
    pub fn parse(bytes: &[u8]) -> Result<Write, Error> {
        let malformed = |why: String| Error::malformed(format!("modbus write: {why}"));
        let Some((&header, data)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(malformed(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        };
        let [format, unit, function, reserved, a0, a1, c0, c1] = header;
        check_format("modbus write", format)?;
        check_reserved(reserved).map_err(malformed)?;
        let address = u16::from_be_bytes([a0, a1]);
        let count = u16::from_be_bytes([c0, c1]);
        let (what, max, bits) = match function {
            5 | 6 if count != 1 => {
                return Err(malformed(format!(
                    "function {function} writes 1 value, the count is {count}"
                )));
            }
            5 => ("coil", 1, true),
            6 => ("register", 1, false),
            15 => ("coil", MAX_WRITE_COILS, true),
            16 => ("register", MAX_WRITE_REGISTERS, false),
            _ => {
                return Err(malformed(format!(
                    "function {function} is not a write (5 coil, 6 register, 15 coils, 16 registers)"
                )));
            }
        };
        check_count(address, count, what, max).map_err(malformed)?;
        let expected = if function == 5 {
            1
        } else {
            data_len(bits, count)
        };
        if data.len() != expected {
            return Err(malformed(format!(
                "expected {expected} data bytes for {}, the command has {}",
                items(count, what),
                data.len()
            )));
        }
        let values = match function {
            5 => match data[0] {
                0 => WriteValues::Coil(false),
                1 => WriteValues::Coil(true),
                other => {
                    return Err(malformed(format!("a coil is 0 or 1, not {other}")));
                }
            },
            6 => WriteValues::Register(u16::from_be_bytes([data[0], data[1]])),
            15 => {
                let count = usize::from(count);
                let used = count - 8 * (data.len() - 1);
                if u16::from(data[data.len() - 1]) >> used != 0 {
                    return Err(malformed(format!("the bits after coil {count} must be 0")));
                }
                WriteValues::Coils(
                    (0..count)
                        .map(|i| data[i / 8] >> (i % 8) & 1 == 1)
                        .collect(),
                )
            }
            _ => WriteValues::Registers(
                data.chunks_exact(2)
                    .map(|w| u16::from_be_bytes([w[0], w[1]]))
                    .collect(),
            ),
        };
        Ok(Write {
            unit,
            address,
            values,
        })
    }

    /// The Modbus function code: 5, 6, 15 or 16.
    pub fn function(&self) -> u8 {
        match self.values {
            WriteValues::Coil(_) => 5,
            WriteValues::Register(_) => 6,
            WriteValues::Coils(_) => 15,
            WriteValues::Registers(_) => 16,
        }
    }
}

fn header(unit: u8, function: u8, address: u16, count: u16) -> Vec<u8> {
    let [a0, a1] = address.to_be_bytes();
    let [c0, c1] = count.to_be_bytes();
    vec![FORMAT, unit, function, 0, a0, a1, c0, c1]
}

/// Data bytes of `count` registers, or of `count` packed bits.
fn data_len(bits: bool, count: u16) -> usize {
    if bits {
        usize::from(count).div_ceil(8)
    } else {
        2 * usize::from(count)
    }
}

fn check_format(what: &str, format: u8) -> Result<(), Error> {
    if format == FORMAT {
        return Ok(());
    }
    Err(Error::unsupported(format!(
        "{what}: format {format}, this SDK knows format {FORMAT}"
    )))
}

fn check_reserved(reserved: u8) -> Result<(), String> {
    if reserved == 0 {
        return Ok(());
    }
    Err(format!("reserved byte 3 is {reserved}, not 0"))
}

/// 1 to `max` items from `address`, all at or below address 65535.
fn check_count(address: u16, count: u16, what: &str, max: u16) -> Result<(), String> {
    if count == 0 || count > max {
        return Err(format!("{}: Modbus allows 1 to {max}", items(count, what)));
    }
    if u32::from(address) + u32::from(count) > 0x1_0000 {
        return Err(format!(
            "{} from address {address} run past address 65535",
            items(count, what)
        ));
    }
    Ok(())
}

/// `1 register`, `2 registers`.
fn items(count: u16, noun: &str) -> String {
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {noun}{plural}")
}

fn write_count(address: u16, len: usize, what: &str, max: u16) -> Result<u16, Error> {
    let count = u16::try_from(len).unwrap_or(u16::MAX);
    check_count(address, count, what, max)
        .map_err(|why| Error::malformed(format!("modbus write: {why}")))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A reading frame: header, then `data` as given.
    fn frame(unit: u8, function: u8, address: u16, count: u16, data: &[u8]) -> Vec<u8> {
        let mut bytes = header(unit, function, address, count);
        bytes.extend_from_slice(data);
        bytes
    }

    fn registers(address: u16, words: &[u16]) -> Vec<u8> {
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        frame(1, 3, address, words.len() as u16, &data)
    }

    fn malformed(bytes: &[u8]) -> String {
        match Reading::from_bytes(bytes) {
            Err(Error::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_header() {
        let bytes = frame(17, 4, 300, 2, &[0x12, 0x34, 0xAB, 0xCD]);
        let frame = Frame::new("meter", 5, bytes);
        let r = Reading::parse(&frame).unwrap();
        assert_eq!(r.unit(), 17);
        assert_eq!(r.table(), Table::InputRegisters);
        assert_eq!((r.address(), r.count()), (300, 2));
        assert_eq!(r.data(), [0x12, 0x34, 0xAB, 0xCD]);
        assert_eq!(r.register(300), Some(0x1234));
        assert_eq!(r.register(301), Some(0xABCD));
    }

    #[test]
    fn tables_and_function_codes() {
        for code in 1..=4 {
            assert_eq!(Table::from_function(code).unwrap().function(), code);
        }
        assert_eq!(Table::from_function(0), None);
        assert_eq!(Table::from_function(5), None);
        assert!(Table::Coils.is_bits() && Table::DiscreteInputs.is_bits());
        assert!(!Table::HoldingRegisters.is_bits() && !Table::InputRegisters.is_bits());
        assert_eq!(WordOrder::default(), WordOrder::HighFirst);
    }

    #[test]
    fn registers_are_addressed_absolutely_and_bounded() {
        let bytes = registers(100, &[1, 2, 3]);
        let r = Reading::from_bytes(&bytes).unwrap();
        assert_eq!(r.register(99), None);
        assert_eq!(r.register(100), Some(1));
        assert_eq!(r.register(102), Some(3));
        assert_eq!(r.register(103), None);
        assert_eq!(r.u32(101, WordOrder::HighFirst), Some(0x0002_0003));
        assert_eq!(r.u32(102, WordOrder::HighFirst), None);
        assert_eq!(r.u32(99, WordOrder::HighFirst), None);
        assert_eq!(r.u64(100, WordOrder::HighFirst), None);
        assert_eq!(r.bit(100), None, "no bits in a register table");
    }

    #[test]
    fn sixteen_bit_values() {
        let bytes = registers(0, &[0xFFFE, 0x7FFF, 0x8000]);
        let r = Reading::from_bytes(&bytes).unwrap();
        assert_eq!(r.u16(0), Some(65534));
        assert_eq!(r.i16(0), Some(-2));
        assert_eq!(r.i16(1), Some(i16::MAX));
        assert_eq!(r.i16(2), Some(i16::MIN));
    }

    #[test]
    fn thirty_two_bit_values_in_both_word_orders() {
        use WordOrder::{HighFirst, LowFirst};
        // -1500 = 0xFFFF_FA24; 230.5f32 = 0x4366_8000.
        let bytes = registers(10, &[0xFFFF, 0xFA24, 0x4366, 0x8000, 0xFA24, 0xFFFF]);
        let r = Reading::from_bytes(&bytes).unwrap();
        assert_eq!(r.u32(10, HighFirst), Some(0xFFFF_FA24));
        assert_eq!(r.i32(10, HighFirst), Some(-1500));
        assert_eq!(r.i32(14, LowFirst), Some(-1500));
        assert_eq!(r.f32(12, HighFirst), Some(230.5));
        assert_eq!(r.u32(12, LowFirst), Some(0x8000_4366));
    }

    #[test]
    fn sixty_four_bit_values_in_both_word_orders() {
        use WordOrder::{HighFirst, LowFirst};
        let value: u64 = 0x0123_4567_89AB_CDEF;
        let high_first = [0x0123, 0x4567, 0x89AB, 0xCDEF];
        let low_first = [0xCDEF, 0x89AB, 0x4567, 0x0123];
        let bytes = registers(0, &[high_first, low_first].concat());
        let r = Reading::from_bytes(&bytes).unwrap();
        assert_eq!(r.u64(0, HighFirst), Some(value));
        assert_eq!(r.u64(4, LowFirst), Some(value));
        assert_eq!(r.u64(4, HighFirst), Some(0xCDEF_89AB_4567_0123));

        let double = 12345.678f64.to_bits();
        let words = |v: u64| {
            [
                (v >> 48) as u16,
                (v >> 32) as u16,
                (v >> 16) as u16,
                v as u16,
            ]
        };
        let mut reversed = words((-4200i64) as u64);
        reversed.reverse();
        let bytes = registers(0, &[words(double), reversed].concat());
        let r = Reading::from_bytes(&bytes).unwrap();
        assert_eq!(r.f64(0, HighFirst), Some(12345.678));
        assert_eq!(r.i64(4, LowFirst), Some(-4200));
    }

    #[test]
    fn bits_are_packed_lsb_first() {
        // 10 coils from 20: 0b1000_0101, then 0b10 (coil 29 on).
        let bytes = frame(1, 1, 20, 10, &[0b1000_0101, 0b10]);
        let r = Reading::from_bytes(&bytes).unwrap();
        let on: Vec<u16> = (0..40).filter(|&a| r.bit(a) == Some(true)).collect();
        assert_eq!(on, [20, 22, 27, 29]);
        assert_eq!(r.bit(21), Some(false));
        assert_eq!(r.bit(19), None);
        assert_eq!(r.bit(30), None, "padding bits are not coils");
        assert_eq!(r.register(20), None, "no registers in a bit table");
        let inputs = frame(1, 2, 0, 1, &[1]);
        let r = Reading::from_bytes(&inputs).unwrap();
        assert_eq!((r.table(), r.bit(0)), (Table::DiscreteInputs, Some(true)));
    }

    #[test]
    fn the_largest_reads_parse() {
        let bytes = registers(65535 - 124, &[7; 125]);
        let r = Reading::from_bytes(&bytes).unwrap();
        assert_eq!(r.register(65535), Some(7));
        let bytes = frame(1, 2, 0, 2000, &[0xFF; 250]);
        assert_eq!(Reading::from_bytes(&bytes).unwrap().bit(1999), Some(true));
    }

    #[test]
    fn malformed_readings_say_why() {
        assert_eq!(
            malformed(&[1, 1, 3]),
            "modbus reading: 3 bytes, shorter than the 8-byte header"
        );
        assert_eq!(
            malformed(&frame(1, 3, 0, 2, &[0, 1, 0])),
            "modbus reading: expected 4 data bytes for 2 registers, the frame has 3"
        );
        assert_eq!(
            malformed(&frame(1, 3, 0, 1, &[0, 1, 0])),
            "modbus reading: expected 2 data bytes for 1 register, the frame has 3"
        );
        assert_eq!(
            malformed(&frame(1, 1, 0, 9, &[0])),
            "modbus reading: expected 2 data bytes for 9 bits, the frame has 1"
        );
        assert_eq!(
            malformed(&frame(1, 6, 0, 1, &[0, 1])),
            "modbus reading: function 6 is not a read (1 coils, 2 discrete inputs, 3 holding registers, 4 input registers)"
        );
        assert_eq!(
            malformed(&frame(1, 0x83, 0, 1, &[0, 1])),
            "modbus reading: function 131 is not a read (1 coils, 2 discrete inputs, 3 holding registers, 4 input registers)"
        );
        assert_eq!(
            malformed(&frame(1, 3, 0, 0, &[])),
            "modbus reading: 0 registers: Modbus allows 1 to 125"
        );
        assert_eq!(
            malformed(&frame(1, 3, 0, 126, &[0; 252])),
            "modbus reading: 126 registers: Modbus allows 1 to 125"
        );
        assert_eq!(
            malformed(&frame(1, 1, 0, 2001, &[0; 251])),
            "modbus reading: 2001 bits: Modbus allows 1 to 2000"
        );
        assert_eq!(
            malformed(&frame(1, 4, 65535, 2, &[0; 4])),
            "modbus reading: 2 registers from address 65535 run past address 65535"
        );
        let mut reserved = registers(0, &[1]);
        reserved[3] = 9;
        assert_eq!(
            malformed(&reserved),
            "modbus reading: reserved byte 3 is 9, not 0"
        );
    }

    #[test]
    fn another_format_is_unsupported() {
        let mut bytes = registers(0, &[1]);
        bytes[0] = 2;
        assert_eq!(
            Reading::from_bytes(&bytes),
            Err(Error::unsupported(
                "modbus reading: format 2, this SDK knows format 1"
            ))
        );
    }

    #[test]
    fn single_writes_encode_the_layout() {
        assert_eq!(Write::coil(3, 0x0102, true), [1, 3, 5, 0, 1, 2, 0, 1, 1]);
        assert_eq!(Write::coil(3, 7, false), [1, 3, 5, 0, 0, 7, 0, 1, 0]);
        assert_eq!(
            Write::register(247, 40, 0xBEEF),
            [1, 247, 6, 0, 0, 40, 0, 1, 0xBE, 0xEF]
        );
    }

    #[test]
    fn multiple_writes_encode_the_layout() {
        let coils = [
            true, false, true, true, false, false, false, false, false, true,
        ];
        assert_eq!(
            Write::coils(1, 20, &coils).unwrap(),
            [1, 1, 15, 0, 0, 20, 0, 10, 0b0000_1101, 0b10]
        );
        assert_eq!(
            Write::registers(2, 0x1000, &[1, 0xFFFF]).unwrap(),
            [1, 2, 16, 0, 0x10, 0x00, 0, 2, 0, 1, 0xFF, 0xFF]
        );
    }

    #[test]
    fn writes_round_trip_through_parse() {
        let cases = [
            (Write::coil(1, 9, true), WriteValues::Coil(true), 5),
            (Write::register(1, 9, 513), WriteValues::Register(513), 6),
            (
                Write::coils(1, 9, &[true, false, true]).unwrap(),
                WriteValues::Coils(vec![true, false, true]),
                15,
            ),
            (
                Write::coils(1, 9, &[true; 16]).unwrap(),
                WriteValues::Coils(vec![true; 16]),
                15,
            ),
            (
                Write::registers(1, 9, &[7, 8]).unwrap(),
                WriteValues::Registers(vec![7, 8]),
                16,
            ),
        ];
        for (bytes, values, function) in cases {
            let write = Write::parse(&bytes).unwrap();
            assert_eq!(write.function(), function);
            assert_eq!(
                write,
                Write {
                    unit: 1,
                    address: 9,
                    values
                }
            );
        }
    }

    #[test]
    fn writes_over_the_protocol_limits_are_refused() {
        let coils = vec![false; 1969];
        let registers = vec![0u16; 124];
        for (result, expected) in [
            (
                Write::coils(1, 0, &coils),
                "modbus write: 1969 coils: Modbus allows 1 to 1968",
            ),
            (
                Write::registers(1, 0, &registers),
                "modbus write: 124 registers: Modbus allows 1 to 123",
            ),
            (
                Write::registers(1, 0, &[]),
                "modbus write: 0 registers: Modbus allows 1 to 123",
            ),
            (
                Write::coils(1, 0, &[]),
                "modbus write: 0 coils: Modbus allows 1 to 1968",
            ),
            (
                Write::registers(1, 65535, &[1, 2]),
                "modbus write: 2 registers from address 65535 run past address 65535",
            ),
        ] {
            assert_eq!(result, Err(Error::malformed(expected)));
        }
        assert_eq!(Write::coils(1, 0, &coils[..1968]).unwrap().len(), 8 + 246);
        assert_eq!(
            Write::registers(1, 0, &registers[..123]).unwrap().len(),
            8 + 246
        );
        let huge = vec![0u16; 70_000];
        assert!(Write::registers(1, 0, &huge).is_err());
    }

    #[test]
    fn malformed_writes_say_why() {
        let bad = |bytes: &[u8]| match Write::parse(bytes) {
            Err(Error::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        };
        assert_eq!(
            bad(&[1, 1, 5]),
            "modbus write: 3 bytes, shorter than the 8-byte header"
        );
        assert_eq!(
            bad(&[1, 1, 3, 0, 0, 0, 0, 1, 0, 1]),
            "modbus write: function 3 is not a write (5 coil, 6 register, 15 coils, 16 registers)"
        );
        assert_eq!(
            bad(&[1, 1, 5, 0, 0, 0, 0, 1, 2]),
            "modbus write: a coil is 0 or 1, not 2"
        );
        assert_eq!(
            bad(&[1, 1, 5, 0, 0, 0, 0, 2, 1]),
            "modbus write: function 5 writes 1 value, the count is 2"
        );
        assert_eq!(
            bad(&[1, 1, 6, 0, 0, 0, 0, 1, 1]),
            "modbus write: expected 2 data bytes for 1 register, the command has 1"
        );
        assert_eq!(
            bad(&[1, 1, 16, 0, 0, 0, 0, 2, 0, 1, 0, 2, 0]),
            "modbus write: expected 4 data bytes for 2 registers, the command has 5"
        );
        assert_eq!(
            bad(&[1, 1, 15, 0, 0, 0, 0, 3, 0b1000]),
            "modbus write: the bits after coil 3 must be 0"
        );
        assert_eq!(
            bad(&[1, 1, 16, 0, 0, 0, 0, 124]),
            "modbus write: 124 registers: Modbus allows 1 to 123"
        );
        assert_eq!(
            bad(&[1, 1, 6, 1, 0, 0, 0, 1, 0, 0]),
            "modbus write: reserved byte 3 is 1, not 0"
        );
        assert!(matches!(
            Write::parse(&[0, 1, 6, 0, 0, 0, 0, 1, 0, 0]),
            Err(Error::Unsupported(_))
        ));
    }
}
