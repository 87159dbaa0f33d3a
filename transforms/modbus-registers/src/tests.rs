#![allow(clippy::unwrap_used)]

use super::*;

use FieldValue::{Boolean, Float, Int, Text, Uint};
use sluice_sdk::modbus::WriteValues;

fn transform(pairs: &[(&str, &str)]) -> ModbusRegisters {
    ModbusRegisters::init(&Config::from_pairs(pairs.iter().copied())).unwrap()
}

fn example() -> ModbusRegisters {
    transform(EXAMPLE_CONFIG)
}

/// A reading of registers (function 3 or 4) from `address`.
fn registers(unit: u8, function: u8, address: u16, words: &[u16]) -> Frame {
    let mut data = vec![1, unit, function, 0];
    data.extend_from_slice(&address.to_be_bytes());
    data.extend_from_slice(&(words.len() as u16).to_be_bytes());
    for word in words {
        data.extend_from_slice(&word.to_be_bytes());
    }
    Frame::new("modbus", 1, data)
}

/// A reading of `count` bits (function 1 or 2) from `address`.
fn bits(unit: u8, function: u8, address: u16, count: u16, packed: &[u8]) -> Frame {
    let mut data = vec![1, unit, function, 0];
    data.extend_from_slice(&address.to_be_bytes());
    data.extend_from_slice(&count.to_be_bytes());
    data.extend_from_slice(packed);
    Frame::new("modbus", 1, data)
}

fn run(t: &mut ModbusRegisters, frame: &Frame) -> Output {
    sluice_sdk::process(t, frame).unwrap()
}

/// `(topic, payload)` of every message.
fn messages(out: &Output) -> Vec<(&str, &str)> {
    out.messages()
        .iter()
        .map(|m| (m.topic.as_str(), std::str::from_utf8(&m.payload).unwrap()))
        .collect()
}

fn fields(out: &Output) -> Vec<(&str, FieldValue)> {
    assert_eq!(out.points().len(), 1, "one point per reading");
    out.points()[0]
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect()
}

fn invalid_config(pairs: &[(&str, &str)]) -> String {
    match ModbusRegisters::init(&Config::from_pairs(pairs.iter().copied())) {
        Err(Error::InvalidConfig(message)) => message,
        Err(other) => panic!("{pairs:?}: expected InvalidConfig, got {other:?}"),
        Ok(_) => panic!("{pairs:?}: accepted"),
    }
}

/// The words of `bytes` (big-endian), most significant first.
fn words_of(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect()
}

#[test]
fn every_type_with_its_field_type() {
    let mut t = transform(&[
        ("point.a_u16", "holding 0 u16"),
        ("point.b_i16", "holding 1 i16"),
        ("point.c_u32", "holding 2 u32"),
        ("point.d_i32", "holding 4 i32"),
        ("point.e_f32", "holding 6 f32"),
        ("point.f_u64", "holding 8 u64"),
        ("point.g_i64", "holding 12 i64"),
        ("point.h_f64", "holding 16 f64"),
    ]);
    let mut words = vec![65535, (-2i16) as u16];
    words.extend(words_of(&4_000_000_000u32.to_be_bytes()));
    words.extend(words_of(&(-70_000i32).to_be_bytes()));
    words.extend(words_of(&21.1f32.to_be_bytes()));
    words.extend(words_of(&u64::MAX.to_be_bytes()));
    words.extend(words_of(&i64::MIN.to_be_bytes()));
    words.extend(words_of(&(-0.125f64).to_be_bytes()));
    let out = run(&mut t, &registers(1, 3, 0, &words));
    assert_eq!(
        messages(&out),
        [
            ("modbus/unit1/a_u16", "65535"),
            ("modbus/unit1/b_i16", "-2"),
            ("modbus/unit1/c_u32", "4000000000"),
            ("modbus/unit1/d_i32", "-70000"),
            ("modbus/unit1/e_f32", "21.1"),
            ("modbus/unit1/f_u64", "18446744073709551615"),
            ("modbus/unit1/g_i64", "-9223372036854775808"),
            ("modbus/unit1/h_f64", "-0.125"),
        ]
    );
    assert_eq!(
        fields(&out),
        [
            ("a_u16", Uint(65535)),
            ("b_i16", Int(-2)),
            ("c_u32", Uint(4_000_000_000)),
            ("d_i32", Int(-70_000)),
            ("e_f32", Float(21.1)),
            ("f_u64", Uint(u64::MAX)),
            ("g_i64", Int(i64::MIN)),
            ("h_f64", Float(-0.125)),
        ]
    );
    let point = &out.points()[0];
    assert_eq!(point.measurement, "modbus");
    assert_eq!(point.tags, [("device".to_string(), "unit1".to_string())]);
    assert_eq!(point.timestamp_ns, None);
    for m in out.messages() {
        assert_eq!((m.qos, m.retain), (Qos::AtLeastOnce, true));
    }
}

#[test]
fn bools_from_coils_and_discrete_inputs() {
    let mut t = transform(&[
        ("point.pump", "coils 8 bool"),
        ("point.fan", "coils 9 bool"),
        ("point.door", "discrete_inputs 0x10 bool"),
    ]);
    let out = run(&mut t, &bits(1, 1, 8, 2, &[0b01]));
    assert_eq!(
        messages(&out),
        [("modbus/unit1/pump", "true"), ("modbus/unit1/fan", "false")]
    );
    assert_eq!(
        fields(&out),
        [("pump", Boolean(true)), ("fan", Boolean(false))]
    );
    let out = run(&mut t, &bits(1, 2, 16, 1, &[1]));
    assert_eq!(messages(&out), [("modbus/unit1/door", "true")]);
}

#[test]
fn word_order_swaps_the_registers_not_the_bytes() {
    let mut t = transform(&[
        ("point.high", "input 0 u32"),
        ("point.explicit_high", "input 0 u32 order=high_first"),
        ("point.low", "input 0 u32 order=low_first"),
        ("point.low64", "input 0 u64 order=low_first"),
    ]);
    let out = run(
        &mut t,
        &registers(1, 4, 0, &[0x0001, 0x0002, 0x0003, 0x0004]),
    );
    assert_eq!(
        fields(&out),
        [
            ("explicit_high", Uint(0x0001_0002)),
            ("high", Uint(0x0001_0002)),
            ("low", Uint(0x0002_0001)),
            ("low64", Uint(0x0004_0003_0002_0001)),
        ]
    );
}

