//! Framer tests: config parsing, a table per framing (garbage, a 1 MiB run
//! without a boundary, truncated headers, CRC mismatches, invalid UTF-8,
//! zero-length frames, partial frames at EOF), the idle-gap reader, and
//! property tests (`encode → arbitrary chunking → decode` is the identity;
//! arbitrary input never panics and never buffers more than the bound).

use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use serde::Deserialize;
use tokio_util::codec::Decoder;

use super::*;

#[derive(Deserialize)]
struct Wrapper {
    framing: FramingConfig,
}

fn config(toml_value: &str) -> FramingConfig {
    let text = format!("framing = {toml_value}");
    match toml::from_str::<Wrapper>(&text) {
        Ok(w) => w.framing,
        Err(err) => panic!("{toml_value}: {err}"),
    }
}

fn framer(toml_value: &str, max: usize) -> Framer {
    let cfg = config(toml_value);
    assert_eq!(
        cfg.validate(max, 9600),
        Vec::<String>::new(),
        "{toml_value}"
    );
    cfg.build(max, 9600)
}

/// Feeds `chunks` one at a time, draining events after each, then EOF.
fn run(framer: &mut Framer, chunks: &[&[u8]]) -> Vec<FramerEvent> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(event) = framer.decode(&mut buf).expect("infallible") {
            out.push(event);
        }
    }
    while let Some(event) = framer.decode_eof(&mut buf).expect("infallible") {
        out.push(event);
    }
    assert!(buf.is_empty(), "EOF leaves nothing behind");
    out
}

fn frame(bytes: &[u8]) -> FramerEvent {
    FramerEvent::Frame(bytes.to_vec())
}

fn dropped(reason: FramingDrop, bytes: usize) -> FramerEvent {
    FramerEvent::Dropped { reason, bytes }
}

fn encode(framer: &Framer, payload: &[u8]) -> Vec<u8> {
    let mut dst = BytesMut::new();
    framer.encode(payload, &mut dst).expect("encodable");
    dst.to_vec()
}

