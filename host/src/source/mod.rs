//! Sources: where frames come from. Each source task owns its device, splits
//! the byte stream with a framer and hands frames to its pipeline through a
//! bounded channel.

pub mod framing;
pub mod serial;
