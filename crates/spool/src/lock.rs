//! Node locks, taken the way Perl's File::NFSLock takes them, so that a Mail::Spool 0.50
//! dequeuer and mailspool can work on one spool, over NFS too.
//!
//! To lock `<node>`: `link` a temp file holding `"<host> <pid> <time> <n> mailspool\n"`
//! (unique per temp; temps are pooled and reused, see `temp`) to `<node>.NFSLock`. If
//! `link` says the name exists, read the lock: our line means it is ours all the same
//! (NFS's lost-reply retransmissions report an error after a link succeeded). File::NFSLock
//! reads only the host and the pid of that line, so the trailing word is invisible to
//! 0.50 and tells us the lock is one of ours.
//!
//! When may a lock be broken? Never while its holder lives:
//! - a holder on this host is alive while its pid is (File::NFSLock's own rule);
//! - our locks are kept fresh while held (a thread touches their mtime every
//!   [`REFRESH_EVERY`]), so one of ours from another host that nobody has touched for
//!   [`LockPolicy::own_stale`] lost its holder;
//! - a lock without our mark (0.50's) is never refreshed, so it is stale only by 0.50's
//!   own rule: older than its `max_connection_time` + 2 s ([`LockPolicy::legacy_stale`],
//!   six hours by default).
//!
//! Unlock removes the lock file only if it still holds our line.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, Once};
use std::time::{Duration, SystemTime};

use crate::name::{LOCK_SUFFIX, is_nfslock_temp};

/// The word that ends the line of a lock mailspool holds (and keeps fresh).
pub const OWN_MARK: &str = "mailspool";

/// How often the locks this process holds get a fresh mtime.
pub const REFRESH_EVERY: Duration = Duration::from_secs(20);

/// When a lock held by someone else may be broken (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// One of our locks, from another host, not refreshed for this long: its holder is
    /// gone. Longer than [`REFRESH_EVERY`] plus NFS's attribute cache (60 s) plus skew.
    pub own_stale: Duration,
    /// A lock without our mark (Mail::Spool 0.50's), older than this: stale by 0.50's
    /// rule, its `max_connection_time` + 2 s.
    pub legacy_stale: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            own_stale: Duration::from_secs(300),
            legacy_stale: Duration::from_secs(6 * 3600 + 2),
        }
    }
}

/// A held node lock; released on drop. While held, its mtime is kept fresh.
#[derive(Debug)]
pub struct NodeLock {
    lock_path: PathBuf,
    line: String,
    released: bool,
    /// The holder whose stale lock this one replaced, if one was broken to take it.
    broke: Option<LockHolder>,
}

/// Who holds a lock, as its file says, and whether it may be broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// When the lock was last taken or refreshed (unix seconds): the file's mtime.
    pub since: u64,
    /// Taken by mailspool (kept fresh while held), not by Mail::Spool 0.50.
    pub ours: bool,
    /// Whether it may be broken, and why.
    pub stale: bool,
    /// Why it is judged so, for people.
    pub why: &'static str,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pid {} since {} ({}{})",
            crate::escape(&self.host),
            self.pid,
            self.since,
            if self.ours { "" } else { "Mail::Spool 0.50; " },
            self.why
        )?;
        if self.stale {
            f.write_str(", stale")?;
        }
        Ok(())
    }
}

/// The lock file path of a node.
pub fn lock_path(node: &Path) -> PathBuf {
    let mut s = node.as_os_str().to_owned();
    s.push(LOCK_SUFFIX);
    PathBuf::from(s)
}

