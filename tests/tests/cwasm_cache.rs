//! The `.cwasm` cache as the real `sluice` binary uses it: a compiled
//! artifact runs only if this host wrote it under that name. One planted by
//! whoever can write the cache directory — here another transform's own,
//! valid artifact — is discarded and the module compiled again.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sluice::runtime::module_hash;
use sluice_tests::{sluice_bin, wasm};

/// `sluice transform test MODULE` on the frame `7` with its cache in
/// `cache_home/sluice`: the topics it publishes to, and its log.
fn topics(module: &str, cache_home: &Path) -> (Vec<String>, String) {
    let mut child = sluice_tests::kept_running(sluice_bin())
        .args(["transform", "test", module, "--input", "-"])
        .env("XDG_CACHE_HOME", cache_home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"7\n")
        .expect("write the frame");
    let output = child.wait_with_output().expect("sluice transform test");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    let topics = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .filter(|value| value["kind"] == "message")
        .map(|value| value["topic"].as_str().expect("topic").to_owned())
        .collect();
    (topics, log)
}

/// The cache file of `module`: named after its SHA-256.
fn artifact(cache: &Path, module: &str) -> PathBuf {
    let hash = module_hash(&std::fs::read(module).expect("read the module"));
    std::fs::read_dir(cache)
        .expect("the cache directory")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&hash) && name.ends_with(".cwasm"))
        })
        .unwrap_or_else(|| panic!("no artifact of {module} in {}", cache.display()))
}

#[test]
fn a_planted_artifact_never_runs() {
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("sluice");
    assert_eq!(topics(wasm::TAGGER_A, home.path()).0, ["tag/a"]);
    assert_eq!(topics(wasm::TAGGER_B, home.path()).0, ["tag/b"]);

    // tagger-b's artifact under tagger-a's name: valid machine code for
    // this engine, just not the module asked for.
    let planted = std::fs::read(artifact(&cache, wasm::TAGGER_B)).expect("read");
    std::fs::write(artifact(&cache, wasm::TAGGER_A), &planted).expect("plant");
    let (topics_a, log) = topics(wasm::TAGGER_A, home.path());
    assert_eq!(topics_a, ["tag/a"], "{log}");
    assert!(
        log.contains("discarding compiled-module cache entry"),
        "{log}"
    );
    assert_ne!(
        std::fs::read(artifact(&cache, wasm::TAGGER_A)).expect("read"),
        planted,
        "the planted file is replaced by the module's own artifact"
    );
    let (topics_a, log) = topics(wasm::TAGGER_A, home.path());
    assert_eq!(topics_a, ["tag/a"], "{log}");
    assert!(!log.contains("discarding"), "{log}");
}
