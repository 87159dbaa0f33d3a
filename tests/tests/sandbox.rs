//! The sandbox: a misbehaving guest (tests/guests/misbehave, real Wasm)
//! costs only the frame it misbehaves on. After a spin, a memory bomb, a
//! stack overflow or a panic, the next frame goes through; invalid outputs
//! are refused by the host and counted by reason.

use std::sync::Arc;
use std::time::Duration;

use sluice::metrics::Metrics;
use sluice::model::{Frame, Qos};
use sluice::pipeline::{WorkerSettings, WorkerSpec};
use sluice::runtime::{
    CacheOutcome, GuestErrorKind, Limits, LoadError, ModuleCache, OutputLimits, ProcessError,
    Runtime, TransformInstance, TrapKind,
};
use sluice_tests::wasm;

const LIMITS: Limits = Limits {
    call_timeout: Duration::from_millis(50),
    memory_bytes: 16 << 20,
    output: OutputLimits::DEFAULT,
};

fn frame(text: &str) -> Frame {
    Frame::new(
        "test".into(),
        1_700_000_000_000_000_000,
        text.as_bytes().to_vec(),
    )
}

fn misbehave(runtime: &Runtime, config: &[(&str, &str)]) -> Result<TransformInstance, LoadError> {
    misbehave_with(runtime, config, LIMITS)
}

fn misbehave_with(
    runtime: &Runtime,
    config: &[(&str, &str)],
    limits: Limits,
) -> Result<TransformInstance, LoadError> {
    let config: Vec<(String, String)> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    runtime
        .load_file(wasm::MISBEHAVE.as_ref())
        .expect("misbehave loads")
        .instantiate("misbehave", &config, limits)
}

fn runtime() -> Runtime {
    Runtime::new(ModuleCache::new(None)).expect("runtime")
}

fn assert_ok_frame_works(instance: &mut TransformInstance, text: &str) {
    let output = instance
        .process(frame(&format!("ok:{text}")))
        .unwrap_or_else(|r| panic!("a normal frame after misbehaviour failed: {}", r.error));
    let message = output.messages().next().expect("a message");
    assert_eq!(message.topic, "test/ok");
    assert_eq!(message.payload, text.as_bytes());
    assert_eq!(message.qos, Qos::AtLeastOnce);
}

#[test]
fn traps_cost_only_their_frame() {
    let runtime = runtime();
    // A deadline no memory bomb reaches before the memory cap, even on a
    // loaded CI machine (filling 16 MiB once took over 50 ms of CPU there);
    // the spin still ends by it.
    let limits = Limits {
        call_timeout: Duration::from_millis(500),
        ..LIMITS
    };
    let mut instance = misbehave_with(&runtime, &[], limits).expect("init");
    assert_ok_frame_works(&mut instance, "before");
    // A Rust guest keeps part of its stack in linear memory (the shadow
    // stack), so runaway recursion ends either in wasm stack exhaustion or in
    // an out-of-bounds access below the shadow stack; both are stack overflows.
    let cases: [(&str, &[TrapKind]); 4] = [
        ("loop", &[TrapKind::Timeout]),
        ("alloc", &[TrapKind::MemoryLimit]),
        ("recurse", &[TrapKind::StackOverflow, TrapKind::MemoryFault]),
        ("panic", &[TrapKind::Panic]),
    ];
    for (command, want) in cases {
        let rejected = instance
            .process(frame(command))
            .expect_err("misbehaviour must fail the frame");
        match &rejected.error {
            ProcessError::Trap { kind, message } => {
                assert!(want.contains(kind), "{command}: got {kind}: {message}");
                assert!(message.len() < 500, "trap message stays short: {message}");
            }
            other => panic!("{command}: expected a trap, got {other}"),
        }
        // The frame is handed back intact for dead-lettering.
        assert_eq!(rejected.frame.data, command.as_bytes());
        assert_ok_frame_works(&mut instance, &format!("after-{command}"));
    }
}

