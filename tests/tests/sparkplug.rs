//! sluice as a Sparkplug B edge node (`examples/sparkplug.toml`), checked by
//! Sparkplug implementations the project did not write: every message is
//! decoded by pysparkplug and by Eclipse Tahu's `sparkplug-payload`
//! (`tests/support/sparkplug_host.py`, which also plays the host
//! application: STATE, rebirth and commands), with a real mosquitto, a pty
//! and the json-telemetry component built from the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::pty::Pty;
use sluice_tests::faultproxy::FaultProxy;
use sluice_tests::serial::MasterReader;
use sluice_tests::{Mosquitto, SluiceProcess, SparkplugHost, free_port, metric, repo_root, wasm};

const GROUP: &str = "plant1";
const NODE: &str = "gateway1";

/// The edge node of `examples/sparkplug.toml` on `broker`, reading `pty`.
struct EdgeNode {
    sluice: SluiceProcess,
    admin_port: u16,
}

fn start_node(broker: u16, pty: &Pty, data_dir: &Path, primary_host: Option<&str>) -> EdgeNode {
    let transforms_dir = Path::new(wasm::JSON_TELEMETRY)
        .parent()
        .expect("component has a directory");
    let admin_port = free_port();
    let config = repo_root().join("examples/sparkplug.toml");
    let sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[
            ("SLUICE_SERIAL", pty.path.display().to_string()),
            ("SLUICE_MQTT_HOST", "127.0.0.1".into()),
            ("SLUICE_MQTT_PORT", broker.to_string()),
            ("SLUICE_DATA_DIR", data_dir.display().to_string()),
            (
                "SLUICE_TRANSFORMS_DIR",
                transforms_dir.display().to_string(),
            ),
            ("SLUICE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            (
                "SLUICE_SPARKPLUG_PRIMARY_HOST",
                primary_host.unwrap_or_default().to_owned(),
            ),
            ("RUST_LOG", "info".into()),
        ],
    );
    assert!(
        sluice.wait_for_log("serial port open", Duration::from_secs(30)),
        "sluice did not open the pty:\n{}",
        sluice.log()
    );
    EdgeNode { sluice, admin_port }
}

/// A gateway line whose `seq` (metric `gateway_stats/seq` of the edge
/// node) identifies it.
fn line(seq: u64) -> String {
    format!(
        r#"{{"seq":{seq},"n1":{{"t":{}.5,"h":54.1,"bat":3.71}},"n2":{{"t":26.0,"h":50.2,"bat":3.65}},"sig":{{"rssi":-{},"snr":9.5}},"stats":{{"rx":{},"crc_err":3}}}}"#,
        20 + seq % 10,
        30 + seq % 40,
        1000 + seq
    )
}

/// A broker, the host application, a pty and the edge node on them, and
/// every message the host received, in order.
struct Rig {
    host: SparkplugHost,
    pty: Pty,
    data_dir: tempfile::TempDir,
    node: EdgeNode,
    messages: Vec<Value>,
}

impl Rig {
    /// The edge node on `node_port` (the broker's, or a proxy's before it).
    fn start(host: SparkplugHost, node_port: u16, primary_host: Option<&str>) -> Rig {
        let pty = Pty::open().expect("openpty");
        let data_dir = tempfile::tempdir().expect("tempdir");
        let node = start_node(node_port, &pty, data_dir.path(), primary_host);
        Rig {
            host,
            pty,
            data_dir,
            node,
            messages: Vec::new(),
        }
    }

    /// Starts the edge node again (same pty and data directory).
    fn restart_node(&mut self, node_port: u16) {
        self.node = start_node(node_port, &self.pty, self.data_dir.path(), None);
    }