/// This machine's host name, as File::NFSLock writes it.
pub fn hostname() -> String {
    static NAME: LazyLock<String> = LazyLock::new(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    NAME.clone()
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{}.{}.{}", std::process::id(), n, nanos)
}

fn unix_now() -> u64 {
    crate::unix_time(SystemTime::now())
}

impl NodeLock {
    /// A lock that is not a file: the node is held by a back end's own claim (a
    /// database row's lease), which that back end checks and gives back itself.
    pub fn claimed() -> NodeLock {
        NodeLock::claimed_after(None)
    }

    /// [`NodeLock::claimed`], taken over from `broke`: a holder whose claim ran out.
    pub fn claimed_after(broke: Option<LockHolder>) -> NodeLock {
        NodeLock {
            lock_path: PathBuf::new(),
            line: String::new(),
            released: true,
            broke,
        }
    }

    /// Try once to lock `node`. `Ok(None)` means someone else holds it. A lock whose
    /// holder is gone (see [`LockPolicy`]) is broken and taken.
    pub fn try_lock(node: &Path, policy: &LockPolicy) -> io::Result<Option<NodeLock>> {
        let lock_path = lock_path(node);
        let dir = node.parent().unwrap_or(Path::new("."));
        let temp = temp::take(dir)?;
        let line = temp.line.clone();
        // Claim the lock in this process first: our temps are shared by the locks this
        // process holds, so "the lock file holds our temp's line" says "ours" only if
        // no other lock of this process holds it. A release removes the file before
        // its claim, so a claim granted here never meets a file a holder still owns.
        let claimed = match held()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(lock_path.clone())
        {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(line.clone());
                true
            }
        };
        let result = if claimed {
            Self::link_lock(&temp, &lock_path, policy)
        } else {
            Ok(None)
        };
        temp::put_back(dir, temp);
        let broke = match result {
            Ok(Some(broke)) => broke,
            other => {
                if claimed {
                    held()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&lock_path);
                }
                return other.map(|_| None);
            }
        };
        start_refresher();
        Ok(Some(NodeLock {
            lock_path,
            line,
            released: false,
            broke,
        }))
    }

    /// Link the lock: `Some` when taken, with the holder of a stale lock broken first.
    fn link_lock(
        temp: &temp::Temp,
        lock: &Path,
        policy: &LockPolicy,
    ) -> io::Result<Option<Option<LockHolder>>> {
        let mut broke = None;
        for _ in 0..2 {
            match fs::hard_link(&temp.path, lock) {
                // Our name, to our temp (checked to hold its line when taken).
                Ok(()) => return Ok(Some(broke)),
                // Over NFS, a link whose reply was lost reports EEXIST after it
                // succeeded: the lock is ours if it holds our temp's line.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if read_line(lock).is_ok_and(|l| l == temp.line) {
                        return Ok(Some(broke));
                    }
                }
                Err(e) => return Err(e),
            }
            match break_if_stale(lock, policy)? {
                Judged::Stands => return Ok(None),
                Judged::Gone(holder) => broke = holder.or(broke),
            }
        }
        Ok(None)
    }

    /// The holder whose stale lock was broken to take this one: a process that died
    /// holding the node, perhaps after delivering it.
    pub fn broke(&self) -> Option<&LockHolder> {
        self.broke.as_ref()
    }

    /// Release the lock (also done on drop).
    pub fn release(mut self) {
        self.unlock();
    }

    fn unlock(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        // Only remove the lock if it is still ours: a stale-lock breaker may have taken it.
        if read_line(&self.lock_path).is_ok_and(|s| s == self.line) {
            let _ = fs::remove_file(&self.lock_path);
        }
        // Then the claim (see `try_lock`).
        held()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.lock_path);
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// The locks this process holds or is taking, by lock path, with their lines.
fn held() -> &'static Mutex<HashMap<PathBuf, String>> {
    static HELD: LazyLock<Mutex<HashMap<PathBuf, String>>> = LazyLock::new(Default::default);
    &HELD
}

fn start_refresher() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(REFRESH_EVERY);
                    refresh_held_locks();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lock refresher; locks held longer than five minutes may be broken by another host");
        }
    });
}

