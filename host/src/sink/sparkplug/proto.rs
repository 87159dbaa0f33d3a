//! The Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload` of the
//! Sparkplug 3.0 specification's `sparkplug_b.proto`, a proto2 file), as
//! prost messages written here from the specification's field numbers:
//! only what an edge node of sluice writes or reads. Fields this host does
//! not know (metadata, properties, data sets, templates) are skipped when
//! decoding.

/// A Sparkplug B payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch, when the payload was made.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// The message's sequence number (0–255); none in NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    // Tags 4 (`uuid`) and 5 (`body`) are not used.
}

/// One metric of a payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Its name: in births and commands, absent in data messages (the alias
    /// stands for it).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Its alias, declared in the birth.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the Unix epoch, when the value was read.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] number.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// Sent later than it was read (store and forward).
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Not to be stored by the host application.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// The value is null.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<Value>,
}

/// A metric's value (the `oneof value` of the specification; data sets,
/// templates and extensions are not used).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// Int8, Int16, Int32 (two's complement in 32 bits), UInt8, UInt16, UInt32.
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64 (two's complement in 64 bits), UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    /// Float.
    #[prost(float, tag = "12")]
    Float(f32),
    /// Double.
    #[prost(double, tag = "13")]
    Double(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    Boolean(bool),
    /// String, Text, UUID.
    #[prost(string, tag = "15")]
    String(String),
    /// Bytes, File.
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// The Sparkplug data types (the specification's `DataType` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DataType {
    /// 8-bit signed.
    Int8 = 1,
    /// 16-bit signed.
    Int16 = 2,
    /// 32-bit signed.
    Int32 = 3,
    /// 64-bit signed.
    Int64 = 4,
    /// 8-bit unsigned.
    UInt8 = 5,
    /// 16-bit unsigned.
    UInt16 = 6,
    /// 32-bit unsigned.
    UInt32 = 7,
    /// 64-bit unsigned.
    UInt64 = 8,
    /// 32-bit float.
    Float = 9,
    /// 64-bit float.
    Double = 10,
    /// Boolean.
    Boolean = 11,
    /// UTF-8 text.
    String = 12,
    /// Milliseconds since the Unix epoch.
    DateTime = 13,
    /// UTF-8 text (long).
    Text = 14,
}

impl DataType {
    /// The type with number `number`, if this host knows it.
    pub fn from_number(number: u32) -> Option<DataType> {
        use DataType::*;
        [
            Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float, Double, Boolean,
            String, DateTime, Text,
        ]
        .into_iter()
        .find(|t| *t as u32 == number)
    }

    /// The specification's name of the type.
    pub fn name(self) -> &'static str {
        use DataType::*;
        match self {
            Int8 => "Int8",
            Int16 => "Int16",
            Int32 => "Int32",
            Int64 => "Int64",
            UInt8 => "UInt8",
            UInt16 => "UInt16",
            UInt32 => "UInt32",
            UInt64 => "UInt64",
            Float => "Float",
            Double => "Double",
            Boolean => "Boolean",
            String => "String",
            DateTime => "DateTime",
            Text => "Text",
        }
    }
}
