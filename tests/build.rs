//! Builds the Wasm transforms (`transforms/`) and the test-only guests
//! (`tests/guests/`) for wasm32-wasip2, so tests always run the real,
//! current components and no binary is checked in.
//!
//! A nested cargo with its own target directory, as wasmtime's own
//! test-programs crate does. The component paths reach the tests as
//! compile-time environment variables (`SLUICE_WASM_<NAME>`).

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("wasm-target");

    for watched in ["transforms", "tests/guests", "guest-sdk", "wit"] {
        rerun_if_changed_tree(&root.join(watched));
    }

    let builds = [
        (
            root.join("transforms/Cargo.toml"),
            &["json_telemetry", "cayenne_lpp", "modbus_registers"][..],
        ),
        (
            root.join("tests/guests/Cargo.toml"),
            &[
                "misbehave",
                "tagger_a",
                "tagger_b",
                "tagger_flaky",
                "legacy_v0_1",
                "hostile",
                "hostile_v0_1",
            ][..],
        ),
    ];
    for (manifest, components) in builds {
        build(&manifest, &target_dir);
        for name in components {
            let path = target_dir
                .join(TARGET)
                .join("release")
                .join(format!("{name}.wasm"));
            assert!(
                path.is_file(),
                "expected {} after the build",
                path.display()
            );
            println!(
                "cargo:rustc-env=SLUICE_WASM_{}={}",
                name.to_uppercase(),
                path.display()
            );
        }
    }
}

fn build(manifest: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        // Flags meant for the host build must not leak into the Wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cannot run cargo");
    if !status.success() {
        panic!(
            "building {} for {TARGET} failed ({status}). If the target is missing, run: rustup target add {TARGET}",
            manifest.display()
        );
    }
}

fn rerun_if_changed_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rerun_if_changed_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
