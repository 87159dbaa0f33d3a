//! What can go wrong loading a module or calling it.

use super::*;

/// Errors from loading or instantiating a module.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read module {path}: {source}")]
    Read {
        /// The module path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a valid component, or it failed to compile.
    #[error("not a valid Wasm component: {}", guest_text(&format!("{:#}", .0)))]
    Compile(wasmtime::Error),
    /// The component does not fit the host: missing exports, foreign imports.
    #[error(
        "module does not implement a supported transform contract ({supported}), {what}: {why}",
        what = .0,
        why = guest_text(&format!("{:#}", .1)),
        supported = SUPPORTED_WIT_VERSIONS.join(", ")
    )]
    Contract(&'static str, wasmtime::Error),
    /// Instantiation trapped or failed.
    #[error("cannot instantiate module: {}", guest_text(&format!("{:#}", .0)))]
    Instantiate(wasmtime::Error),
    /// The guest's `init` refused its configuration.
    #[error("transform init failed: {0}")]
    Init(GuestError),
    /// `init` trapped.
    #[error("transform init trapped ({kind}): {message}")]
    InitTrap {
        /// Classified trap.
        kind: TrapKind,
        /// wasmtime's message.
        message: String,
    },
}

/// A typed error a guest returned (not a trap).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct GuestError {
    /// The WIT variant case.
    pub kind: GuestErrorKind,
    /// The guest's message.
    pub message: String,
}

/// The cases of the WIT `error` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestErrorKind {
    /// Input not in the expected format.
    Malformed,
    /// Well-formed but not handled.
    Unsupported,
    /// Bad configuration.
    InvalidConfig,
    /// A bug in the transform.
    Internal,
}

impl GuestErrorKind {
    /// Stable label for metrics and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestErrorKind::Malformed => "malformed",
            GuestErrorKind::Unsupported => "unsupported",
            GuestErrorKind::InvalidConfig => "invalid_config",
            GuestErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for GuestErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The call exceeded its deadline.
    Timeout,
    /// The guest tried to grow memory beyond the cap.
    MemoryLimit,
    /// Wasm stack exhausted.
    StackOverflow,
    /// `unreachable` — what a Rust guest's panic or abort turns into.
    Panic,
    /// Out-of-bounds linear memory access: a bug, or a Rust guest's shadow
    /// stack (which lives in linear memory) running out.
    MemoryFault,
    /// Any other trap (out-of-bounds access, bad conversion, host error).
    Other,
}

impl TrapKind {
    /// Stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Timeout => "timeout",
            TrapKind::MemoryLimit => "memory_limit",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::Panic => "panic",
            TrapKind::MemoryFault => "memory_fault",
            TrapKind::Other => "trap",
        }
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame produced no output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// The guest returned a typed error.
    #[error("{0}")]
    Guest(GuestError),
    /// The guest trapped; the instance will be replaced.
    #[error("transform trapped ({kind}): {message}")]
    Trap {
        /// Classified trap.
        kind: TrapKind,
        /// wasmtime's message.
        message: String,
    },
    /// The guest broke the contract (e.g. a packed output that does not
    /// decode).
    #[error("transform broke the contract: {0}")]
    Contract(String),
    /// The frame's output went over a limit of [`Limits::output`]; none of
    /// it is kept.
    #[error("transform {0}")]
    OverLimit(OutputError),
    /// A fresh instance could not be created after a trap.
    #[error("cannot recreate the transform instance: {0}")]
    Reinstantiate(String),
}

impl ProcessError {
    /// Stable label for the drop counter.
    pub fn reason(&self) -> &'static str {
        match self {
            ProcessError::Guest(e) => match e.kind {
                GuestErrorKind::Malformed => "decode_malformed",
                GuestErrorKind::Unsupported => "decode_unsupported",
                GuestErrorKind::InvalidConfig => "decode_invalid_config",
                GuestErrorKind::Internal => "decode_internal",
            },
            ProcessError::Trap { kind, .. } => match kind {
                TrapKind::Timeout => "trap_timeout",
                TrapKind::MemoryLimit => "trap_memory_limit",
                TrapKind::StackOverflow => "trap_stack_overflow",
                TrapKind::Panic => "trap_panic",
                TrapKind::MemoryFault => "trap_memory_fault",
                TrapKind::Other => "trap_other",
            },
            ProcessError::Contract(_) => "contract_violation",
            ProcessError::OverLimit(OutputError::OverLimit { limit, .. }) => limit.reason(),
            ProcessError::OverLimit(OutputError::Contract(_)) => "contract_violation",
            ProcessError::Reinstantiate(_) => "instance_unavailable",
        }
    }
}

impl From<OutputError> for ProcessError {
    fn from(e: OutputError) -> Self {
        match e {
            OutputError::Contract(message) => ProcessError::Contract(message),
            over => ProcessError::OverLimit(over),
        }
    }
}

/// A frame the transform did not turn into output, with the reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Why.
    pub error: ProcessError,
    /// The frame, unchanged, for dead-lettering.
    pub frame: Frame,
}
