//! The InfluxDB writer against a real InfluxDB 1.6.7 (`influxd`, Debian's
//! `influxdb`), one server per test on ephemeral ports: exact round trips
//! (escaping, types, precisions), a bad line among good ones, a 20 s outage,
//! and authentication that is fixed while the writer keeps retrying.

use std::time::{Duration, Instant};

use sluice::model::{FieldValue, Point};
use sluice_tests::{InfluxWriter, Influxd};

/// `[influx]` for a test: fast defaults, overridden by `extra` (TOML lines).
fn config(url: &str, db: &str, extra: &str) -> String {
    let mut text = format!("url = \"{url}\"\ndatabase = \"{db}\"\n{extra}\n");
    for default in [
        "flush_interval_ms = 100",
        "retry_min_ms = 50",
        "retry_max_ms = 1000",
        "auth_retry_ms = 300",
    ] {
        let key = default.split(' ').next().unwrap_or_default();
        if !extra.lines().any(|l| l.split(' ').next() == Some(key)) {
            text.push_str(default);
            text.push('\n');
        }
    }
    text
}

fn point(
    measurement: &str,
    tags: &[(&str, &str)],
    fields: Vec<(&str, FieldValue)>,
    ts: i64,
) -> Point {
    Point {
        measurement: measurement.into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        timestamp_ns: Some(ts),
    }
}

/// Tags and fields sorted, as [`Influxd::read_points`] returns them;
/// unsigned values as the integers InfluxDB 1.x stores them as.
fn canonical(mut p: Point) -> Point {
    p.tags.sort();
    p.fields.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, value) in &mut p.fields {
        if let UInt(u) = value {
            *value = Int(i64::try_from(*u).expect("within i64"));
        }
    }
    p
}

fn sorted(mut points: Vec<Point>) -> Vec<Point> {
    points.sort_by(|a, b| {
        (&a.measurement, &a.tags, a.timestamp_ns).cmp(&(&b.measurement, &b.tags, b.timestamp_ns))
    });
    points
}

use FieldValue::{Bool, Float, Int, Text, UInt};

