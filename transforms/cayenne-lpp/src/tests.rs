#![allow(clippy::unwrap_used)]

use super::*;

fn lpp(pairs: &[(&str, &str)]) -> CayenneLpp {
    CayenneLpp::init(&Config::from_pairs(pairs.iter().copied())).unwrap()
}

fn decode(data: &[u8]) -> Output {
    sluice_sdk::process(&mut lpp(&[("device", "node1")]), &Frame::new("gw", 1, data)).unwrap()
}

/// `(topic, payload)` of every message.
fn messages(out: &Output) -> Vec<(String, String)> {
    out.messages()
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                String::from_utf8(m.payload.clone()).unwrap(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

fn malformed(data: &[u8]) -> String {
    match sluice_sdk::process(&mut lpp(&[("device", "node1")]), &Frame::new("gw", 1, data)) {
        Err(Error::Malformed(message)) => message,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn field(out: &Output, channel: &str, key: &str) -> FieldValue {
    let point = out
        .points()
        .iter()
        .find(|p| p.tag_value("channel") == Some(channel))
        .unwrap_or_else(|| panic!("no point for channel {channel}"));
    point
        .field_value(key)
        .unwrap_or_else(|| panic!("no field {key} on channel {channel}"))
        .clone()
}

#[test]
fn spec_example_two_temperatures() {
    let out = decode(&[0x03, 0x67, 0x01, 0x10, 0x05, 0x67, 0x00, 0xFF]);
    assert_eq!(
        messages(&out),
        pairs(&[
            ("lpp/node1/temperature_3", "27.2"),
            ("lpp/node1/temperature_5", "25.5"),
        ])
    );
    for m in out.messages() {
        assert_eq!((m.qos, m.retain), (Qos::AtLeastOnce, true));
    }
    assert_eq!(out.points().len(), 2);
    let p = &out.points()[0];
    assert_eq!(p.measurement, "lpp");
    assert_eq!(
        p.tags,
        [
            ("device".to_string(), "node1".to_string()),
            ("channel".to_string(), "3".to_string())
        ]
    );
    assert_eq!(
        p.fields,
        [("temperature".to_string(), FieldValue::Float(27.2))]
    );
    assert_eq!(p.timestamp_ns, None);
}

#[test]
fn negative_temperature() {
    let out = decode(&[0x01, 0x67, 0xFF, 0xD7]);
    assert_eq!(
        messages(&out),
        pairs(&[("lpp/node1/temperature_1", "-4.1")])
    );
    assert_eq!(field(&out, "1", "temperature"), FieldValue::Float(-4.1));
}

#[test]
fn digital_and_presence_are_integers() {
    let out = decode(&[0x01, 0x00, 0x01, 0x02, 0x01, 0xFF, 0x03, 0x66, 0x00]);
    assert_eq!(
        messages(&out),
        pairs(&[
            ("lpp/node1/digital_input_1", "1"),
            ("lpp/node1/digital_output_2", "255"),
            ("lpp/node1/presence_3", "0"),
        ])
    );
    assert_eq!(field(&out, "1", "digital_input"), FieldValue::Int(1));
    assert_eq!(field(&out, "2", "digital_output"), FieldValue::Int(255));
    assert_eq!(field(&out, "3", "presence"), FieldValue::Int(0));
}

#[test]
fn analog_input_and_output_are_signed_hundredths() {
    let out = decode(&[
        0x04, 0x02, 0x01, 0x3B, 0x05, 0x03, 0xFE, 0xD4, 0x06, 0x02, 0x80, 0x00,
    ]);
    assert_eq!(
        messages(&out),
        pairs(&[
            ("lpp/node1/analog_input_4", "3.15"),
            ("lpp/node1/analog_output_5", "-3.00"),
            ("lpp/node1/analog_input_6", "-327.68"),
        ])
    );
    assert_eq!(field(&out, "4", "analog_input"), FieldValue::Float(3.15));
    assert_eq!(field(&out, "5", "analog_output"), FieldValue::Float(-3.0));
}

#[test]
fn illuminance_is_unsigned_lux() {
    let out = decode(&[0x07, 0x65, 0xFF, 0xFE]);
    assert_eq!(
        messages(&out),
        pairs(&[("lpp/node1/illuminance_7", "65534")])
    );
    assert_eq!(field(&out, "7", "illuminance"), FieldValue::Int(65534));
}

#[test]
fn humidity_is_half_percent_steps() {
    let out = decode(&[0x02, 0x68, 0x61, 0x03, 0x68, 0xC8]);
    assert_eq!(
        messages(&out),
        pairs(&[
            ("lpp/node1/humidity_2", "48.5"),
            ("lpp/node1/humidity_3", "100.0"),
        ])
    );
    assert_eq!(field(&out, "2", "humidity"), FieldValue::Float(48.5));
}

#[test]
fn accelerometer_spec_example_with_negative_axis() {
    let out = decode(&[0x06, 0x71, 0x04, 0xD2, 0xFB, 0x2E, 0x00, 0x00]);
    assert_eq!(
        messages(&out),
        pairs(&[
            ("lpp/node1/accelerometer_6/x", "1.234"),
            ("lpp/node1/accelerometer_6/y", "-1.234"),
            ("lpp/node1/accelerometer_6/z", "0.000"),
        ])
    );
    assert_eq!(
        field(&out, "6", "accelerometer_x"),
        FieldValue::Float(1.234)
    );
    assert_eq!(
        field(&out, "6", "accelerometer_y"),
        FieldValue::Float(-1.234)
    );
    assert_eq!(field(&out, "6", "accelerometer_z"), FieldValue::Float(0.0));
}

#[test]
fn barometer_is_unsigned_tenths_of_hpa() {
    let out = decode(&[0x08, 0x73, 0x27, 0x94]);
    assert_eq!(
        messages(&out),
        pairs(&[("lpp/node1/barometer_8", "1013.2")])
    );
    // Above i16::MAX: unsigned.
    let out = decode(&[0x08, 0x73, 0xFF, 0xFF]);
    assert_eq!(
        messages(&out),
        pairs(&[("lpp/node1/barometer_8", "6553.5")])
    );
}

#[test]
fn gyrometer_is_signed_hundredths_per_axis() {
    let out = decode(&[0x09, 0x86, 0x00, 0x7D, 0xFF, 0x83, 0x80, 0x00]);
    assert_eq!(
        messages(&out),
        pairs(&[
            ("lpp/node1/gyrometer_9/x", "1.25"),
            ("lpp/node1/gyrometer_9/y", "-1.25"),
            ("lpp/node1/gyrometer_9/z", "-327.68"),
        ])
    );
    assert_eq!(field(&out, "9", "gyrometer_y"), FieldValue::Float(-1.25));
}

#[test]
fn gps_spec_example_with_negative_longitude() {
    let out = decode(&[
        0x01, 0x88, 0x06, 0x76, 0x5F, 0xF2, 0x96, 0x0A, 0x00, 0x03, 0xE8,
    ]);
    assert_eq!(
        messages(&out),
        pairs(&[
            ("lpp/node1/gps_1/latitude", "42.3519"),
            ("lpp/node1/gps_1/longitude", "-87.9094"),
            ("lpp/node1/gps_1/altitude", "10.00"),
        ])
    );
    assert_eq!(field(&out, "1", "gps_latitude"), FieldValue::Float(42.3519));
    assert_eq!(
        field(&out, "1", "gps_longitude"),
        FieldValue::Float(-87.9094)
    );
    assert_eq!(field(&out, "1", "gps_altitude"), FieldValue::Float(10.0));
    // Below sea level, southern hemisphere.
    let out = decode(&[
        0x02, 0x88, 0xF9, 0x89, 0xA1, 0x00, 0x00, 0x01, 0xFF, 0xFF, 0x9C,
    ]);
    assert_eq!(
        messages(&out),
        pairs(&[
            ("lpp/node1/gps_2/latitude", "-42.3519"),
            ("lpp/node1/gps_2/longitude", "0.0001"),
            ("lpp/node1/gps_2/altitude", "-1.00"),
        ])
    );
}

#[test]
fn several_types_on_one_channel_share_a_point() {
    let out = decode(&[
        0x01, 0x67, 0x00, 0xC8, 0x01, 0x68, 0x50, 0x02, 0x67, 0x00, 0x01,
    ]);
    assert_eq!(out.points().len(), 2);
    let p = &out.points()[0];
    assert_eq!(
        p.fields,
        [
            ("temperature".to_string(), FieldValue::Float(20.0)),
            ("humidity".to_string(), FieldValue::Float(40.0)),
        ]
    );
    assert_eq!(
        messages(&out)[0],
        ("lpp/node1/temperature_1".into(), "20.0".into())
    );
    // A repeated type: both messages, the point keeps the last value.
    let out = decode(&[0x01, 0x67, 0x00, 0x01, 0x01, 0x67, 0x00, 0x02]);
    assert_eq!(out.messages().len(), 2);
    assert_eq!(
        out.points()[0].fields,
        [("temperature".to_string(), FieldValue::Float(0.2))]
    );
}

#[test]
fn unknown_type_names_its_offset() {
    assert_eq!(
        malformed(&[0x01, 0x67, 0x01, 0x10, 0x02, 0x74, 0x01, 0x02]),
        "unknown LPP type 0x74 at byte 5"
    );
}

#[test]
fn truncated_value_names_its_offset() {
    assert_eq!(
        malformed(&[0x03, 0x67, 0x01]),
        "truncated temperature on channel 3 at byte 2: needs 2 bytes, 1 left"
    );
    assert_eq!(
        malformed(&[0x01, 0x88, 0x06, 0x76, 0x5F, 0xF2, 0x96, 0x0A, 0x00, 0x03]),
        "truncated gps on channel 1 at byte 2: needs 9 bytes, 8 left"
    );
    assert_eq!(
        malformed(&[0x03, 0x67, 0x01, 0x10, 0x04]),
        "truncated item header at byte 4: needs channel and type, 1 byte left"
    );
    assert_eq!(malformed(&[]), "empty LPP payload");
}

#[test]
fn configuration() {
    let mut t = lpp(&[
        ("prefix", "plant/line1"),
        ("device", "boiler"),
        ("qos", "0"),
        ("retain", "false"),
    ]);
    let out = sluice_sdk::process(&mut t, &Frame::new("gw", 1, [0x03, 0x67, 0x01, 0x10])).unwrap();
    let m = &out.messages()[0];
    assert_eq!(m.topic, "plant/line1/boiler/temperature_3");
    assert_eq!((m.qos, m.retain), (Qos::AtMostOnce, false));
    assert_eq!(out.points()[0].tag_value("device"), Some("boiler"));
    // Without `device`: the frame's source (the pipeline name).
    let mut t = lpp(&[]);
    let out =
        sluice_sdk::process(&mut t, &Frame::new("sensors", 1, [0x03, 0x67, 0x01, 0x10])).unwrap();
    assert_eq!(out.messages()[0].topic, "lpp/sensors/temperature_3");

    for (pairs, expected) in [
        (&[("devise", "x")][..], "unknown key `devise`"),
        (&[("device", "a/b")][..], "`device` = \"a/b\""),
        (&[("prefix", "/lpp")][..], "`prefix` = \"/lpp\""),
        (&[("qos", "3")][..], "qos"),
        (&[("retain", "yes")][..], "retain"),
    ] {
        match CayenneLpp::init(&Config::from_pairs(pairs.iter().copied())) {
            Err(Error::InvalidConfig(message)) => {
                assert!(message.contains(expected), "{pairs:?}: {message}")
            }
            Err(other) => panic!("{pairs:?}: expected InvalidConfig, got {other:?}"),
            Ok(_) => panic!("{pairs:?}: accepted"),
        }
    }
}

#[test]
fn fixed_point_formatting() {
    assert_eq!(format_fixed(0, 1), "0.0");
    assert_eq!(format_fixed(-5, 2), "-0.05");
    assert_eq!(format_fixed(123_456, 4), "12.3456");
    assert_eq!(format_fixed(-8_388_608, 4), "-838.8608");
    assert_eq!(format_fixed(42, 0), "42");
    assert_eq!(read_int(&[0x80, 0x00, 0x00], true), -8_388_608);
    assert_eq!(read_int(&[0xFF, 0xFF], false), 65_535);
}
