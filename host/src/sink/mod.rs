//! Sinks: where validated emissions leave the box.

pub mod mqtt;