    fn feed(&mut self, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            writeln!(self.pty.master, "{}", line(seq)).expect("write frame");
        }
    }

    /// Reads messages until `done` holds for what was received, or
    /// `timeout` passes; returns whether it held.
    fn until(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.messages) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let wait = left.min(Duration::from_millis(200));
            if let Some(message) = self.host.next_message(wait) {
                self.messages.push(message);
            }
        }
        true
    }

    /// [`until`](Self::until), failing the test (with what was received
    /// and the node's log) if `done` does not hold in `secs` seconds.
    fn wait(&mut self, secs: u64, what: &str, done: impl Fn(&[Value]) -> bool) {
        if !self.until(Duration::from_secs(secs), done) {
            panic!("{what}:\n{}\n{}", self.dump(), self.node.sluice.log());
        }
    }

    /// Fails the test if `happens` comes to hold within `secs` seconds.
    fn never(&mut self, secs: u64, what: &str, happens: impl Fn(&[Value]) -> bool) {
        if self.until(Duration::from_secs(secs), happens) {
            panic!("{what}:\n{}", self.dump());
        }
    }

    fn frames(&self) -> Vec<(u64, bool)> {
        frames(&self.messages)
    }

    /// Publishes `hex` (not a Sparkplug payload) on command topic `topic`:
    /// it must be counted as malformed, and frames `then` must still come
    /// through under the session rules.
    fn malformed_command_is_counted(
        &mut self,
        topic: &str,
        hex: &str,
        then: std::ops::RangeInclusive<u64>,
    ) {
        self.host.command(&format!("raw {topic} {hex}"));
        let dropped = "sluice_sparkplug_commands_dropped_total{reason=\"malformed\"}";
        assert!(
            sluice_tests::eventually_every(
                Duration::from_secs(10),
                Duration::from_millis(50),
                || { self.metric(dropped) >= 1.0 }
            ),
            "malformed command on {topic} not counted:\n{}",
            self.node.sluice.log()
        );
        self.feed(then.clone());
        self.wait(10, "the node stopped after a malformed command", |m| {
            has_all(m, then.clone())
        });
        check_session_rules(self);
    }

    fn metric(&self, series: &str) -> f64 {
        metric(self.node.admin_port, series)
    }

    fn dump(&self) -> String {
        self.messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(m) = m.as_object_mut() {
                    m.remove("tahu");
                }
                m.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn frames(messages: &[Value]) -> Vec<(u64, bool)> {
    frames_from(messages, 0)
}

/// The frames in `messages[start..]`. A birth repeats the last value of
/// every metric: its `gateway_stats/seq` counts only if no earlier message
/// had that frame (the first frame's values come in the birth they made).
fn frames_from(messages: &[Value], start: usize) -> Vec<(u64, bool)> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let birth = kind(message).ends_with("BIRTH");
        for metric in message["metrics"].as_array().into_iter().flatten() {
            if metric["resolved_name"] != "gateway_stats/seq" {
                continue;
            }
            let seq = metric["value"].as_u64().expect("seq is an integer");
            let historical = metric["is_historical"].as_bool().unwrap_or(false);
            if (seen.insert(seq) || !birth) && index >= start {
                found.push((seq, historical));
            }
        }
    }
    found
}

/// The frames sent as data (not as a birth's last values).
fn data_frames(messages: &[Value]) -> Vec<(u64, bool)> {
    let data: Vec<Value> = messages
        .iter()
        .filter(|m| kind(m).ends_with("DATA"))
        .cloned()
        .collect();
    frames(&data)
}

/// Whether every frame of `wanted` arrived.
fn has_all(messages: &[Value], wanted: std::ops::RangeInclusive<u64>) -> bool {
    let got: BTreeSet<u64> = frames(messages).iter().map(|(s, _)| *s).collect();
    wanted.into_iter().all(|s| got.contains(&s))
}

fn kind(message: &Value) -> &str {
    message["message_type"].as_str().unwrap_or("")
}

