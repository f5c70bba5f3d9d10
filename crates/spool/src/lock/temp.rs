//! The temp files a process links its locks from, kept and reused.
//!
//! File::NFSLock writes a fresh temp file for every lock, links it to `<node>.NFSLock`
//! and removes it: an inode allocated and freed per lock. On ext4 without a journal,
//! allocating an inode walks past every inode freed in the last minute, so a daemon
//! locking thousands of nodes a second spent most of its CPU there (perf: 40 % in
//! `recently_deleted`). Here a temp outlives its lock: taken from a pool (per
//! directory), linked to the lock name, put back. Several locks may then share one
//! inode; each temp's line is unique (it ends in the temp's own number), so when `link`
//! says EEXIST, "the lock file holds our line" still says "the lock is ours".
//! File::NFSLock's reader sees the usual line (it reads only the host and the pid).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

/// A temp older than this gets a fresh mtime before it is linked: a lock's age is its
/// inode's mtime, and a new lock must not look old to another host.
const FRESH_FOR: Duration = Duration::from_secs(10);

/// Most temps kept per directory; more are removed when put back.
const KEEP: usize = 64;

#[derive(Debug)]
pub(super) struct Temp {
    pub(super) path: PathBuf,
    pub(super) line: String,
    file: File,
    dev: u64,
    ino: u64,
}

/// Whether this process keeps temps for reuse: only a program that removes them before it
/// exits ([`remove_pooled_temps`]) may; an embedding program (Perl, Python, C calling
/// an interactive send) exits without asking us, so by default a temp goes with its lock.
static KEEPING: AtomicBool = AtomicBool::new(false);

/// Keep lock temps for reuse from now on; the caller promises to call
/// [`remove_pooled_temps`] before it exits (the `mailspool` program does).
pub fn keep_temps_until_exit() {
    KEEPING.store(true, Ordering::Relaxed);
}

fn pool() -> &'static Mutex<HashMap<PathBuf, Vec<Temp>>> {
    static POOL: LazyLock<Mutex<HashMap<PathBuf, Vec<Temp>>>> = LazyLock::new(Default::default);
    &POOL
}

/// A temp in `dir` whose mtime is fresh and whose name still exists (a sweeper on
/// another host may remove a temp idle for longer than its stale age).
pub(super) fn take(dir: &Path) -> io::Result<Temp> {
    loop {
        let pooled = pool()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(dir)
            .and_then(Vec::pop);
        let Some(t) = pooled else {
            return create(dir);
        };
        match std::fs::symlink_metadata(&t.path) {
            Ok(m) if m.ino() == t.ino && m.dev() == t.dev && t.holds_its_line() => {
                let old = m
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .is_none_or(|age| age > FRESH_FOR);
                if old && let Err(e) = t.file.set_modified(SystemTime::now()) {
                    discard(t);
                    return Err(e);
                }
                return Ok(t);
            }
            // Swept, replaced, or written into through a lock name (its content is every
            // lock's made from it): forget it.
            _ => discard(t),
        }
    }
}

/// Return a temp for reuse (removed if the pool of its directory is full, or if this
/// process does not keep temps).
pub(super) fn put_back(dir: &Path, t: Temp) {
    if !KEEPING.load(Ordering::Relaxed) {
        return discard(t);
    }
    let mut pool = pool().lock().unwrap_or_else(|e| e.into_inner());
    let temps = pool.entry(dir.to_owned()).or_default();
    if temps.len() < KEEP {
        temps.push(t);
    } else {
        discard(t);
    }
}

/// Remove a temp's name, if it is still this temp.
fn discard(t: Temp) {
    let ours =
        std::fs::symlink_metadata(&t.path).is_ok_and(|m| m.ino() == t.ino && m.dev() == t.dev);
    if ours {
        let _ = std::fs::remove_file(&t.path);
    }
}

/// Remove every pooled temp of this process (at exit: what a killed process leaves,
/// [`super::sweep`] removes once it is older than the stale age).
pub fn remove_pooled_temps() {
    let mut pool = pool().lock().unwrap_or_else(|e| e.into_inner());
    for (_, temps) in pool.drain() {
        temps.into_iter().for_each(discard);
    }
}

impl Temp {
    /// Whether the temp still holds exactly its line (one `pread`, no lookup).
    fn holds_its_line(&self) -> bool {
        let mut buf = [0u8; 512];
        self.file
            .read_at(&mut buf, 0)
            .is_ok_and(|n| &buf[..n] == self.line.as_bytes())
    }
}

fn create(dir: &Path) -> io::Result<Temp> {
    static NUMBER: AtomicU64 = AtomicU64::new(0);
    let n = NUMBER.fetch_add(1, Ordering::Relaxed);
    // The name starts with '.' and is short, so it can never parse as a node and always
    // fits NAME_MAX, whatever the node's name.
    let path = dir.join(format!(".lk.{}", super::unique_suffix()));
    let line = format!(
        "{} {} {} {} {}\n",
        super::hostname(),
        std::process::id(),
        super::unix_now(),
        n,
        super::OWN_MARK
    );
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(crate::storage::os::readable_mode())
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)?;
    if let Err(e) = file.write_all(line.as_bytes()) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    let meta = file.metadata()?;
    Ok(Temp {
        path,
        line,
        dev: meta.dev(),
        ino: meta.ino(),
        file,
    })
}
