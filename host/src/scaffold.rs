//! `sluice transform new`: a transform crate that builds out of the box.
//!
//! The scaffold is a complete, tested transform (echo each text frame to
//! `<prefix>/<source>`), a size-optimised release profile, the wasm32 build
//! flags sluice's own transforms use (`.cargo/config.toml`), and a sample
//! input for `sluice transform test`. It is standalone (`[workspace]`) and
//! carries the SDK and WIT of the sluice that created it (`vendor/`, from
//! the binary, see `build.rs`), so it builds wherever it is created, with
//! nothing but Rust — no sluice source tree.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the Wasm component; rlib: native unit tests and benchmarks.
crate-type = ["cdylib", "rlib"]

[dependencies]
sluice-sdk = { path = "{sdk}" }

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# Standalone: not part of any enclosing workspace.
[workspace]
"#;

/// How sluice's own transforms are built for wasm32 (more inlining).
const CARGO_CONFIG: &str = include_str!("../../.cargo/config.toml");

const LIB_RS: &str = r#"//! A sluice transform. Build: `sluice transform build .`;
//! try it: `sluice transform test target/wasm32-wasip2/release/{lib}.wasm --input sample.txt`.
use sluice_sdk::{Config, Error, Frame, Message, Output, Point, Qos, Transform};

/// Publishes every text frame to `<prefix>/<source>` and records its length.
pub struct {type_name} {
    prefix: String,
}

impl Transform for {type_name} {
    fn init(config: &Config) -> Result<Self, Error> {
        Ok(Self { prefix: config.get_or("prefix", "hello").to_owned() })
    }

    fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error> {
        let text = frame.text()?; // invalid UTF-8 → Error::Malformed, frame dead-lettered
        let topic = format!("{}/{}", self.prefix, frame.source());
        out.publish(Message::new(topic, text).qos(Qos::AtLeastOnce).retain(true));
        out.point(Point::new("frames").tag("source", frame.source()).field("bytes", text.len() as i64));
        Ok(())
    }
}

sluice_sdk::export!({type_name});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_text_frames() {
        let mut t = {type_name}::init(&Config::from_pairs([("prefix", "demo")])).unwrap();
        let out = sluice_sdk::process(&mut t, &Frame::new("port1", 0, "hi")).unwrap();
        let want = Message::new("demo/port1", "hi").qos(Qos::AtLeastOnce).retain(true);
        assert_eq!(out.messages(), [want]);
        assert!(sluice_sdk::process(&mut t, &Frame::from_data([0xff])).is_err());
    }
}
"#;

const SAMPLE: &str = "hello from the device\nsecond frame\n";

const GITIGNORE: &str = "/target\n";

include!(concat!(env!("OUT_DIR"), "/sdk_bundle.rs"));

/// Where the scaffold's manifest finds the SDK it writes into the crate.
const VENDORED_SDK: &str = "vendor/sluice-sdk";

/// Creates `<parent>/<name>`; returns its path. The crate uses the SDK at
/// `sdk` if given, else the one this binary carries, written into it.
pub fn create(parent: &Path, name: &str, sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    validate_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let lib = name.replace('-', "_");
    let type_name = type_name(name);
    let sdk_text = match sdk {
        Some(sdk) => sdk
            .canonicalize()
            .with_context(|| format!("sluice-sdk not found at {}", sdk.display()))?
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\""),
        None => VENDORED_SDK.to_owned(),
    };
    let fill = |template: &str| {
        template
            .replace("{name}", name)
            .replace("{lib}", &lib)
            .replace("{type_name}", &type_name)
            .replace("{sdk}", &sdk_text)
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(dir.join("src/lib.rs"), fill(LIB_RS))?;
    std::fs::write(dir.join("sample.txt"), SAMPLE)?;
    std::fs::write(dir.join(".gitignore"), GITIGNORE)?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(dir.join(".cargo/config.toml"), CARGO_CONFIG)?;
    if sdk.is_none() {
        for (path, text) in SDK_FILES {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(dir)
}

fn validate_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!(
            "{name:?} is not a valid crate name: use letters, digits, '-' and '_', starting with a letter"
        );
    }
    Ok(())
}

/// `my-sensor_v2` → `MySensorV2`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(type_name("my-sensor_v2"), "MySensorV2");
        assert_eq!(type_name("x"), "X");
        assert!(validate_name("good-name_1").is_ok());
        for bad in ["", "1abc", "a b", "a/b", "-x"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_a_crate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
        let dir = create(tmp.path(), "my-sensor", Some(&sdk)).expect("created");
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).expect("lib.rs");
        assert!(lib.contains("pub struct MySensor {"));
        assert!(!lib.contains("{type_name}"));
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
        assert!(manifest.contains("name = \"my-sensor\""));
        let config = std::fs::read_to_string(dir.join(".cargo/config.toml")).expect("config");
        assert!(config.contains("[target.wasm32-wasip2]"), "{config}");
        assert!(
            create(tmp.path(), "my-sensor", Some(&sdk)).is_err(),
            "refuses to overwrite"
        );
    }

    /// Without `--sdk` the crate carries its SDK: a manifest with nothing
    /// inherited from a workspace, the sources, and the WIT the SDK's
    /// bindings read (`../wit/v0.2.0` from the SDK's directory).
    #[test]
    fn writes_the_sdk_into_the_crate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = create(tmp.path(), "sensor", None).expect("created");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
        assert!(manifest.contains(r#"sluice-sdk = { path = "vendor/sluice-sdk" }"#));
        let sdk = std::fs::read_to_string(dir.join("vendor/sluice-sdk/Cargo.toml")).expect("SDK");
        assert!(!sdk.contains("workspace"), "{sdk}");
        assert!(sdk.contains("name = \"sluice-sdk\""), "{sdk}");
        let lib = std::fs::read_to_string(dir.join("vendor/sluice-sdk/src/lib.rs")).expect("lib");
        assert!(lib.contains(r#"path: "../wit/v0.2.0""#));
        assert!(dir.join("vendor/wit/v0.2.0/transform.wit").is_file());
    }
}