#[test]
fn guest_errors_are_typed_not_traps() {
    let runtime = runtime();
    let mut instance = misbehave(&runtime, &[]).expect("init");
    let cases = [
        ("error", GuestErrorKind::Malformed, "decode_malformed"),
        (
            "whatever",
            GuestErrorKind::Unsupported,
            "decode_unsupported",
        ),
    ];
    for (command, kind, reason) in cases {
        let rejected = instance.process(frame(command)).expect_err("fails");
        match &rejected.error {
            ProcessError::Guest(e) => assert_eq!(e.kind, kind),
            other => panic!("expected a guest error, got {other}"),
        }
        assert_eq!(rejected.error.reason(), reason);
    }
    let invalid_utf8 = Frame {
        data: vec![0xff, 0xfe],
        ..frame("")
    };
    let rejected = instance.process(invalid_utf8).expect_err("fails");
    assert_eq!(rejected.error.reason(), "decode_malformed");
    assert_ok_frame_works(&mut instance, "still-fine");
}

#[test]
fn init_errors_and_broken_modules_are_refused_with_a_reason() {
    let runtime = runtime();
    match misbehave(&runtime, &[("fail_init", "true")]) {
        Err(LoadError::Init(e)) => assert_eq!(e.kind, GuestErrorKind::InvalidConfig),
        Err(other) => panic!("expected an init error, got {other}"),
        Ok(_) => panic!("init should fail"),
    }
    let bytes = std::fs::read(wasm::MISBEHAVE).expect("read");
    let truncated = &bytes[..bytes.len() / 2];
    assert!(matches!(
        runtime.load_bytes(truncated),
        Err(LoadError::Compile(_))
    ));
    assert!(matches!(
        runtime.load_bytes(b"not wasm at all"),
        Err(LoadError::Compile(_))
    ));
}

/// A module of the old contract (0.1.0, output as WIT records) loads beside
/// the SDK's 0.2.0 modules (output as one packed buffer), and every entry
/// point gives the same host-side result either way.
#[test]
fn modules_of_both_contract_versions_load_and_run() {
    use sluice::model::{FieldValue, Point};

    let runtime = runtime();
    let legacy = runtime
        .load_file(wasm::LEGACY_V0_1.as_ref())
        .expect("a 0.1.0 module loads");
    assert_eq!(legacy.contract(), "sluice:transform@0.1.0");
    let current = runtime
        .load_file(wasm::MISBEHAVE.as_ref())
        .expect("an SDK module loads");
    assert_eq!(current.contract(), "sluice:transform@0.2.0");

    let mut legacy = legacy.instantiate("legacy", &[], LIMITS).expect("init");
    let output = legacy.process(frame("héllo")).expect("decodes");
    assert_eq!(output.message_count(), 1);
    let message = output.messages().next().expect("a message");
    assert_eq!(
        (message.topic, message.payload),
        ("legacy/test", "héllo".as_bytes())
    );
    assert_eq!((message.qos, message.retain), (Qos::AtLeastOnce, true));
    assert_eq!(
        output.owned_points(),
        [Point {
            measurement: "legacy".into(),
            tags: vec![("source".into(), "test".into())],
            fields: vec![
                ("len".into(), FieldValue::UInt(6)),
                ("neg".into(), FieldValue::Int(-6)),
                ("half".into(), FieldValue::Float(3.0)),
                ("even".into(), FieldValue::Bool(true)),
                ("text".into(), FieldValue::Text("héllo".into())),
            ],
            timestamp_ns: Some(1_700_000_000_000_000_000),
        }]
    );

    let rejected = legacy.process(frame("fail")).expect_err("refused");
    assert_eq!(rejected.error.reason(), "decode_malformed");
    assert_eq!(rejected.frame.data, b"fail", "the frame is handed back");

    assert_eq!(
        legacy.encode_command("cmd/x", b"1").expect("encodes"),
        b"cmd/x=1"
    );
}