/// Give every lock this process holds a fresh mtime (the refresher thread does this
/// every [`REFRESH_EVERY`]); a lock file that no longer holds our line is left alone.
/// Returns how many were refreshed.
pub fn refresh_held_locks() -> usize {
    let locks: Vec<(PathBuf, String)> = held()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, l)| (p.clone(), l.clone()))
        .collect();
    let mut n = 0;
    for (path, line) in locks {
        if touch_if_ours(&path, &line).is_ok() {
            n += 1;
        }
    }
    n
}

fn touch_if_ours(path: &Path, line: &str) -> io::Result<()> {
    let mut f = open_lock(path)?;
    let mut text = String::new();
    Read::by_ref(&mut f).take(512).read_to_string(&mut text)?;
    if text != line {
        return Err(io::Error::other("not our lock any more"));
    }
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        // UTIME_NOW: over NFS the server's clock sets it, the clock every host compares with.
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    rustix::fs::futimens(&f, &now)?;
    Ok(())
}

/// Open a lock file for reading without following a symlink or blocking on a FIFO.
fn open_lock(path: &Path) -> io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("lock is not a regular file"));
    }
    Ok(f)
}

/// The start of a lock file, for comparing with our line. No file-type check: whatever
/// is there (a FIFO opened non-blocking reads as empty) cannot equal our line.
fn read_line(path: &Path) -> io::Result<String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    let mut text = String::new();
    f.take(512).read_to_string(&mut text)?;
    Ok(text)
}

/// One line of a lock file: `<host> <pid> <time> <rand>[ mailspool]`.
struct LockLine {
    host: String,
    pid: i64,
    ours: bool,
}

impl LockLine {
    fn parse(line: &str) -> LockLine {
        let mut words = line.split_whitespace();
        LockLine {
            host: words.next().unwrap_or("?").to_owned(),
            pid: words.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            ours: line.split_whitespace().nth(4) == Some(OWN_MARK),
        }
    }

    /// Whether this holder may still be at work, and why.
    fn alive(&self, age: Duration, policy: &LockPolicy) -> (bool, &'static str) {
        if self.host == hostname() && self.pid > 0 && self.pid <= i64::from(i32::MAX) {
            let alive = rustix::process::Pid::from_raw(self.pid as i32).is_some_and(|p| {
                !matches!(
                    rustix::process::test_kill_process(p),
                    Err(rustix::io::Errno::SRCH)
                )
            });
            if alive {
                (true, "holder alive on this host")
            } else {
                (false, "holder's process is gone")
            }
        } else if self.ours {
            if age > policy.own_stale {
                (false, "not refreshed by its holder")
            } else {
                (true, "refreshed by its holder")
            }
        } else if age > policy.legacy_stale {
            (false, "older than 0.50's max_connection_time")
        } else {
            (true, "within 0.50's max_connection_time")
        }
    }
}

/// Judge a lock file from its lines and its mtime. File::NFSLock appends a line per
/// process when a holder forks (`newpid`): the lock stands while any of them may
/// still be at work; the first line names the holder.
fn judge(text: &str, meta: &fs::Metadata, policy: &LockPolicy) -> LockHolder {
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).take(16);
    let first = LockLine::parse(lines.next().unwrap_or(""));
    let (mut alive, mut why) = first.alive(age, policy);
    for line in lines {
        let (a, w) = LockLine::parse(line).alive(age, policy);
        if a && !alive {
            (alive, why) = (a, w);
        }
    }
    LockHolder {
        pid: u32::try_from(first.pid).unwrap_or(0),
        host: first.host,
        since: meta.modified().map(crate::unix_time).unwrap_or(0),
        ours: first.ours,
        stale: !alive,
        why,
    }
}

/// Who holds the lock at `lock` (a `.NFSLock` path), judged by `policy`.
pub fn judge_lock(lock: &Path, policy: &LockPolicy) -> Option<LockHolder> {
    let mut f = open_lock(lock).ok()?;
    let meta = f.metadata().ok()?;
    let mut text = String::new();
    Read::by_ref(&mut f)
        .take(512)
        .read_to_string(&mut text)
        .ok()?;
    Some(judge(&text, &meta, policy))
}

