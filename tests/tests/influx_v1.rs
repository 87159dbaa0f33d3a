//! The InfluxDB writer against a real InfluxDB 1.6.7 (`influxd`, Debian's
//! `influxdb`), one server per test on ephemeral ports: exact round trips
//! (escaping, types, precisions, generated nasty names), a bad line among
//! good ones, a 20 s outage, and authentication that is fixed while the
//! writer keeps retrying.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice::config::influx::{Precision, UnsignedMode};
use sluice::model::{FieldValue, Point};
use sluice::sink::influx::line_protocol::Encoder;
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
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
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
                ("empty", Text("".into())),
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

/// SplitMix64: a fixed seed gives the same points on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A short name from the characters line protocol treats specially (and
/// some it should not), with runs of them; never a `T`.
fn nasty_name(rng: &mut Rng) -> String {
    // Plain characters, then the nasty ones (rarer: a point has several
    // names, and one line break among them refuses the point).
    const PLAIN: &[&str] = &["a", "b", "x", "y", "1", "_", ".", "/", "'", "ü", "€", "😀"];
    const NASTY: &[&str] = &[
        " ", "  ", "\t", ",", "=", "\"", "\\", "\\\\", "\\\\\\", "#", "\r", "\0", "\n",
    ];
    (0..1 + rng.below(6))
        .map(|_| match rng.below(6) {
            0 => *rng.pick(NASTY),
            _ => *rng.pick(PLAIN),
        })
        .collect()
}

/// `name` with a `T` at its start, end or somewhere inside.
fn marked(rng: &mut Rng, name: &str) -> String {
    let at: Vec<usize> = (0..=name.len())
        .filter(|&i| name.is_char_boundary(i))
        .collect();
    let at = *rng.pick(&at);
    format!("{}T{}", &name[..at], &name[at..])
}

/// A field's type follows from its key, so no two points disagree on it.
fn nasty_value(rng: &mut Rng, key: &str) -> FieldValue {
    match key.bytes().map(usize::from).sum::<usize>() % 5 {
        0 => FieldValue::Float((rng.next() >> 11) as f64 / 7.0 - 1e9),
        1 => FieldValue::Int(rng.next() as i64),
        2 => FieldValue::UInt(rng.next() >> 1),
        3 => FieldValue::Bool(rng.next() & 1 == 1),
        _ => FieldValue::Text(
            (0..rng.below(4))
                .map(|_| nasty_name(rng))
                .collect::<String>()
                .into(),
        ),
    }
}

fn nasty_point(rng: &mut Rng, ts: i64) -> Point {
    // Tag keys always hold a `T`, field keys never: InfluxDB reads back a
    // tag and a field of the same name in one measurement as one column.
    let tags = (0..rng.below(3))
        .map(|_| {
            let key = nasty_name(rng);
            (marked(rng, &key).into(), nasty_name(rng).into())
        })
        .collect();
    let fields = (0..1 + rng.below(3))
        .map(|_| {
            let key = nasty_name(rng);
            let value = nasty_value(rng, &key);
            (key.into(), value)
        })
        .collect();
    Point {
        measurement: nasty_name(rng).into(),
        tags,
        fields,
        timestamp_ns: Some(ts),
    }
}

