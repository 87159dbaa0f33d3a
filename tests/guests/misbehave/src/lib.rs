//! A transform that misbehaves on demand, for the host's sandbox tests.
//!
//! Never shipped. It reads the frame as UTF-8 text (a trailing `\r`/`\n` is
//! dropped; anything else is kept exactly) and does what the text says:
//!
//! | frame text          | behaviour                                                                |
//! |---------------------|--------------------------------------------------------------------------|
//! | `ok:<text>`         | message `test/ok` = `<text>` (QoS 1, not retained), then message `test/version` = the `version` setting (QoS 1, not retained), and point `test` with the text field `text` = `<text>` |
//! | `loop`              | spins forever (until the host interrupts it)                             |
//! | `alloc`             | allocates 1 MiB blocks, keeping them all, until the host's memory cap stops it (trap) |
//! | `recurse`           | unbounded recursion until the stack overflows (trap)                     |
//! | `panic`             | panics (with `panic = "abort"`: a trap)                                   |
//! | `bad-topic:<topic>` | one message on `<topic>` as given (`a/+/b`, `a/#`, empty...), payload `bad`, QoS 0 |
//! | `big-payload:<n>`   | one message on `test/big` with an `n`-byte payload of `x` (QoS 0); `n` not a number: `malformed` |
//! | `nan`               | one point `test` with the float field `value` = NaN                      |
//! | `log:<n>`           | calls the host's `log` import `n` times (level info, message `log <i>`), no output |
//! | `error`             | returns `malformed("asked to fail")`                                     |
//! | anything else       | returns `unsupported("unknown command: ...")`                           |
//!
//! Invalid UTF-8 is `malformed`.
//!
//! Configuration (`init`): `fail_init = "true"` makes `init` fail with
//! `invalid-config`; `version` (default `"1"`) is what `ok:` publishes on
//! `test/version`, so a test can tell which instance answered (say, after
//! a reload). Other keys are ignored.
//!
//! `encode-command` returns the command's payload reversed, byte by byte, or
//! `unsupported` when the payload is empty.

use std::hint::black_box;

use sluice_sdk::{Command, Config, Error, Frame, Message, Output, Point, Qos, Transform, log};

/// The misbehaving transform.
pub struct Misbehave {
    version: String,
}

sluice_sdk::export!(Misbehave);

impl Transform for Misbehave {
    fn init(config: &Config) -> Result<Self, Error> {
        if config.get("fail_init") == Some("true") {
            return Err(Error::invalid_config("`fail_init` is \"true\""));
        }
        Ok(Misbehave {
            version: config.get_or("version", "1").to_owned(),
        })
    }

    fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error> {
        let text = frame.text()?.trim_end_matches(['\r', '\n']);
        let (command, argument) = match text.split_once(':') {
            Some((command, argument)) => (command, Some(argument)),
            None => (text, None),
        };
        match (command, argument) {
            ("ok", Some(text)) => {
                out.publish(Message::new("test/ok", text).qos(Qos::AtLeastOnce));
                out.publish(
                    Message::new("test/version", self.version.as_str()).qos(Qos::AtLeastOnce),
                );
                out.point(Point::new("test").field("text", text));
            }
            ("loop", None) => spin(),
            ("alloc", None) => hoard(),
            ("recurse", None) => {
                let depth = recurse(black_box(0));
                return Err(Error::internal(format!("recursion ended at depth {depth}")));
            }
            ("panic", None) => panic!("asked to panic"),
            ("bad-topic", Some(topic)) => out.publish(Message::new(topic, "bad")),
            ("big-payload", Some(n)) => {
                let n: usize = n
                    .parse()
                    .map_err(|e| Error::malformed(format!("big-payload: bad size {n:?}: {e}")))?;
                out.publish(Message::new("test/big", vec![b'x'; n]));
            }
            ("nan", None) => out.point(Point::new("test").field("value", f64::NAN)),
            ("log", Some(n)) => {
                let n: u32 = n
                    .parse()
                    .map_err(|e| Error::malformed(format!("log: bad count {n:?}: {e}")))?;
                for i in 0..n {
                    log::info(&format!("log {i}"));
                }
            }
            ("error", None) => return Err(Error::malformed("asked to fail")),
            _ => return Err(Error::unsupported(format!("unknown command: {text:?}"))),
        }
        Ok(())
    }

