//! `api = "v2"` (`/api/v2/write?org=&bucket=&precision=`, `Authorization:
//! Token`, gzip) against a real VictoriaMetrics (Debian's
//! `victoria-metrics`), which speaks InfluxDB's v2 write API. No InfluxDB 2
//! is installable here; VictoriaMetrics ignores the token, org and bucket, so
//! their handling is checked by the scripted server in `influx_scripted.rs`.
//! VictoriaMetrics stores numbers only (`<measurement>_<field>`, booleans as
//! 1/0, strings dropped) with millisecond timestamps; read back through
//! `/api/v1/export`.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice::model::{FieldValue, Point};
use sluice_tests::{InfluxWriter, VictoriaMetrics};

#[test]
fn v2_writes_reach_victoria_metrics_with_tags_values_and_times() {
    let vm = VictoriaMetrics::start();
    let secrets = tempfile::tempdir().expect("tempdir");
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "vm-ignores-this-token\n").expect("token");
    let mut writer = InfluxWriter::start(&format!(
        "url = \"{}\"\napi = \"v2\"\norg = \"acme\"\nbucket = \"plant\"\nprecision = \"ms\"\n\
         token_file = \"{}\"\nflush_interval_ms = 100\nbatch_lines = 50\n",
        vm.url(),
        token_file.display()
    ));
    // VictoriaMetrics refuses samples outside its retention: use "now".
    let now_ms = (sluice::model::now_ns() / 1_000_000) as i64;
    let n = 120;
    let points: Vec<Point> = (0..n)
        .map(|i| Point {
            measurement: "env".into(),
            tags: vec![
                ("node".into(), format!("node {}", i % 2).into()),
                ("site".into(), "hall,A=1 ü".into()),
            ],
            fields: vec![
                ("temp".into(), FieldValue::Float(20.0 + i as f64 / 8.0)),
                ("count".into(), FieldValue::Int(-i)),
                (
                    "big".into(),
                    FieldValue::UInt(u64::from(u32::MAX) + i as u64),
                ),
                ("ok".into(), FieldValue::Bool(i % 3 == 0)),
            ],
            timestamp_ns: Some((now_ms - n + i) * 1_000_000 + 999_999),
        })
        .collect();
    writer.send(points);
    writer.finish(Duration::from_secs(10));
    assert!(
        writer.dead_letters().is_empty(),
        "{:?}",
        writer.dead_letters()
    );
    assert_eq!(writer.delivered(), n as u64);

    // 4 fields × 2 nodes = 8 series, n samples per field.
    let series = vm.export(
        "{__name__=~\"env_.*\"}",
        4 * n as usize,
        Duration::from_secs(15),
    );
    assert_eq!(series.len(), 8, "{series:?}\n{}", vm.log());
    let mut values: BTreeMap<(String, String), Vec<(i64, f64)>> = BTreeMap::new();
    for s in &series {
        let metric = &s["metric"];
        assert_eq!(metric["site"], "hall,A=1 ü");
        let name = metric["__name__"].as_str().expect("name").to_owned();
        let node = metric["node"].as_str().expect("node").to_owned();
        let times = s["timestamps"].as_array().expect("timestamps");
        let vals = s["values"].as_array().expect("values");
        let entry = values.entry((name, node)).or_default();
        for (t, v) in times.iter().zip(vals) {
            entry.push((t.as_i64().expect("ms"), v.as_f64().expect("number")));
        }
    }
    for i in 0..n {
        let node = format!("node {}", i % 2);
        // precision = "ms": the sub-millisecond part is floored away.
        let t = now_ms - n + i;
        let expect = [
            ("env_temp", 20.0 + i as f64 / 8.0),
            ("env_count", -i as f64),
            ("env_big", (u64::from(u32::MAX) + i as u64) as f64),
            ("env_ok", if i % 3 == 0 { 1.0 } else { 0.0 }),
        ];
        for (name, value) in expect {
            let samples = &values[&(name.to_string(), node.clone())];
            assert!(
                samples.contains(&(t, value)),
                "{name} {node} at {t}: want {value}, have {samples:?}"
            );
        }
    }
}
