//! Building a transform crate into a Wasm component with cargo
//! (`sluice transform build`, and the demo's transforms).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};

/// The Rust target transforms are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Checks that the wasm32-wasip2 standard library is installed for the
/// toolchain that cargo will use in `dir`.
fn check_wasm_target(dir: &Path) -> anyhow::Result<()> {
    let output = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .output()
        .context("cannot run rustc; is Rust installed?")?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let target_lib = Path::new(&sysroot).join("lib/rustlib").join(WASM_TARGET);
    if !target_lib.is_dir() {
        bail!(
            "the {WASM_TARGET} target is not installed for this toolchain; run: rustup target add {WASM_TARGET}"
        );
    }
    Ok(())
}

/// Builds the crate or workspace in `dir` for wasm32-wasip2 (release) and
/// returns the component files cargo produced.
pub fn build(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // Absolute first: cargo runs with `dir` as its working directory, where a
    // relative `dir/Cargo.toml` would name `dir/dir/Cargo.toml`.
    let dir =
        &std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("{} has no Cargo.toml", dir.display());
    }
    check_wasm_target(dir)?;
    let mut child = std::process::Command::new("cargo")
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo")?;
    let mut artifacts = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            if let Some(files) = msg["filenames"].as_array() {
                artifacts.extend(
                    files
                        .iter()
                        .filter_map(|f| f.as_str())
                        .filter(|f| f.ends_with(".wasm"))
                        .map(PathBuf::from),
                );
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    if artifacts.is_empty() {
        bail!("cargo built no .wasm component; does the crate have `crate-type = [\"cdylib\"]`?");
    }
    Ok(artifacts)
}