#[test]
fn a_module_of_no_supported_contract_names_the_versions() {
    // The smallest valid component, `(component)`: it exports nothing.
    let err = runtime()
        .load_bytes(b"\0asm\x0d\0\x01\0")
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("sluice:transform@0.2.0") && err.contains("sluice:transform@0.1.0"),
        "{err}"
    );
}

#[test]
fn downlink_encode_goes_through_the_sandbox() {
    let runtime = runtime();
    let mut instance = misbehave(&runtime, &[]).expect("init");
    assert_eq!(
        instance.encode_command("cmd/x", b"abc").expect("encodes"),
        b"cba"
    );
    let err = instance.encode_command("cmd/x", b"").expect_err("refused");
    assert_eq!(err.reason(), "decode_unsupported");
}

#[test]
fn compiled_modules_are_cached_and_a_corrupt_cache_entry_is_recompiled() {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(ModuleCache::new(Some(cache_dir.path().to_owned()))).expect("rt");
    let first = runtime.load_file(wasm::MISBEHAVE.as_ref()).expect("loads");
    assert_eq!(first.cache_outcome(), CacheOutcome::Compiled);
    // Dropped, so that the next load reads the cache instead of sharing it.
    drop(first);
    let second = runtime.load_file(wasm::MISBEHAVE.as_ref()).expect("loads");
    assert_eq!(second.cache_outcome(), CacheOutcome::Hit);
    drop(second);

    let entries: Vec<_> = std::fs::read_dir(cache_dir.path())
        .expect("read cache dir")
        .flatten()
        .map(|e| e.path())
        // Beside the artifacts: the cache's key (`.key`).
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    std::fs::write(&entries[0], b"corrupted").expect("corrupt it");
    let third = runtime
        .load_file(wasm::MISBEHAVE.as_ref())
        .expect("recovers");
    assert_eq!(third.cache_outcome(), CacheOutcome::Compiled);
    let mut instance = third.instantiate("x", &[], LIMITS).expect("init");
    assert_ok_frame_works(&mut instance, "from-recompiled");
}