#[test]
fn every_value_tag_and_escape_reads_back_exactly() {
    let influx = Influxd::start();
    influx.create_database("exact");
    let t0 = 1_700_000_000_123_456_789;
    let points = vec![
        point(
            "plain",
            &[("node", "n1")],
            vec![
                ("f", Float(1.5)),
                ("i", Int(-42)),
                ("b", Bool(true)),
                ("s", Text("hello".into())),
            ],
            t0,
        ),
        point(
            "my m,x=y \"q\" ü",
            &[
                ("a b", "c,d=e f"),
                ("quote\"key", "va\"l'ue"),
                ("uni", "ü€😀 ✓"),
                ("path", "C:\\temp\\x"),
                ("eq=", "=lead"),
            ],
            vec![
                ("f k=,", Float(0.1)),
                (
                    "s",
                    Text("say \"hi\" \\ there, a=b\nnext line ✓😀 \\\"".into()),
                ),
                ("empty", Text(String::new())),
                ("back\\slash", Bool(false)),
            ],
            t0 + 1,
        ),
        point(
            "ints",
            &[("kind", "ints")],
            vec![
                ("min", Int(i64::MIN)),
                ("max", Int(i64::MAX)),
                ("neg", Int(-1)),
                ("zero", Int(0)),
                // u64 within i64: written as an integer (unsigned = "integer", the v1 default).
                ("unsigned", UInt(9_223_372_036_854_775_807)),
            ],
            t0 + 2,
        ),
        point(
            "floats",
            &[("kind", "floats")],
            vec![
                ("max", Float(f64::MAX)),
                ("min_positive", Float(f64::MIN_POSITIVE)),
                ("subnormal", Float(5e-324)),
                ("big", Float(1e300)),
                ("small", Float(-2.5e-7)),
                ("pi", Float(std::f64::consts::PI)),
                ("third", Float(1.0 / 3.0)),
                ("whole", Float(26.0)),
                ("exact", Float(123_456_789.125)),
                ("neg", Float(-1e-310)),
            ],
            t0 + 3,
        ),
        // Before 1970.
        point("old", &[], vec![("v", Int(1))], -1_000_000_000),
        // No tags, the transform's order of tags is not sorted.
        point(
            "unsorted",
            &[("z", "1"), ("a", "2"), ("m", "3")],
            vec![("v", Int(2))],
            t0,
        ),
    ];
    let mut writer = InfluxWriter::start(&config(&influx.url(), "exact", ""));
    writer.send(points.clone());
    writer.finish(Duration::from_secs(10));
    assert_eq!(writer.dead_letters(), Vec::<serde_json::Value>::new());
    assert_eq!(writer.delivered(), points.len() as u64);

    let got = sorted(influx.read_points("exact"));
    let want = sorted(points.into_iter().map(canonical).collect());
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

#[test]
fn precisions_floor_timestamps() {
    let influx = Influxd::start();
    let ts = 1_700_000_000_987_654_321_i64;
    for (precision, want) in [
        ("ns", ts),
        ("us", 1_700_000_000_987_654_000),
        ("ms", 1_700_000_000_987_000_000),
        ("s", 1_700_000_000_000_000_000),
    ] {
        influx.create_database(precision);
        let mut writer = InfluxWriter::start(&config(
            &influx.url(),
            precision,
            &format!("precision = \"{precision}\""),
        ));
        writer.send([point("p", &[], vec![("v", Int(1))], ts)]);
        writer.finish(Duration::from_secs(10));
        let got = influx.read_points(precision);
        assert_eq!(got.len(), 1, "{precision}");
        assert_eq!(got[0].timestamp_ns, Some(want), "{precision}");
    }
}

/// InfluxDB 1.6.7 has no unsigned integers: `5u` is "invalid number". With
/// the v1 default (`unsigned = "integer"`) values up to i64::MAX are written
/// as integers and larger ones are dead-lettered before sending; with
/// `unsigned = "native"` the server refuses the line and it is dead-lettered
/// with the server's reason.
#[test]
fn unsigned_values_on_influxdb_1_6() {
    let influx = Influxd::start();
    influx.create_database("u");
    let mut writer = InfluxWriter::start(&config(&influx.url(), "u", ""));
    writer.send([
        point("u", &[], vec![("v", UInt(42))], 1),
        point("u", &[], vec![("v", UInt(u64::MAX))], 2),
    ]);
    writer.finish(Duration::from_secs(10));
    assert_eq!(writer.dropped("unsigned_out_of_range"), 1);
    let got = influx.read_points("u");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].fields, vec![("v".to_string(), Int(42))]);

    influx.create_database("native");
    let mut native = InfluxWriter::start(&config(&influx.url(), "native", "unsigned = \"native\""));
    native.send([
        point("n", &[], vec![("v", UInt(5))], 1),
        point("n", &[], vec![("w", Int(5))], 2),
    ]);
    native.finish(Duration::from_secs(10));
    let letters = native.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["line"], "n v=5u 1");
    assert!(
        letters[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid number")),
        "{letters:?}"
    );
    assert_eq!(influx.read_points("native").len(), 1);
}

/// One line the server refuses (a field type conflict, which InfluxDB
/// reports without naming the line) among 4999 good ones in one batch:
/// 4999 delivered, one dead-lettered with the server's reason.
#[test]
fn one_bad_line_among_4999_good_ones() {
    let influx = Influxd::start();
    influx.create_database("bad");
    // The field's type is fixed by the first write: integer.
    let mut first = InfluxWriter::start(&config(&influx.url(), "bad", ""));
    first.send([point("load", &[("src", "setup")], vec![("v", Int(0))], 1)]);
    first.finish(Duration::from_secs(10));

    let mut writer = InfluxWriter::start(&config(
        &influx.url(),
        "bad",
        "batch_lines = 5000\nflush_interval_ms = 60000",
    ));
    let t0 = 1_700_000_000_000_000_000_i64;
    let points: Vec<Point> = (0..5000)
        .map(|i| {
            let value = if i == 2345 {
                Text("oops".into())
            } else {
                Int(i)
            };
            point("load", &[("src", "test")], vec![("v", value)], t0 + i)
        })
        .collect();
    writer.send(points);
    writer.finish(Duration::from_secs(30));

    let letters = writer.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]["line"],
        format!("load,src=test v=\"oops\" {}", t0 + 2345)
    );
    assert_eq!(letters[0]["status"], 400);
    assert_eq!(letters[0]["reason"], "server_rejected");
    let message = letters[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("field type conflict"), "{message}");
    assert_eq!(writer.delivered(), 4999);
    assert_eq!(writer.dropped("server_rejected"), 1);
    let count = influx.query("bad", "SELECT count(v) FROM load WHERE src = 'test'");
    assert_eq!(
        count["results"][0]["series"][0]["values"][0][1], "4999",
        "{count}"
    );
}

