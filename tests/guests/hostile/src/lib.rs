//! A transform written to hurt the host, for the sandbox tests. Never
//! shipped. Built straight against `sluice:transform@0.2.0`'s bindings (no
//! SDK) so that it can return packed output the SDK would never write.
//!
//! A frame is UTF-8 text `<command>[:<n>]` (a trailing `\r`/`\n` dropped):
//!
//! | frame             | what the guest does                                                   |
//! |-------------------|-----------------------------------------------------------------------|
//! | `ok:<text>`       | message `hostile/ok` = `<text>` (QoS 1)                                |
//! | `sleep:<ms>`      | sleeps `<ms>` ms (`std::thread::sleep`), then message `hostile/slept` = the nanoseconds its monotonic clock moved, and `hostile/wall` = its wall clock in ns since the epoch |
//! | `escape`          | tries a file, a directory, the environment, arguments, TCP, UDP and DNS; message `hostile/escape` = what each attempt gave |
//! | `topic:<topic>`   | message on `<topic>` as given (QoS 1), payload `poison`                 |
//! | `clock`           | message `hostile/wall` = its wall clock in ns since the epoch          |
//! | `print:<n>`       | writes `<n>` lines to stdout and to stderr, then message `hostile/printed` |
//! | `messages:<n>`    | `<n>` valid messages `hostile/m` = `x` (QoS 0)                          |
//! | `empty-topics:<n>`| `<n>` messages with an empty topic and payload (crafted bytes)         |
//! | `tags:<n>`        | one point `m` with `<n>` empty tags and a field (crafted bytes)        |
//! | `big-error:<n>`   | `malformed` with an `<n>`-byte message that holds forged log lines     |
//! | `log-flood:<n>`   | `<n>` 1 MiB log lines holding forged log lines, then a panic (trap)    |
//! | `spin`            | loops forever                                                          |
//!
//! `init` does what the config key `init` says: `sleep` (15 s), `print`,
//! `panic`, `spin`, `big-error` (`invalid-config` with an 8 MiB message of
//! forged log lines); anything else (or nothing) succeeds.
//! `encode-command` sleeps as long as the payload says (`sleep:<ms>`), then
//! returns the payload reversed.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

wit_bindgen::generate!({
    path: "../../../wit/v0.2.0",
    world: "transform-module",
});

use exports::sluice::transform::transform::{Command, Error, Frame, Guest};
use sluice::transform::log::{Level, log};

/// A line that, printed as is, looks like one of the host's own.
const FORGED: &str = "\n2099-01-01T00:00:00.000000Z ERROR sluice::admin: forged by a guest\n";

struct Hostile;

export!(Hostile);