#[test]
fn scaled_values_are_floats_with_the_decimals_of_the_scaling() {
    let mut t = transform(&[
        ("point.a_tenths", "holding 0 i16 scale=0.1"),
        ("point.b_bar", "holding 1 u16 scale=0.01 offset=-1"),
        ("point.c_offset", "holding 2 u16 offset=-40"),
        ("point.d_double", "holding 3 u16 scale=2"),
        ("point.e_inverted", "holding 4 i16 scale=-0.5"),
        ("point.f_exponent", "holding 5 u16 scale=1e-3"),
        ("point.g_kilovolt", "holding 6 f32 scale=0.001"),
    ]);
    let mut words = vec![(-215i16) as u16, 250, 65, 215, 3, 1234];
    words.extend(words_of(&230.5f32.to_be_bytes()));
    let out = run(&mut t, &registers(1, 3, 0, &words));
    assert_eq!(
        messages(&out),
        [
            ("modbus/unit1/a_tenths", "-21.5"),
            ("modbus/unit1/b_bar", "1.50"),
            ("modbus/unit1/c_offset", "25"),
            ("modbus/unit1/d_double", "430"),
            ("modbus/unit1/e_inverted", "-1.5"),
            ("modbus/unit1/f_exponent", "1.234"),
            ("modbus/unit1/g_kilovolt", "0.2305"),
        ]
    );
    assert_eq!(
        fields(&out),
        [
            ("a_tenths", Float(-21.5)),
            ("b_bar", Float(1.5)),
            ("c_offset", Float(25.0)),
            ("d_double", Float(430.0)),
            ("e_inverted", Float(-1.5)),
            ("f_exponent", Float(1.234)),
            ("g_kilovolt", Float(0.2305)),
        ]
    );
}

#[test]
fn only_values_entirely_inside_the_reading() {
    let mut t = transform(&[
        ("point.before", "holding 9 u16"),
        ("point.first", "holding 10 u16"),
        ("point.straddling", "holding 11 u32"),
        ("point.after", "holding 12 u16"),
    ]);
    let out = run(&mut t, &registers(1, 3, 10, &[1, 2]));
    assert_eq!(messages(&out), [("modbus/unit1/first", "1")]);
    // Another table at the same addresses: nothing.
    assert!(run(&mut t, &registers(1, 4, 10, &[1, 2])).is_empty());
}

#[test]
fn output_follows_the_addresses_not_the_config() {
    let mut t = transform(&[
        ("point.z", "input 0 u16"),
        ("point.b", "input 2 u16"),
        ("point.a", "input 1 u16"),
    ]);
    let out = run(&mut t, &registers(1, 4, 0, &[10, 11, 12]));
    assert_eq!(
        messages(&out),
        [
            ("modbus/unit1/z", "10"),
            ("modbus/unit1/a", "11"),
            ("modbus/unit1/b", "12"),
        ]
    );
}

#[test]
fn units_devices_and_unit_tags() {
    let mut t = transform(&[
        ("device.1", "boiler"),
        (
            "point.temperature",
            "holding 0 i16 scale=0.1 unit=°C unit_id=1",
        ),
        ("point.flow", "holding 0 u16 unit=m3/h unit_id=2"),
        ("point.status", "holding 1 u16"),
    ]);
    let out = run(&mut t, &registers(1, 3, 0, &[215, 3]));
    assert_eq!(
        messages(&out),
        [
            ("modbus/boiler/temperature", "21.5"),
            ("modbus/boiler/status", "3"),
        ]
    );
    assert_eq!(
        out.points()[0].tags,
        [
            ("device".to_string(), "boiler".to_string()),
            ("temperature_unit".to_string(), "°C".to_string()),
        ]
    );
    let out = run(&mut t, &registers(2, 3, 0, &[12, 4]));
    assert_eq!(
        messages(&out),
        [("modbus/unit2/flow", "12"), ("modbus/unit2/status", "4")]
    );
    assert_eq!(out.points()[0].tag_value("flow_unit"), Some("m3/h"));
    let out = run(&mut t, &registers(3, 3, 0, &[12, 5]));
    assert_eq!(messages(&out), [("modbus/unit3/status", "5")]);
}

#[test]
fn deadband_holds_back_small_moves_from_the_last_published_value() {
    let mut t = transform(&[
        ("point.t", "holding 0 i16 scale=0.1 deadband=0.5 unit=°C"),
        ("point.other", "holding 1 u16"),
    ]);
    let mut step = |raw: i16| {
        let out = run(&mut t, &registers(1, 3, 0, &[raw as u16, 7]));
        let t: Vec<String> = messages(&out)
            .iter()
            .filter(|(topic, _)| topic.ends_with("/t"))
            .map(|(_, payload)| payload.to_string())
            .collect();
        // The unit tag stays, published or not.
        assert_eq!(out.points()[0].tag_value("t_unit"), Some("°C"));
        t
    };
    assert_eq!(step(215), ["21.5"], "the first value is always published");
    assert_eq!(step(218), [] as [&str; 0]);
    assert_eq!(
        step(220),
        [] as [&str; 0],
        "exactly the deadband is held back"
    );
    assert_eq!(step(221), ["22.1"], "0.6 from 21.5, the last published");
    assert_eq!(step(217), [] as [&str; 0]);
    assert_eq!(step(216), [] as [&str; 0], "0.5 from 22.1");
    assert_eq!(step(215), ["21.5"]);
}

#[test]
fn deadband_state_is_per_unit_and_float_noise_is_not_a_move() {
    let mut t = transform(&[("point.p", "input 0 u16 scale=0.1 deadband=0.3")]);
    let mut held_back = |unit: u8, raw: u16| run(&mut t, &registers(unit, 4, 0, &[raw])).is_empty();
    assert!(!held_back(1, 12));
    assert!(!held_back(2, 20), "unit 2 has a state of its own");
    // 1.5 - 1.2 is 0.30000000000000004 in binary: still within 0.3.
    assert!(held_back(1, 15), "nothing published, not even a point");
    assert!(!held_back(1, 16));
    assert!(held_back(2, 22));
}

#[test]
fn integer_deadband_compares_exactly() {
    let mut t = transform(&[("point.count", "input 0 u64 deadband=0")]);
    let big = u64::MAX - 1;
    let frame = |v: u64| registers(1, 4, 0, &words_of(&v.to_be_bytes()));
    assert_eq!(messages(&run(&mut t, &frame(big))).len(), 1);
    assert!(run(&mut t, &frame(big)).is_empty());
    // One apart at 2^64: the same f64, but a change.
    assert_eq!(messages(&run(&mut t, &frame(big + 1))).len(), 1);
}

#[test]
fn bool_deadband_zero_publishes_on_change() {
    let mut t = transform(&[("point.alarm", "discrete_inputs 0 bool deadband=0")]);
    let mut alarm = |on: u8| messages(&run(&mut t, &bits(1, 2, 0, 1, &[on]))).len();
    assert_eq!(alarm(0), 1);
    assert_eq!(alarm(0), 0);
    assert_eq!(alarm(1), 1);
    assert_eq!(alarm(1), 0);
    assert_eq!(alarm(0), 1);
}