/// What [`break_if_stale`] found.
enum Judged {
    /// A live holder's lock, or one that cannot be judged: it stands.
    Stands,
    /// No lock there any more; the holder whose stale lock was broken, if there was one.
    Gone(Option<LockHolder>),
}

/// Break `lock` if its holder is gone.
///
/// Two breakers racing must not remove a fresh lock that the other just took: we move
/// the lock aside under a unique name, and if what we moved is not the inode we judged
/// stale, we link it back.
fn break_if_stale(lock: &Path, policy: &LockPolicy) -> io::Result<Judged> {
    let meta = match fs::symlink_metadata(lock) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Judged::Gone(None)),
        Err(e) => return Err(e),
    };
    let Some(h) = judge_lock(lock, policy) else {
        // A regular file we cannot read: we cannot judge it, so it stands. Anything
        // else (a symlink, a FIFO) is nobody's lock: File::NFSLock only links files.
        if meta.file_type().is_file() {
            return Ok(Judged::Stands);
        }
        return Ok(match move_aside_and_drop(lock, &meta)? {
            true => Judged::Gone(None),
            false => Judged::Stands,
        });
    };
    if !h.stale {
        return Ok(Judged::Stands);
    }
    if !move_aside_and_drop(lock, &meta)? {
        return Ok(Judged::Stands);
    }
    tracing::warn!(lock = %crate::escape(&lock.display().to_string()), holder = %h, "broke a stale node lock");
    Ok(Judged::Gone(Some(h)))
}

fn move_aside_and_drop(lock: &Path, meta: &fs::Metadata) -> io::Result<bool> {
    let aside = lock.with_file_name(format!(".lk.stale.{}", unique_suffix()));
    match fs::rename(lock, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    }
    let moved = fs::symlink_metadata(&aside)?;
    if moved.ino() != meta.ino() || moved.dev() != meta.dev() {
        let _ = fs::hard_link(&aside, lock);
        let _ = fs::remove_file(&aside);
        return Ok(false);
    }
    let _ = fs::remove_file(&aside);
    Ok(true)
}

/// Who holds the lock of `node`, if anyone.
pub fn holder(node: &Path, policy: &LockPolicy) -> Option<LockHolder> {
    judge_lock(&lock_path(node), policy)
}

fn older_than(meta: &fs::Metadata, age: Duration) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|a| a > age)
}

/// What [`sweep`] may remove in a tier directory.
pub fn is_sweepable(dir: &Path, name: &str, meta: &fs::Metadata, policy: &LockPolicy) -> bool {
    if let Some(node) = name.strip_suffix(LOCK_SUFFIX) {
        // A lock for a node that is gone, whose holder is gone too: no one will take it.
        !dir.join(node).exists() && judge_lock(&dir.join(name), policy).is_none_or(|h| h.stale)
    } else if name.starts_with(".lk.") || is_nfslock_temp(name) {
        // Lock temp files (ours, File::NFSLock's) live for milliseconds.
        older_than(meta, policy.own_stale)
    } else {
        false
    }
}

/// Remove what killed lock holders leave behind in `dir`: a `.NFSLock` whose node is
/// gone and whose holder is gone, and lock temp files (ours and File::NFSLock's
/// `<node>.tmp.<n>.<pid>.<rand>`) older than [`LockPolicy::own_stale`]. A stale lock
/// whose node exists is left to the next locker, which breaks it. Returns how many
/// files went.
pub fn sweep(dir: &Path, policy: &LockPolicy) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        // Only lock artefacts are looked at closer: a tier of 200,000 nodes costs no stat.
        if !(name.ends_with(LOCK_SUFFIX) || name.starts_with(".lk.") || is_nfslock_temp(name)) {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        if is_sweepable(dir, name, &meta, policy) && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

mod temp;
pub use temp::{keep_temps_until_exit, remove_pooled_temps};

#[cfg(test)]
mod tests;