/// Every point in `db`, canonical as in [`canonical`]. Measurements are
/// selected by a regex of hex escapes: InfluxQL cannot quote a name holding
/// a CR or NUL (its scanner reads them as a line break and the end).
fn read_back(influx: &Influxd, db: &str) -> Vec<Point> {
    let mut types: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let keys = influx.query(db, "SHOW FIELD KEYS");
    for series in keys["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = series["name"].as_str().expect("measurement").to_owned();
        for row in series["values"].as_array().into_iter().flatten() {
            let (key, kind) = (row[0].as_str(), row[1].as_str());
            types
                .entry(name.clone())
                .or_default()
                .insert(key.expect("key").into(), kind.expect("type").into());
        }
    }
    let mut points = Vec::new();
    for (name, types) in &types {
        let regex: String = name
            .chars()
            .map(|c| format!("\\x{{{:x}}}", c as u32))
            .collect();
        let data = influx.query(db, &format!("SELECT * FROM /^{regex}$/ GROUP BY *"));
        let result = &data["results"][0];
        assert!(result["error"].is_null(), "{name:?}: {data}");
        for series in result["series"].as_array().into_iter().flatten() {
            assert_eq!(series["name"].as_str(), Some(name.as_str()));
            let mut tags: Vec<(String, String)> = series["tags"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            tags.sort();
            let columns = series["columns"].as_array().expect("columns");
            for row in series["values"].as_array().into_iter().flatten() {
                let mut point = Point {
                    measurement: name.as_str().into(),
                    tags: (tags.iter())
                        .map(|(k, v): &(String, String)| (k.as_str().into(), v.as_str().into()))
                        .collect(),
                    fields: Vec::new(),
                    timestamp_ns: None,
                };
                for (column, value) in columns.iter().zip(row.as_array().expect("row")) {
                    let (column, text) = (column.as_str().expect("column"), value.as_str());
                    if column == "time" {
                        point.timestamp_ns = text.and_then(|t| t.parse().ok());
                        continue;
                    }
                    let Some(text) = text.or(value.as_bool().map(|_| "")) else {
                        continue; // null: a field of another point
                    };
                    let field = match types.get(column).map(String::as_str) {
                        Some("float") => Float(text.parse().expect("float")),
                        Some("integer") => Int(text.parse().expect("integer")),
                        Some("boolean") => Bool(value.as_bool().expect("boolean")),
                        _ => Text(text.into()),
                    };
                    point.fields.push((column.into(), field));
                }
                point.fields.sort_by(|a, b| a.0.cmp(&b.0));
                points.push(point);
            }
        }
    }
    points
}

/// Generated points with nasty names and values — tabs, leading and
/// trailing spaces, backslash runs, commas, equals signs, quotes, line
/// breaks, CR, NUL, `#`, unicode — written by the real writer to influxd
/// 1.6, three seeds of 900: every point the encoder accepts reads back
/// exactly as emitted, every other one is counted with the encoder's
/// reason, and the server refuses none.
#[test]
fn nasty_names_read_back_exactly_or_are_refused() {
    let influx = Influxd::start();
    for seed in [1u64, 2, 3] {
        let db = format!("nasty{seed}");
        influx.create_database(&db);
        let mut rng = Rng(seed);
        let t0 = 1_700_000_000_000_000_000_i64;
        let points: Vec<Point> = (0..900).map(|i| nasty_point(&mut rng, t0 + i)).collect();
        let mut encoder = Encoder::new(Precision::Ns, UnsignedMode::Integer);
        let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
        let mut accepted = Vec::new();
        for point in &points {
            match encoder.encode(point, &mut Vec::new()) {
                Ok(()) => accepted.push(canonical(point.clone())),
                Err(err) => *refused.entry(err.reason()).or_default() += 1,
            }
        }
        // Not vacuous: most points are written, and refused for several reasons.
        assert!(accepted.len() > 450 && refused.len() >= 4, "{refused:?}");

        let mut writer = InfluxWriter::start(&config(&influx.url(), &db, ""));
        writer.send(points);
        writer.finish(Duration::from_secs(30));

        let by_time = |points: Vec<Point>| -> BTreeMap<i64, Point> {
            points
                .into_iter()
                .map(|p| (p.timestamp_ns.expect("timestamp"), p))
                .collect()
        };
        let (got, want) = (by_time(read_back(&influx, &db)), by_time(accepted));
        let differ: Vec<_> = want
            .iter()
            .filter(|(ts, w)| got.get(ts) != Some(w))
            .map(|(ts, w)| (w, got.get(ts)))
            .collect();
        assert!(
            differ.is_empty(),
            "seed {seed}: {} points written differently or not at all, e.g. (emitted, read back) {:#?}",
            differ.len(),
            &differ[..differ.len().min(3)]
        );
        assert_eq!(got.len(), want.len(), "seed {seed}");
        assert_eq!(writer.delivered(), want.len() as u64, "seed {seed}");
        let mut letters: BTreeMap<&str, u64> = BTreeMap::new();
        let dead = writer.dead_letters();
        for letter in &dead {
            *letters
                .entry(letter["reason"].as_str().expect("reason"))
                .or_default() += 1;
        }
        assert_eq!(letters, refused, "seed {seed}");
        for (reason, count) in &refused {
            assert_eq!(writer.dropped(reason), *count, "seed {seed}: {reason}");
        }
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
    assert_eq!(got[0].fields, vec![("v".into(), Int(42))]);

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