/// Two pipelines running the same module bytes share its compiled code —
/// the second load is `Shared`, nothing is read or compiled — and nothing
/// else: each instance has its own config, and a trap in one leaves the
/// other running. Once the last module of those bytes is gone the next load
/// reads the cache again.
#[test]
fn the_same_module_loaded_twice_shares_its_code_not_its_state() {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(ModuleCache::new(Some(cache_dir.path().to_owned()))).expect("rt");
    let first = runtime
        .load_file(wasm::JSON_TELEMETRY.as_ref())
        .expect("loads");
    let second = runtime
        .load_file(wasm::JSON_TELEMETRY.as_ref())
        .expect("loads");
    assert_eq!(first.cache_outcome(), CacheOutcome::Compiled);
    assert_eq!(second.cache_outcome(), CacheOutcome::Shared);
    assert_eq!(first.hash(), second.hash());

    let config = |prefix: &str| vec![("prefix".to_string(), prefix.to_string())];
    let mut plant1 = first
        .instantiate("plant1", &config("plant1"), LIMITS)
        .expect("init");
    let mut plant2 = second
        .instantiate("plant2", &config("plant2"), LIMITS)
        .expect("init");
    let reading = frame(r#"{"n1":{"t":21.5}}"#);
    let topics = |instance: &mut TransformInstance| -> Vec<String> {
        let output = instance
            .process(reading.clone())
            .unwrap_or_else(|r| panic!("{}", r.error));
        output.messages().map(|m| m.topic.into()).collect()
    };
    assert_eq!(topics(&mut plant1), ["plant1/node1/temperature"]);
    assert_eq!(topics(&mut plant2), ["plant2/node1/temperature"]);

    let load_misbehave = || {
        runtime
            .load_file(wasm::MISBEHAVE.as_ref())
            .expect("misbehave loads")
    };
    let (one, other) = (load_misbehave(), load_misbehave());
    assert_eq!(other.cache_outcome(), CacheOutcome::Shared);
    let mut crashing = one.instantiate("crashing", &[], LIMITS).expect("init");
    let mut healthy = other.instantiate("healthy", &[], LIMITS).expect("init");
    assert!(crashing.process(frame("panic")).is_err());
    assert_ok_frame_works(&mut healthy, "after-the-other-trapped");
    assert_ok_frame_works(&mut crashing, "after-its-own-trap");

    drop((first, second, plant1, plant2));
    let again = runtime
        .load_file(wasm::JSON_TELEMETRY.as_ref())
        .expect("loads");
    assert_eq!(again.cache_outcome(), CacheOutcome::Hit);
}

/// Through the real pipeline worker: invalid outputs never reach a sink,
/// each is counted by reason, and good frames keep flowing in order.
#[test]
fn worker_refuses_invalid_outputs_and_counts_them() {
    let runtime = runtime();
    let instance = misbehave(&runtime, &[]).expect("init");
    let metrics = Metrics::new();
    let pipeline_metrics = metrics.pipeline("p");
    let (frame_tx, frame_rx) = tokio::sync::mpsc::channel(64);
    let (emit_tx, mut emit_rx) = tokio::sync::mpsc::channel(64);
    let worker = WorkerSpec {
        settings: WorkerSettings {
            pipeline: Arc::from("p"),
            max_payload: 1000,
        },
        instance,
        frames: frame_rx,
        downlink: None,
        control: None,
        emissions: emit_tx.into(),
        metrics: pipeline_metrics,
        guard: Default::default(),
    }
    .spawn()
    .expect("spawn worker");

    let inputs = [
        "ok:1",
        "bad-topic:a/+/b",
        "bad-topic:a/#",
        "bad-topic:",
        "big-payload:1001",
        "big-payload:1000",
        "nan",
        "loop",
        "ok:2",
    ];
    for input in inputs {
        frame_tx.blocking_send(frame(input)).expect("send");
    }
    drop(frame_tx);
    worker.join().expect("worker exits when its input closes");

    let mut topics = Vec::new();
    while let Ok(emission) = emit_rx.try_recv() {
        let output = emission.output;
        topics.extend(output.messages().map(|m| m.topic.to_owned()));
        for p in output.owned_points() {
            assert_eq!(
                p.timestamp_ns,
                Some(1_700_000_000_000_000_000),
                "receive time filled in"
            );
            topics.push(format!("point:{}", p.measurement));
        }
    }
    assert_eq!(
        topics,
        [
            "test/ok",
            "test/version",
            "point:test",
            "test/big",
            "test/ok",
            "test/version",
            "point:test"
        ]
    );
    for (reason, count) in [
        ("wildcard_topic", 2),
        ("empty_topic", 1),
        ("payload_too_large", 1),
        ("non_finite_field", 1),
    ] {
        assert_eq!(
            metrics.outputs_dropped_count("p", reason),
            count,
            "{reason}"
        );
    }
    assert_eq!(metrics.frames_dropped_count("p", "trap_timeout"), 1);
}

fn hostile(runtime: &Runtime, init: &str) -> Result<TransformInstance, LoadError> {
    runtime
        .load_file(sluice_tests::wasm::HOSTILE.as_ref())
        .expect("hostile loads")
        .instantiate(
            "hostile",
            &[("init".to_owned(), init.to_owned())],
            Limits::default(),
        )
}

fn payload(output: &sluice::output::TransformOutput, topic: &str) -> String {
    let message = output
        .messages()
        .find(|m| m.topic == topic)
        .unwrap_or_else(|| panic!("no message on {topic}: {output:?}"));
    String::from_utf8_lossy(message.payload).into_owned()
}

#[test]
fn a_sleeping_guest_sees_time_pass_and_costs_none() {
    let runtime = runtime();
    let mut instance = hostile(&runtime, "").expect("init");
    let received_at_ns = frame("").received_at_ns;
    // Twenty seconds of sleep: the call's clock moves on, nothing waits
    // (a real sleep would also show a wall clock that is not the frame's).
    let output = instance.process(frame("sleep:20000")).expect("no trap");
    assert_eq!(payload(&output, "hostile/slept"), "20000000000");
    assert_eq!(
        payload(&output, "hostile/wall"),
        (received_at_ns + 20_000_000_000).to_string()
    );
    // The clock is the frame's receive time, call after call.
    for _ in 0..2 {
        let output = instance.process(frame("clock")).expect("no trap");
        assert_eq!(payload(&output, "hostile/wall"), received_at_ns.to_string());
    }
    // A downlink command that sleeps does not wait either.
    assert_eq!(
        instance
            .encode_command("cmd", b"sleep:20000")
            .expect("encodes"),
        b"00002:peels"
    );
}

#[tokio::test]
async fn an_init_that_prints_or_sleeps_is_accepted_on_a_runtime_thread_and_a_panic_refused() {
    // On a tokio runtime's own thread, as `sluice run` instantiates: a
    // guest writing to stdout or stderr there used to panic the host.
    let runtime = runtime();
    for init in ["print", "sleep"] {
        let mut instance = hostile(&runtime, init).unwrap_or_else(|e| panic!("init {init}: {e}"));
        let output = instance.process(frame("ok:a")).expect("works");
        assert_eq!(payload(&output, "hostile/ok"), "a");
    }
    match hostile(&runtime, "panic") {
        Err(LoadError::InitTrap { kind, .. }) => assert_eq!(kind, TrapKind::Panic),
        Err(other) => panic!("a panicking init must be a trap, got: {other}"),
        Ok(_) => panic!("a panicking init must be refused"),
    }
    match hostile(&runtime, "spin") {
        Err(LoadError::InitTrap { kind, .. }) => assert_eq!(kind, TrapKind::Timeout),
        Err(other) => panic!("a spinning init must time out, got: {other}"),
        Ok(_) => panic!("a spinning init must be refused"),
    }
}

#[test]
fn an_output_over_a_limit_is_refused_whole_and_the_next_frame_goes_through() {
    let runtime = runtime();
    let mut instance = hostile(&runtime, "").expect("init");
    let limits = Limits::default().output;
    let at_limit = instance
        .process(frame(&format!("messages:{}", limits.messages)))
        .expect("at the limit is fine");
    assert_eq!(at_limit.message_count(), limits.messages);
    // Over a count, and buffers the host would have turned into hundreds
    // of MiB (refused on their size, before they are copied).
    for (line, reason) in [
        (
            format!("messages:{}", limits.messages + 1),
            "limit_messages",
        ),
        (format!("tags:{}", limits.tags_per_point + 1), "limit_tags"),
        ("empty-topics:3000000".to_owned(), "limit_output_bytes"),
        ("tags:13600000".to_owned(), "limit_output_bytes"),
    ] {
        let rejected = instance.process(frame(&line)).expect_err(&line);
        assert_eq!(
            rejected.error.reason(),
            reason,
            "{line}: {}",
            rejected.error
        );
        assert!(
            matches!(rejected.error, ProcessError::OverLimit(_)),
            "{line}: {:?}",
            rejected.error
        );
        let output = instance.process(frame("ok:next")).expect("the next frame");
        assert_eq!(payload(&output, "hostile/ok"), "next");
    }
    // The byte budget: 100 messages of one byte cost 100 × 64 + 100 × 10.
    let tight = Limits {
        output: OutputLimits {
            bytes: 5_000,
            ..limits
        },
        ..Limits::default()
    };
    let mut tight = runtime
        .load_file(sluice_tests::wasm::HOSTILE.as_ref())
        .expect("loads")
        .instantiate("tight", &[], tight)
        .expect("init");
    let rejected = tight.process(frame("messages:100")).expect_err("over");
    assert_eq!(rejected.error.reason(), "limit_output_bytes");
    assert_eq!(
        tight
            .process(frame("messages:10"))
            .expect("fits")
            .message_count(),
        10
    );
}

#[test]
fn a_guests_text_is_cut_and_cannot_forge_a_line() {
    let runtime = runtime();
    let mut instance = hostile(&runtime, "").expect("init");
    let rejected = instance
        .process(frame("big-error:8388608"))
        .expect_err("an error");
    let ProcessError::Guest(error) = &rejected.error else {
        panic!("a typed error, got {:?}", rejected.error);
    };
    assert!(
        error.message.len() <= sluice::model::GUEST_TEXT_MAX + '…'.len_utf8(),
        "{} bytes kept",
        error.message.len()
    );
    assert!(!error.message.contains('\n'), "{}", error.message);
    assert!(error.message.contains("\\n2099-01-01"), "{}", error.message);
}

#[test]
fn a_0_1_output_aliasing_one_buffer_is_not_copied_once_per_message() {
    // 200 messages whose payloads are all one 1 MiB buffer: lifted value by
    // value, 200 MiB of copies. Within the 4 MiB budget the host copies at
    // most four of them, then refuses the frame.
    let runtime = runtime();
    let mut instance = runtime
        .load_file(sluice_tests::wasm::HOSTILE_V0_1.as_ref())
        .expect("loads")
        .instantiate("hostile-v0-1", &[], Limits::default())
        .expect("init");
    assert_eq!(instance.module().contract(), "sluice:transform@0.1.0");
    let rejected = instance.process(frame("alias:200:1")).expect_err("refused");
    assert_eq!(
        rejected.error.reason(),
        "limit_output_bytes",
        "{}",
        rejected.error
    );
    // Over the count: refused before any message is lifted.
    let rejected = instance
        .process(frame("alias:1001:0"))
        .expect_err("refused");
    assert_eq!(
        rejected.error.reason(),
        "limit_messages",
        "{}",
        rejected.error
    );
    let output = instance.process(frame("ok:next")).expect("the next frame");
    assert_eq!(payload(&output, "hostile/ok"), "next");
}

#[test]
fn a_guest_reaches_no_file_environment_or_network() {
    let runtime = runtime();
    let mut instance = hostile(&runtime, "").expect("init");
    let output = instance.process(frame("escape")).expect("no trap");
    let report = payload(&output, "hostile/escape");
    // No preopened directory, no environment or arguments, no sockets (not
    // even created: each would be a host file descriptor), no DNS.
    for denied in [
        "file=Err(",
        "dir=Err(",
        "env=0",
        "args=0",
        "tcp=Err(Os { code: 2, kind: PermissionDenied",
        "udp=Err(Os { code: 2, kind: PermissionDenied",
        "dns=Err(",
    ] {
        assert!(report.contains(denied), "{denied} in {report}");
    }
}

/// What a guest can make the host hold outside its memory cap is bounded:
/// random bytes per call (made in host code, where no deadline fires) and
/// WASI handles kept alive. Over either bound the frame traps, and the
/// next frame gets a fresh instance.
#[test]
fn host_memory_a_guest_can_pin_through_wasi_is_bounded() {
    let runtime = runtime();
    let mut instance = hostile(&runtime, "").expect("init");
    let output = instance.process(frame("random:64")).expect("a little");
    assert_eq!(payload(&output, "hostile/random"), "64");
    instance.process(frame("leak:100")).expect("a few handles");
    for command in ["random:1048576", "leak:100000"] {
        let rejected = instance
            .process(frame(command))
            .expect_err("over the bound the frame fails");
        assert!(
            matches!(rejected.error, ProcessError::Trap { .. }),
            "{command}: {}",
            rejected.error
        );
        let output = instance
            .process(frame("ok:after"))
            .expect("a fresh instance");
        assert_eq!(payload(&output, "hostile/ok"), "after");
    }
}
