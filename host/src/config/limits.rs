//! `[limits]` and `[pipeline.limits]`: the sandbox budget per transform call
//! (CPU time, memory, output per frame), its defaults (the runtime's), and
//! how a pipeline's override combines with the global section.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use serde::Deserialize;

/// `[limits]`: the sandbox budget per transform call.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// CPU-time budget per call on the worker thread, in milliseconds (a
    /// call also ends after 50× this in wall time).
    #[serde(default = "default_call_timeout")]
    pub call_timeout_ms: NonZeroU64,
    /// Linear memory cap per transform instance (all its memories), in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: NonZeroU32,
    /// MQTT messages one frame may produce; a frame over any output limit
    /// is refused whole (counted, dead-lettered).
    #[serde(default = "default_max_messages")]
    pub max_messages_per_frame: NonZeroUsize,
    /// Points one frame may produce.
    #[serde(default = "default_max_points")]
    pub max_points_per_frame: NonZeroUsize,
    /// Tags one point may have.
    #[serde(default = "default_max_tags")]
    pub max_tags_per_point: NonZeroUsize,
    /// Fields one point may have.
    #[serde(default = "default_max_fields")]
    pub max_fields_per_point: NonZeroUsize,
    /// Host memory one frame's output may take, in bytes: its text and
    /// payloads plus 64 bytes per message, point, tag and field.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes_per_frame: NonZeroUsize,
}

fn default_call_timeout() -> NonZeroU64 {
    NonZeroU64::new(100).unwrap_or(NonZeroU64::MIN)
}
fn default_memory_mb() -> NonZeroU32 {
    NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN)
}
fn output_default(pick: fn(&crate::runtime::OutputLimits) -> usize) -> NonZeroUsize {
    NonZeroUsize::new(pick(&crate::runtime::OutputLimits::default())).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_messages() -> NonZeroUsize {
    output_default(|l| l.messages)
}
fn default_max_points() -> NonZeroUsize {
    output_default(|l| l.points)
}
fn default_max_tags() -> NonZeroUsize {
    output_default(|l| l.tags_per_point)
}
fn default_max_fields() -> NonZeroUsize {
    output_default(|l| l.fields_per_point)
}
fn default_max_output_bytes() -> NonZeroUsize {
    output_default(|l| l.bytes)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            call_timeout_ms: default_call_timeout(),
            memory_mb: default_memory_mb(),
            max_messages_per_frame: default_max_messages(),
            max_points_per_frame: default_max_points(),
            max_tags_per_point: default_max_tags(),
            max_fields_per_point: default_max_fields(),
            max_output_bytes_per_frame: default_max_output_bytes(),
        }
    }
}

/// `[pipeline.limits]`: each key given replaces that key of the global
/// `[limits]`; a key left out keeps the global value.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    /// Replaces `limits.call_timeout_ms`.
    #[serde(default)]
    pub call_timeout_ms: Option<NonZeroU64>,
    /// Replaces `limits.memory_mb`.
    #[serde(default)]
    pub memory_mb: Option<NonZeroU32>,
    /// Replaces `limits.max_messages_per_frame`.
    #[serde(default)]
    pub max_messages_per_frame: Option<NonZeroUsize>,
    /// Replaces `limits.max_points_per_frame`.
    #[serde(default)]
    pub max_points_per_frame: Option<NonZeroUsize>,
    /// Replaces `limits.max_tags_per_point`.
    #[serde(default)]
    pub max_tags_per_point: Option<NonZeroUsize>,
    /// Replaces `limits.max_fields_per_point`.
    #[serde(default)]
    pub max_fields_per_point: Option<NonZeroUsize>,
    /// Replaces `limits.max_output_bytes_per_frame`.
    #[serde(default)]
    pub max_output_bytes_per_frame: Option<NonZeroUsize>,
}

impl LimitsOverride {
    /// `global` with the keys this override gives replaced.
    pub fn over(&self, global: LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            call_timeout_ms: self.call_timeout_ms.unwrap_or(global.call_timeout_ms),
            memory_mb: self.memory_mb.unwrap_or(global.memory_mb),
            max_messages_per_frame: self
                .max_messages_per_frame
                .unwrap_or(global.max_messages_per_frame),
            max_points_per_frame: self
                .max_points_per_frame
                .unwrap_or(global.max_points_per_frame),
            max_tags_per_point: self.max_tags_per_point.unwrap_or(global.max_tags_per_point),
            max_fields_per_point: self
                .max_fields_per_point
                .unwrap_or(global.max_fields_per_point),
            max_output_bytes_per_frame: self
                .max_output_bytes_per_frame
                .unwrap_or(global.max_output_bytes_per_frame),
        }
    }
}

impl From<LimitsConfig> for LimitsOverride {
    /// An override that sets every key (pins the limits whatever `[limits]` says).
    fn from(l: LimitsConfig) -> Self {
        LimitsOverride {
            call_timeout_ms: Some(l.call_timeout_ms),
            memory_mb: Some(l.memory_mb),
            max_messages_per_frame: Some(l.max_messages_per_frame),
            max_points_per_frame: Some(l.max_points_per_frame),
            max_tags_per_point: Some(l.max_tags_per_point),
            max_fields_per_point: Some(l.max_fields_per_point),
            max_output_bytes_per_frame: Some(l.max_output_bytes_per_frame),
        }
    }
}

impl From<LimitsConfig> for crate::runtime::Limits {
    fn from(l: LimitsConfig) -> Self {
        crate::runtime::Limits {
            call_timeout: Duration::from_millis(l.call_timeout_ms.get()),
            memory_bytes: usize::try_from(l.memory_mb.get())
                .unwrap_or(usize::MAX)
                .saturating_mul(1 << 20),
            output: crate::runtime::OutputLimits {
                messages: l.max_messages_per_frame.get(),
                points: l.max_points_per_frame.get(),
                tags_per_point: l.max_tags_per_point.get(),
                fields_per_point: l.max_fields_per_point.get(),
                bytes: l.max_output_bytes_per_frame.get(),
            },
        }
    }
}
