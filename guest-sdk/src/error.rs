//! The error a transform returns when it refuses an input.

use std::fmt;

/// Why a transform refused a frame, its configuration or a command.
///
/// This mirrors the WIT `error` variant one to one. Returning an error is not
/// a crash: the host dead-letters the frame with this reason and carries on
/// with the next one. Each case carries a human-readable message; make it name
/// the offending field or key, because it ends up in the dead-letter record
/// that someone reads at three in the morning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input is not in the format this transform decodes.
    Malformed(String),
    /// The input is well-formed but uses something this transform does not
    /// handle (an unknown type, a newer protocol version, a missing feature).
    Unsupported(String),
    /// The configuration given to [`Transform::init`](crate::Transform::init)
    /// is invalid.
    InvalidConfig(String),
    /// A bug or invariant violation inside the transform.
    Internal(String),
}

impl Error {
    /// An [`Error::Malformed`] with the given message.
    pub fn malformed(message: impl Into<String>) -> Self {
        Error::Malformed(message.into())
    }

    /// An [`Error::Unsupported`] with the given message.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::Unsupported(message.into())
    }

    /// An [`Error::InvalidConfig`] with the given message.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Error::InvalidConfig(message.into())
    }

    /// An [`Error::Internal`] with the given message.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::Malformed(m)
            | Error::Unsupported(m)
            | Error::InvalidConfig(m)
            | Error::Internal(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Error::Malformed(_) => "malformed input",
            Error::Unsupported(_) => "unsupported input",
            Error::InvalidConfig(_) => "invalid config",
            Error::Internal(_) => "internal error",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_pick_the_right_case() {
        assert_eq!(Error::malformed("a"), Error::Malformed("a".into()));
        assert_eq!(Error::unsupported("b"), Error::Unsupported("b".into()));
        assert_eq!(
            Error::invalid_config(String::from("c")),
            Error::InvalidConfig("c".into())
        );
        assert_eq!(Error::internal("d"), Error::Internal("d".into()));
    }

    #[test]
    fn display_names_the_kind_and_the_message() {
        assert_eq!(
            Error::malformed("`t`: expected a number").to_string(),
            "malformed input: `t`: expected a number"
        );
        assert_eq!(
            Error::unsupported("v2").to_string(),
            "unsupported input: v2"
        );
        assert_eq!(
            Error::invalid_config("`qos`").to_string(),
            "invalid config: `qos`"
        );
        assert_eq!(Error::internal("bug").to_string(), "internal error: bug");
        assert_eq!(Error::internal("bug").message(), "bug");
    }

    #[test]
    fn is_a_std_error() {
        fn takes(_: &dyn std::error::Error) {}
        takes(&Error::internal("x"));
    }
}
