#![allow(clippy::unwrap_used)]

use super::*;

fn transform(pairs: &[(&str, &str)]) -> JsonTelemetry {
    JsonTelemetry::init(&Config::from_pairs(pairs.iter().copied())).unwrap()
}

fn run(t: &mut JsonTelemetry, line: impl Into<Vec<u8>>) -> Result<Output, Error> {
    sluice_sdk::process(t, &Frame::new("gateway", 1, line))
}

fn ok(line: &str) -> Output {
    run(&mut transform(&[]), line).unwrap()
}

fn malformed(line: impl Into<Vec<u8>>) -> String {
    match run(&mut transform(&[]), line) {
        Err(Error::Malformed(message)) => message,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn invalid_config(pairs: &[(&str, &str)]) -> String {
    match JsonTelemetry::init(&Config::from_pairs(pairs.iter().copied())) {
        Err(Error::InvalidConfig(message)) => message,
        Err(other) => panic!("expected InvalidConfig, got {other:?}"),
        Ok(_) => panic!("expected InvalidConfig, got Ok"),
    }
}

/// `(topic, payload, qos level, retain)` of every message.
fn messages(out: &Output) -> Vec<(&str, &str, u8, bool)> {
    out.messages()
        .iter()
        .map(|m| {
            (
                m.topic.as_str(),
                std::str::from_utf8(&m.payload).unwrap(),
                m.qos.level(),
                m.retain,
            )
        })
        .collect()
}

fn point(measurement: &str, tags: &[(&str, &str)], fields: &[(&str, FieldValue)]) -> Point {
    Point {
        measurement: measurement.to_owned(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        timestamp_ns: None,
    }
}

use FieldValue::{Float, Int};

#[test]
fn sample_line_messages() {
    let out = ok(SAMPLE_LINE);
    assert_eq!(
        messages(&out),
        [
            ("iiot/stats/seq", "1042", 1, false),
            ("iiot/node1/temperature", "27.6", 1, true),
            ("iiot/node1/humidity", "54.1", 1, true),
            ("iiot/node1/battery", "3.71", 1, true),
            ("iiot/node2/temperature", "26.0", 1, true),
            ("iiot/node2/humidity", "50.2", 1, true),
            ("iiot/node2/battery", "3.65", 1, true),
            ("iiot/signal/rssi", "-39", 1, true),
            ("iiot/signal/snr", "9.5", 1, true),
            ("iiot/stats/rx", "1201", 1, false),
            ("iiot/stats/crc_err", "3", 1, false),
        ]
    );
    assert!(out.messages().iter().all(|m| m.qos == Qos::AtLeastOnce));
}

#[test]
fn sample_line_points() {
    let out = ok(SAMPLE_LINE);
    assert_eq!(
        out.points(),
        [
            point(
                "environment",
                &[("node", "node1")],
                &[
                    ("temperature", Float(27.6)),
                    ("humidity", Float(54.1)),
                    ("battery", Float(3.71)),
                ],
            ),
            point(
                "environment",
                &[("node", "node2")],
                &[
                    ("temperature", Float(26.0)),
                    ("humidity", Float(50.2)),
                    ("battery", Float(3.65)),
                ],
            ),
            point("signal", &[], &[("rssi", Int(-39)), ("snr", Float(9.5))]),
            point(
                "gateway_stats",
                &[],
                &[("rx", Int(1201)), ("crc_err", Int(3)), ("seq", Int(1042))],
            ),
        ]
    );
    assert!(out.points().iter().all(|p| p.timestamp_ns.is_none()));
}

#[test]
fn numbers_are_published_exactly_as_written() {
    let out = ok(r#"{"n1":{"t":26.0,"h":5e1,"bat":-0.50},"sig":{"rssi":-0,"snr":1E-2}}"#);
    let payloads: Vec<_> = messages(&out).iter().map(|m| m.1).collect();
    assert_eq!(payloads, ["26.0", "5e1", "-0.50", "-0", "1E-2"]);
    assert_eq!(out.points()[0].field_value("humidity"), Some(&Float(50.0)));
    assert_eq!(out.points()[1].field_value("snr"), Some(&Float(0.01)));
}

#[test]
fn float_fields_accept_integer_literals() {
    let out = ok(r#"{"n1":{"t":27},"sig":{"snr":9}}"#);
    assert_eq!(out.messages()[0].payload, b"27");
    assert_eq!(
        out.points()[0].fields,
        [("temperature".into(), Float(27.0))]
    );
    assert_eq!(out.points()[1].fields, [("snr".into(), Float(9.0))]);
}

#[test]
fn missing_fields_are_skipped_not_zero_filled() {
    let out = ok(r#"{"n1":{"t":21.5},"n2":{},"sig":{"snr":7.25},"stats":{"crc_err":0}}"#);
    assert_eq!(
        messages(&out),
        [
            ("iiot/node1/temperature", "21.5", 1, true),
            ("iiot/signal/snr", "7.25", 1, true),
            ("iiot/stats/crc_err", "0", 1, false),
        ]
    );
    assert_eq!(
        out.points(),
        [
            point(
                "environment",
                &[("node", "node1")],
                &[("temperature", Float(21.5))]
            ),
            point("signal", &[], &[("snr", Float(7.25))]),
            point("gateway_stats", &[], &[("crc_err", Int(0))]),
        ]
    );
}

#[test]
fn null_counts_as_missing() {
    let out = ok(r#"{"seq":null,"n1":{"t":null,"h":40},"n2":null,"sig":null,"stats":{"rx":null}}"#);
    assert_eq!(messages(&out), [("iiot/node1/humidity", "40", 1, true)]);
    assert_eq!(
        out.points(),
        [point(
            "environment",
            &[("node", "node1")],
            &[("humidity", Float(40.0))]
        )]
    );
}

#[test]
fn empty_object_gives_empty_output() {
    assert!(ok("{}").is_empty());
}

#[test]
fn seq_alone_gives_a_stats_point() {
    let out = ok(r#"{"seq":7}"#);
    assert_eq!(messages(&out), [("iiot/stats/seq", "7", 1, false)]);
    assert_eq!(
        out.points(),
        [point("gateway_stats", &[], &[("seq", Int(7))])]
    );
}

#[test]
fn stats_point_gathers_seq_wherever_it_is() {
    let out = ok(r#"{"stats":{"crc_err":3,"rx":1201},"seq":1042}"#);
    assert_eq!(
        out.points(),
        [point(
            "gateway_stats",
            &[],
            &[("crc_err", Int(3)), ("rx", Int(1201)), ("seq", Int(1042))]
        )]
    );
}

#[test]
fn unknown_keys_are_ignored() {
    let out = ok(concat!(
        r#"{"fw":"2.1","n":{"t":1},"n1x":{"t":1},"nodes":[1,2],"#,
        r#""n3":{"t":20.5,"p":1013,"extra":{"deep":[true]}},"#,
        r#""sig":{"rssi":-40,"freq":868.1},"stats":{"rx":5,"tx":2}}"#
    ));
    assert_eq!(
        messages(&out),
        [
            ("iiot/node3/temperature", "20.5", 1, true),
            ("iiot/signal/rssi", "-40", 1, true),
            ("iiot/stats/rx", "5", 1, false),
        ]
    );
    assert_eq!(out.points().len(), 3);
}

#[test]
fn any_n_digits_key_is_a_node() {
    let out = ok(r#"{"n17":{"bat":3.3},"n007":{"bat":3.4}}"#);
    let topics: Vec<_> = messages(&out).iter().map(|m| m.0).collect();
    assert_eq!(topics, ["iiot/node17/battery", "iiot/node007/battery"]);
    assert_eq!(out.points()[0].tag_value("node"), Some("node17"));
}

#[test]
fn keys_with_escapes_are_understood() {
    // `\u0031` is `1`: the key is `n1`, but serde cannot borrow it.
    let out = ok(r#"{"n\u0031":{"\u0074":1.5}}"#);
    assert_eq!(messages(&out), [("iiot/node1/temperature", "1.5", 1, true)]);
}

#[test]
fn surrounding_whitespace_and_cr_are_tolerated() {
    let out = ok(&format!(" \t{SAMPLE_LINE}\r\n"));
    assert_eq!(out.messages().len(), 11);
    let out = ok("{ \"n1\" : { \"t\" : 1.25 } }\r");
    assert_eq!(
        messages(&out),
        [("iiot/node1/temperature", "1.25", 1, true)]
    );
}

#[test]
fn wrong_types_name_the_field() {
    let m = malformed(r#"{"n1":{"t":"hot"}}"#);
    assert!(
        m.starts_with("`n1.t`: expected a number, found a string"),
        "{m}"
    );
    let m = malformed(r#"{"sig":{"rssi":true}}"#);
    assert!(
        m.starts_with("`sig.rssi`: expected a number, found a boolean"),
        "{m}"
    );
    let m = malformed(r#"{"stats":{"rx":[1]}}"#);
    assert!(
        m.starts_with("`stats.rx`: expected a number, found an array"),
        "{m}"
    );
    let m = malformed(r#"{"n2":{"bat":{"v":3}}}"#);
    assert!(
        m.starts_with("`n2.bat`: expected a number, found an object"),
        "{m}"
    );
    let m = malformed(r#"{"seq":"1042"}"#);
    assert!(
        m.starts_with("`seq`: expected a number, found a string"),
        "{m}"
    );
}

#[test]
fn sections_must_be_objects() {
    for (line, key) in [
        (r#"{"n1":5}"#, "`n1`"),
        (r#"{"sig":"x"}"#, "`sig`"),
        (r#"{"stats":[1,2]}"#, "`stats`"),
    ] {
        let m = malformed(line);
        assert!(
            m.contains(&format!("expected {key} to be an object")),
            "{m}"
        );
    }
}

#[test]
fn integer_fields_reject_fractions_and_overflow() {
    let m = malformed(r#"{"sig":{"rssi":-39.5}}"#);
    assert!(
        m.starts_with("`sig.rssi`: expected an integer, found -39.5"),
        "{m}"
    );
    let m = malformed(r#"{"stats":{"rx":1e3}}"#);
    assert!(
        m.starts_with("`stats.rx`: expected an integer, found 1e3"),
        "{m}"
    );
    let m = malformed(r#"{"seq":99999999999999999999}"#);
    assert!(
        m.starts_with("`seq`: integer 99999999999999999999 out of range"),
        "{m}"
    );
    let m = malformed(r#"{"n1":{"t":1e999}}"#);
    assert!(m.starts_with("`n1.t`: number 1e999 out of range"), "{m}");
}

#[test]
fn non_json_is_malformed() {
    for line in [
        "",
        "   ",
        "hello",
        "{\"n1\":",
        "{\"n1\":{\"t\":1.0}} trailing",
        "{'a':1}",
    ] {
        let m = malformed(line);
        assert!(m.starts_with("not valid JSON: "), "{line:?} -> {m}");
    }
}

#[test]
fn top_level_must_be_an_object() {
    for line in ["[1,2]", "42", "\"text\"", "null", "true"] {
        let m = malformed(line);
        assert!(
            m.contains("expected a JSON object at the top level"),
            "{line:?} -> {m}"
        );
    }
}

#[test]
fn invalid_utf8_is_malformed() {
    let mut line = br#"{"n1":{"t":1}}"#.to_vec();
    line.insert(2, 0xff);
    let m = malformed(line);
    assert!(m.contains("not valid UTF-8"), "{m}");
}

#[test]
fn an_error_late_in_the_line_discards_everything() {
    let r = run(&mut transform(&[]), r#"{"n1":{"t":27.6},"n2":{"t":"hot"}}"#);
    assert!(matches!(r, Err(Error::Malformed(_))), "{r:?}");
}

#[test]
fn custom_prefix_qos_and_node_names() {
    let mut t = transform(&[
        ("prefix", "plant/line1"),
        ("qos", "2"),
        ("node.n1", "boiler"),
        ("node.n2", "Kühlraum"),
    ]);
    let out = run(&mut t, SAMPLE_LINE).unwrap();
    let topics: Vec<_> = messages(&out).iter().map(|m| m.0).collect();
    assert_eq!(
        topics,
        [
            "plant/line1/stats/seq",
            "plant/line1/boiler/temperature",
            "plant/line1/boiler/humidity",
            "plant/line1/boiler/battery",
            "plant/line1/Kühlraum/temperature",
            "plant/line1/Kühlraum/humidity",
            "plant/line1/Kühlraum/battery",
            "plant/line1/signal/rssi",
            "plant/line1/signal/snr",
            "plant/line1/stats/rx",
            "plant/line1/stats/crc_err",
        ]
    );
    assert!(out.messages().iter().all(|m| m.qos == Qos::ExactlyOnce));
    assert_eq!(out.points()[0].tag_value("node"), Some("boiler"));
    assert_eq!(out.points()[1].tag_value("node"), Some("Kühlraum"));
}

#[test]
fn qos_zero() {
    let out = run(&mut transform(&[("qos", "0")]), SAMPLE_LINE).unwrap();
    assert!(out.messages().iter().all(|m| m.qos == Qos::AtMostOnce));
}

#[test]
fn last_node_name_setting_wins() {
    let mut t = transform(&[("node.n1", "a"), ("node.n1", "b")]);
    let out = run(&mut t, r#"{"n1":{"t":1}}"#).unwrap();
    assert_eq!(out.messages()[0].topic, "iiot/b/temperature");
}

#[test]
fn bad_config_names_the_key() {
    let m = invalid_config(&[("qos", "3")]);
    assert!(m.starts_with("`qos` = \"3\""), "{m}");
    let m = invalid_config(&[("qos", "high")]);
    assert!(m.starts_with("`qos` = \"high\""), "{m}");
    for prefix in ["", "a/+/b", "a/#", "/iiot", "iiot/"] {
        let m = invalid_config(&[("prefix", prefix)]);
        assert!(m.starts_with("`prefix` = "), "{prefix:?} -> {m}");
    }
    for name in ["", "a/b", "a+", "#"] {
        let m = invalid_config(&[("node.n1", name)]);
        assert!(m.starts_with("`node.n1` = "), "{name:?} -> {m}");
    }
    let m = invalid_config(&[("node.boiler", "x")]);
    assert!(m.starts_with("`node.boiler`: "), "{m}");
    let m = invalid_config(&[("prefx", "x")]);
    assert!(m.starts_with("unknown key `prefx`"), "{m}");
}

#[test]
fn the_transform_is_reusable_across_frames() {
    let mut t = transform(&[]);
    for _ in 0..3 {
        assert_eq!(run(&mut t, SAMPLE_LINE).unwrap().messages().len(), 11);
        assert!(run(&mut t, "nope").is_err());
    }
}

#[test]
fn batch_gives_one_result_per_frame_in_order() {
    let mut t = transform(&[]);
    let frames = [
        Frame::from_data(SAMPLE_LINE),
        Frame::from_data("nope"),
        Frame::from_data(r#"{"seq":1}"#),
    ];
    let results = sluice_sdk::process_batch(&mut t, &frames);
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().messages().len(), 11);
    assert!(results[1].is_err());
    assert_eq!(results[2].as_ref().unwrap().messages().len(), 1);
}

fn encode(t: &mut JsonTelemetry, topic: &str, payload: &[u8]) -> Result<String, Error> {
    t.encode_command(&sluice_sdk::Command::new(topic, payload))
        .map(|bytes| String::from_utf8(bytes).expect("utf-8"))
}

#[test]
fn commands_become_json_lines_for_the_gateway() {
    let mut t = transform(&[("node.n2", "boiler")]);
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "iiot/cmd/node1/interval",
            b"30",
            r#"{"to":"n1","cmd":"interval","arg":30}"#,
        ),
        (
            "iiot/cmd/boiler/led",
            br#"{"on":true}"#,
            r#"{"to":"n2","cmd":"led","arg":{"on":true}}"#,
        ),
        (
            "iiot/cmd/node1/label",
            b" boiler \"room\" ",
            r#"{"to":"n1","cmd":"label","arg":"boiler \"room\""}"#,
        ),
        (
            "iiot/cmd/node7/reboot",
            b"",
            r#"{"to":"n7","cmd":"reboot"}"#,
        ),
        (
            "iiot/cmd/node1/reboot",
            b" \r\n",
            r#"{"to":"n1","cmd":"reboot"}"#,
        ),
    ];
    for (topic, payload, want) in cases {
        assert_eq!(
            encode(&mut t, topic, payload).as_deref(),
            Ok(*want),
            "{topic}"
        );
    }
}

#[test]
fn bad_commands_are_refused_with_a_reason() {
    let mut t = transform(&[("node.n2", "boiler")]);
    let unsupported = encode(&mut t, "other/cmd/node1/x", b"1");
    assert!(
        matches!(unsupported, Err(Error::Unsupported(_))),
        "{unsupported:?}"
    );
    for (topic, payload, says) in [
        ("iiot/cmd/node1", &b"1"[..], "no command name"),
        ("iiot/cmd/node2/x", b"1", "unknown node `node2`"),
        ("iiot/cmd/pump/x", b"1", "unknown node `pump`"),
        ("iiot/cmd/node1/a b", b"1", "command name"),
        ("iiot/cmd/node1/a/b", b"1", "command name"),
        ("iiot/cmd/node1/x", b"\xff\xfe", "UTF-8"),
    ] {
        match encode(&mut t, topic, payload) {
            Err(Error::Malformed(message)) => {
                assert!(message.contains(says), "{topic}: {message}")
            }
            other => panic!("{topic}: {other:?}"),
        }
    }
}