    fn encode_command(&mut self, command: &Command) -> Result<Vec<u8>, Error> {
        if command.payload.is_empty() {
            return Err(Error::unsupported("empty command payload"));
        }
        Ok(command.payload.iter().rev().copied().collect())
    }
}

/// Loops forever; `black_box` keeps the optimiser from proving anything.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks forever and keeps every one reachable and written.
fn hoard() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let block = vec![0xa5u8; 1 << 20];
        blocks.push(black_box(block));
        black_box(&mut blocks);
    }
}

/// Recurses without end: the frame holds a buffer the optimiser must keep,
/// and the result is used after the call, so it is not a tail call. The exit
/// is never taken but cannot be proven so (which also keeps rustc's
/// `unconditional_recursion` lint quiet).
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let buffer = black_box([depth; 32]);
    let deeper = recurse(black_box(depth + 1));
    deeper.wrapping_add(buffer[black_box(7)])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn run(line: &str) -> Result<Output, Error> {
        let mut t = Misbehave::init(&Config::from_pairs([("version", "7")])).unwrap();
        sluice_sdk::process(&mut t, &Frame::from_data(line))
    }

    #[test]
    fn ok_echoes_text_and_version() {
        let out = run("ok:hello world\r\n").unwrap();
        assert_eq!(
            out.messages(),
            [
                Message::new("test/ok", "hello world").qos(Qos::AtLeastOnce),
                Message::new("test/version", "7").qos(Qos::AtLeastOnce),
            ]
        );
        assert_eq!(
            out.points(),
            [Point::new("test").field("text", "hello world")]
        );
        // Only the first colon splits.
        assert_eq!(run("ok:a:b").unwrap().messages()[0].payload, b"a:b");
        assert_eq!(run("ok:").unwrap().messages()[0].payload, b"");
    }

    #[test]
    fn version_defaults_to_1() {
        let mut t = Misbehave::init(&Config::new()).unwrap();
        let out = sluice_sdk::process(&mut t, &Frame::from_data("ok:x")).unwrap();
        assert_eq!(out.messages()[1].payload, b"1");
    }

    #[test]
    fn fail_init() {
        let r = Misbehave::init(&Config::from_pairs([("fail_init", "true")]));
        assert!(matches!(r, Err(Error::InvalidConfig(_))));
        assert!(Misbehave::init(&Config::from_pairs([("fail_init", "false")])).is_ok());
    }

    #[test]
    fn bad_topic_is_passed_through() {
        for topic in ["a/+/b", "a/#", ""] {
            let out = run(&format!("bad-topic:{topic}")).unwrap();
            assert_eq!(out.messages()[0].topic, topic);
        }
    }

    #[test]
    fn big_payload() {
        let out = run("big-payload:100000").unwrap();
        assert_eq!(out.messages()[0].topic, "test/big");
        assert_eq!(out.messages()[0].payload.len(), 100_000);
        assert!(matches!(run("big-payload:lots"), Err(Error::Malformed(_))));
    }

    #[test]
    fn nan_point() {
        let out = run("nan").unwrap();
        let value = out.points()[0].field_value("value").unwrap();
        assert!(matches!(value, sluice_sdk::FieldValue::Float(v) if v.is_nan()));
    }

    #[test]
    fn log_and_errors() {
        assert!(run("log:3").unwrap().is_empty());
        assert_eq!(run("error"), Err(Error::malformed("asked to fail")));
        assert!(matches!(run("dance"), Err(Error::Unsupported(_))));
        assert!(matches!(run("loop:1"), Err(Error::Unsupported(_))));
        let mut t = Misbehave::init(&Config::new()).unwrap();
        let r = sluice_sdk::process(&mut t, &Frame::from_data([0xff]));
        assert!(matches!(r, Err(Error::Malformed(_))));
    }

    #[test]
    fn encode_command_reverses() {
        let mut t = Misbehave::init(&Config::new()).unwrap();
        assert_eq!(
            t.encode_command(&Command::new("c", "abc")),
            Ok(b"cba".to_vec())
        );
        assert!(matches!(
            t.encode_command(&Command::new("c", "")),
            Err(Error::Unsupported(_))
        ));
    }
}
