//! The mailspool spool directory, compatible with Mail::Spool 0.50.
//!
//! ```text
//! <spool>/0 … <spool>/N-1        tiers; a node is due `periods[tier]` seconds after it entered
//! <spool>/<tier>/<time>-<id>-<to>-<from>   one node = one recipient of one message
//! <spool>/<tier>/<node>.NFSLock  lock of a node being worked on (File::NFSLock protocol)
//! <spool>/usage/raw              "<time> <bytes> Spool|Sent" lines, only if usage/ exists
//! <spool>/tmp/                   staging for commits; never scanned as a tier
//! <spool>/hold/<tier>/<node>     held nodes: out of the tiers, so no dequeuer sends them
//! <spool>/meta/<id>-<to>         side data: delivery attempts (0.50 ignores it)
//! ```
//!
//! What this crate promises: a commit that returned `Ok` is on disk (data and names
//! fsynced) and appears as whole nodes only; a commit that failed or crashed leaves no
//! partial node (each node name that exists points to a complete, fsynced file), and
//! its stage in `tmp/` is removed on the next open for writing once it is old enough to
//! be certain no live process owns it. Nothing here replaces an existing node.
//!
//! This crate is synchronous and does no networking.

mod commit;
pub mod config;
mod error;
pub mod fsck;
pub mod lock;
pub mod name;
mod queue;
pub mod side;
pub mod storage;
pub mod time;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use commit::{Committed, Stage};
pub use config::SpoolConfig;
pub use error::{Result, SpoolError, is_full, is_unwritable};
pub use lock::{LockHolder, NodeLock};
pub use name::{NodeName, Parsed};
pub use queue::{Found, NodeEntry, Scan};
pub use storage::{FaultMode, FaultyStorage, OsStorage, Storage};

use commit::GroupSync;
use storage::os;

/// Seconds since the epoch.
pub fn unix_time(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    unix_time(SystemTime::now())
}

/// An open spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    storage: Arc<dyn Storage>,
    tier0_sync: GroupSync,
    usage: bool,
    ids: Mutex<ulid::Generator>,
}

impl Spool {
    /// Open an existing spool for reading and queue operations, creating nothing. A
    /// spool written by Mail::Spool 0.50 (missing tiers, no `tmp/`) opens fine.
    pub fn open(dir: impl Into<PathBuf>, config: SpoolConfig) -> Result<Spool> {
        config.validate().map_err(SpoolError::Config)?;
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(SpoolError::Missing(dir));
        }
        let usage = config.usage_log && dir.join("usage").is_dir();
        Ok(Spool {
            tier0_sync: GroupSync::new(dir.join("0")),
            dir,
            config,
            storage: Arc::new(OsStorage),
            usage,
            ids: Mutex::new(ulid::Generator::new()),
        })
    }

    /// Open a spool for writing: create it and its tiers, `tmp/` and (when `usage_log`
    /// is on) `usage/`, all mode 0700; then remove crash leftovers from `tmp/` that are
    /// older than `tmp_max_age`.
    pub fn create(dir: impl Into<PathBuf>, config: SpoolConfig) -> Result<Spool> {
        config.validate().map_err(SpoolError::Config)?;
        let dir = dir.into();
        // Fast path for the common case, a spool that is already laid out: one stat per
        // directory instead of a failing mkdir and a stat.
        let laid_out = (0..config.tiers())
            .map(|t| dir.join(t.to_string()))
            .chain([dir.join("tmp")])
            .chain(config.usage_log.then(|| dir.join("usage")))
            .all(|p| p.is_dir());
        if laid_out {
            let spool = Spool::open(dir, config)?;
            spool.remove_stale_stages();
            return Ok(spool);
        }
        let mkdir = |p: &Path| os::ensure_dir(p).map_err(|e| SpoolError::io("create", p, e));
        if let Some(parent) = dir.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|e| SpoolError::io("create", parent, e))?;
        }
        mkdir(&dir)?;
        for tier in 0..config.tiers() {
            mkdir(&dir.join(tier.to_string()))?;
        }
        mkdir(&dir.join("tmp"))?;
        if config.usage_log {
            mkdir(&dir.join("usage"))?;
        }
        let spool = Spool::open(dir, config)?;
        spool.remove_stale_stages();
        Ok(spool)
    }

    /// Use another storage layer for commits (fault injection in tests).
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Spool {
        self.storage = storage;
        self
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings in force.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Directory of tier `tier`.
    pub fn tier_dir(&self, tier: usize) -> PathBuf {
        self.dir.join(tier.to_string())
    }

    /// A new message id: a ULID, unique across processes and hosts (80 random bits) and
    /// increasing within this process.
    pub fn new_id(&self) -> String {
        let mut generator = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        generator
            .generate()
            .unwrap_or_else(|overflow| overflow.commit_overflow_increment())
            .to_string()
    }

    /// Whether a `tmp/` entry of this age is a crashed commit's stage (see below).
    pub(crate) fn stage_abandoned(&self, path: &Path, age: std::time::Duration) -> bool {
        age > self.config.tmp_max_age
            || (age > std::time::Duration::from_secs(2) && commit::is_abandoned(path))
    }

    /// Remove stages of commits that crashed: `tmp/` entries older than `tmp_max_age`,
    /// and younger ones (past a two-second grace for the create-then-lock window) whose
    /// writer's `flock` is gone. A stage is never acknowledged, so removing it loses
    /// nothing that was promised.
    fn remove_stale_stages(&self) {
        let tmp = self.dir.join("tmp");
        let Ok(entries) = std::fs::read_dir(&tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .unwrap_or_default();
            let path = entry.path();
            if self.stage_abandoned(&path, age) {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "removed crash leftover"),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove crash leftover")
                    }
                }
            }
        }
    }
}
