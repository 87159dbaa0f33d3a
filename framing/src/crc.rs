//! CRC trailers: which algorithm, which byte order, what they cover.
//!
//! A CRC is a trailer at the end of the frame; the framer checks it and
//! strips it before delivery. What it covers depends on the framing:
//!
//! * newline, COBS, SLIP: the payload (computed before COBS encoding or SLIP
//!   escaping, checked after decoding);
//! * length-prefixed: everything before it — the `header_offset` bytes, the
//!   length header and the body;
//! * fixed, idle gap: the whole frame before it (Modbus RTU: address,
//!   function code and data).
//!
//! The byte order of each trailer is the one its real protocols use, which
//! is also the order that makes the register arithmetic work (reflected
//! CRCs are sent least significant byte first, unreflected ones most
//! significant byte first):
//!
//! | `crc` | catalogue name | check (`"123456789"`) | trailer | as in |
//! |---|---|---|---|---|
//! | `crc16_modbus` | CRC-16/MODBUS | `0x4B37` | 2 bytes, **low byte first** | Modbus RTU (`… C5 CD` for CRC `0xCDC5`) |
//! | `crc16_ccitt_false` | CRC-16/IBM-3740 (a.k.a. CCITT-FALSE) | `0x29B1` | 2 bytes, **high byte first** | XMODEM-style and most sensor protocols using it |
//! | `crc32` | CRC-32/ISO-HDLC | `0xCBF43926` | 4 bytes, **least significant first** | Ethernet FCS, gzip, zip |
//!
//! The algorithms come from the `crc` crate's catalogue (table-driven,
//! slice-by-16); nothing is hand-written here.

use serde::Deserialize;

/// A CRC algorithm for frame trailers. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrcKind {
    /// CRC-16/MODBUS, trailer low byte first.
    Crc16Modbus,
    /// CRC-16/CCITT-FALSE (IBM-3740), trailer high byte first.
    Crc16CcittFalse,
    /// CRC-32 (ISO-HDLC, as Ethernet and zlib), trailer least significant
    /// byte first.
    Crc32,
}

type Fast = crc::Table<16>;
static CRC16_MODBUS: crc::Crc<u16, Fast> = crc::Crc::<u16, Fast>::new(&crc::CRC_16_MODBUS);
static CRC16_CCITT_FALSE: crc::Crc<u16, Fast> = crc::Crc::<u16, Fast>::new(&crc::CRC_16_IBM_3740);
static CRC32: crc::Crc<u32, Fast> = crc::Crc::<u32, Fast>::new(&crc::CRC_32_ISO_HDLC);

impl CrcKind {
    /// Trailer length in bytes.
    pub fn width(self) -> usize {
        match self {
            CrcKind::Crc16Modbus | CrcKind::Crc16CcittFalse => 2,
            CrcKind::Crc32 => 4,
        }
    }

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            CrcKind::Crc16Modbus => "crc16_modbus",
            CrcKind::Crc16CcittFalse => "crc16_ccitt_false",
            CrcKind::Crc32 => "crc32",
        }
    }

    /// The CRC of `data`.
    pub fn checksum(self, data: &[u8]) -> u32 {
        match self {
            CrcKind::Crc16Modbus => CRC16_MODBUS.checksum(data).into(),
            CrcKind::Crc16CcittFalse => CRC16_CCITT_FALSE.checksum(data).into(),
            CrcKind::Crc32 => CRC32.checksum(data),
        }
    }

    /// Appends the trailer for `data` to `out`, in the wire byte order.
    pub fn append(self, data: &[u8], out: &mut impl Extend<u8>) {
        let sum = self.checksum(data);
        match self {
            CrcKind::Crc16Modbus => out.extend((sum as u16).to_le_bytes()),
            CrcKind::Crc16CcittFalse => out.extend((sum as u16).to_be_bytes()),
            CrcKind::Crc32 => out.extend(sum.to_le_bytes()),
        }
    }

    /// Whether `frame` ends with the right trailer for the bytes before it
    /// (`false` if it is shorter than the trailer).
    pub fn verify(self, frame: &[u8]) -> bool {
        let Some(split) = frame.len().checked_sub(self.width()) else {
            return false;
        };
        let (data, trailer) = frame.split_at(split);
        let sum = self.checksum(data);
        match self {
            CrcKind::Crc16Modbus => trailer == (sum as u16).to_le_bytes(),
            CrcKind::Crc16CcittFalse => trailer == (sum as u16).to_be_bytes(),
            CrcKind::Crc32 => trailer == sum.to_le_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_check_values() {
        assert_eq!(CrcKind::Crc16Modbus.checksum(b"123456789"), 0x4B37);
        assert_eq!(CrcKind::Crc16CcittFalse.checksum(b"123456789"), 0x29B1);
        assert_eq!(CrcKind::Crc32.checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn modbus_rtu_request_verifies_low_byte_first() {
        // Read 10 holding registers from address 0 of slave 1.
        let frame = [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD];
        assert!(CrcKind::Crc16Modbus.verify(&frame));
        let swapped = [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xCD, 0xC5];
        assert!(!CrcKind::Crc16Modbus.verify(&swapped));
    }

    #[test]
    fn trailers_use_the_documented_byte_order() {
        let mut out = Vec::new();
        CrcKind::Crc16CcittFalse.append(b"123456789", &mut out);
        assert_eq!(out, [0x29, 0xB1]);
        out.clear();
        CrcKind::Crc32.append(b"123456789", &mut out);
        assert_eq!(out, [0x26, 0x39, 0xF4, 0xCB]);
        out.clear();
        CrcKind::Crc16Modbus.append(b"123456789", &mut out);
        assert_eq!(out, [0x37, 0x4B]);
    }

    #[test]
    fn verify_rejects_short_and_corrupt_frames() {
        for kind in [
            CrcKind::Crc16Modbus,
            CrcKind::Crc16CcittFalse,
            CrcKind::Crc32,
        ] {
            let mut frame = b"hello".to_vec();
            kind.append(b"hello", &mut frame);
            assert!(kind.verify(&frame), "{kind:?}");
            frame[1] ^= 0x10;
            assert!(!kind.verify(&frame), "{kind:?}");
            assert!(!kind.verify(&[0x01]), "{kind:?}");
        }
    }
}