#[test]
fn non_finite_floats_are_skipped() {
    let mut t = transform(&[
        ("point.a", "input 0 f32"),
        ("point.b", "input 2 f64 scale=10"),
        ("point.c", "input 6 u16"),
    ]);
    let mut words = words_of(&f32::NAN.to_be_bytes());
    words.extend(words_of(&f64::NEG_INFINITY.to_be_bytes()));
    words.push(9);
    let out = run(&mut t, &registers(1, 4, 0, &words));
    assert_eq!(messages(&out), [("modbus/unit1/c", "9")]);
    assert_eq!(fields(&out), [("c", Uint(9))]);
    // f64::MAX × 10 overflows.
    let mut words = words_of(&f32::INFINITY.to_be_bytes());
    words.extend(words_of(&f64::MAX.to_be_bytes()));
    words.push(9);
    let out = run(&mut t, &registers(1, 4, 0, &words));
    assert_eq!(messages(&out), [("modbus/unit1/c", "9")]);
}

#[test]
fn frames_that_are_not_readings_are_refused() {
    let mut t = example();
    let err = sluice_sdk::process(&mut t, &Frame::from_data([1, 1, 3])).unwrap_err();
    assert_eq!(
        err,
        Error::malformed("modbus reading: 3 bytes, shorter than the 8-byte header")
    );
    let err =
        sluice_sdk::process(&mut t, &Frame::from_data([1, 1, 3, 0, 0, 0, 0, 1, 0])).unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");
    let err =
        sluice_sdk::process(&mut t, &Frame::from_data([2, 1, 3, 0, 0, 0, 0, 1, 0, 0])).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
}

#[test]
fn prefix_measurement_qos_and_retain() {
    let mut t = transform(&[
        ("prefix", "site/line1"),
        ("measurement", "plc"),
        ("qos", "0"),
        ("retain", "false"),
        ("device.0", "Kühlraum"),
        ("point.t", "input 0 u16"),
    ]);
    let out = run(&mut t, &registers(0, 4, 0, &[1]));
    let m = &out.messages()[0];
    assert_eq!(m.topic, "site/line1/Kühlraum/t");
    assert_eq!((m.qos, m.retain), (Qos::AtMostOnce, false));
    assert_eq!(out.points()[0].measurement, "plc");
    assert_eq!(out.points()[0].tag_value("device"), Some("Kühlraum"));
}

#[test]
fn the_last_value_of_a_repeated_key_wins() {
    let mut t = transform(&[
        ("point.t", "input 0 u16"),
        ("device.1", "a"),
        ("point.t", "input 1 u16"),
        ("device.1", "b"),
    ]);
    let out = run(&mut t, &registers(1, 4, 0, &[5, 6]));
    assert_eq!(messages(&out), [("modbus/b/t", "6")]);
}

#[test]
fn bad_config_names_the_key() {
    let point = |spec: &'static str| invalid_config(&[("point.x", spec)]);
    for (spec, says) in [
        ("holding 0", "expected `<table> <address> <type> [options]`"),
        ("registers 0 u16", "unknown table `registers`"),
        ("holding 65536 u16", "address `65536` is not a number"),
        ("holding -1 u16", "address `-1`"),
        ("holding 0xG u16", "address `0xG`"),
        ("holding 0 u8", "unknown type `u8`"),
        ("coils 0 u16", "coils and discrete_inputs are `bool`"),
        ("input 0 bool", "not `bool`"),
        (
            "holding 65533 u64",
            "4 registers from address 65533 run past",
        ),
        ("holding 0 u16 scale", "`scale` is not an option"),
        ("holding 0 u16 scale=abc", "`scale=abc`: expected a number"),
        ("holding 0 u16 scale=inf", "`scale=inf`: expected a number"),
        ("holding 0 u16 scale=0", "`scale=0`"),
        ("holding 0 u16 scale=1 scale=2", "`scale` is given twice"),
        ("holding 0 u16 deadband=-1", "must not be negative"),
        ("coils 0 bool deadband=1", "only `deadband=0`"),
        ("coils 0 bool scale=2", "a `bool` cannot be scaled"),
        (
            "holding 0 u16 order=low_first",
            "`order` applies to 32- and 64-bit",
        ),
        ("holding 0 u32 order=middle", "`order=middle`"),
        ("holding 0 u16 unit=", "`unit=` needs a unit"),
        ("holding 0 u16 unit_id=256", "`unit_id=256`"),
        ("holding 0 u16 colour=red", "unknown option `colour`"),
        (
            "holding 0 u16 writable=yes",
            "`writable=yes`: expected `true` or `false`",
        ),
        (
            "holding 0 u16 writable=true writable=false",
            "`writable` is given twice",
        ),
        (
            "input 0 u16 writable=true",
            "`writable=true`: only `holding` and `coils` can be written",
        ),
        (
            "discrete_inputs 0 bool writable=true",
            "`writable=true`: only `holding` and `coils` can be written",
        ),
        (
            "holding 0 u16 bit=16",
            "`bit=16`: the bits of `u16` are 0 to 15",
        ),
        (
            "holding 0 i32 bits=28..32",
            "`bits=28..32`: the bits of `i32` are 0 to 31",
        ),
        ("holding 0 u16 bit=-1", "`bit=-1`: expected a bit number"),
        ("holding 0 u16 bit=", "`bit=`: expected a bit number"),
        (
            "holding 0 u16 bits=4-7",
            "`bits=4-7`: expected `<low>..<high>`",
        ),
        (
            "holding 0 u16 bits=4..",
            "`bits=4..`: expected `<low>..<high>`",
        ),
        (
            "holding 0 u16 bits=7..4",
            "the lower bit comes first, like `bits=4..7`",
        ),
        (
            "holding 0 u16 bit=1 bits=2..3",
            "give `bit=` or `bits=`, not both",
        ),
        ("holding 0 u16 bit=1 bit=2", "`bit` is given twice"),
        (
            "holding 0 f32 bit=1",
            "`bit=` selects bits of an integer register",
        ),
        (
            "coils 0 bool bits=0..0",
            "integer register (u16, i16, u32, i32, u64, i64), not of `bool`",
        ),
        (
            "holding 0 u16 bit=3 scale=0.1",
            "`bit=` is a `bool`, it cannot be scaled",
        ),
        (
            "holding 0 u16 offset=1 bit=3",
            "`bit=` is a `bool`, it cannot be scaled",
        ),
        (
            "holding 0 u16 bit=3 deadband=1",
            "`bit=` takes only `deadband=0`",
        ),
        (
            "holding 0 u16 deadband=0.5 bit=3",
            "`bit=` takes only `deadband=0`",
        ),
        (
            "holding 0 u16 bit=3 writable=true",
            "`writable=true` with `bit=`: writing part of a register",
        ),
        (
            "holding 0 u16 writable=true bits=0..3",
            "`writable=true` with `bits=`",
        ),
        (
            "holding 0 u16 enum=",
            "`enum=` needs `<value>:<label>` pairs",
        ),
        (
            "holding 0 u16 enum=0:off,",
            "`enum=`: `` is not `<value>:<label>`",
        ),
        (
            "holding 0 u16 enum=0:off,on",
            "`enum=`: `on` is not `<value>:<label>` (labels cannot contain `,`, `:` or spaces)",
        ),
        (
            "holding 0 u16 enum=0:off,1:low heat",
            "`heat` is not an option (`scale=`, `offset=`, `unit=`, `order=`, `deadband=`, `unit_id=`, `writable=`, `bit=`, `bits=`, `enum=`); labels in `enum=` cannot contain spaces",
        ),
        ("holding 0 u16 enum=0:a:b", "the label `a:b` contains `:`"),
        (
            "holding 0 u16 enum=zero:off",
            "`zero` in `zero:off` is not an integer",
        ),
        ("holding 0 u16 enum=0:", "`0:` has an empty label"),
        (
            "holding 0 u16 enum=0:off,0x0:none",
            "the value 0 is given twice",
        ),
        ("holding 0 u16 enum=0:off,1:2", "the label `2` is a number"),
        (
            "holding 0 u16 enum=0:off,65536:x",
            "65536 is not a value of `u16` (0 to 65535)",
        ),
        ("holding 0 u16 enum=-1:x", "-1 is not a value of `u16`"),
        (
            "holding 0 i16 enum=-32769:x",
            "-32769 is not a value of `i16` (-32768 to 32767)",
        ),
        (
            "holding 0 u16 bits=4..5 enum=4:x",
            "4 is not a value of `bits=4..5` (0 to 3)",
        ),
        (
            "holding 0 f64 enum=0:x",
            "`enum=` maps integer values, not `f64`",
        ),
        (
            "coils 0 bool enum=0:off",
            "`enum=` maps integer values, not `bool`",
        ),
        (
            "holding 0 u16 bit=2 enum=0:off",
            "use `bits=<n>..<n>` for an enum of one bit",
        ),
        (
            "holding 0 u16 enum=0:off scale=2",
            "`enum=` maps the raw value, it cannot be scaled",
        ),
        (
            "holding 0 u16 enum=0:off deadband=1",
            "`enum=` takes only `deadband=0`",
        ),
        (
            "holding 0 u16 bits=0..1 enum=0:off deadband=2",
            "`enum=` takes only `deadband=0`",
        ),
        (
            "holding 0 u16 enum=0:off,1:on,3:off writable=true",
            "the label `off` stands for 0 and 3: a writable entry needs a label per value",
        ),
    ] {
        let message = point(spec);
        assert!(
            message.starts_with(&format!("`point.x` = {spec:?}: ")),
            "{spec}: {message}"
        );
        assert!(message.contains(says), "{spec}: {message}");
    }
    for (pairs, says) in [
        (
            &[("point.a/b", "holding 0 u16")][..],
            "`point.a/b`: a point name",
        ),
        (&[("point.", "holding 0 u16")][..], "`point.`: a point name"),
        (&[("device.256", "x")][..], "`device.256`: a unit id"),
        (&[("device.boiler", "x")][..], "`device.boiler`: a unit id"),
        (&[("device.1", "a+b")][..], "`device.1`: a device name"),
        (&[("devise.1", "x")][..], "unknown key `devise.1`"),
        (&[("qos", "3")][..], "`qos` = \"3\""),
        (&[("retain", "yes")][..], "`retain` = \"yes\""),
        (&[("prefix", "/plant")][..], "`prefix` = \"/plant\""),
        (
            &[("measurement", "")][..],
            "`measurement` must not be empty",
        ),
        (&[][..], "the register map is empty"),
    ] {
        let mut pairs = pairs.to_vec();
        if !pairs.iter().any(|(k, _)| k.starts_with("point.")) && !pairs.is_empty() {
            pairs.push(("point.ok", "holding 0 u16"));
        }
        let message = invalid_config(&pairs);
        assert!(message.contains(says), "{pairs:?}: {message}");
    }
}

