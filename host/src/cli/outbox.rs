//! `sluice outbox inspect | verify`: what the durable outboxes hold, and
//! whether they are intact.
//!
//! * `inspect` opens each file read-only and prints depth, bytes, the age of
//!   the oldest item, sequence numbers and the size on disk. It changes
//!   nothing, so a file that needs crash recovery is reported as such.
//! * `verify` runs redb's integrity check (the checksum of every page; it
//!   repairs what a crash left, as opening the outbox would), decodes every
//!   record (MQTT message or point) and checks the bookkeeping. Exit code 0
//!   when every file is intact, 1 otherwise.
//!
//! Both take `--config FILE` (every `*.redb` under `<data_dir>/outbox/`) or
//! `--path FILE` (one file). Both need the files to themselves: while a host
//! runs they report the file as in use (its metrics show the same numbers).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::Config;
use crate::outbox::{self, OutboxError};
use crate::sink::record;

/// `sluice outbox …`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Show depth, bytes, oldest item and size on disk of the outbox files.
    Inspect(Target),
    /// Check integrity and decode every record; exit 1 on any problem.
    Verify(Target),
}

/// Which outbox files.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The config file: every outbox under its `data_dir`.
    #[arg(long, short, conflicts_with = "path", required_unless_present = "path")]
    pub config: Option<PathBuf>,
    /// One outbox file.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// One JSON object per file instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand; returns the exit code.
pub fn run(command: OutboxCommand) -> anyhow::Result<u8> {
    match command {
        OutboxCommand::Inspect(target) => {
            let files = files(&target)?;
            let mut failed = false;
            for path in &files {
                failed |= !inspect_one(path, target.json);
            }
            Ok(u8::from(failed))
        }
        OutboxCommand::Verify(target) => {
            let files = files(&target)?;
            let mut failed = false;
            for path in &files {
                failed |= !verify_one(path, target.json);
            }
            Ok(u8::from(failed))
        }
    }
}

/// The files named by `--path`, or the outboxes under the config's data dir.
fn files(target: &Target) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(path) = &target.path {
        return Ok(vec![path.clone()]);
    }
    let Some(config_path) = &target.config else {
        anyhow::bail!("give --config FILE or --path FILE");
    };
    let config = Config::load(config_path)?;
    let data_dir = config
        .data_dir
        .clone()
        .or_else(crate::config::default_state_dir)
        .context("the config has no data_dir and there is no home directory")?;
    let dir = outbox::path_in(&data_dir, "x")
        .parent()
        .map(Path::to_owned)
        .unwrap_or(data_dir);
    let mut files = Vec::new();
    let mut quarantined = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry
                    .with_context(|| format!("cannot list {}", dir.display()))?
                    .path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.ends_with(".redb") {
                    files.push(path);
                } else if name.contains(".redb.corrupt-") {
                    quarantined.push(path);
                }
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("cannot list {}", dir.display()));
        }
    }
    files.sort();
    quarantined.sort();
    if files.is_empty() {
        eprintln!("no outbox files in {}", dir.display());
    }
    for path in quarantined {
        eprintln!(
            "note: {} is a damaged outbox moved aside by sluice (not delivered; delete it when done)",
            path.display()
        );
    }
    Ok(files)
}

fn now_ms() -> u64 {
    crate::model::now_ns() / 1_000_000
}

fn inspect_one(path: &Path, json: bool) -> bool {
    match outbox::inspect(path) {
        Ok(reports) => {
            if !json {
                println!("{}", path.display());
            }
            for report in reports {
                print_queue(path, &report, json);
            }
            true
        }
        Err(err) => {
            report_error(path, &err, json, explain(&err));
            false
        }
    }
}

