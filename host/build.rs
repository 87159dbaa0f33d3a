//! Link-time settings for the `sluice` binary.
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