impl Guest for Hostile {
    fn init(config: Vec<(String, String)>) -> Result<(), Error> {
        let mode = config
            .iter()
            .find(|(key, _)| key == "init")
            .map(|(_, value)| value.as_str());
        match mode {
            Some("sleep") => std::thread::sleep(Duration::from_secs(15)),
            Some("print") => {
                println!("init prints to stdout");
                eprintln!("init prints to stderr");
            }
            Some("panic") => panic!("init panics"),
            Some("spin") => spin(),
            Some("big-error") => {
                return Err(Error::InvalidConfig(
                    FORGED.repeat((8 << 20) / FORGED.len()),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn process(frame: Frame) -> Result<Vec<u8>, Error> {
        let text = String::from_utf8(frame.data)
            .map_err(|e| Error::Malformed(format!("not UTF-8: {e}")))?;
        let text = text.trim_end_matches(['\r', '\n']);
        let (command, argument) = text.split_once(':').unwrap_or((text, ""));
        let n = || {
            argument
                .parse::<usize>()
                .map_err(|e| Error::Malformed(format!("{command}: bad count {argument:?}: {e}")))
        };
        match command {
            "ok" => Ok(messages(&[("hostile/ok", argument.as_bytes(), 1)])),
            "sleep" => {
                let start = Instant::now();
                std::thread::sleep(Duration::from_millis(n()? as u64));
                let slept = start.elapsed().as_nanos().to_string();
                let wall = wall_ns().to_string();
                Ok(messages(&[
                    ("hostile/slept", slept.as_bytes(), 1),
                    ("hostile/wall", wall.as_bytes(), 1),
                ]))
            }
            "topic" => Ok(messages(&[(argument, b"poison", 1)])),
            "escape" => {
                // Everything a transform must not reach; each attempt's
                // result, as text.
                let file = std::fs::read("/etc/passwd").map(|b| b.len());
                let dir = std::fs::read_dir("/").map(|d| d.count());
                let env = std::env::vars().count();
                let args = std::env::args().count();
                let tcp = std::net::TcpStream::connect("127.0.0.1:1883").map(|_| ());
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").map(|_| ());
                let dns =
                    std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(|a| a.count());
                let report = format!(
                    "file={file:?} dir={dir:?} env={env} args={args} tcp={tcp:?} udp={udp:?} dns={dns:?}"
                );
                Ok(messages(&[("hostile/escape", report.as_bytes(), 1)]))
            }
            "clock" => Ok(messages(&[(
                "hostile/wall",
                wall_ns().to_string().as_bytes(),
                1,
            )])),
            "print" => {
                for i in 0..n()? {
                    println!("stdout line {i}");
                    eprintln!("stderr line {i}");
                }
                Ok(messages(&[("hostile/printed", b"", 1)]))
            }
            "messages" => Ok(messages(&vec![("hostile/m", &b"x"[..], 0); n()?])),
            // A buffer the host allocates and fills in its own code.
            "random" => {
                let bytes = wasi::random::random::get_random_bytes(n()? as u64);
                let len = bytes.len().to_string();
                Ok(messages(&[("hostile/random", len.as_bytes(), 1)]))
            }
            // Handles the host keeps for the instance until it goes.
            "leak" => {
                for _ in 0..n()? {
                    std::mem::forget(wasi::cli::stdout::get_stdout());
                }
                Ok(messages(&[("hostile/leaked", b"", 1)]))
            }
            "empty-topics" => {
                // Each message: topic "", payload "", QoS 0, not retained.
                let count = n()?;
                let mut out = Vec::with_capacity(10 + 4 * count);
                out.extend(varint(count));
                out.resize(out.len() + 4 * count, 0);
                out.push(0); // no points
                Ok(out)
            }
            "tags" => {
                let count = n()?;
                // Exactly the room it needs: doubling would pass the cap.
                let mut out = Vec::with_capacity(30 + 2 * count);
                out.extend([0, 1, 1, b'm']); // no messages; one point `m`
                out.extend(varint(count));
                out.resize(out.len() + 2 * count, 0); // ("", "") each
                out.extend([1, 1, b'f', 0]); // one field `f`: a float
                out.extend(1.0f64.to_le_bytes());
                out.push(0); // no timestamp
                Ok(out)
            }
            "big-error" => Err(Error::Malformed(FORGED.repeat(n()? / FORGED.len() + 1))),
            "log-flood" => {
                let line = FORGED.repeat((1 << 20) / FORGED.len());
                for _ in 0..n()? {
                    log(Level::Error, &line);
                }
                panic!("flooded the log")
            }
            "spin" => spin(),
            _ => Err(Error::Unsupported(format!("unknown command: {text:?}"))),
        }
    }

    fn process_batch(frames: Vec<Frame>) -> Vec<Result<Vec<u8>, Error>> {
        frames.into_iter().map(Self::process).collect()
    }

    fn encode_command(command: Command) -> Result<Vec<u8>, Error> {
        let text = String::from_utf8_lossy(&command.payload);
        if let Some(ms) = text.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(command.payload.iter().rev().copied().collect())
    }
}

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// A postcard varint.
fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Packed output of `(topic, payload, qos)` messages, not retained, and no
/// points (the layout of `wit/v0.2.0/transform.wit`).
fn messages(list: &[(&str, &[u8], u8)]) -> Vec<u8> {
    let mut out = varint(list.len());
    for (topic, payload, qos) in list {
        out.extend(varint(topic.len()));
        out.extend(topic.as_bytes());
        out.extend(varint(payload.len()));
        out.extend(*payload);
        out.extend([*qos, 0]);
    }
    out.push(0);
    out
}