#[test]
fn bit_fields_share_a_register() {
    let mut t = transform(&[
        ("point.a_ready", "holding 0 u16 bit=0"),
        ("point.b_fault", "holding 0 u16 bit=1"),
        ("point.c_stage", "holding 0 u16 bits=4..7"),
        ("point.d_top", "holding 0 u16 bit=15"),
        ("point.e_sign", "holding 1 i16 bit=15"),
        ("point.f_all", "holding 1 i16 bits=0..15"),
        ("point.g_low_nibble", "holding 1 i16 bits=0..3"),
        ("point.h_word_order", "holding 2 u32 order=low_first bit=16"),
        (
            "point.i_high_half",
            "holding 2 u32 order=low_first bits=16..31",
        ),
        ("point.j_top_bit", "holding 4 i64 bit=63"),
        ("point.k_everything", "holding 4 i64 bits=0..63"),
        ("point.l_whole", "holding 0 u16"),
    ]);
    let mut words = vec![0b1000_0000_0011_0001, (-2i16) as u16, 0x0000, 0x0003];
    words.extend(words_of(&(-1i64).to_be_bytes()));
    let out = run(&mut t, &registers(1, 3, 0, &words));
    assert_eq!(
        messages(&out),
        [
            ("modbus/unit1/a_ready", "true"),
            ("modbus/unit1/b_fault", "false"),
            ("modbus/unit1/c_stage", "3"),
            ("modbus/unit1/d_top", "true"),
            ("modbus/unit1/l_whole", "32817"),
            ("modbus/unit1/e_sign", "true"),
            ("modbus/unit1/f_all", "65534"),
            ("modbus/unit1/g_low_nibble", "14"),
            // Low word first: the high half is the second register, 3.
            ("modbus/unit1/h_word_order", "true"),
            ("modbus/unit1/i_high_half", "3"),
            ("modbus/unit1/j_top_bit", "true"),
            ("modbus/unit1/k_everything", "18446744073709551615"),
        ]
    );
    assert_eq!(
        fields(&out),
        [
            ("a_ready", Boolean(true)),
            ("b_fault", Boolean(false)),
            ("c_stage", Uint(3)),
            ("d_top", Boolean(true)),
            ("l_whole", Uint(32817)),
            ("e_sign", Boolean(true)),
            ("f_all", Uint(65534)),
            ("g_low_nibble", Uint(14)),
            ("h_word_order", Boolean(true)),
            ("i_high_half", Uint(3)),
            ("j_top_bit", Boolean(true)),
            ("k_everything", Uint(u64::MAX)),
        ]
    );
}

