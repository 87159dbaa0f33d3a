//! The JSON bodies of the admin API's transform routes: the answer to a
//! deploy or rollback, and a pipeline's versions in `GET /transforms`.
//! Plain serde types; the manager and [`DeployReport`](super::DeployReport)
//! fill them in.

use serde::Serialize;

use super::DeployOutcome;
use crate::pipeline::guard::VersionStatsView;

/// The body of a successful `PUT /transforms/{name}` or rollback.
#[derive(Debug, Serialize)]
pub struct DeployResponse<'a> {
    pub(super) pipeline: &'a str,
    pub(super) outcome: DeployOutcome,
    pub(super) version: u64,
    pub(super) sha256: &'a str,
    pub(super) replaced: Option<u64>,
    pub(super) vectors_passed: usize,
    pub(super) swap_pause_us: f64,
    pub(super) canary: bool,
}

/// One version in `GET /transforms`.
#[derive(Debug, Serialize)]
pub(super) struct VersionView<'a> {
    pub(super) version: u64,
    pub(super) sha256: &'a str,
    pub(super) source: &'static str,
    pub(super) origin: &'a str,
    pub(super) deployed_at: String,
    pub(super) status: &'static str,
    pub(super) rollback: Option<RollbackView<'a>>,
    pub(super) previous: Option<u64>,
    pub(super) module_kept: bool,
    pub(super) config: serde_json::Map<String, serde_json::Value>,
    pub(super) vectors_passed: usize,
    pub(super) stats: VersionStatsView,
}

/// Why a version was rolled back.
#[derive(Debug, Serialize)]
pub(super) struct RollbackView<'a> {
    pub(super) automatic: bool,
    pub(super) reason: &'a str,
}

/// A pipeline's versions in `GET /transforms`: the active one, whether a
/// canary runs, what a rollback returns to, the history (newest first).
#[derive(Debug, Serialize)]
pub struct HistoryView<'a> {
    pub(super) active: Option<VersionView<'a>>,
    pub(super) canary_running: bool,
    pub(super) rollback_to: Option<u64>,
    pub(super) history: Vec<VersionView<'a>>,
}
