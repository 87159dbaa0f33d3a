//! Downlink, serial side: bytes handed to a pipeline's `DownlinkSender` are
//! framed with the port's framer and written to the line in order; commands
//! wait in the bounded queue while the device is away; every command that is
//! not written is counted with its reason.

use std::io::Write as _;
use std::time::Duration;

use sluice::pty::Pty;
use sluice::source::serial::DownlinkError;
use sluice_framing::FramerEvent;
use sluice_tests::serial::{Link, MasterReader, PortHarness, WAIT, eventually, pipeline_config};

#[test]
fn commands_are_framed_and_written_in_order_between_reads() {
    let mut pty = Pty::open().expect("openpty");
    let reader = MasterReader::start(&pty);
    let config = pipeline_config("dl", &pty.path, "", "");
    let mut port = PortHarness::start(&config).expect("port starts");
    assert!(port.wait_opens(1));
    for i in 0..20 {
        port.downlink
            .try_send(format!("set valve {i}").into_bytes())
            .expect("queued");
        // Reading goes on while commands are written.
        writeln!(pty.master, "reading {i}").expect("write");
    }
    let want: String = (0..20).map(|i| format!("set valve {i}\n")).collect();
    assert_eq!(reader.wait_for(want.len(), WAIT), want.as_bytes());
    let frames = port.recv_n(20, WAIT);
    assert_eq!(frames.len(), 20);
    assert!(eventually(WAIT, || port.serial().downlink_written.get() == 20));
    // The async API waits for room instead of refusing.
    port.block_on(port.downlink.send(b"async".to_vec()))
        .expect("queued");
    assert!(reader.wait_for(want.len() + 6, WAIT).ends_with(b"async\n"));
    assert!(port.stop());
}

#[test]
fn cobs_port_encodes_commands_with_cobs() {
    let pty = Pty::open().expect("openpty");
    let reader = MasterReader::start(&pty);
    let config = pipeline_config("dl", &pty.path, "framing = { kind = \"cobs\" }", "");
    let mut port = PortHarness::start(&config).expect("port starts");
    assert!(port.wait_opens(1));
    port.downlink
        .try_send(vec![0x11, 0x00, 0x22])
        .expect("queued");
    // 02 11 02 22 00 (the framer may also lead with a 00 to resynchronise
    // the receiver); decoding it with the same framing gives the payload.
    let wire = reader.wait_for(5, WAIT);
    assert!(
        wire.ends_with(&[0x02, 0x11, 0x02, 0x22, 0x00]),
        "{wire:02x?}"
    );
    let mut framer = config
        .serial
        .as_ref()
        .expect("a serial port")
        .framing
        .build(1024, 115_200);
    let mut buf = bytes::BytesMut::from(&wire[..]);
    let mut frames = Vec::new();
    while let Some(event) =
        tokio_util::codec::Decoder::decode(&mut framer, &mut buf).expect("decodes")
    {
        if let FramerEvent::Frame(data) = event {
            frames.push(data);
        }
    }
    assert_eq!(frames, vec![vec![0x11, 0x00, 0x22]]);
    assert!(port.stop());
}

#[test]
fn commands_wait_while_the_device_is_away_and_go_out_after_the_replug() {
    let link = Link::new();
    let config = pipeline_config(
        "dl",
        &link.path,
        "reconnect_min_ms = 20\nreconnect_max_ms = 100\ndownlink_queue = 3",
        "",
    );
    let mut port = PortHarness::start(&config).expect("port starts");
    assert!(eventually(WAIT, || port.serial().open_failures("missing") >= 1));
    for cmd in ["one", "two", "three"] {
        port.downlink.try_send(cmd.into()).expect("queued");
    }
    // The queue holds three: the fourth is refused and counted.
    assert!(matches!(
        port.downlink.try_send(b"four".to_vec()),
        Err(DownlinkError::QueueFull(_))
    ));
    assert_eq!(port.serial().downlink_dropped_count("queue_full"), 1);
    assert_eq!(port.downlink.queued(), 3);

    let pty = Pty::open().expect("openpty");
    let reader = MasterReader::start(&pty);
    link.plug(&pty);
    assert_eq!(reader.wait_for(14, WAIT), b"one\ntwo\nthree\n");
    assert!(eventually(WAIT, || port.serial().downlink_written.get() == 3));
    assert!(port.stop());
}

#[test]
fn stale_and_unframeable_commands_are_counted_not_written() {
    let link = Link::new();
    let config = pipeline_config(
        "dl",
        &link.path,
        "reconnect_min_ms = 20\nreconnect_max_ms = 100\ndownlink_max_age_ms = 100",
        "",
    );
    let mut port = PortHarness::start(&config).expect("port starts");
    port.downlink.try_send(b"stale".to_vec()).expect("queued");
    // Older than downlink_max_age_ms by the time the device is back.
    std::thread::sleep(Duration::from_millis(300));
    let pty = Pty::open().expect("openpty");
    let reader = MasterReader::start(&pty);
    link.plug(&pty);
    assert!(port.wait_opens(1));
    assert!(eventually(WAIT, || port
        .serial()
        .downlink_dropped_count("expired")
        == 1));
    // A payload containing the delimiter cannot be newline-framed.
    port.downlink
        .try_send(b"two\nlines".to_vec())
        .expect("queued");
    port.downlink.try_send(b"fine".to_vec()).expect("queued");
    assert_eq!(reader.wait_for(5, WAIT), b"fine\n");
    assert_eq!(port.serial().downlink_dropped_count("encode_failed"), 1);
    assert_eq!(port.serial().downlink_written.get(), 1);

    assert!(port.stop());
}

#[test]
fn commands_still_queued_at_shutdown_are_counted() {
    let link = Link::new(); // never plugged in
    let config = pipeline_config("dl", &link.path, "", "");
    let mut port = PortHarness::start(&config).expect("port starts");
    for _ in 0..4 {
        port.downlink.try_send(b"late".to_vec()).expect("queued");
    }
    assert!(port.stop());
    assert_eq!(port.serial().downlink_dropped_count("shutdown"), 4);
    assert!(matches!(
        port.downlink.try_send(b"after".to_vec()),
        Err(DownlinkError::Stopped(_))
    ));
    assert_eq!(port.serial().downlink_dropped_count("port_stopped"), 1);
}

#[test]
fn a_write_the_device_does_not_take_times_out_and_reading_goes_on() {
    let mut pty = Pty::open().expect("openpty");
    // Nobody reads the master: the pty's buffer fills and the write stalls,
    // as with a device holding CTS low.
    let config = pipeline_config(
        "dl",
        &pty.path,
        "write_timeout_ms = 200\nmax_frame_bytes = 4194304",
        "",
    );
    let mut port = PortHarness::start(&config).expect("port starts");
    assert!(port.wait_opens(1));
    port.downlink.try_send(vec![b'x'; 1 << 20]).expect("queued");
    assert!(eventually(WAIT, || port
        .serial()
        .downlink_dropped_count("write_timeout")
        == 1));
    assert!(port.is_open());
    pty.master.write_all(b"still reading\n").expect("write");
    assert_eq!(port.recv(WAIT), Some(b"still reading".to_vec()));
    assert!(port.stop());
}
