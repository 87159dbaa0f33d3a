//! `sluice transform new | build | test`: the transform author's loop.
//!
//! * `new` scaffolds a crate that builds out of the box and has a unit test.
//! * `build` runs cargo for `wasm32-wasip2` in release mode (the scaffold's
//!   profile is size-optimised) and prints the component path(s).
//! * `test` runs a built component on sample input, exactly as the host
//!   would (same sandbox, same validation), and prints JSON lines.
//! * `deploy` and `rollback` talk to a running host's admin API
//!   ([`super::deploy`]).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use crate::jsonout;
use crate::model::{Frame, now_ns};
use crate::output::PointLike;
use crate::runtime::{Limits, ModuleCache, Runtime};
use crate::wasm_build::build;

/// `sluice transform …`
#[derive(Debug, Subcommand)]
pub enum TransformCommand {
    /// Scaffold a new transform crate.
    New {
        /// Crate name, e.g. `my-sensor` (also the directory created).
        name: String,
        /// Parent directory to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Use the sluice-sdk crate at this path (default: write the SDK this
        /// binary speaks into the new crate, under `vendor/`).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a transform crate (or workspace) into Wasm components.
    Build {
        /// The crate or workspace directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a component on sample input and print what it emits as JSON lines.
    Test {
        /// The component (`.wasm`).
        module: PathBuf,
        /// Input file, one frame per line (`-` for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Lines are hex-encoded binary frames.
        #[arg(long)]
        hex: bool,
        /// Transform config, `key=value` (repeatable).
        #[arg(long = "config", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// The source name the frames appear to come from.
        #[arg(long, default_value = "test")]
        source: String,
        /// Exit 0 even if some frames fail to decode.
        #[arg(long)]
        allow_errors: bool,
    },
    /// Deploy a component to a pipeline of a running host (admin API
    /// `PUT /transforms/NAME`); its test vectors go along.
    Deploy {
        /// The component (`.wasm`).
        module: PathBuf,
        /// The pipeline to deploy to.
        #[arg(long)]
        name: String,
        /// The host's admin API, e.g. `http://127.0.0.1:9180`.
        #[arg(long)]
        to: String,
        /// Environment variable holding the admin bearer token.
        #[arg(long, default_value = "SLUICE_ADMIN_TOKEN")]
        token_env: String,
        /// Test vectors (default: `MODULE` with `.vectors.jsonl` instead of
        /// `.wasm`, when that file exists).
        #[arg(long)]
        vectors: Option<PathBuf>,
        /// Do not send test vectors.
        #[arg(long, conflicts_with = "vectors")]
        no_vectors: bool,
        /// New transform config, `key=value` (repeatable; replaces the
        /// running config; default: keep it).
        #[arg(long = "config", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
    },
    /// Return a pipeline of a running host to its previous transform
    /// version (admin API `POST /transforms/NAME/rollback`).
    Rollback {
        /// The pipeline.
        name: String,
        /// The host's admin API, e.g. `http://127.0.0.1:9180`.
        #[arg(long)]
        to: String,
        /// Environment variable holding the admin bearer token.
        #[arg(long, default_value = "SLUICE_ADMIN_TOKEN")]
        token_env: String,
    },
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

/// Runs a `transform` subcommand; returns the process exit code.
pub fn run(command: TransformCommand) -> anyhow::Result<i32> {
    match command {
        TransformCommand::New { name, dir, sdk } => {
            let created = crate::scaffold::create(&dir, &name, sdk.as_deref())?;
            println!("created {}", created.display());
            println!("next: sluice transform build {}", created.display());
            Ok(0)
        }
        TransformCommand::Build { dir } => {
            for artifact in build(&dir)? {
                println!("{}", artifact.display());
            }
            Ok(0)
        }
        TransformCommand::Test {
            module,
            input,
            hex,
            config,
            source,
            allow_errors,
        } => {
            let errors = test(&module, &input, hex, &config, &source)?;
            Ok(if errors > 0 && !allow_errors { 1 } else { 0 })
        }
        TransformCommand::Deploy {
            module,
            name,
            to,
            token_env,
            vectors,
            no_vectors,
            config,
        } => super::deploy::deploy(&super::deploy::DeployArgs {
            module,
            pipeline: name,
            admin: to,
            token_env,
            vectors: if no_vectors {
                super::deploy::Vectors::None
            } else {
                vectors.map_or(
                    super::deploy::Vectors::Sidecar,
                    super::deploy::Vectors::File,
                )
            },
            config,
        }),
        TransformCommand::Rollback {
            name,
            to,
            token_env,
        } => super::deploy::rollback(&name, &to, &token_env),
    }
}

/// Runs `module` over every line of `input`; prints JSON lines to stdout.
/// Returns the number of frames that failed plus outputs the host would refuse.
fn test(
    module: &Path,
    input: &Path,
    hex_input: bool,
    config: &[(String, String)],
    source: &str,
) -> anyhow::Result<usize> {
    let runtime = Runtime::new(ModuleCache::new(ModuleCache::default_dir()))?;
    let module = runtime.load_file(module)?;
    let mut instance = module.instantiate("test", config, Limits::default())?;
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input)
                .with_context(|| format!("cannot open input {}", input.display()))?,
        ))
    };
    let source: std::sync::Arc<str> = source.into();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut errors = 0;
    for (index, line) in reader.split(b'\n').enumerate() {
        let line_no = index + 1;
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let data = if hex_input {
            let text = String::from_utf8_lossy(&line);
            match hex::decode(text.trim()) {
                Ok(bytes) => bytes,
                Err(err) => {
                    errors += 1;
                    let value = serde_json::json!({"kind": "error", "line": line_no,
                        "reason": "bad_hex", "error": format!("line is not hex: {err}")});
                    writeln!(out, "{value}")?;
                    continue;
                }
            }
        } else {
            line
        };
        let frame = Frame::new(source.clone(), now_ns(), data);
        match instance.process(frame) {
            Ok(output) => {
                for message in output.messages() {
                    let mut value = jsonout::message(message);
                    if let Err(invalid) = message.validate(usize::MAX) {
                        errors += 1;
                        value["invalid"] = invalid.to_string().into();
                    }
                    writeln!(out, "{value}")?;
                }
                for point in output.points() {
                    let mut value = jsonout::point(&point);
                    if let Err(invalid) = point.validate() {
                        errors += 1;
                        value["invalid"] = invalid.to_string().into();
                    }
                    writeln!(out, "{value}")?;
                }
            }
            Err(rejected) => {
                errors += 1;
                let value = serde_json::json!({"kind": "error", "line": line_no,
                    "reason": rejected.error.reason(), "error": rejected.error.to_string()});
                writeln!(out, "{value}")?;
            }
        }
    }
    Ok(errors)
}
