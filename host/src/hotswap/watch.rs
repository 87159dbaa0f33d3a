//! The watched transforms directory (`[hotswap] watch_dir`): a file
//! `PIPELINE.wasm` that appears or changes there is deployed to the
//! pipeline of that name, with `PIPELINE.vectors.jsonl` (if present) as its
//! test vectors.
//!
//! How to drop a module in: write it under a name that does not end in
//! `.wasm` (e.g. `.gw.wasm.tmp`) in the same directory, then rename it to
//! `gw.wasm` — a rename is atomic, so the watcher never sees half a file.
//! Vectors go first (same way), the module last. Only names `NAME.wasm`
//! whose `NAME` is a pipeline count; hidden files, temp files and anything
//! else are ignored (an unknown `NAME` is logged). Events for one file are
//! debounced (`debounce_ms` of quiet before the deploy), so a plain `cp`,
//! which writes in several steps, is deployed once when it is done — or
//! refused, if the watcher caught it half-written and the writes then
//! stopped, which the next write fixes. A file whose content is what the
//! pipeline already runs deploys nothing (`unchanged`).
//!
//! [`notify`] (inotify on Linux) reports events on its own thread; they are
//! handed to a tokio task through a bounded channel (the notify thread
//! waits when it is full) and deployed by [`Hotswap::deploy`], so the
//! watcher never does more than the API would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DeployRequest, DeploySource, Hotswap};

/// Paths with events waiting for the debounce task.
const EVENT_QUEUE: usize = 1024;

/// The watcher could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir}: {source}")]
pub struct WatchError {
    /// The directory.
    pub dir: PathBuf,
    /// notify's error.
    pub source: notify::Error,
}

/// A running directory watcher; stops on [`DirWatcher::stop`] or drop.
pub struct DirWatcher {
    _watcher: notify::RecommendedWatcher,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The pipeline a file name deploys to: `NAME.wasm`, not hidden, `NAME` a
/// pipeline.
pub fn pipeline_of<'a>(file: &Path, pipelines: &[&'a str]) -> Result<&'a str, Ignored> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(Ignored::NotAModule)?;
    if name.starts_with('.') {
        return Err(Ignored::NotAModule);
    }
    let stem = name.strip_suffix(".wasm").ok_or(Ignored::NotAModule)?;
    pipelines
        .iter()
        .find(|p| **p == stem)
        .copied()
        .ok_or(Ignored::UnknownPipeline)
}

/// Why a file in the watched directory is not deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not `NAME.wasm` (temp files, vectors, hidden files).
    NotAModule,
    /// `NAME.wasm` with no pipeline `NAME`.
    UnknownPipeline,
}

impl DirWatcher {
    /// Watches `dir` and deploys into `hotswap`'s pipelines.
    pub fn start(dir: &Path, hotswap: Arc<Hotswap>) -> Result<DirWatcher, WatchError> {
        let (tx, rx) = mpsc::channel::<PathBuf>(EVENT_QUEUE);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) if writes(&event.kind) => {
                    for path in event.paths {
                        // On notify's own thread (not a runtime): waiting
                        // here is backpressure, not a stall of the runtime.
                        if tx.blocking_send(path).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "transforms directory watcher error"),
            })
            .map_err(|source| WatchError {
                dir: dir.to_owned(),
                source,
            })?;
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                dir: dir.to_owned(),
                source,
            })?;
        let stop = CancellationToken::new();
        let debounce = hotswap.config().debounce();
        let task = tokio::spawn(debounce_and_deploy(
            dir.to_owned(),
            rx,
            hotswap,
            debounce,
            stop.clone(),
        ));
        tracing::info!(dir = %dir.display(), debounce_ms = debounce.as_millis() as u64,
            "watching the transforms directory: PIPELINE.wasm deploys to that pipeline");
        Ok(DirWatcher {
            _watcher: watcher,
            stop,
            task,
        })
    }

    /// Stops watching; a deploy in progress finishes first.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Whether an event can mean new content: created, written, renamed into
