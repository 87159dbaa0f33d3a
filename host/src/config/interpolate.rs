//! `${VAR}` / `${VAR:-default}` interpolation of the config text.
//!
//! Interpolation works on the raw TOML text, before parsing, so that a value
//! can be a number or boolean as well as part of a string
//! (`port = ${SLUICE_MQTT_PORT:-1883}`), as in docker-compose and Telegraf.
//! To keep TOML error positions true, a substituted value may not contain a
//! line break. Full-line comments are left alone so that documentation can
//! mention variables. `$${` writes a literal `${`.
//!
//! Secrets do not belong here: keys such as `password_file` / `token_env` read
//! them at use time, so they never sit in the interpolated text.

/// An interpolation failure, with the 1-based line it happened on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    /// `${NAME}` without default and the variable is unset.
    #[error(
        "line {line}: environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
    )]
    Unset {
        /// 1-based line.
        line: usize,
        /// Variable name.
        name: String,
    },
    /// `${` without a closing `}`.
    #[error("line {line}: unterminated `${{`")]
    Unterminated {
        /// 1-based line.
        line: usize,
    },
    /// A name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("line {line}: invalid variable name {name:?}")]
    BadName {
        /// 1-based line.
        line: usize,
        /// What was written.
        name: String,
    },
    /// The value would change the line structure.
    #[error("line {line}: the value of {name} contains a line break")]
    Multiline {
        /// 1-based line.
        line: usize,
        /// Variable name.
        name: String,
    },
}

/// Substitutes variables in `text`, looking them up with `lookup`.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix("${") {
                let end = tail
                    .find('}')
                    .ok_or(InterpolationError::Unterminated { line: line_no })?;
                let expr = &tail[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (expr, None),
                };
                if !is_valid_name(name) {
                    return Err(InterpolationError::BadName {
                        line: line_no,
                        name: name.to_owned(),
                    });
                }
                let value = match (lookup(name).filter(|v| !v.is_empty()), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d.to_owned(),
                    (None, None) => {
                        return Err(InterpolationError::Unset {
                            line: line_no,
                            name: name.to_owned(),
                        });
                    }
                };
                if value.contains(['\n', '\r']) {
                    return Err(InterpolationError::Multiline {
                        line: line_no,
                        name: name.to_owned(),
                    });
                }
                out.push_str(&value);
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker.local".into()),
            "PORT" => Some("1884".into()),
            "EMPTY" => Some(String::new()),
            "NL" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn table() {
        let ok: &[(&str, &str)] = &[
            ("host = \"${HOST}\"", "host = \"broker.local\""),
            ("port = ${PORT:-1883}", "port = 1884"),
            ("port = ${MISSING:-1883}", "port = 1883"),
            ("x = \"${EMPTY:-fallback}\"", "x = \"fallback\""),
            ("x = \"${MISSING:-}\"", "x = \"\""),
            ("x = \"$${HOST}\"", "x = \"${HOST}\""),
            ("x = \"cost $5\"", "x = \"cost $5\""),
            ("# uses ${UNSET_IN_COMMENT}", "# uses ${UNSET_IN_COMMENT}"),
            (
                "a = \"${HOST}:${PORT}\"\nb = 1\n",
                "a = \"broker.local:1884\"\nb = 1\n",
            ),
            ("x = \"${MISSING:-a:-b}\"", "x = \"a:-b\""),
        ];
        for (input, want) in ok {
            assert_eq!(interpolate(input, env).as_deref(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, InterpolationError)] = &[
            (
                "a = 1\nb = \"${NOPE}\"",
                InterpolationError::Unset {
                    line: 2,
                    name: "NOPE".into(),
                },
            ),
            (
                "a = \"${HOST\"",
                InterpolationError::Unterminated { line: 1 },
            ),
            (
                "a = \"${1X}\"",
                InterpolationError::BadName {
                    line: 1,
                    name: "1X".into(),
                },
            ),
            (
                "\n\na = \"${NL}\"",
                InterpolationError::Multiline {
                    line: 3,
                    name: "NL".into(),
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(interpolate(input, env).as_ref(), Err(want), "{input}");
        }
        let msg = interpolate("x = ${NOPE}", env).unwrap_err().to_string();
        assert!(msg.contains("${NOPE:-default}"), "{msg}");
    }
}