/// Feeds `total` bytes of `fill` in 4 KiB chunks, checking the buffer stays
/// within `bound`, and returns the events.
fn flood(
    framer: &mut Framer,
    buf: &mut BytesMut,
    fill: u8,
    total: usize,
    bound: usize,
) -> Vec<FramerEvent> {
    let chunk = vec![fill; 4096];
    let mut out = Vec::new();
    let mut fed = 0;
    while fed < total {
        let n = chunk.len().min(total - fed);
        buf.extend_from_slice(&chunk[..n]);
        fed += n;
        while let Some(event) = framer.decode(buf).expect("infallible") {
            out.push(event);
        }
        assert!(
            buf.len() <= bound,
            "buffer {} exceeds the bound {bound}",
            buf.len()
        );
    }
    out
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- config

#[test]
fn default_framing_is_newline() {
    assert_eq!(
        FramingConfig::default(),
        FramingConfig::Newline {
            delimiter: None,
            crc: None
        }
    );
    assert_eq!(config("{ kind = \"newline\" }"), FramingConfig::default());
}

#[test]
fn every_kind_parses() {
    assert_eq!(
        config(r#"{ kind = "newline", delimiter = "\r\n", crc = "crc32" }"#),
        FramingConfig::Newline {
            delimiter: Some(ByteString(b"\r\n".to_vec())),
            crc: Some(CrcKind::Crc32)
        }
    );
    assert_eq!(
        config(r#"{ kind = "newline", delimiter = "\u0000" }"#),
        FramingConfig::Newline {
            delimiter: Some(ByteString(vec![0])),
            crc: None
        }
    );
    assert_eq!(
        config(r#"{ kind = "newline", delimiter = [0xAA, 0x55] }"#),
        FramingConfig::Newline {
            delimiter: Some(ByteString(vec![0xAA, 0x55])),
            crc: None
        }
    );
    assert_eq!(
        config(r#"{ kind = "cobs", crc = "crc16_ccitt_false" }"#),
        FramingConfig::Cobs {
            crc: Some(CrcKind::Crc16CcittFalse)
        }
    );
    assert_eq!(
        config(r#"{ kind = "slip" }"#),
        FramingConfig::Slip { crc: None }
    );
    assert_eq!(
        config(
            r#"{ kind = "length_prefixed", header = "u16_be", header_offset = 4, length_includes_header = true, crc = "crc16_modbus" }"#
        ),
        FramingConfig::LengthPrefixed {
            header: LengthHeader::U16Be,
            header_offset: 4,
            length_includes_header: true,
            crc: Some(CrcKind::Crc16Modbus)
        }
    );
    for (name, header) in [
        ("u8", LengthHeader::U8),
        ("u16_le", LengthHeader::U16Le),
        ("u32_be", LengthHeader::U32Be),
        ("u32_le", LengthHeader::U32Le),
    ] {
        assert_eq!(
            config(&format!(
                r#"{{ kind = "length_prefixed", header = "{name}" }}"#
            )),
            FramingConfig::LengthPrefixed {
                header,
                header_offset: 0,
                length_includes_header: false,
                crc: None
            }
        );
    }
    assert!(matches!(
        config(r#"{ kind = "fixed", size = 12 }"#),
        FramingConfig::Fixed { size, crc: None } if size.get() == 12
    ));
    assert_eq!(
        config(r#"{ kind = "idle_gap", gap_ms = 4 }"#),
        FramingConfig::IdleGap {
            gap_ms: Some(4.0),
            gap_chars: None,
            crc: None
        }
    );
    assert_eq!(
        config(r#"{ kind = "idle_gap", gap_chars = 3.5, crc = "crc16_modbus" }"#),
        FramingConfig::IdleGap {
            gap_ms: None,
            gap_chars: Some(3.5),
            crc: Some(CrcKind::Crc16Modbus)
        }
    );
}

#[test]
fn typos_are_refused_when_parsing() {
    for (value, expected) in [
        (
            r#"{ kind = "cobs", delimiter = "x" }"#,
            "unknown field `delimiter`",
        ),
        (r#"{ kind = "newlines" }"#, "unknown variant `newlines`"),
        (
            r#"{ kind = "cobs", crc = "crc16" }"#,
            "unknown variant `crc16`",
        ),
        (
            r#"{ kind = "length_prefixed", header = "u24" }"#,
            "unknown variant `u24`",
        ),
        (r#"{ kind = "length_prefixed" }"#, "missing field `header`"),
        (r#"{ kind = "fixed", size = 0 }"#, "nonzero"),
        (r#"{ kind = "newline", delimiter = [256] }"#, "256"),
    ] {
        let text = format!("framing = {value}");
        let err = match toml::from_str::<Wrapper>(&text) {
            Ok(_) => panic!("{value} parsed"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains(expected), "{value}: {err}");
    }
}

#[test]
fn validation_names_the_key() {
    let problems = |value: &str, max: usize, baud: u32| config(value).validate(max, baud);
    assert_eq!(
        problems(r#"{ kind = "newline", delimiter = "" }"#, 100, 9600),
        ["framing.delimiter: must not be empty"]
    );
    assert!(
        problems(
            r#"{ kind = "fixed", size = 2, crc = "crc16_modbus" }"#,
            100,
            9600
        )[0]
        .starts_with("framing.size: 2 leaves no payload")
    );
    assert!(
        problems(r#"{ kind = "fixed", size = 200 }"#, 100, 9600)[0]
            .starts_with("framing.size: 200 is more than max_frame_bytes")
    );
    assert!(
        problems(
            r#"{ kind = "length_prefixed", header = "u8", header_offset = 200 }"#,
            100,
            9600
        )[0]
        .starts_with("framing.header_offset:")
    );
    assert_eq!(
        problems(r#"{ kind = "idle_gap" }"#, 100, 9600),
        ["framing: idle_gap needs gap_ms or gap_chars (Modbus RTU: gap_chars = 3.5)"]
    );
    assert_eq!(
        problems(
            r#"{ kind = "idle_gap", gap_ms = 1, gap_chars = 3.5 }"#,
            100,
            9600
        ),
        ["framing: set gap_ms or gap_chars, not both"]
    );
    assert_eq!(
        problems(r#"{ kind = "idle_gap", gap_ms = -1 }"#, 100, 9600),
        ["framing.gap_ms: must be a positive number"]
    );
    assert_eq!(
        problems(r#"{ kind = "idle_gap", gap_chars = 1e9 }"#, 100, 9600),
        ["framing.gap_chars: the gap must be at most 60 s"]
    );
}

#[test]
fn invalid_configs_still_build_without_panicking() {
    for value in [
        r#"{ kind = "newline", delimiter = "" }"#,
        r#"{ kind = "fixed", size = 1, crc = "crc32" }"#,
        r#"{ kind = "fixed", size = 1000000000 }"#,
        r#"{ kind = "length_prefixed", header = "u8", header_offset = 1000000000 }"#,
        r#"{ kind = "idle_gap" }"#,
        r#"{ kind = "idle_gap", gap_ms = -1 }"#,
        r#"{ kind = "idle_gap", gap_chars = 1e300 }"#,
    ] {
        let mut f = config(value).build(16, 0);
        let events = run(&mut f, &[&[0x41; 100], b"\n\0\xc0"]);
        assert!(!events.is_empty(), "{value}");
    }
}

#[test]
fn idle_gap_from_characters_follows_modbus() {
    let gap = |value: &str, baud| config(value).build(256, baud).idle_gap();
    // 3.5 × 11 bits at 9600 baud = 4.01 ms.
    let g = gap(r#"{ kind = "idle_gap", gap_chars = 3.5 }"#, 9600).expect("idle");
    assert!(
        (g.as_secs_f64() - 3.5 * 11.0 / 9600.0).abs() < 1e-9,
        "{g:?}"
    );
    // Above 19200 baud: the fixed 1.75 ms.
    let g = gap(r#"{ kind = "idle_gap", gap_chars = 3.5 }"#, 115_200).expect("idle");
    assert_eq!(g, Duration::from_micros(1750));
    let g = gap(r#"{ kind = "idle_gap", gap_ms = 4 }"#, 9600).expect("idle");
    assert_eq!(g, Duration::from_millis(4));
    assert_eq!(gap(r#"{ kind = "cobs" }"#, 9600), None);
}

#[test]
fn drop_reasons_are_stable_labels() {
    let all = [
        (FramingDrop::Oversized, "frame_oversized"),
        (FramingDrop::Empty, "frame_empty"),
        (FramingDrop::Truncated, "frame_truncated"),
        (FramingDrop::CrcMismatch, "crc_mismatch"),
        (FramingDrop::CobsInvalid, "cobs_invalid"),
        (FramingDrop::SlipInvalid, "slip_invalid"),
        (FramingDrop::LengthInvalid, "length_invalid"),
    ];
    for (drop, label) in all {
        assert_eq!(drop.reason(), label);
        assert_eq!(drop.to_string(), label);
    }
}

// ---------------------------------------------------------------- newline

#[test]
fn newline_splits_lines_across_chunks() {
    let mut f = framer("{ kind = \"newline\" }", 64);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for chunk in [&b"ab"[..], b"c\nde", b"f\r\n", b"\n", b"g\xff\n"] {
        buf.extend_from_slice(chunk);
        while let Some(e) = f.decode(&mut buf).expect("ok") {
            events.push(e);
        }
    }
    assert_eq!(
        events,
        [
            frame(b"abc"),
            frame(b"def"),
            dropped(FramingDrop::Empty, 1),
            frame(b"g\xff"), // invalid UTF-8 is just bytes
        ]
    );
}

#[test]
fn newline_oversized_frame_is_dropped_and_framer_resyncs() {
    let big = vec![b'x'; 100];
    let mut f = framer("{ kind = \"newline\" }", 10);
    assert_eq!(
        run(&mut f, &[b"ok1\n", &big, &big, b"tail\nok2\n"]),
        [
            frame(b"ok1"),
            dropped(FramingDrop::Oversized, 205),
            frame(b"ok2")
        ]
    );
}

#[test]
fn newline_frame_of_exactly_max_size_passes_with_crlf() {
    let mut f = framer("{ kind = \"newline\" }", 3);
    assert_eq!(
        run(&mut f, &[b"abc\r\n", b"abcd\n"]),
        [frame(b"abc"), dropped(FramingDrop::Oversized, 5)]
    );
}

#[test]
fn newline_partial_frame_at_eof_is_truncated() {
    let mut f = framer("{ kind = \"newline\" }", 64);
    assert_eq!(
        run(&mut f, &[b"done\nhalf"]),
        [frame(b"done"), dropped(FramingDrop::Truncated, 4)]
    );
}

#[test]
fn newline_custom_delimiters_straddle_reads() {
    let mut f = framer(r#"{ kind = "newline", delimiter = "\r\n" }"#, 64);
    assert_eq!(
        run(&mut f, &[b"a\rb\r", b"\nc\n\r", b"\n\r\n"]),
        [
            frame(b"a\rb"),
            frame(b"c\n"),
            dropped(FramingDrop::Empty, 2)
        ]
    );
    let mut f = framer(r#"{ kind = "newline", delimiter = "\u0000" }"#, 64);
    assert_eq!(
        run(&mut f, &[b"\x01\x02\0\n\xff\0"]),
        [frame(b"\x01\x02"), frame(b"\n\xff")]
    );
    let mut f = framer(
        r#"{ kind = "newline", delimiter = [0xAA, 0x55, 0xAA] }"#,
        64,
    );
    assert_eq!(
        run(&mut f, &[b"x\xaa", b"\x55", b"\xaa\xaa\x55\xaay"]),
        [
            frame(b"x"),
            dropped(FramingDrop::Empty, 3),
            dropped(FramingDrop::Truncated, 1)
        ]
    );
}

#[test]
fn newline_megabyte_without_delimiter_is_dropped_in_bounded_memory() {
    let mut f = framer(r#"{ kind = "newline", delimiter = "\r\n" }"#, 1000);
    let mut buf = BytesMut::new();
    let events = flood(&mut f, &mut buf, b'x', MIB, 1000 + 4096 + 4);
    assert!(events.is_empty(), "{events:?}");
    buf.extend_from_slice(&b"\r\nnext\r\n"[..]);
    assert_eq!(
        f.decode(&mut buf).expect("ok"),
        Some(dropped(FramingDrop::Oversized, MIB + 2))
    );
    assert_eq!(f.decode(&mut buf).expect("ok"), Some(frame(b"next")));
}

#[test]
fn newline_crc_is_checked_and_stripped() {
    let f = framer(r#"{ kind = "newline", crc = "crc16_ccitt_false" }"#, 64);
    let good = encode(&f, b"temp=21.5");
    let mut bad = good.clone();
    bad[0] = b'T';
    let mut f = f;
    assert_eq!(
        run(&mut f, &[&bad, &good, b"\n"]),
        [
            dropped(FramingDrop::CrcMismatch, good.len()),
            frame(b"temp=21.5"),
            dropped(FramingDrop::Empty, 1)
        ]
    );
}

#[test]
fn newline_encode_refuses_what_would_not_come_back() {
    let f = framer("{ kind = \"newline\" }", 8);
    let mut dst = BytesMut::new();
    assert_eq!(
        f.encode(b"a\nb", &mut dst),
        Err(EncodeError::ContainsDelimiter)
    );
    assert_eq!(
        f.encode(b"ab\r", &mut dst),
        Err(EncodeError::ContainsDelimiter)
    );
    assert_eq!(f.encode(b"", &mut dst), Err(EncodeError::Empty));
    assert_eq!(
        f.encode(b"123456789", &mut dst),
        Err(EncodeError::TooLarge { len: 9, max: 8 })
    );
    let f = framer(r#"{ kind = "newline", delimiter = "aa" }"#, 8);
    assert_eq!(
        f.encode(b"xa", &mut dst),
        Err(EncodeError::ContainsDelimiter)
    );
    assert!(dst.is_empty());
    assert_eq!(encode(&f, b"xb"), b"xbaa");
}

// ---------------------------------------------------------------- COBS

/// Wire vectors from the COBS paper / Wikipedia (without the leading
/// `0x00` that [`cobs::encode`] adds).
fn cobs_vectors() -> Vec<(Vec<u8>, Vec<u8>)> {
    let run_254: Vec<u8> = (1..=254).collect();
    let run_255: Vec<u8> = (1..=255).collect();
    let mut zero_then_254 = vec![0];
    zero_then_254.extend(1..=254u8);
    let cat = |parts: &[&[u8]]| parts.concat();
    vec![
        (vec![0x00], vec![0x01, 0x01, 0x00]),
        (vec![0x00, 0x00], vec![0x01, 0x01, 0x01, 0x00]),
        (vec![0x00, 0x11, 0x00], vec![0x01, 0x02, 0x11, 0x01, 0x00]),
        (
            vec![0x11, 0x22, 0x00, 0x33],
            vec![0x03, 0x11, 0x22, 0x02, 0x33, 0x00],
        ),
        (
            vec![0x11, 0x22, 0x33, 0x44],
            vec![0x05, 0x11, 0x22, 0x33, 0x44, 0x00],
        ),
        (
            vec![0x11, 0x00, 0x00, 0x00],
            vec![0x02, 0x11, 0x01, 0x01, 0x01, 0x00],
        ),
        (run_254.clone(), cat(&[&[0xFF], &run_254, &[0x00]])),
        (zero_then_254, cat(&[&[0x01, 0xFF], &run_254, &[0x00]])),
        (run_255, cat(&[&[0xFF], &run_254, &[0x02, 0xFF, 0x00]])),
    ]
}

#[test]
fn cobs_matches_the_reference_vectors_both_ways() {
    let mut f = framer("{ kind = \"cobs\" }", 1024);
    for (payload, wire) in cobs_vectors() {
        assert_eq!(
            encode(&f, &payload),
            [&[0][..], &wire].concat(),
            "{payload:02x?}"
        );
        assert_eq!(run(&mut f, &[&wire]), [frame(&payload)], "{wire:02x?}");
    }
    // The non-canonical `FF … 01 00` form of a 254-byte run decodes too.
    let run_254: Vec<u8> = (1..=254).collect();
    let wire = [&[0xFF][..], &run_254, &[0x01, 0x00]].concat();
    assert_eq!(run(&mut f, &[&wire]), [frame(&run_254)]);
}

#[test]
fn cobs_garbage_between_frames_is_dropped_and_good_frames_survive() {
    let mut f = framer("{ kind = \"cobs\", crc = \"crc16_ccitt_false\" }", 64);
    let a = encode(&f, b"first\0frame");
    let b = encode(&f, &[0xC0, 0xFF, 0x00, 0x01]);
    let events = run(
        &mut f,
        &[
            &a,
            b"\x05noise",    // a code byte promising 4 bytes, then noise,
            &b,              // ended by b's leading 0x00
            b"\x05abcd\x00", // valid COBS, wrong CRC
            &a,
        ],
    );
    assert_eq!(
        events,
        [
            frame(b"first\0frame"),
            dropped(FramingDrop::CobsInvalid, 7),
            frame(&[0xC0, 0xFF, 0x00, 0x01]),
            dropped(FramingDrop::CrcMismatch, 6),
            frame(b"first\0frame"),
        ]
    );
}

#[test]
fn cobs_zero_length_and_sync_delimiters() {
    let mut f = framer("{ kind = \"cobs\" }", 64);
    assert_eq!(
        run(&mut f, &[b"\0\0\0\x01\0\0\x02x\0"]),
        [dropped(FramingDrop::Empty, 2), frame(b"x")]
    );
    let mut dst = BytesMut::new();
    assert_eq!(f.encode(b"", &mut dst), Err(EncodeError::Empty));
}

#[test]
fn cobs_zero_inside_a_block_is_invalid() {
    let mut f = framer("{ kind = \"cobs\" }", 64);
    assert_eq!(
        run(&mut f, &[b"\x04ab", b"\0\x03ab\0"]),
        [dropped(FramingDrop::CobsInvalid, 4), frame(b"ab")]
    );
}

#[test]
fn cobs_megabyte_without_delimiter_is_dropped_in_bounded_memory() {
    let mut f = framer("{ kind = \"cobs\" }", 1000);
    let mut buf = BytesMut::new();
    let events = flood(&mut f, &mut buf, 0x7F, MIB, 4096);
    assert!(events.is_empty(), "{events:?}");
    buf.extend_from_slice(&b"\0\x02x\0"[..]);
    assert_eq!(
        f.decode(&mut buf).expect("ok"),
        Some(dropped(FramingDrop::Oversized, MIB + 1))
    );
    assert_eq!(f.decode(&mut buf).expect("ok"), Some(frame(b"x")));
}

#[test]
fn cobs_oversized_by_one_and_exact_max() {
    let mut f = framer("{ kind = \"cobs\", crc = \"crc32\" }", 300);
    let max = vec![0xAB; 300];
    let wire = encode(&f, &max);
    assert_eq!(run(&mut f, &[&wire]), [frame(&max)]);
    let mut big = vec![0xAB; 301];
    CrcKind::Crc32.append(&max, &mut big);
    let mut wire = BytesMut::new();
    cobs::encode(&big, &mut wire);
    assert_eq!(
        run(&mut f, &[&wire]),
        [dropped(FramingDrop::Oversized, wire.len() - 1)]
    );
}

#[test]
fn cobs_partial_frame_at_eof_is_truncated() {
    let mut f = framer("{ kind = \"cobs\" }", 64);
    assert_eq!(
        run(&mut f, &[b"\x02x\0\x05ab"]),
        [frame(b"x"), dropped(FramingDrop::Truncated, 3)]
    );
}

// ---------------------------------------------------------------- SLIP

#[test]
fn slip_escapes_per_rfc_1055() {
    let mut f = framer("{ kind = \"slip\" }", 64);
    let payload = [0xC0, 0xDB, 0x01, 0xDC, 0xDD];
    let wire = encode(&f, &payload);
    assert_eq!(wire, [0xC0, 0xDB, 0xDC, 0xDB, 0xDD, 0x01, 0xDC, 0xDD, 0xC0]);
    // Split inside the escape sequence.
    assert_eq!(
        run(&mut f, &[&wire[..2], &wire[2..4], &wire[4..]]),
        [frame(&payload)]
    );
}

#[test]
fn slip_bad_escape_and_garbage_are_dropped_and_good_frames_survive() {
    let mut f = framer("{ kind = \"slip\", crc = \"crc16_ccitt_false\" }", 64);
    let good = encode(&f, b"\x01\x02\xc0");
    let events = run(
        &mut f,
        &[
            &good,
            b"ab\xdbxcd\xc0", // ESC then 'x': protocol violation
            b"garbage",       // ended by the next frame's leading END
            &good,
            b"q\xdb\xc0", // ESC then END
            &good,
        ],
    );
    assert_eq!(
        events,
        [
            frame(b"\x01\x02\xc0"),
            dropped(FramingDrop::SlipInvalid, 7),
            dropped(FramingDrop::CrcMismatch, 8),
            frame(b"\x01\x02\xc0"),
            dropped(FramingDrop::SlipInvalid, 3),
            frame(b"\x01\x02\xc0"),
        ]
    );
}

#[test]
fn slip_empty_packets_are_ignored_and_megabyte_runs_dropped() {
    let mut f = framer("{ kind = \"slip\" }", 1000);
    assert_eq!(run(&mut f, &[b"\xc0\xc0\xc0x\xc0"]), [frame(b"x")]);
    let mut buf = BytesMut::new();
    let events = flood(&mut f, &mut buf, b'y', MIB, 4096);
    assert!(events.is_empty(), "{events:?}");
    buf.extend_from_slice(&b"\xc0z\xc0"[..]);
    assert_eq!(
        f.decode(&mut buf).expect("ok"),
        Some(dropped(FramingDrop::Oversized, MIB + 1))
    );
    assert_eq!(f.decode(&mut buf).expect("ok"), Some(frame(b"z")));
}

#[test]
fn slip_partial_frame_at_eof_is_truncated() {
    let mut f = framer("{ kind = \"slip\" }", 64);
    assert_eq!(
        run(&mut f, &[b"\xc0a\xc0b\xdb"]),
        [frame(b"a"), dropped(FramingDrop::Truncated, 2)]
    );
}

// ---------------------------------------------------------------- length-prefixed

#[test]
fn length_prefixed_headers_of_every_width() {
    for (header, wire) in [
        ("u8", vec![3, b'a', b'b', b'c']),
        ("u16_be", vec![0, 3, b'a', b'b', b'c']),
        ("u16_le", vec![3, 0, b'a', b'b', b'c']),
        ("u32_be", vec![0, 0, 0, 3, b'a', b'b', b'c']),
        ("u32_le", vec![3, 0, 0, 0, b'a', b'b', b'c']),
    ] {
        let value = format!(r#"{{ kind = "length_prefixed", header = "{header}" }}"#);
        let mut f = framer(&value, 64);
        assert_eq!(encode(&f, b"abc"), wire, "{header}");
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        let mut input = chunks.clone();
        input.extend(chunks);
        assert_eq!(
            run(&mut f, &input),
            [frame(b"abc"), frame(b"abc")],
            "{header}"
        );
    }
}

#[test]
fn length_prefixed_modbus_tcp_style_offset() {
    // MBAP: transaction id, protocol id, length (u16 BE, counts what
    // follows), then unit id + PDU. The frame keeps the 4 offset bytes.
    let cfg = r#"{ kind = "length_prefixed", header = "u16_be", header_offset = 4 }"#;
    let mut f = framer(cfg, 260);
    let wire = [
        0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x11, 0x03, 0x00, 0x6B, 0x00, 0x03,
    ];
    let expected = [0x00, 0x01, 0x00, 0x00, 0x11, 0x03, 0x00, 0x6B, 0x00, 0x03];
    assert_eq!(run(&mut f, &[&wire]), [frame(&expected)]);
    assert_eq!(encode(&f, &expected), wire);
    let mut dst = BytesMut::new();
    assert_eq!(
        f.encode(b"abc", &mut dst),
        Err(EncodeError::ShorterThanOffset { len: 3, offset: 4 })
    );
}

#[test]
fn length_prefixed_length_including_header() {
    let cfg = r#"{ kind = "length_prefixed", header = "u8", header_offset = 1, length_includes_header = true, crc = "crc16_modbus" }"#;
    let mut f = framer(cfg, 64);
    let wire = encode(&f, b"\xAAhello");
    // 1 offset + 1 header + 5 body + 2 CRC = 9.
    assert_eq!(&wire[..2], [0xAA, 9]);
    assert_eq!(wire.len(), 9);
    assert!(CrcKind::Crc16Modbus.verify(&wire));
    assert_eq!(run(&mut f, &[&wire]), [frame(b"\xAAhello")]);
    // A length smaller than the header itself is invalid.
    assert_eq!(
        run(&mut f, &[&[0xAA, 1], &wire]),
        [dropped(FramingDrop::LengthInvalid, 2), frame(b"\xAAhello")]
    );
}

#[test]
fn length_prefixed_truncated_header_and_body_at_eof() {
    let mut f = framer(r#"{ kind = "length_prefixed", header = "u16_be" }"#, 64);
    assert_eq!(
        run(&mut f, &[b"\0\x01x\0"]),
        [frame(b"x"), dropped(FramingDrop::Truncated, 1)]
    );
    assert_eq!(
        run(&mut f, &[b"\0\x05abc"]),
        [dropped(FramingDrop::Truncated, 5)]
    );
}

#[test]
fn length_prefixed_zero_length_is_empty() {
    let mut f = framer(r#"{ kind = "length_prefixed", header = "u8" }"#, 64);
    assert_eq!(
        run(&mut f, &[b"\0\x01z"]),
        [dropped(FramingDrop::Empty, 1), frame(b"z")]
    );
}

#[test]
fn length_prefixed_invalid_length_hunts_to_the_next_frame() {
    let mut f = framer(r#"{ kind = "length_prefixed", header = "u16_le" }"#, 16);
    // 0xFFFF is far above the maximum: hunt one byte at a time.
    let good = encode(&f, b"ok");
    assert_eq!(
        run(&mut f, &[&[0xFF, 0xFF, 0xFF], &good, &good]),
        [
            dropped(FramingDrop::LengthInvalid, 3),
            frame(b"ok"),
            frame(b"ok")
        ]
    );
}

#[test]
fn length_prefixed_crc_mismatch_hunts_without_losing_the_next_frame() {
    let mut f = framer(
        r#"{ kind = "length_prefixed", header = "u8", crc = "crc16_modbus" }"#,
        64,
    );
    let a = encode(&f, b"alpha");
    let b = encode(&f, b"bravo");
    let mut corrupt = a.clone();
    corrupt[3] ^= 0x01;
    let events = run(&mut f, &[&a, &corrupt, &b, b"\x09garbage", &a, &b]);
    let frames: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, FramerEvent::Frame(_)))
        .cloned()
        .collect();
    assert_eq!(
        frames,
        [
            frame(b"alpha"),
            frame(b"bravo"),
            frame(b"alpha"),
            frame(b"bravo")
        ]
    );
    let dropped_bytes: usize = events
        .iter()
        .map(|e| match e {
            FramerEvent::Dropped { bytes, .. } => *bytes,
            FramerEvent::Frame(_) => 0,
        })
        .sum();
    assert_eq!(dropped_bytes, corrupt.len() + 8);
    assert!(matches!(
        events[1],
        FramerEvent::Dropped {
            reason: FramingDrop::CrcMismatch,
            ..
        }
    ));
}

#[test]
fn length_prefixed_hunt_at_eof_still_finds_the_last_frame() {
    let mut f = framer(
        r#"{ kind = "length_prefixed", header = "u8", crc = "crc32" }"#,
        64,
    );
    let good = encode(&f, b"last");
    // While hunting, a garbage byte claims 60 bytes, more than what follows.
    assert_eq!(
        run(&mut f, &[&[0xFF, 60], &good]),
        [dropped(FramingDrop::LengthInvalid, 2), frame(b"last")]
    );
    // In sync, a length byte claiming more than what follows: at EOF the
    // CRC tells the good frame behind it apart (the byte is `truncated`).
    assert_eq!(
        run(&mut f, &[&[60], &good]),
        [dropped(FramingDrop::Truncated, 1), frame(b"last")]
    );
    // A real partial frame at EOF is just that.
    assert_eq!(
        run(&mut f, &[&good[..good.len() - 1]]),
        [dropped(FramingDrop::Truncated, good.len() - 1)]
    );
    // Starting mid-frame with a plausible length: once enough bytes are in,
    // the CRC fails and the hunt finds every good frame.
    let mut input = vec![10u8];
    for _ in 0..3 {
        input.extend_from_slice(&good);
    }
    let events = run(&mut f, &[&input]);
    assert_eq!(
        events,
        [
            dropped(FramingDrop::CrcMismatch, 1),
            frame(b"last"),
            frame(b"last"),
            frame(b"last")
        ]
    );
}

#[test]
fn length_prefixed_megabyte_of_garbage_is_dropped_in_bounded_memory() {
    let mut f = framer(r#"{ kind = "length_prefixed", header = "u16_be" }"#, 1000);
    let mut buf = BytesMut::new();
    let events = flood(&mut f, &mut buf, 0xFF, MIB, 4096);
    assert!(events.is_empty(), "{events:?}");
    buf.extend_from_slice(&b"\0\x02hi"[..]);
    assert_eq!(
        f.decode(&mut buf).expect("ok"),
        Some(dropped(FramingDrop::LengthInvalid, MIB))
    );
    assert_eq!(f.decode(&mut buf).expect("ok"), Some(frame(b"hi")));
    let mut dst = BytesMut::new();
    let f = framer(r#"{ kind = "length_prefixed", header = "u8" }"#, 1000);
    assert_eq!(
        f.encode(&[1; 256], &mut dst),
        Err(EncodeError::LengthOverflow { len: 256 })
    );
}

// ---------------------------------------------------------------- fixed

#[test]
fn fixed_frames_across_chunks_and_at_eof() {
    let mut f = framer(r#"{ kind = "fixed", size = 4 }"#, 64);
    assert_eq!(
        run(&mut f, &[b"ab", b"cdef", b"gh\xff\xfe", b"i"]),
        [
            frame(b"abcd"),
            frame(b"efgh"),
            dropped(FramingDrop::Truncated, 3)
        ]
    );
    let mut dst = BytesMut::new();
    assert_eq!(
        f.encode(b"abc", &mut dst),
        Err(EncodeError::WrongSize {
            len: 3,
            expected: 4
        })
    );
}

#[test]
fn fixed_with_crc_hunts_after_a_mismatch() {
    let mut f = framer(r#"{ kind = "fixed", size = 6, crc = "crc16_modbus" }"#, 64);
    let a = encode(&f, b"1234");
    let b = encode(&f, b"5678");
    assert_eq!(a.len(), 6);
    assert_eq!(
        run(&mut f, &[&a, b"xy", &b, &a]),
        [
            frame(b"1234"),
            dropped(FramingDrop::CrcMismatch, 2),
            frame(b"5678"),
            frame(b"1234")
        ]
    );
}

// ---------------------------------------------------------------- idle gap

#[test]
fn idle_gap_frames_end_on_idle() {
    let mut f = framer(
        r#"{ kind = "idle_gap", gap_chars = 3.5, crc = "crc16_modbus" }"#,
        256,
    );
    let mut buf = BytesMut::new();
    // A Modbus RTU request, in two reads, then silence.
    buf.extend_from_slice(&[0x01, 0x03, 0x00, 0x00]);
    assert_eq!(f.decode(&mut buf).expect("ok"), None);
    buf.extend_from_slice(&[0x00, 0x0A, 0xC5, 0xCD]);
    assert_eq!(f.decode(&mut buf).expect("ok"), None);
    assert_eq!(
        f.on_idle(&mut buf),
        Some(frame(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]))
    );
    assert_eq!(f.on_idle(&mut buf), None);
    buf.extend_from_slice(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xCD, 0xC5]);
    assert_eq!(
        f.on_idle(&mut buf),
        Some(dropped(FramingDrop::CrcMismatch, 8))
    );
    assert_eq!(
        encode(&f, &[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]),
        [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
    );
    // Other framings ignore idle.
    let mut cobs = framer("{ kind = \"cobs\" }", 64);
    buf.extend_from_slice(b"\x02x");
    assert_eq!(cobs.on_idle(&mut buf), None);
    assert_eq!(buf.len(), 2);
}

#[test]
fn idle_gap_megabyte_is_dropped_in_bounded_memory_and_eof_truncates() {
    let mut f = framer(r#"{ kind = "idle_gap", gap_ms = 2 }"#, 1000);
    let mut buf = BytesMut::new();
    let events = flood(&mut f, &mut buf, 0x55, MIB, 4096);
    assert!(events.is_empty());
    assert_eq!(
        f.on_idle(&mut buf),
        Some(dropped(FramingDrop::Oversized, MIB))
    );
    assert_eq!(
        run(&mut f, &[b"half a frame"]),
        [dropped(FramingDrop::Truncated, 12)]
    );
}

/// Found by the property test below: garbage that reads as a length header
/// right before the last frame made the framer wait for bytes that never
/// came, and the end of the stream dropped the good frame with it. With a
/// CRC the rest is now hunted at EOF.
#[test]
fn garbage_length_before_the_last_crc_frame_does_not_cost_it_at_eof() {
    let mut f = framer(
        r#"{ kind = "length_prefixed", header = "u16_be", crc = "crc32" }"#,
        64,
    );
    let mut wire = Vec::new();
    for _ in 0..2 {
        wire.extend(encode(&f, b"\x00"));
    }
    // Claims 40 bytes; fewer follow, so the framer waits until the end.
    wire.extend_from_slice(&[0, 40]);
    wire.extend(encode(&f, b"last"));
    assert_eq!(
        run(&mut f, &[&wire]),
        [
            frame(b"\x00"),
            frame(b"\x00"),
            dropped(FramingDrop::Truncated, 2),
            frame(b"last"),
        ]
    );
    // Without a CRC nothing can tell garbage from a frame: all truncated.
    let mut f = framer(r#"{ kind = "length_prefixed", header = "u16_be" }"#, 64);
    let mut wire = encode(&f, b"first");
    wire.extend_from_slice(&[0, 40]);
    wire.extend(encode(&f, b"last"));
    assert_eq!(
        run(&mut f, &[&wire]),
        [frame(b"first"), dropped(FramingDrop::Truncated, 8)]
    );
}

#[tokio::test(start_paused = true)]
async fn frame_reader_ends_idle_gap_frames_on_silence() {
    use tokio::io::AsyncWriteExt;
    let (mut tx, rx) = tokio::io::duplex(1024);
    let f = framer(r#"{ kind = "idle_gap", gap_ms = 5 }"#, 64);
    let writer = tokio::spawn(async move {
        tx.write_all(b"first").await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.write_all(b"sec").await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
        tx.write_all(b"ond").await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.write_all(b"cut").await.expect("write");
    });
    let mut reader = FrameReader::new(rx, f);
    let mut events = Vec::new();
    while let Some(event) = reader.next().await {
        events.push(event.expect("no read error"));
    }
    writer.await.expect("writer");
    assert_eq!(
        events,
        [
            frame(b"first"),
            frame(b"second"),
            // The writer hung up before the gap: the device vanished mid-frame.
            dropped(FramingDrop::Truncated, 3)
        ]
    );
}

#[tokio::test]
async fn frame_reader_reads_delimited_framings() {
    use tokio::io::AsyncWriteExt;
    let (mut tx, rx) = tokio::io::duplex(64);
    let f = framer("{ kind = \"cobs\", crc = \"crc32\" }", 4096);
    let payloads: Vec<Vec<u8>> = (0..50u8)
        .map(|i| vec![i; usize::from(i) * 40 + 1])
        .collect();
    let mut wire = BytesMut::new();
    for p in &payloads {
        f.encode(p, &mut wire).expect("encode");
    }
    let writer = tokio::spawn(async move { tx.write_all(&wire).await.expect("write") });
    let mut reader = FrameReader::new(rx, f);
    let mut got = Vec::new();
    while let Some(event) = reader.next().await {
        got.push(event.expect("no read error"));
    }
    writer.await.expect("writer");
    let expected: Vec<_> = payloads.iter().map(|p| frame(p)).collect();
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------- properties

/// Every framing, with and without CRCs, for the property tests.
fn all_configs() -> Vec<&'static str> {
    vec![
        r#"{ kind = "newline" }"#,
        r#"{ kind = "newline", delimiter = "\r\n", crc = "crc16_modbus" }"#,
        r#"{ kind = "newline", delimiter = [0xAA, 0x55] }"#,
        r#"{ kind = "cobs" }"#,
        r#"{ kind = "cobs", crc = "crc32" }"#,
        r#"{ kind = "slip" }"#,
        r#"{ kind = "slip", crc = "crc16_ccitt_false" }"#,
        r#"{ kind = "length_prefixed", header = "u8" }"#,
        r#"{ kind = "length_prefixed", header = "u16_be", header_offset = 2, crc = "crc16_modbus" }"#,
        r#"{ kind = "length_prefixed", header = "u16_le", length_includes_header = true }"#,
        r#"{ kind = "length_prefixed", header = "u32_be", header_offset = 1, length_includes_header = true, crc = "crc32" }"#,
        r#"{ kind = "fixed", size = 7 }"#,
        r#"{ kind = "fixed", size = 9, crc = "crc16_ccitt_false" }"#,
        r#"{ kind = "idle_gap", gap_ms = 3 }"#,
        r#"{ kind = "idle_gap", gap_chars = 3.5, crc = "crc16_modbus" }"#,
    ]
}

const PROP_MAX: usize = 200;

/// Splits `wire` at the given cut points (any values; reduced modulo).
fn chunked(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    if wire.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % wire.len()).collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| wire[w[0]..w[1]].to_vec())
        .collect()
}

/// Payloads a framing can carry: for fixed, exactly the size.
fn payload_for(f: &Framer, cfg: &FramingConfig, raw: Vec<u8>) -> Option<Vec<u8>> {
    let payload = match cfg {
        FramingConfig::Fixed { size, crc } => {
            let n = size.get() - crc.map_or(0, CrcKind::width);
            let mut p = raw;
            p.resize(n, 0x5A);
            p
        }
        _ => raw,
    };
    let mut scratch = BytesMut::new();
    f.encode(&payload, &mut scratch).ok().map(|()| payload)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_any_chunking_decodes_to_the_same_frames(
        which in 0..15usize,
        raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..PROP_MAX), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let cfg = config(all_configs()[which]);
        let mut f = cfg.build(PROP_MAX, 9600);
        let payloads: Vec<Vec<u8>> =
            raw.into_iter().filter_map(|p| payload_for(&f, &cfg, p)).collect();
        let mut events = Vec::new();
        if f.idle_gap().is_some() {
            // Idle gap: the silence after each frame is the boundary.
            let mut buf = BytesMut::new();
            for p in &payloads {
                let mut wire = BytesMut::new();
                f.encode(p, &mut wire).expect("encodable");
                for chunk in chunked(&wire, &cuts) {
                    buf.extend_from_slice(&chunk);
                    prop_assert_eq!(f.decode(&mut buf).expect("ok"), None);
                }
                events.extend(f.on_idle(&mut buf));
            }
        } else {
            let mut wire = BytesMut::new();
            for p in &payloads {
                f.encode(p, &mut wire).expect("encodable");
            }
            let chunks = chunked(&wire, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            events = run(&mut f, &refs);
        }
        let expected: Vec<FramerEvent> = payloads.iter().map(|p| frame(p)).collect();
        prop_assert_eq!(events, expected);
    }

    #[test]
    fn arbitrary_input_never_panics_and_stays_bounded(
        which in 0..15usize,
        // Random bytes, one in sixteen made a delimiter or escape byte.
        input in prop::collection::vec(any::<u8>(), 0..3000).prop_map(|v| {
            v.into_iter()
                .map(|b| if b < 16 { [0, b'\n', 0xC0, 0xDB][usize::from(b % 4)] } else { b })
                .collect::<Vec<u8>>()
        }),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        idle_every in 1..8usize,
    ) {
        let mut f = config(all_configs()[which]).build(32, 9600);
        let mut buf = BytesMut::new();
        let mut reported = 0usize;
        let mut count = |e: &FramerEvent| -> Result<(), TestCaseError> {
            match e {
                FramerEvent::Frame(d) => prop_assert!(!d.is_empty() && d.len() <= 32, "{d:?}"),
                FramerEvent::Dropped { bytes, .. } => reported += bytes,
            }
            Ok(())
        };
        for (i, chunk) in chunked(&input, &cuts).iter().enumerate() {
            buf.extend_from_slice(chunk);
            while let Some(e) = f.decode(&mut buf).expect("infallible") {
                count(&e)?;
            }
            // Header + offset + max frame + CRC + one chunk.
            prop_assert!(buf.len() <= 4 + 2 + 32 + 4 + chunk.len() + 2, "buffer {}", buf.len());
            if i % idle_every == 0 && let Some(e) = f.on_idle(&mut buf) {
                count(&e)?;
            }
        }
        while let Some(e) = f.decode_eof(&mut buf).expect("infallible") {
            count(&e)?;
        }
        prop_assert!(buf.is_empty());
        prop_assert!(reported <= input.len());
    }

    #[test]
    fn garbage_between_crc_frames_never_costs_a_good_frame(
        which in 0..3usize,
        raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..60), 1..8),
        garbage in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 8),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        // CRC-32 so that garbage passing as a frame is out of the question.
        let cfg = config([
            r#"{ kind = "cobs", crc = "crc32" }"#,
            r#"{ kind = "slip", crc = "crc32" }"#,
            r#"{ kind = "length_prefixed", header = "u16_be", crc = "crc32" }"#,
        ][which]);
        let mut f = cfg.build(64, 9600);
        let mut wire = BytesMut::new();
        for (p, g) in raw.iter().zip(&garbage) {
            wire.extend_from_slice(g);
            f.encode(p, &mut wire).expect("encodable");
        }
        let chunks = chunked(&wire, &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let frames: Vec<FramerEvent> = run(&mut f, &refs)
            .into_iter()
            .filter(|e| matches!(e, FramerEvent::Frame(_)))
            .collect();
        let expected: Vec<FramerEvent> = raw.iter().map(|p| frame(p)).collect();
        prop_assert_eq!(frames, expected);
    }
}