/// place, closed after writing. Not reads (the watcher's own read of the
/// file would re-trigger it), metadata or removals.
fn writes(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Create(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => false,
    }
}

async fn debounce_and_deploy(
    dir: PathBuf,
    mut events: mpsc::Receiver<PathBuf>,
    hotswap: Arc<Hotswap>,
    debounce: Duration,
    stop: CancellationToken,
) {
    let pipelines: Vec<String> = hotswap.pipelines().map(str::to_owned).collect();
    let names: Vec<&str> = pipelines.iter().map(String::as_str).collect();
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    let mut told_unknown = std::collections::HashSet::new();
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            _ = stop.cancelled() => break,
            event = events.recv() => match event {
                Some(path) => match pipeline_of(&path, &names) {
                    Ok(pipeline) => {
                        due.insert(pipeline.to_owned(), Instant::now() + debounce);
                    }
                    Err(Ignored::UnknownPipeline) => {
                        if told_unknown.insert(path.clone()) {
                            tracing::warn!(file = %path.display(), pipelines = ?names,
                                "transforms directory: no pipeline of that name; file ignored");
                        }
                    }
                    Err(Ignored::NotAModule) => {}
                },
                None => break,
            },
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                let ready: Vec<String> = due
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(name, _)| name.clone())
                    .collect();
                for pipeline in ready {
                    due.remove(&pipeline);
                    deploy_file(&dir, &pipeline, &hotswap).await;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Deploys `dir/PIPELINE.wasm` (with its vectors). The outcome is logged
/// and counted by the manager.
async fn deploy_file(dir: &Path, pipeline: &str, hotswap: &Hotswap) {
    let path = dir.join(format!("{pipeline}.wasm"));
    let wasm = match tokio::fs::read(&path).await {
        Ok(wasm) => wasm,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(file = %path.display(), "transforms directory: file gone; nothing to deploy");
            return;
        }
        Err(err) => {
            tracing::warn!(file = %path.display(), error = %err, "transforms directory: cannot read the module");
            return;
        }
    };
    let vectors = match super::read_sidecar_vectors(&path).await {
        Ok(vectors) => vectors,
        Err(err) => {
            tracing::warn!(file = %super::vectors_path(&path).display(), error = %err,
                "transforms directory: cannot read the test vectors; module not deployed");
            return;
        }
    };
    let mut request = DeployRequest::module(DeploySource::Dir, path.display().to_string(), wasm);
    request.vectors = vectors;
    // Outcome logged and counted by the manager.
    let _ = hotswap.deploy(pipeline, request).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_do_not_trigger_a_deploy() {
        use notify::EventKind;
        use notify::event::{
            AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind,
            RenameMode,
        };
        assert!(writes(&EventKind::Create(CreateKind::File)));
        assert!(writes(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(writes(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(writes(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!writes(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!writes(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!writes(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::Any
        ))));
        assert!(!writes(&EventKind::Remove(RemoveKind::File)));
    }

    #[test]
    fn only_pipeline_modules_count() {
        let pipelines = ["gw", "line.2"];
        let of = |name: &str| pipeline_of(Path::new(name), &pipelines);
        assert_eq!(of("/d/gw.wasm"), Ok("gw"));
        assert_eq!(of("/d/line.2.wasm"), Ok("line.2"));
        assert_eq!(of("/d/other.wasm"), Err(Ignored::UnknownPipeline));
        for ignored in [
            "/d/.gw.wasm",
            "/d/gw.wasm.tmp",
            "/d/.gw.wasm.swp",
            "/d/gw.wasm~",
            "/d/gw.vectors.jsonl",
            "/d/gw",
        ] {
            assert_eq!(of(ignored), Err(Ignored::NotAModule), "{ignored}");
        }
    }
}
