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
pub mod durability;
mod error;
pub mod events;
pub mod fsck;
mod import;
pub mod lock;
pub mod name;
mod page;
mod queue;
pub mod shared;
pub mod side;
pub mod storage;
pub mod store;
pub mod suppress;
pub mod time;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use commit::{
    BatchItem, Committed, Stage, check_envelope_names, commit_batch, commit_in_progress,
};
pub use config::SpoolConfig;
pub use error::{
    Result, SpoolError, account_by_name, account_entry, check_reserve, is_full, is_unwritable,
    user_name,
};
pub use lock::{LockHolder, LockPolicy, NodeLock};
pub use name::{NodeName, Parsed};
pub use page::{Cursor, Page};
pub use queue::{Found, NodeEntry, NodeFile, Scan};
pub use storage::{FaultMode, FaultyStorage, OsStorage, Storage};
pub use store::{Intake, Listed, Placement, Staged, Store, Wanted};

use commit::GroupSync;
use storage::os;

/// Text someone else chose (a client's HELO or user name, a file name in the spool, a
/// remote server's reply), made safe for one log line: control characters (CR, LF,
/// ESC, C1 controls, ...) and the backslash are escaped, so nobody can forge a line or
/// drive a terminal through our logs.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A fresh random token (a ULID from 80 new random bits, not from the id generator, so
/// it says nothing about any spool id): for Message-ID and other names that must be
/// unique and unguessable.
pub fn unique_token() -> String {
    ulid::Ulid::generate().to_string()
}

/// Keep glibc to one malloc arena. By default it gives every thread that allocates
/// while another holds an arena one of its own, up to eight per core; a daemon whose
/// blocking threads (fsync waits, signing, planning) come and go then holds a heap per
/// thread, each with its own free pages: draining a 200,000-node backlog peaked at
/// 145 MiB PSS with the default. With one arena (each thread keeps glibc's tcache for
/// its small allocations, so they rarely take the arena's lock) the drain ran as fast on
/// two cores. Call it first thing in a long-running process (an embedding program keeps
/// its own allocator settings).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers; M_ARENA_MAX only bounds future arenas.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Give freed memory back to the system once a burst is over (glibc keeps it in its
/// arenas otherwise: the listener's PSS stayed at twice its idle figure after a load).
/// Cheap when there is little to return; call it when work has drained, not per message.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
    /// Batch commits at once share their file-system syncs too.
    fs_sync: GroupSync,
    usage: bool,
    ids: Mutex<ulid::Generator>,
    /// Owner of the spool directory: the only user (besides us) whose nodes we read.
    owner: u32,
    /// The spool's group when it is declared shared: its members' nodes are read too.
    group: Option<u32>,
    /// What happened to each message (`events/`).
    events: events::EventLog,
    /// Recipients mail is not sent to (`suppress/list.jsonl`).
    suppressions: suppress::SuppressionFile,
    /// Jobs this process holds (`jobs/`).
    jobs: events::Jobs,
    /// What the file system guarantees for new names: found at the first commit.
    durability: std::sync::OnceLock<durability::Durability>,
}

/// Whether a spool directory may be used by us: not writable by others (they could
/// plant links, FIFOs and locks the daemon would trust) and ours (or root's to use),
/// unless it is declared shared.
fn check_trust(dir: &Path, meta: &std::fs::Metadata, config: &SpoolConfig) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if config.shared {
        return Ok(());
    }
    let euid = rustix::process::geteuid().as_raw();
    let owner = crate::error::user_name(meta.uid()).unwrap_or_else(|| "?".into());
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and everyone else can write it",
            (true, false) => "its group can write it",
            _ => "everyone can write it",
        };
        return Err(SpoolError::UnsafeSpool {
            path: dir.to_owned(),
            reason: format!(
                "mode {mode:04o}: {who}, so they could plant links, FIFOs and locks the \
                 daemon would trust; make it 0700 (or set shared_spool = true if it is \
                 shared on purpose)"
            ),
        });
    }
    if meta.uid() != euid && euid != 0 {
        return Err(SpoolError::NotOurs {
            path: dir.to_owned(),
            owner,
            uid: meta.uid(),
        });
    }
    Ok(())
}

impl Spool {
    /// Open an existing spool for reading and queue operations, creating nothing. A
    /// spool written by Mail::Spool 0.50 (missing tiers, no `tmp/`) opens fine.
    pub fn open(dir: impl Into<PathBuf>, config: SpoolConfig) -> Result<Spool> {
        config.validate().map_err(SpoolError::Config)?;
        let dir = dir.into();
        let meta = match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return Err(SpoolError::Missing(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::Missing(dir));
            }
            Err(e) => return Err(SpoolError::io("open", dir, e)),
        };
        use std::os::unix::fs::MetadataExt;
        check_trust(&dir, &meta, &config)?;
        os::set_shared(config.shared);
        let group = config.shared.then_some(meta.gid());
        let usage = config.usage_log && dir.join("usage").is_dir();
        let events = events::EventLog::with_setting(dir.join("events"), config.fsync_directories);
        let suppressions = suppress::SuppressionFile::new(dir.join("suppress").join("list.jsonl"));
        Ok(Spool {
            tier0_sync: GroupSync::new(dir.join("0")),
            fs_sync: GroupSync::new(dir.join("tmp")),
            dir,
            config,
            storage: Arc::new(OsStorage),
            usage,
            ids: Mutex::new(ulid::Generator::new()),
            owner: meta.uid(),
            group,
            events,
            suppressions,
            jobs: Default::default(),
            durability: Default::default(),
        })
    }

    /// Open a spool for writing: create it and its tiers, `tmp/` and (when `usage_log`
    /// is on) `usage/`, all mode 0700; then remove crash leftovers from `tmp/` that are
    /// older than `tmp_max_age`. A spool that exists but would be refused is refused
    /// before anything is made in it.
    pub fn create(dir: impl Into<PathBuf>, config: SpoolConfig) -> Result<Spool> {
        config.validate().map_err(SpoolError::Config)?;
        let dir = dir.into();
        if let Ok(meta) = std::fs::metadata(&dir)
            && meta.is_dir()
        {
            check_trust(&dir, &meta, &config)?;
        }
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
        os::set_shared(config.shared);
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

    /// What the file system under tier 0 guarantees for new names, and so how commits
    /// make theirs durable (found once, at the first call; see [`durability`]).
    pub fn durability(&self) -> &durability::Durability {
        self.durability.get_or_init(|| {
            let setting = self.config.fsync_directories;
            durability::detect_path(&self.tier_dir(0), setting).unwrap_or_else(|e| {
                let mut d = durability::detect_path(&self.dir, setting)
                    .unwrap_or_else(|_| durability::unknown(setting));
                d.reason = format!("{}; tier 0: {e}", d.reason);
                d
            })
        })
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

    /// Whether any node, in a tier or held, carries message id `id` (a caller-chosen id
    /// must not join another message's nodes).
    pub fn id_in_use(&self, id: &str) -> Result<bool> {
        let mut found = false;
        let dirs = (0..self.config.tiers())
            .map(|t| self.tier_dir(t))
            .chain((0..self.config.tiers()).map(|t| self.dir.join("hold").join(t.to_string())));
        for dir in dirs {
            self.visit_dir(&dir, 0, false, &mut |f| match f {
                Found::Node(n) if n.name.id == id => {
                    found = true;
                    std::ops::ControlFlow::Break(())
                }
                _ => std::ops::ControlFlow::Continue(()),
            })?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
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