#[test]
fn bits_are_scaled_and_deadbanded_as_numbers() {
    let mut t = transform(&[(
        "point.level",
        "input 0 u16 bits=8..15 scale=0.5 offset=-10 deadband=1",
    )]);
    let mut level = |high_byte: u16| {
        let out = run(&mut t, &registers(1, 4, 0, &[high_byte << 8 | 0xFF]));
        let payloads: Vec<String> = messages(&out).iter().map(|(_, p)| p.to_string()).collect();
        if !payloads.is_empty() {
            assert_eq!(fields(&out)[0].1, Float(payloads[0].parse().unwrap()));
        }
        payloads
    };
    assert_eq!(level(41), ["10.5"]);
    assert_eq!(level(43), [] as [&str; 0], "1.0 from 10.5");
    assert_eq!(level(44), ["12.0"]);
}

#[test]
fn a_bit_with_deadband_zero_publishes_on_change() {
    let mut t = transform(&[
        ("point.fault", "holding 0 u16 bit=3 deadband=0"),
        ("point.count", "holding 0 u16 bits=0..2"),
    ]);
    let mut step = |word: u16| messages(&run(&mut t, &registers(1, 3, 0, &[word]))).len();
    assert_eq!(step(0b0000), 2, "first: both");
    assert_eq!(step(0b0001), 1, "the fault bit did not change");
    assert_eq!(step(0b1001), 2);
    assert_eq!(step(0b1111), 1);
    assert_eq!(step(0b0111), 2);
}

#[test]
fn enums_publish_labels_and_unlabelled_values_as_numbers() {
    let mut t = transform(&[
        (
            "point.a_mode",
            "holding 0 u16 enum=0:off,1:heating,2:cooling",
        ),
        (
            "point.b_error",
            "holding 1 i16 enum=-1:sensor_open,0:ok,0x10:Störung",
        ),
        (
            "point.c_phase",
            "holding 2 u16 bits=8..9 enum=0:idle,1:starting,3:running",
        ),
        (
            "point.d_code",
            "holding 3 u32 order=low_first enum=70000:überlast",
        ),
    ]);
    let frame = |mode: u16, error: i16, phase_word: u16, code: u32| {
        let words = [
            mode,
            error as u16,
            phase_word,
            code as u16,
            (code >> 16) as u16,
        ];
        registers(1, 3, 0, &words)
    };
    let out = run(&mut t, &frame(1, -1, 0x0300, 70_000));
    assert_eq!(
        messages(&out),
        [
            ("modbus/unit1/a_mode", "heating"),
            ("modbus/unit1/b_error", "sensor_open"),
            ("modbus/unit1/c_phase", "running"),
            ("modbus/unit1/d_code", "überlast"),
        ]
    );
    assert_eq!(
        fields(&out),
        [
            ("a_mode", Text("heating".into())),
            ("b_error", Text("sensor_open".into())),
            ("c_phase", Text("running".into())),
            ("d_code", Text("überlast".into())),
        ]
    );
    let out = run(&mut t, &frame(7, 16, 0x02FF, 5));
    assert_eq!(
        fields(&out),
        [
            ("a_mode", Text("7".into())),
            ("b_error", Text("Störung".into())),
            ("c_phase", Text("2".into())),
            ("d_code", Text("5".into())),
        ]
    );
    let out = run(&mut t, &frame(0, -300, 0, 0));
    assert_eq!(fields(&out)[1], ("b_error", Text("-300".into())));
}

#[test]
fn an_enum_with_deadband_zero_publishes_on_change() {
    let mut t = transform(&[("point.mode", "holding 0 u16 enum=0:off,1:on deadband=0")]);
    let mut mode = |raw: u16| messages(&run(&mut t, &registers(1, 3, 0, &[raw]))).len();
    assert_eq!(mode(0), 1);
    assert_eq!(mode(0), 0);
    assert_eq!(mode(1), 1);
    assert_eq!(mode(5), 1, "a value without a label is a change too");
    assert_eq!(mode(5), 0);
}

#[test]
fn an_enum_is_written_by_its_labels_only() {
    let mut t = example();
    let w = write(&mut t, "plant/boiler/mode/set", "heating");
    assert_eq!(w.function(), 6);
    assert_eq!(
        w,
        Write {
            unit: 1,
            address: 7,
            values: WriteValues::Register(1)
        }
    );
    assert_eq!(
        write(&mut t, "plant/boiler/mode/set", " off\n").values,
        WriteValues::Register(0)
    );
    for payload in ["Heating", "1", "7", "boost", ""] {
        let err = refused(&mut t, "plant/boiler/mode/set", payload.as_bytes());
        assert!(matches!(err, Error::Malformed(_)), "{err:?}");
    }
    let err = refused(&mut t, "plant/boiler/mode/set", b"boost");
    assert_eq!(
        err,
        Error::malformed(
            "`plant/boiler/mode/set`: \"boost\" is not a label of `point.mode` (off, heating, cooling)"
        )
    );

    // A wide signed register, in the entry's order.
    let mut t = transform(&[(
        "point.state",
        "holding 10 i32 order=low_first enum=-2:reverse,0:stop,70000:fast writable=true",
    )]);
    for (label, words) in [
        ("reverse", [0xFFFE, 0xFFFF]),
        ("stop", [0, 0]),
        ("fast", [0x1170, 0x0001]),
    ] {
        let w = write(&mut t, "modbus/unit1/state/set", label);
        assert_eq!(w, registers_write(1, 10, &words), "{label}");
    }
}

#[test]
fn bit_fields_and_enums_read_back_what_was_written() {
    let mut t = transform(&[
        (
            "point.mode",
            "holding 0 i16 enum=-1:auto,0:off,1:on writable=true",
        ),
        ("point.mode_sign", "holding 0 i16 bit=15"),
        ("point.mode_low", "holding 0 i16 bits=0..1 enum=3:three"),
    ]);
    let value = match write(&mut t, "modbus/unit1/mode/set", "auto").values {
        WriteValues::Register(v) => v,
        other => panic!("{other:?}"),
    };
    let out = run(&mut t, &registers(1, 3, 0, &[value]));
    assert_eq!(
        messages(&out),
        [
            ("modbus/unit1/mode", "auto"),
            ("modbus/unit1/mode_low", "three"),
            ("modbus/unit1/mode_sign", "true"),
        ]
    );
}

/// The write `topic` ← `payload` encodes to, decoded.
fn write(t: &mut ModbusRegisters, topic: &str, payload: &str) -> Write {
    let bytes = t
        .encode_command(&Command::new(topic, payload))
        .unwrap_or_else(|e| panic!("{topic} <- {payload:?}: {e}"));
    Write::parse(&bytes).unwrap()
}

/// The refusal of `topic` ← `payload`, checked to name the topic.
fn refused(t: &mut ModbusRegisters, topic: &str, payload: &[u8]) -> Error {
    let err = match t.encode_command(&Command::new(topic, payload)) {
        Err(err) => err,
        Ok(bytes) => panic!("{topic} <- {payload:?}: written as {bytes:?}"),
    };
    assert!(err.message().starts_with(&format!("`{topic}`: ")), "{err}");
    err
}