/// InfluxDB stops for 20 s under a steady write load and comes back: every
/// point arrives exactly once (each has its own timestamp; a re-sent batch
/// overwrites the same points, it does not add any).
#[test]
fn twenty_second_outage_loses_and_duplicates_nothing() {
    let mut influx = Influxd::start();
    influx.create_database("outage");
    let mut writer = InfluxWriter::start(&config(
        &influx.url(),
        "outage",
        "batch_lines = 200\nflush_interval_ms = 200\nretry_max_ms = 2000\nrequest_timeout_ms = 2000",
    ));
    let t0 = 1_700_000_000_000_000_000_i64;
    let started = Instant::now();
    let mut sent: i64 = 0;
    let mut stopped_at = None;
    let mut restarted = false;
    // ~100 points/s for 35 s; the server is away from 5 s to 25 s.
    while started.elapsed() < Duration::from_secs(35) {
        let batch: Vec<Point> = (sent..sent + 10)
            .map(|i| {
                point(
                    "load",
                    &[("node", "n1")],
                    vec![("seq", Int(i))],
                    t0 + i * 1000,
                )
            })
            .collect();
        writer.send(batch);
        sent += 10;
        let elapsed = started.elapsed();
        if stopped_at.is_none() && elapsed >= Duration::from_secs(5) {
            influx.stop();
            stopped_at = Some(Instant::now());
        }
        if !restarted && stopped_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(20)) {
            influx.restart();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(restarted);
    writer.finish(Duration::from_secs(60));
    assert_eq!(writer.dead_letters(), Vec::<serde_json::Value>::new());
    assert_eq!(writer.delivered(), sent as u64);
    assert!(
        writer.metrics.influx.requests_count("retry") > 0,
        "the outage was noticed"
    );

    let count = influx.query("outage", "SELECT count(seq), sum(seq) FROM load");
    let values = &count["results"][0]["series"][0]["values"][0];
    assert_eq!(values[1], sent.to_string(), "{count}");
    assert_eq!(values[2], (sent * (sent - 1) / 2).to_string(), "{count}");
}

/// Authentication on, the writer's user does not exist yet: 401 (logged,
/// data kept, retried). Creating the user fixes the pipeline, nothing lost.
/// The password never appears in the writer's debug output or dead letters.
#[test]
fn unauthorized_until_the_user_exists_then_everything_arrives() {
    let influx = Influxd::start_with_auth();
    influx.create_database("auth");
    let secret = "s3cret-Pa55";
    let secrets = tempfile::tempdir().expect("tempdir");
    let password_file = secrets.path().join("influx-password");
    std::fs::write(&password_file, format!("{secret}\n")).expect("write password");
    let mut writer = InfluxWriter::start(&config(
        &influx.url(),
        "auth",
        &format!(
            "username = \"writer\"\npassword_file = \"{}\"",
            password_file.display()
        ),
    ));
    writer.send((0..100).map(|i| point("a", &[], vec![("v", Int(i))], 1_000 + i)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.metrics.influx.requests_count("unauthorized") < 2 {
        assert!(Instant::now() < deadline, "no 401 seen");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(writer.delivered(), 0);
    influx.query("", &format!("CREATE USER writer WITH PASSWORD '{secret}'"));
    influx.query("", "GRANT WRITE ON auth TO writer");
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.delivered() < 100 {
        assert!(Instant::now() < deadline, "not delivered after the fix");
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.finish(Duration::from_secs(10));
    assert!(writer.dead_letters().is_empty());
    assert_eq!(influx.read_points("auth").len(), 100);
    assert!(!writer.metrics.encode().contains(secret));
}