fn print_queue(path: &Path, report: &outbox::InspectReport, json: bool) {
    let age_secs = report
        .oldest_enqueued_ms
        .map(|ms| now_ms().saturating_sub(ms) / 1000);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "path": path.display().to_string(),
                "queue": report.queue,
                "items": report.items,
                "bytes": report.bytes,
                "oldest_enqueued_ms": report.oldest_enqueued_ms,
                "oldest_age_secs": age_secs,
                "first_seq": report.seq_range.map(|r| r.0),
                "last_seq": report.seq_range.map(|r| r.1),
                "next_seq": report.next_seq,
                "from_journal": report.from_journal,
                "file_bytes": report.file_bytes,
            })
        );
        return;
    }
    let indent = if report.queue.is_empty() {
        "  "
    } else {
        println!("  queue {}", report.queue);
        "    "
    };
    if report.from_journal > 0 {
        println!(
            "{indent}items        {} ({} in the journal: the next start restores them)",
            report.items, report.from_journal
        );
    } else {
        println!("{indent}items        {}", report.items);
    }
    println!(
        "{indent}bytes        {} ({}; records + {} per item)",
        report.bytes,
        human_bytes(report.bytes),
        outbox::ITEM_OVERHEAD
    );
    match age_secs {
        Some(age) => println!("{indent}oldest item  {} ago", human_duration(age)),
        None => println!("{indent}oldest item  -"),
    }
    match report.seq_range {
        Some((first, last)) => {
            println!(
                "{indent}sequence     {first}..={last} (next {})",
                report.next_seq
            )
        }
        None => println!("{indent}sequence     - (next {})", report.next_seq),
    }
    println!(
        "{indent}file size    {} ({})",
        report.file_bytes,
        human_bytes(report.file_bytes)
    );
}

fn explain(err: &OutboxError) -> &'static str {
    match err {
        OutboxError::InUse { .. } => "stop the host first, or read its metrics",
        OutboxError::Store { source, .. } if matches!(**source, redb::Error::RepairAborted) => {
            "it was not closed cleanly; `sluice outbox verify` (or starting sluice) recovers it"
        }
        _ => "",
    }
}

fn report_error(path: &Path, err: &OutboxError, json: bool, hint: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "path": path.display().to_string(),
                "ok": false,
                "error": err.to_string(),
                "reason": err.reason(),
            })
        );
    } else if hint.is_empty() {
        eprintln!("{err}");
    } else {
        eprintln!("{err} ({hint})");
    }
}

fn decode(bytes: &[u8]) -> Result<(), String> {
    record::decode(bytes).map(|_| ()).map_err(|e| e.to_string())
}

fn verify_one(path: &Path, json: bool) -> bool {
    match outbox::verify(path, decode) {
        Ok(report) => {
            let ok = report.problem_count == 0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "path": path.display().to_string(),
                        "ok": ok,
                        "closed_cleanly": report.closed_cleanly,
                        "repaired": report.repaired,
                        "items": report.items,
                        "from_journal": report.from_journal,
                        "bytes": report.bytes,
                        "problem_count": report.problem_count,
                        "problems": report.problems,
                    })
                );
            } else {
                let state = match (report.closed_cleanly, report.repaired) {
                    (true, false) => "integrity check passed",
                    (false, false) => {
                        "integrity check passed; it was not closed cleanly and was recovered"
                    }
                    (_, true) => "integrity check found damage and repaired it",
                };
                let journal = match report.from_journal {
                    0 => String::new(),
                    n => format!(", {n} of them in the journal"),
                };
                if ok {
                    println!(
                        "{}: ok, {} items{journal}, {} bytes ({state})",
                        path.display(),
                        report.items,
                        report.bytes
                    );
                } else {
                    println!(
                        "{}: {} problem(s) in {} items ({state}):",
                        path.display(),
                        report.problem_count,
                        report.items
                    );
                    for problem in &report.problems {
                        println!("  - {problem}");
                    }
                    if report.problem_count > report.problems.len() as u64 {
                        println!(
                            "  … and {} more",
                            report.problem_count - report.problems.len() as u64
                        );
                    }
                }
            }
            ok
        }
        Err(err) => {
            report_error(path, &err, json, explain(&err));
            false
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humane_numbers() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m 5s");
        assert_eq!(human_duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(human_duration(2 * 86_400 + 3600), "2d 1h");
    }

    #[test]
    fn inspect_and_verify_files_by_path() {
        use crate::model::{MqttMessage, Qos};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = outbox::path_in(dir.path(), "mqtt");
        {
            let ob = outbox::Outbox::open(&path, outbox::OutboxConfig::default()).expect("open");
            let m = record::mqtt_to_vec(
                MqttMessage {
                    topic: "a/b".into(),
                    payload: b"1".to_vec().into(),
                    qos: Qos::AtLeastOnce,
                    retain: false,
                }
                .as_ref(),
            );
            ob.append(&[&m, &m]).expect("append");
        }
        assert!(inspect_one(&path, false));
        assert!(verify_one(&path, true));
        {
            let ob = outbox::Outbox::open(&path, outbox::OutboxConfig::default()).expect("open");
            ob.append(&[b"not a record"]).expect("append");
            assert!(!verify_one(&path, false), "in use");
        }
        assert!(!verify_one(&path, false), "undecodable record");
        assert!(!inspect_one(&dir.path().join("missing.redb"), false));
    }
}