fn registers_write(unit: u8, address: u16, words: &[u16]) -> Write {
    Write {
        unit,
        address,
        values: WriteValues::Registers(words.to_vec()),
    }
}

#[test]
fn a_scaled_setpoint_is_written_with_function_6() {
    let mut t = example();
    let w = write(&mut t, "plant/boiler/setpoint/set", "21.5");
    assert_eq!(w.function(), 6);
    assert_eq!(
        w,
        Write {
            unit: 1,
            address: 6,
            values: WriteValues::Register(215)
        }
    );
    let w = write(&mut t, "plant/boiler/setpoint/set", " -3\n");
    assert_eq!(w.values, WriteValues::Register((-30i16) as u16));
}

#[test]
fn wide_types_are_written_with_function_16_in_the_entry_order() {
    let mut t = transform(&[
        ("point.a_u32", "holding 0 u32 writable=true"),
        ("point.b_i32", "holding 2 i32 order=low_first writable=true"),
        ("point.c_f32", "holding 4 f32 writable=true"),
        ("point.d_u64", "holding 8 u64 writable=true"),
        (
            "point.e_i64",
            "holding 12 i64 order=low_first writable=true",
        ),
        ("point.f_f64", "holding 16 f64 scale=0.5 writable=true"),
    ]);
    let cases: [(&str, &str, u16, Vec<u16>); 6] = [
        ("a_u32", "100000", 0, vec![0x0001, 0x86A0]),
        ("b_i32", "-1500", 2, vec![0xFA24, 0xFFFF]),
        ("c_f32", "230.5", 4, vec![0x4366, 0x8000]),
        (
            "d_u64",
            "18446744073709551615",
            8,
            vec![0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF],
        ),
        ("e_i64", "-4200", 12, vec![0xEF98, 0xFFFF, 0xFFFF, 0xFFFF]),
        // 21.1 / 0.5
        ("f_f64", "21.1", 16, words_of(&42.2f64.to_be_bytes())),
    ];
    for (name, payload, address, words) in cases {
        let w = write(&mut t, &format!("modbus/unit1/{name}/set"), payload);
        assert_eq!(w.function(), 16, "{name}");
        assert_eq!(w, registers_write(1, address, &words), "{name}");
    }
}

#[test]
fn written_values_read_back_as_sent() {
    let mut t = transform(&[
        ("point.a_u16", "holding 0 u16 writable=true"),
        ("point.b_i16", "holding 1 i16 writable=true"),
        ("point.c_u32", "holding 2 u32 writable=true"),
        ("point.d_i32", "holding 4 i32 order=low_first writable=true"),
        ("point.g_i64", "holding 6 i64 writable=true"),
        (
            "point.h_scaled",
            "holding 10 u16 scale=0.01 offset=-1 writable=true",
        ),
    ]);
    let sent = [
        ("a_u16", "65535"),
        ("b_i16", "-32768"),
        ("c_u32", "4000000000"),
        ("d_i32", "-70000"),
        ("g_i64", "-9223372036854775808"),
        ("h_scaled", "1.50"),
    ];
    let mut words = vec![0; 11];
    for (name, payload) in sent {
        let w = write(&mut t, &format!("modbus/unit1/{name}/set"), payload);
        let values = match w.values {
            WriteValues::Register(v) => vec![v],
            WriteValues::Registers(v) => v,
            other => panic!("{name}: {other:?}"),
        };
        let at = usize::from(w.address);
        words[at..at + values.len()].copy_from_slice(&values);
    }
    let out = run(&mut t, &registers(1, 3, 0, &words));
    let read: Vec<(&str, &str)> = messages(&out)
        .into_iter()
        .map(|(topic, payload)| (topic.trim_start_matches("modbus/unit1/"), payload))
        .collect();
    assert_eq!(read, sent);
}

#[test]
fn coils_take_true_false_1_0_on_off_in_any_case() {
    let mut t = example();
    for (payload, on) in [
        ("true", true),
        ("false", false),
        ("1", true),
        ("0", false),
        ("on", true),
        ("off", false),
        ("ON", true),
        ("Off", false),
        ("TRUE\n", true),
    ] {
        let w = write(&mut t, "plant/boiler/pump/set", payload);
        assert_eq!(w.function(), 5, "{payload:?}");
        assert_eq!(
            w,
            Write {
                unit: 1,
                address: 0,
                values: WriteValues::Coil(on)
            },
            "{payload:?}"
        );
    }
}

#[test]
fn any_prefix_and_the_device_by_its_topic_name() {
    let mut t = transform(&[
        ("device.1", "boiler"),
        ("point.mode", "holding 3 u16 writable=true"),
    ]);
    for topic in [
        "modbus/boiler/mode/set",
        "site/line1/cmd/boiler/mode/set",
        "boiler/mode/set",
    ] {
        assert_eq!(write(&mut t, topic, "2").unit, 1, "{topic}");
    }
    // An entry without `unit_id` is written to the unit the name stands for.
    assert_eq!(write(&mut t, "modbus/unit7/mode/set", "2").unit, 7);
    assert_eq!(write(&mut t, "modbus/unit0/mode/set", "2").unit, 0);
    for device in ["unit1", "unit07", "unit256", "Boiler", ""] {
        let err = refused(&mut t, &format!("modbus/{device}/mode/set"), b"2");
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
        assert!(
            err.message()
                .contains(&format!("unknown device `{device}`")),
            "{err}"
        );
    }
}

#[test]
fn a_name_shared_by_two_units_is_not_written() {
    let mut t = transform(&[
        ("device.1", "pump"),
        ("device.2", "pump"),
        ("device.3", "unit4"),
        ("point.speed", "holding 0 u16 writable=true"),
    ]);
    let err = refused(&mut t, "modbus/pump/speed/set", b"5");
    assert_eq!(
        err,
        Error::unsupported(
            "`modbus/pump/speed/set`: device `pump` is the name of units 1, 2: give each its own name to write to it"
        )
    );
    // Unit 3 is named `unit4`, and unit 4 has no name: `unit4` is both.
    let err = refused(&mut t, "modbus/unit4/speed/set", b"5");
    assert!(err.message().contains("units 3, 4"), "{err}");
}