fn bd_seq(message: &Value) -> Option<u64> {
    message["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == "bdSeq")?["value"]
        .as_u64()
}

/// The checks every stream of messages passes: both decoders read every
/// message; births come before data and declare every metric by name,
/// alias and type; data uses aliases; `seq` counts up by one (mod 256)
/// from each NBIRTH's 0 to the next; births and data are QoS 0.
fn check_session_rules(rig: &Rig) {
    let log = rig.dump();
    let mut seq: Option<u64> = None;
    let mut born = false;
    for message in &rig.messages {
        assert!(message.get("error").is_none(), "{message}\n{log}");
        // Births and data are QoS 0; the NDEATH will is QoS 1.
        if kind(message) != "NDEATH" {
            assert_eq!(message["qos"], 0, "{message}");
        }
        assert_eq!(message["group_id"], GROUP);
        assert_eq!(message["edge_node_id"], NODE);
        match kind(message) {
            "NBIRTH" => {
                assert_eq!(message["seq"], 0, "an NBIRTH starts the sequence");
                assert!(bd_seq(message).is_some(), "NBIRTH without bdSeq: {message}");
                let rebirth = message["metrics"]
                    .as_array()
                    .expect("metrics")
                    .iter()
                    .find(|m| m["name"] == "Node Control/Rebirth")
                    .unwrap_or_else(|| panic!("NBIRTH without the rebirth control: {message}"));
                assert_eq!(rebirth["datatype"], "Boolean");
                born = true;
                seq = Some(0);
                continue;
            }
            "NDEATH" => {
                born = false;
                seq = None;
                continue;
            }
            _ => {}
        }
        assert!(born, "{} before any NBIRTH:\n{log}", kind(message));
        let this = message["seq"].as_u64().expect("seq");
        if let Some(last) = seq {
            assert_eq!(this, (last + 1) % 256, "seq gap at {message}\n{log}");
        }
        seq = Some(this);
        for metric in message["metrics"].as_array().expect("metrics") {
            let name = metric["resolved_name"].as_str().unwrap_or_default();
            assert!(!name.is_empty(), "a metric no birth declared: {message}");
            assert!(
                metric["alias"].is_u64(),
                "a metric without alias: {message}"
            );
            match kind(message) {
                "DBIRTH" => assert_eq!(metric["name"], name),
                "DDATA" | "NDATA" => assert!(metric["name"].is_null(), "data by alias"),
                other => panic!("unexpected {other}"),
            }
        }
    }
}

fn datatypes(messages: &[Value]) -> BTreeMap<String, String> {
    messages
        .iter()
        .filter(|m| kind(m).ends_with("BIRTH"))
        .flat_map(|m| m["metrics"].as_array().cloned().unwrap_or_default())
        .map(|metric| {
            (
                metric["name"].as_str().unwrap_or_default().to_owned(),
                metric["datatype"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn any(kind_wanted: &'static str) -> impl Fn(&[Value]) -> bool {
    move |m: &[Value]| m.iter().any(|m| kind(m) == kind_wanted)
}

fn count(m: &[Value], kind_wanted: &str) -> usize {
    m.iter().filter(|m| kind(m) == kind_wanted).count()
}

#[test]
fn births_then_data_by_alias_rebirth_on_command_and_ndeath_when_killed() {
    let broker = Mosquitto::start();
    let host = SparkplugHost::start(broker.port, GROUP, None);
    let mut rig = Rig::start(host, broker.port, None);
    rig.wait(20, "no NBIRTH", any("NBIRTH"));
    rig.feed(1..=50);
    rig.wait(30, "not every frame arrived", |m| has_all(m, 1..=50));
    check_session_rules(&rig);
    assert_eq!(
        rig.frames(),
        (1..=50).map(|s| (s, false)).collect::<Vec<_>>(),
        "every frame once, in order, live"
    );
    // Devices per sensor node, typed metrics, named <measurement>/<field>.
    let devices: BTreeSet<_> = rig
        .messages
        .iter()
        .filter_map(|m| m["device_id"].as_str())
        .collect();
    assert_eq!(devices, BTreeSet::from(["node1", "node2"]));
    let types = datatypes(&rig.messages);
    assert_eq!(types["environment/temperature"], "Double");
    assert_eq!(types["signal/rssi"], "Int64");
    assert_eq!(types["gateway_stats/rx"], "Int64");
    let nbirth_bd_seq = bd_seq(&rig.messages[0]).expect("bdSeq");

    // Rebirth on command: NBIRTH (seq 0, same bdSeq) and every DBIRTH.
    let before = rig.messages.len();
    rig.host.command(&format!("rebirth {NODE}"));
    rig.wait(10, "no rebirth", |m| count(&m[before..], "DBIRTH") >= 2);
    assert_eq!(kind(&rig.messages[before]), "NBIRTH");
    assert_eq!(bd_seq(&rig.messages[before]), Some(nbirth_bd_seq));

    // A malformed NCMD is counted and ignored: the node goes on.
    rig.malformed_command_is_counted(&format!("spBv1.0/{GROUP}/NCMD/{NODE}"), "ffff0102", 51..=55);

    // Killed: the broker publishes the will, NDEATH with the NBIRTH's bdSeq.
    rig.node.sluice.kill();
    rig.wait(10, "no NDEATH after SIGKILL", any("NDEATH"));
    let death = rig.messages.iter().find(|m| kind(m) == "NDEATH");
    assert_eq!(death.and_then(bd_seq), Some(nbirth_bd_seq));
}

#[test]
fn a_broker_restart_loses_nothing_and_what_waited_comes_after_the_births_flagged_historical() {
    // The host keeps a persistent session and the broker queues QoS 0 for
    // it, so what the node publishes while the host reconnects still
    // reaches it: every gap would be the node's.
    let mut broker = Mosquitto::start_with(
        free_port(),
        "allow_anonymous true\nqueue_qos0_messages true\nmax_queued_messages 0\n",
    );
    let host = SparkplugHost::start_persistent(broker.port, GROUP, "scada-test");
    let mut rig = Rig::start(host, broker.port, None);
    rig.feed(1..=30);
    rig.wait(20, "frames 1-30", |m| has_all(m, 1..=30));
    let first_bd_seq = bd_seq(&rig.messages[0]).expect("bdSeq");

    // Frames keep coming while the broker stops: some are on the wire
    // unconfirmed when it goes, the rest wait in the durable log.
    let mut device = rig.pty.master.try_clone().expect("clone pty");
    let feeder = std::thread::spawn(move || {
        for seq in 31..=60 {
            writeln!(device, "{}", line(seq)).expect("write frame");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    std::thread::sleep(Duration::from_millis(150));
    broker.stop();
    feeder.join().expect("feeder");
    let births_before = count(&rig.messages, "NBIRTH");
    broker.start_again();
    rig.wait(30, "no births after the broker came back", |m| {
        count(m, "NBIRTH") > births_before
    });
    rig.feed(61..=90);
    rig.wait(30, "not every frame arrived", |m| has_all(m, 1..=90));
    check_session_rules(&rig);
    // A new session: NBIRTH again, with the next bdSeq.
    let births: Vec<_> = rig
        .messages
        .iter()
        .filter(|m| kind(m) == "NBIRTH")
        .filter_map(bd_seq)
        .collect();
    assert!(
        births.contains(&((first_bd_seq + 1) % 256)),
        "no NBIRTH with the next bdSeq: {births:?}"
    );
    // What waited for the broker (frame 60 came well after it stopped) is
    // historical, and comes after the new births; what came after the
    // births is live.
    let rebirth_at = rig
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| kind(m) == "NBIRTH")
        .nth(births_before)
        .map(|(i, _)| i)
        .expect("the NBIRTH after the restart");
    assert!(
        frames(&rig.messages[..rebirth_at])
            .iter()
            .all(|(_, historical)| !historical),
        "historical data before the node was born again"
    );
    let got = rig.frames();
    assert!(
        got.iter()
            .any(|(seq, historical)| *seq == 60 && *historical),
        "frame 60 waited for the broker but is not historical: {got:?}"
    );
    for (seq, historical) in &got {
        if (61..=90).contains(seq) {
            assert!(
                !historical,
                "frame {seq} came after the births but is historical"
            );
        }
    }
}

#[test]
fn while_the_primary_host_is_offline_data_waits_and_follows_the_next_births_as_history() {
    let broker = Mosquitto::start();
    let host = SparkplugHost::start(broker.port, GROUP, Some("scada"));
    let mut rig = Rig::start(host, broker.port, Some("scada"));
    // No STATE yet: the node is connected but not born.
    rig.feed(1..=10);
    rig.never(
        2,
        "the node published before its primary host was online",
        |m| !m.is_empty(),
    );
    rig.host.command("online");
    rig.wait(20, "frames 1-10", |m| has_all(m, 1..=10));
    assert_eq!(kind(&rig.messages[0]), "NBIRTH", "births before data");
    assert!(
        rig.frames().iter().all(|(_, historical)| *historical),
        "frames that waited for the host must be historical: {:?}",
        rig.frames()
    );
    rig.feed(11..=20);
    rig.wait(10, "frames 11-20", |m| has_all(m, 11..=20));
    assert!(
        rig.frames()[10..].iter().all(|(_, historical)| !historical),
        "live frames flagged historical: {:?}",
        rig.frames()
    );

    // The host goes offline: NDEATH, nothing more until it is back.
    rig.host.command("offline");
    rig.wait(
        10,
        "no NDEATH when the primary host went offline",
        any("NDEATH"),
    );
    let at_death = rig.messages.len();
    rig.feed(21..=40);
    rig.never(
        2,
        "the node published while its primary host was offline",
        |m| m.len() > at_death,
    );
    rig.host.command("online");
    rig.feed(41..=45);
    rig.wait(20, "frames 21-45", |m| has_all(m, 21..=45));
    check_session_rules(&rig);
    assert_eq!(
        kind(&rig.messages[at_death]),
        "NBIRTH",
        "births first, then the backlog"
    );
    let got = frames_from(&rig.messages, at_death);
    let numbers: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(numbers, (21..=45).collect::<Vec<_>>(), "{}", rig.dump());
    for (seq, historical) in got {
        assert_eq!(
            historical,
            seq <= 40,
            "frame {seq}: historical exactly when it waited for the host"
        );
    }
}

#[test]
fn a_clean_stop_publishes_ndeath_and_a_restart_sends_what_was_left_with_the_next_bd_seq() {
    let broker = Mosquitto::start();
    let host = SparkplugHost::start(broker.port, GROUP, None);
    let mut rig = Rig::start(host, broker.port, None);
    rig.feed(1..=10);
    rig.wait(20, "frames 1-10", |m| has_all(m, 1..=10));
    let first_bd_seq = bd_seq(&rig.messages[0]).expect("bdSeq");
    assert!(
        rig.node.sluice.stop(),
        "sluice did not stop:\n{}",
        rig.node.sluice.log()
    );
    rig.wait(10, "no NDEATH on a clean stop", any("NDEATH"));
    let death = rig.messages.iter().find(|m| kind(m) == "NDEATH");
    assert_eq!(death.and_then(bd_seq), Some(first_bd_seq));

    // Frames that arrive while the host is down are read after it starts.
    rig.feed(11..=20);
    rig.restart_node(broker.port);
    rig.wait(20, "frames 11-20", |m| has_all(m, 11..=20));
    check_session_rules(&rig);
    let numbers: Vec<u64> = rig.frames().iter().map(|(s, _)| *s).collect();
    assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
    let reborn = rig
        .messages
        .iter()
        .rev()
        .filter(|m| kind(m) == "NBIRTH")
        .find_map(bd_seq);
    assert_eq!(
        reborn,
        Some((first_bd_seq + 1) % 256),
        "bdSeq survives a restart"
    );
}

#[test]
fn points_written_but_never_read_by_the_broker_are_sent_again_after_the_births() {
    // QoS 0 has no acknowledgement: a point is confirmed only by a round
    // trip after it. A proxy holds back everything the node writes, then
    // cuts the connection, so what was written never reached the broker.
    let broker = Mosquitto::start();
    let proxy = FaultProxy::start(broker.port, 7);
    let host = SparkplugHost::start(broker.port, GROUP, None);
    let mut rig = Rig::start(host, proxy.port, None);
    rig.feed(1..=10);
    rig.wait(20, "frames 1-10", |m| has_all(m, 1..=10));
    proxy.freeze_upstream(true);
    rig.feed(11..=30);
    rig.never(1, "the proxy let data through", |m| frames(m).len() > 10);
    proxy.cut();
    // The broker saw the connection end (its will) before the proxy lets
    // bytes through again: nothing held back can slip out before the cut.
    rig.wait(10, "no NDEATH after the cut", any("NDEATH"));
    proxy.freeze_upstream(false);
    rig.wait(
        30,
        "frames written into the cut connection were not sent again",
        |m| has_all(m, 1..=30),
    );
    check_session_rules(&rig);
    // Resent as data, flagged; the births before them carry the last
    // values as the node's current state.
    for (seq, historical) in data_frames(&rig.messages) {
        assert_eq!(historical, seq > 10, "frame {seq}");
    }
    assert!(
        rig.metric("sluice_sparkplug_resent_total") >= 1.0,
        "resent points not counted"
    );
}

#[test]
fn device_commands_reach_the_serial_line_through_the_transform() {
    let broker = Mosquitto::start();
    let host = SparkplugHost::start(broker.port, GROUP, None);
    let mut rig = Rig::start(host, broker.port, None);
    let line = MasterReader::start(&rig.pty);
    rig.feed(1..=2);
    rig.wait(20, "frames 1-2", |m| has_all(m, 1..=2));
    // DCMD metrics by name (pysparkplug's encoding: no datatype), through
    // command_topic iiot/cmd/{device}/{metric} to json-telemetry.
    rig.host
        .command(&format!("dcmd {NODE} node1 interval Int64 30"));
    rig.host
        .command(&format!("dcmd {NODE} node2 label String \"boiler room\""));
    rig.host
        .command(&format!("dcmd {NODE} node1 led Boolean true"));
    let want = [
        r#"{"to":"n1","cmd":"interval","arg":30}"#,
        r#"{"to":"n2","cmd":"label","arg":"boiler room"}"#,
        r#"{"to":"n1","cmd":"led","arg":true}"#,
    ];
    let expected: usize = want.iter().map(|l| l.len() + 1).sum();
    let written =
        String::from_utf8(line.wait_for(expected, Duration::from_secs(10))).expect("utf-8");
    assert_eq!(
        written.lines().collect::<Vec<_>>(),
        want,
        "{}",
        rig.node.sluice.log()
    );
    // A DCMD that does not decode is counted; the node goes on.
    rig.malformed_command_is_counted(&format!("spBv1.0/{GROUP}/DCMD/{NODE}/node1"), "0aff", 3..=4);
}
