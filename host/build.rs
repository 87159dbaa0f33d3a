//! Link-time settings for the `sluice` binary, and the guest SDK it
//! carries for `sluice transform new`.
//!
//! **Packed relative relocations (`DT_RELR`).** `sluice` is a position-
//! independent executable, so the dynamic loader patches every pointer in
//! its read-only data at start-up. In the classic `RELA` format that is
//! 24 bytes per pointer — ~1.4 MiB of `.rela.dyn` for ~60,000 pointers
//! (wasmtime, Cranelift, rustls and axum are full of vtables and static
//! tables) — which the loader reads once and which then stays mapped in
//! the process: 1–3 MiB of resident memory, depending on how much of the
//! binary is in the page cache (measured with `/proc/PID/pagemap`;
//! BENCHMARKS.md, "Memory"). `-z pack-relative-relocs`
//! stores the same relocations as bitmaps (13 KiB). It needs glibc ≥ 2.36
//! at run time (Debian 12, Raspberry Pi OS bookworm, Ubuntu 22.10+); the
//! binary then names the `GLIBC_ABI_DT_RELR` version, so an older glibc
//! refuses it with a clear loader error instead of misbehaving. Set
//! `SLUICE_LINK_RELR=0` when building for an older system. Linkers that do
//! not know the option: GNU ld before 2.38 warns and ignores it (the `cross`
//! images), and `zig cc` (cargo-zigbuild, whose `.2.36`-style targets pick
//! the glibc) is skipped here rather than trusted with it.
//!
//! Only the binaries get the flag (`rustc-link-arg-bins`), so nothing else
//! in the workspace is relinked or rebuilt when it changes.

fn main() {
    bundle_sdk();
    println!("cargo:rerun-if-env-changed=SLUICE_LINK_RELR");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let wanted = var("SLUICE_LINK_RELR") != "0";
    // Cargo tells build scripts the linker it resolved for the target.
    let zig = var("RUSTC_LINKER").contains("zig");
    if wanted
        && !zig
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// **The guest SDK in the binary.** `sluice transform new` writes the SDK
/// and the WIT this binary speaks into the new crate (`vendor/`), so a
/// transform builds with nothing but the installed binary and Rust, and
/// its SDK is the one that matches the host. Here the SDK's manifest is
/// made standalone (workspace-inherited keys filled in, workspace lints
/// dropped) and `$OUT_DIR/sdk_bundle.rs` lists every file with its text.
fn bundle_sdk() {
    use std::fmt::Write as _;
    use std::path::Path;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |path: &Path| {
        println!("cargo:rerun-if-changed={}", path.display());
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let workspace: toml::Table = read(&root.join("Cargo.toml"))
        .parse()
        .expect("workspace manifest");
    let mut sdk: toml::Table = read(&root.join("guest-sdk/Cargo.toml"))
        .parse()
        .expect("SDK manifest");
    let inherited = |table: &toml::Value| {
        table
            .as_table()
            .and_then(|t| t.get("workspace"))
            .and_then(toml::Value::as_bool)
            == Some(true)
    };
    let ws = &workspace["workspace"];
    if let Some(package) = sdk.get_mut("package").and_then(toml::Value::as_table_mut) {
        for (key, value) in package.iter_mut() {
            if inherited(value) {
                *value = ws["package"][key.as_str()].clone();
            }
        }
    }
    let resolve = |deps: &mut toml::Table| {
        for (name, spec) in deps.iter_mut() {
            if !inherited(spec) {
                continue;
            }
            let mut resolved = match ws["dependencies"][name.as_str()].clone() {
                toml::Value::String(version) => {
                    let mut t = toml::Table::new();
                    t.insert("version".into(), toml::Value::String(version));
                    t
                }
                toml::Value::Table(t) => t,
                other => panic!("workspace dependency {name}: {other}"),
            };
            for (key, value) in spec.as_table().into_iter().flatten() {
                match key.as_str() {
                    "workspace" => {}
                    "features" => {
                        let features = resolved
                            .entry("features")
                            .or_insert_with(|| toml::Value::Array(Vec::new()));
                        if let (Some(all), Some(more)) = (features.as_array_mut(), value.as_array())
                        {
                            all.extend(more.iter().cloned());
                        }
                    }
                    _ => {
                        resolved.insert(key.clone(), value.clone());
                    }
                }
            }
            *spec = toml::Value::Table(resolved);
        }
    };
    if let Some(deps) = sdk
        .get_mut("dependencies")
        .and_then(toml::Value::as_table_mut)
    {
        resolve(deps);
    }
    if let Some(targets) = sdk.get_mut("target").and_then(toml::Value::as_table_mut) {
        for (_, target) in targets.iter_mut() {
            if let Some(deps) = target
                .get_mut("dependencies")
                .and_then(toml::Value::as_table_mut)
            {
                resolve(deps);
            }
        }
    }
    sdk.remove("lints");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let manifest = out.join("sdk-Cargo.toml");
    std::fs::write(
        &manifest,
        format!(
            "# Written by `sluice transform new`: the SDK of the sluice that made this crate.\n{}",
            toml::to_string(&sdk).expect("SDK manifest")
        ),
    )
    .expect("write the SDK manifest");

    let mut files = vec![("vendor/sluice-sdk/Cargo.toml".to_owned(), manifest)];
    for (dir, into) in [
        (root.join("guest-sdk/src"), "vendor/sluice-sdk/src"),
        (root.join("wit/v0.2.0"), "vendor/wit/v0.2.0"),
    ] {
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.is_file())
            .collect();
        names.sort();
        for path in names {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            read(&path);
            files.push((format!("{into}/{name}"), path));
        }
    }
    let mut code = String::from(
        "/// The guest SDK and WIT, by path in a new transform crate.\npub const SDK_FILES: &[(&str, &str)] = &[\n",
    );
    for (name, path) in files {
        let path = path.canonicalize().expect("canonical path");
        let _ = writeln!(
            code,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    code.push_str("];\n");
    std::fs::write(out.join("sdk_bundle.rs"), code).expect("write sdk_bundle.rs");
}