#[test]
fn inverse_scaling_rounds_to_the_nearest_raw_value() {
    let mut t = transform(&[
        ("point.tenths", "holding 0 i16 scale=0.1 writable=true"),
        (
            "point.bar",
            "holding 1 u16 scale=0.01 offset=-1 writable=true",
        ),
        ("point.inverted", "holding 2 i16 scale=-0.5 writable=true"),
        ("point.plain", "holding 3 i16 writable=true"),
    ]);
    let mut raw = |name: &str, payload: &str| match write(
        &mut t,
        &format!("modbus/unit1/{name}/set"),
        payload,
    )
    .values
    {
        WriteValues::Register(v) => v as i16,
        other => panic!("{other:?}"),
    };
    assert_eq!(raw("tenths", "21.5"), 215);
    assert_eq!(raw("tenths", "21.54"), 215);
    assert_eq!(raw("tenths", "21.56"), 216);
    assert_eq!(raw("tenths", "-0.04"), 0);
    assert_eq!(raw("bar", "1.5"), 250);
    assert_eq!(raw("bar", "-1"), 0);
    assert_eq!(raw("inverted", "1.5"), -3);
    assert_eq!(raw("plain", "2.5"), 3, "halves away from zero");
    assert_eq!(raw("plain", "-2.5"), -3);
    assert_eq!(raw("plain", "1e3"), 1000);
}

#[test]
fn values_out_of_range_are_refused_not_wrapped() {
    let mut t = transform(&[
        ("point.a_u16", "holding 0 u16 writable=true"),
        ("point.b_i16", "holding 1 i16 writable=true"),
        ("point.c_tenths", "holding 2 i16 scale=0.1 writable=true"),
        ("point.d_u64", "holding 3 u64 writable=true"),
        ("point.e_f32", "holding 7 f32 writable=true"),
        (
            "point.f_bar",
            "holding 9 u16 scale=0.01 offset=-1 writable=true",
        ),
    ]);
    for (name, payload, takes) in [
        ("a_u16", "65536", "(u16) takes 0 to 65535"),
        ("a_u16", "-1", "(u16) takes 0 to 65535"),
        ("a_u16", "65535.6", "(u16) takes 0 to 65535"),
        ("b_i16", "32768", "(i16) takes -32768 to 32767"),
        ("b_i16", "-32769", "(i16) takes -32768 to 32767"),
        (
            "c_tenths",
            "3276.8",
            "(i16 scale=0.1) takes -3276.8 to 3276.7",
        ),
        (
            "d_u64",
            "18446744073709551616",
            "(u64) takes 0 to 18446744073709551615",
        ),
        ("d_u64", "1e40", "(u64) takes 0 to"),
        (
            "e_f32",
            "1e39",
            "(f32) takes -3.4028234663852886e38 to 3.4028234663852886e38",
        ),
        (
            "f_bar",
            "-1.01",
            "(u16 scale=0.01 offset=-1) takes -1.00 to 654.35",
        ),
    ] {
        let topic = format!("modbus/unit1/{name}/set");
        let err = refused(&mut t, &topic, payload.as_bytes());
        assert!(matches!(err, Error::Malformed(_)), "{err:?}");
        let expected = format!("`{topic}`: {payload:?} is out of range: `point.{name}` {takes}");
        assert!(err.message().starts_with(&expected), "{err}");
    }
    // The edges themselves are written.
    for (name, payload) in [
        ("a_u16", "65535"),
        ("b_i16", "-32768"),
        ("c_tenths", "3276.7"),
        ("f_bar", "-1"),
        ("f_bar", "654.35"),
    ] {
        write(&mut t, &format!("modbus/unit1/{name}/set"), payload);
    }
}

#[test]
fn payloads_that_are_not_a_value_are_refused() {
    let mut t = example();
    for (topic, payload, says) in [
        (
            "plant/boiler/setpoint/set",
            &b"warm"[..],
            "\"warm\" is not a number",
        ),
        ("plant/boiler/setpoint/set", b"", "empty payload"),
        ("plant/boiler/setpoint/set", b"  ", "empty payload"),
        (
            "plant/boiler/setpoint/set",
            b"NaN",
            "\"NaN\" is not a number",
        ),
        (
            "plant/boiler/setpoint/set",
            b"inf",
            "\"inf\" is not a number",
        ),
        (
            "plant/boiler/setpoint/set",
            b"true",
            "\"true\" is not a number",
        ),
        (
            "plant/boiler/setpoint/set",
            b"21,5",
            "\"21,5\" is not a number",
        ),
        (
            "plant/boiler/setpoint/set",
            &[0xff, 0x31],
            "not valid UTF-8",
        ),
        (
            "plant/boiler/pump/set",
            b"2",
            "\"2\" is not a coil state (true/false, 1/0, on/off)",
        ),
        (
            "plant/boiler/pump/set",
            b"yes",
            "\"yes\" is not a coil state",
        ),
    ] {
        let err = refused(&mut t, topic, payload);
        assert!(matches!(err, Error::Malformed(_)), "{err:?}");
        assert!(err.message().contains(says), "{payload:?}: {err}");
    }
    let long = "x".repeat(500);
    let err = refused(&mut t, "plant/boiler/setpoint/set", long.as_bytes());
    assert!(err.message().len() < 100, "the payload is cut: {err}");
}

#[test]
fn input_registers_and_discrete_inputs_are_read_only() {
    let mut t = example();
    let err = refused(&mut t, "plant/meter/voltage/set", b"230");
    assert_eq!(
        err,
        Error::unsupported(
            "`plant/meter/voltage/set`: `point.voltage` is an input register, read-only in Modbus"
        )
    );
    let err = refused(&mut t, "plant/boiler/alarm/set", b"off");
    assert_eq!(
        err,
        Error::unsupported(
            "`plant/boiler/alarm/set`: `point.alarm` is a discrete input, read-only in Modbus"
        )
    );
}

#[test]
fn writes_are_opt_in_with_writable_true() {
    let mut t = transform(&[
        ("point.by_default", "holding 0 u16"),
        ("point.explicitly_not", "holding 1 u16 writable=false"),
        ("point.coil", "coils 0 bool"),
        ("point.allowed", "holding 2 u16 writable=true"),
    ]);
    for name in ["by_default", "explicitly_not", "coil"] {
        let topic = format!("modbus/unit1/{name}/set");
        let err = refused(&mut t, &topic, b"1");
        assert_eq!(
            err,
            Error::unsupported(format!(
                "`{topic}`: `point.{name}` is not writable: add `writable=true` to its entry to allow writes"
            ))
        );
    }
    assert_eq!(
        write(&mut t, "modbus/unit1/allowed/set", "1").values,
        WriteValues::Register(1)
    );
}

#[test]
fn unknown_entries_and_entries_of_other_units_are_refused() {
    let mut t = example();
    let err = refused(&mut t, "plant/boiler/setpiont/set", b"21");
    assert_eq!(
        err,
        Error::unsupported(
            "`plant/boiler/setpiont/set`: unknown entry: no `point.setpiont` in the map"
        )
    );
    // The setpoint is unit 1's (`unit_id=1`), the meter is unit 2.
    let err = refused(&mut t, "plant/meter/setpoint/set", b"21");
    assert_eq!(
        err,
        Error::unsupported(
            "`plant/meter/setpoint/set`: `point.setpoint` is mapped for unit 1 only, not for `meter` (unit 2)"
        )
    );
}

