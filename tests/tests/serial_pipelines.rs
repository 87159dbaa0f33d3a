//! Several pipelines at once: two ports, two different transforms, each with
//! its own config, running concurrently through the real wiring
//! (`app::start_pipelines`); one port unplugged does not disturb the other;
//! a slow consumer stops the port from reading (backpressure) without losing
//! frames; the simulator feeds a port through its symlink.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice::config::Config;
use sluice::metrics::Metrics;
use sluice::pipeline::Emission;
use sluice::pty::Pty;
use sluice::runtime::{ModuleCache, Runtime};
use sluice::sim::wait_drained;
use sluice_tests::serial::{
    Link, PortHarness, WAIT, eventually, pipeline_config, write_in_background,
};
use sluice_tests::wasm;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Message payloads by topic, in arrival order.
type ByTopic = BTreeMap<String, Vec<String>>;

fn quote(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

#[test]
fn two_ports_two_transforms_concurrently_and_independently() {
    let telemetry_pty = Pty::open().expect("openpty");
    let mut echo_pty = Pty::open().expect("openpty");
    let text = format!(
        "version = 1\n\
         [[pipeline]]\nname = \"telemetry\"\nchannel_capacity = 4\n\
         serial = {{ path = {}, reconnect_min_ms = 20, reconnect_max_ms = 100 }}\n\
         transform = {{ module = {}, config = {{ prefix = \"plant\" }} }}\n\
         [[pipeline]]\nname = \"echo\"\nchannel_capacity = 4\n\
         serial = {{ path = {}, framing = {{ kind = \"newline\", delimiter = \";\" }} }}\n\
         transform = {{ module = {}, config = {{ version = \"7\" }} }}\n",
        quote(&telemetry_pty.path),
        quote(Path::new(wasm::JSON_TELEMETRY)),
        quote(&echo_pty.path),
        quote(Path::new(wasm::MISBEHAVE)),
    );
    let config = Config::parse(Path::new("two.toml"), &text, |_| None).expect("parses");
    assert_eq!(config.validate(), Vec::<String>::new());

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(ModuleCache::new(None)).expect("wasm runtime");
    let (emit_tx, mut emit_rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let pipelines = rt
        .block_on(async {
            sluice::app::start_pipelines(&config, &runtime, &metrics, emit_tx, stop.clone())
        })
        .expect("pipelines start");
    assert!(pipelines.downlink("telemetry").is_some() && pipelines.downlink("echo").is_some());
    let open = |name: &str| metrics.serial(name).port_open.get() == 1;
    assert!(eventually(WAIT, || open("telemetry") && open("echo")));

    // Both devices talk at once, each in its own framing.
    const N: u32 = 30;
    let writer_a = {
        let mut master = telemetry_pty.master.try_clone().expect("clone");
        std::thread::spawn(move || {
            for seq in 1..=N {
                writeln!(master, r#"{{"seq":{seq},"n1":{{"t":20.5}}}}"#).expect("write");
            }
        })
    };
    let writer_b = {
        let mut master = echo_pty.master.try_clone().expect("clone");
        std::thread::spawn(move || {
            for i in 1..=N {
                write!(master, "ok:{i};").expect("write");
            }
        })
    };
    // Messages by topic, until `done` holds for them (or the deadline).
    let mut collect = |done: &dyn Fn(&ByTopic) -> bool| {
        let mut by_topic = ByTopic::new();
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !done(&by_topic) {
                match tokio::time::timeout_at(deadline, emit_rx.recv()).await {
                    Ok(Some(Emission { output, .. })) => {
                        for m in output.messages() {
                            by_topic
                                .entry(m.topic.into())
                                .or_default()
                                .push(String::from_utf8_lossy(m.payload).into_owned());
                        }
                    }
                    _ => break,
                }
            }
        });
        by_topic
    };
    let count = |t: &ByTopic, topic: &str| t.get(topic).map_or(0, Vec::len);
    let by_topic = collect(&|t| {
        ["plant/stats/seq", "test/ok", "test/version"]
            .iter()
            .all(|topic| count(t, topic) >= N as usize)
    });
    assert!(writer_a.join().is_ok() && writer_b.join().is_ok());
    let seqs: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
    assert_eq!(by_topic.get("plant/stats/seq"), Some(&seqs), "{by_topic:?}");
    assert_eq!(by_topic.get("test/ok"), Some(&seqs));
    assert_eq!(
        by_topic.get("test/version"),
        Some(&vec!["7".to_string(); N as usize])
    );

    // Unplugging one port leaves the other working.
    assert!(wait_drained(&telemetry_pty, WAIT));
    drop(telemetry_pty);
    assert!(eventually(WAIT, || !open("telemetry")));
    echo_pty.master.write_all(b"ok:still here;").expect("write");
    let by_topic = collect(&|t| count(t, "test/ok") >= 1);
    assert_eq!(
        by_topic.get("test/ok"),
        Some(&vec!["still here".to_string()])
    );
    assert!(open("echo"));

    stop.cancel();
    rt.block_on(async { tokio::time::timeout(WAIT, pipelines.join()).await })
        .expect("pipelines stop");
}

#[test]
fn a_full_pipeline_stops_the_port_reading_and_nothing_is_lost() {
    let pty = Pty::open().expect("openpty");
    // Room for two frames between port and consumer; the test consumes
    // nothing until every frame has been written.
    let config = pipeline_config("slow", &pty.path, "", "channel_capacity = 2");
    let mut port = PortHarness::start(&config).expect("port starts");
    assert!(port.wait_opens(1));
    const N: usize = 2000;
    let mut bytes = Vec::new();
    for i in 0..N {
        bytes.extend_from_slice(format!("frame {i:05} {}\n", "x".repeat(40)).as_bytes());
    }
    let writer = write_in_background(&pty, bytes);
    // The port task holds one frame and the channel two; the rest waits in
    // the kernel (for a pty the writer blocks when that is full too).
    assert!(eventually(WAIT, || port.received() >= 3));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        port.received() <= 3,
        "the port kept reading: {}",
        port.received()
    );
    let frames = port.recv_n(N, WAIT);
    assert!(writer.join().is_ok());
    assert_eq!(frames.len(), N);
    for (i, frame) in frames.iter().enumerate() {
        assert!(
            frame.starts_with(format!("frame {i:05} ").as_bytes()),
            "frame {i}"
        );
    }
    assert_eq!(port.serial().line_errors("overrun"), 0); // a pty has no UART counters
    assert!(port.stop());
}

#[test]
fn the_simulator_feeds_a_port_through_its_symlink() {
    let link = Link::new();
    let config = pipeline_config(
        "sim",
        &link.path,
        "reconnect_min_ms = 20\nreconnect_max_ms = 100",
        "",
    );
    let mut port = PortHarness::start(&config).expect("port starts");
    let sim = std::process::Command::new(sluice_tests::sluice_bin())
        .args([
            "simulate",
            "--rate",
            "500",
            "--frames",
            "50",
            "--first-seq",
            "100",
            "--link",
        ])
        .arg(&link.path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sluice simulate");
    let frames = port.recv_n(50, WAIT);
    let out = sim.wait_with_output().expect("simulator exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(frames.len(), 50);
    for (i, frame) in frames.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(frame).expect("telemetry is JSON");
        assert_eq!(v["seq"], 100 + i as u64);
    }
    assert!(!link.path.exists(), "the simulator removes its symlink");
    assert!(port.stop());
}