#[test]
fn topics_not_ending_in_device_name_set_are_refused() {
    let mut t = example();
    for topic in [
        "plant/boiler/setpoint",
        "plant/boiler/setpoint/get",
        "setpoint/set",
        "set",
        "plant/boiler/setpoint/set/",
    ] {
        let err = refused(&mut t, topic, b"21");
        assert_eq!(
            err,
            Error::malformed(format!(
                "`{topic}`: a write goes to `<prefix>/<device>/<name>/set`"
            ))
        );
    }
}

/// The shipped test vectors pass against the example config, checked the
/// way the host checks them on a deploy (see docs/transforms.md): one
/// instance, the vectors in order, `expect` compared exactly where given.
#[test]
fn shipped_vectors_pass_with_the_example_config() {
    let text = include_str!("../modbus_registers.vectors.jsonl");
    let mut t = example();
    let mut failures = Vec::new();
    let mut count = 0;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        count += 1;
        if let Err(why) = check_vector(&mut t, line) {
            failures.push(format!("line {}: {why}", index + 1));
        }
    }
    assert_eq!(failures, [] as [String; 0]);
    assert_eq!(count, 16);
}

fn check_vector(t: &mut ModbusRegisters, line: &str) -> Result<(), String> {
    use serde_json::Value as Json;
    let vector: serde_json::Map<String, Json> =
        serde_json::from_str(line).map_err(|e| e.to_string())?;
    only_keys(
        &vector,
        &["name", "input", "input_base64", "received_at_ns", "expect"],
    )?;
    let input = match (vector.get("input"), vector.get("input_base64")) {
        (Some(Json::String(text)), None) => text.as_bytes().to_vec(),
        (None, Some(Json::String(b64))) => base64_decode(b64)?,
        _ => return Err("give exactly one of `input` and `input_base64`".into()),
    };
    let at = vector
        .get("received_at_ns")
        .and_then(Json::as_u64)
        .unwrap_or(0);
    let result = sluice_sdk::process(t, &Frame::new("gw", at, input));
    let expect = vector
        .get("expect")
        .and_then(Json::as_object)
        .ok_or("no `expect`")?;
    only_keys(expect, &["error", "messages", "points"])?;
    if let Some(kind) = expect.get("error") {
        let got = match &result {
            Err(Error::Malformed(_)) => "malformed",
            Err(Error::Unsupported(_)) => "unsupported",
            Err(Error::InvalidConfig(_)) => "invalid_config",
            Err(Error::Internal(_)) => "internal",
            Ok(_) => return Err(format!("expected error {kind}, got output")),
        };
        return match kind.as_str() {
            Some("any") => Ok(()),
            Some(kind) if kind == got => Ok(()),
            _ => Err(format!("expected error {kind}, got {got}")),
        };
    }
    let out = result.map_err(|e| format!("expected output, got {e}"))?;
    if let Some(expected) = expect.get("messages").and_then(Json::as_array) {
        if expected.len() != out.messages().len() {
            return Err(format!(
                "expected {} message(s), got {:?}",
                expected.len(),
                messages(&out)
            ));
        }
        for (want, got) in expected.iter().zip(out.messages()) {
            let want = want.as_object().ok_or("a message is an object")?;
            only_keys(want, &["topic", "payload", "qos", "retain"])?;
            let payload = std::str::from_utf8(&got.payload).map_err(|e| e.to_string())?;
            let matches = want.get("topic").and_then(Json::as_str) == Some(got.topic.as_str())
                && want
                    .get("payload")
                    .is_none_or(|p| p.as_str() == Some(payload))
                && want
                    .get("qos")
                    .is_none_or(|q| q.as_u64() == Some(got.qos.level().into()))
                && want
                    .get("retain")
                    .is_none_or(|r| r.as_bool() == Some(got.retain));
            if !matches {
                return Err(format!("expected {want:?}, got {got:?}"));
            }
        }
    }
    if let Some(expected) = expect.get("points").and_then(Json::as_array) {
        if expected.len() != out.points().len() {
            return Err(format!(
                "expected {} point(s), got {:?}",
                expected.len(),
                out.points()
            ));
        }
        for (want, got) in expected.iter().zip(out.points()) {
            let want = want.as_object().ok_or("a point is an object")?;
            only_keys(want, &["measurement", "tags", "fields", "timestamp_ns"])?;
            let tags_match = want.get("tags").is_none_or(|tags| {
                let tags = tags.as_object().cloned().unwrap_or_default();
                tags.len() == got.tags.len()
                    && got
                        .tags
                        .iter()
                        .all(|(k, v)| tags.get(k).and_then(Json::as_str) == Some(v.as_str()))
            });
            let fields_match = want.get("fields").is_none_or(|fields| {
                let fields = fields.as_object().cloned().unwrap_or_default();
                fields.len() == got.fields.len()
                    && got.fields.iter().all(|(k, v)| {
                        fields.get(k).is_some_and(|want| match (want, v) {
                            (Json::Bool(w), Boolean(g)) => w == g,
                            (Json::String(w), Text(g)) => w == g,
                            (Json::Number(w), Float(g)) => w.as_f64() == Some(*g),
                            (Json::Number(w), Int(g)) => w.as_i64() == Some(*g),
                            (Json::Number(w), Uint(g)) => w.as_u64() == Some(*g),
                            _ => false,
                        })
                    })
            });
            let matches = want.get("measurement").and_then(Json::as_str)
                == Some(got.measurement.as_str())
                && tags_match
                && fields_match
                && want
                    .get("timestamp_ns")
                    .is_none_or(|ts| ts.as_i64() == got.timestamp_ns);
            if !matches {
                return Err(format!("expected {want:?}, got {got:?}"));
            }
        }
    }
    Ok(())
}

fn only_keys(
    object: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
) -> Result<(), String> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(format!("unknown key `{key}`")),
        None => Ok(()),
    }
}

fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.trim().trim_end_matches('=').bytes() {
        let digit = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| format!("not base64: {text}"))?;
        acc = acc << 6 | digit as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    Ok(bytes)
}

/// docs/transforms.md shows `EXAMPLE_CONFIG` as the pipeline's TOML.
#[test]
fn the_docs_show_the_example_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/transforms.md");
    let docs = std::fs::read_to_string(path).unwrap();
    let section = docs.split("## Modbus readings").nth(1).unwrap();
    let block = section
        .split("[pipeline.transform.config]\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let unquote = |s: &str| s.trim().trim_matches('"').to_owned();
    let shown: Vec<(String, String)> = block
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(k, v)| (unquote(k), unquote(v)))
        .collect();
    let expected: Vec<(String, String)> = EXAMPLE_CONFIG
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(shown, expected);
}
