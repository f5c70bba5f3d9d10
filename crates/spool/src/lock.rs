//! Node locks, taken the way Perl's File::NFSLock takes them, so that a Mail::Spool 0.50
//! dequeuer and mailspool can work on one spool, over NFS too.
//!
//! To lock `<node>`: write a unique temp file holding `"<host> <pid> <time> <rand>\n"`,
//! `link` it to `<node>.NFSLock`, and count the temp file's links: 2 means the lock is
//! ours (this check survives NFS's lost-reply retransmissions, where `link` can report an
//! error after it succeeded). A lock whose mtime is older than the stale age belongs to
//! a dead holder and is broken. Unlock removes the lock file only if it still holds our
//! line.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::name::LOCK_SUFFIX;
use crate::storage::os;

/// A held node lock; released on drop.
#[derive(Debug)]
pub struct NodeLock {
    lock_path: PathBuf,
    line: String,
    released: bool,
}

/// Who holds a lock, as its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// When the lock was taken (unix seconds), from the lock file's mtime.
    pub since: u64,
    /// Whether the lock is older than the stale age.
    pub stale: bool,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pid {} since {}", self.host, self.pid, self.since)?;
        if self.stale {
            f.write_str(" (stale)")?;
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
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
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
    /// Try once to lock `node`. `Ok(None)` means another live process holds it.
    /// A stale lock (older than `stale_after`) is broken and taken.
    pub fn try_lock(node: &Path, stale_after: Duration) -> io::Result<Option<NodeLock>> {
        let lock_path = lock_path(node);
        let dir = node.parent().unwrap_or(Path::new("."));
        // The temp name starts with '.' and is short, so it can never parse as a node
        // and always fits NAME_MAX, whatever the node's name.
        let temp = dir.join(format!(".lk.{}", unique_suffix()));
        let line = format!(
            "{} {} {} {}\n",
            hostname(),
            std::process::id(),
            unix_now(),
            rand_u16()
        );
        {
            let mut f = os::create_new(&temp)?;
            f.write_all(line.as_bytes())?;
        }
        let result = Self::link_lock(&temp, &lock_path, stale_after);
        let _ = fs::remove_file(&temp);
        Ok(result?.then(|| NodeLock {
            lock_path,
            line,
            released: false,
        }))
    }

    fn link_lock(temp: &Path, lock: &Path, stale_after: Duration) -> io::Result<bool> {
        for _ in 0..2 {
            let linked = fs::hard_link(temp, lock);
            if fs::metadata(temp)?.nlink() == 2 {
                return Ok(true);
            }
            match linked {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
                Ok(()) => return Ok(false),
            }
            if !break_if_stale(lock, stale_after)? {
                return Ok(false);
            }
        }
        Ok(false)
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
        if fs::read_to_string(&self.lock_path).is_ok_and(|s| s == self.line) {
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        self.unlock();
    }
}

fn rand_u16() -> u16 {
    (ulid::Ulid::generate().random() & 0xffff) as u16
}

/// Break `lock` if it is older than `stale_after`. Returns whether it is gone.
///
/// Two breakers racing must not remove a fresh lock that the other just took: we move
/// the lock aside under a unique name, and if what we moved is not the inode we judged
/// stale, we link it back.
fn break_if_stale(lock: &Path, stale_after: Duration) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(lock) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if !is_stale(&meta, stale_after) {
        return Ok(false);
    }
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
    tracing::warn!(lock = %lock.display(), "broke a stale node lock");
    let _ = fs::remove_file(&aside);
    Ok(true)
}

fn is_stale(meta: &fs::Metadata, stale_after: Duration) -> bool {
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    age > stale_after
}

/// Who holds the lock of `node`, if anyone.
pub fn holder(node: &Path, stale_after: Duration) -> Option<LockHolder> {
    let path = lock_path(node);
    let mut f = fs::File::open(&path).ok()?;
    let meta = f.metadata().ok()?;
    let mut text = String::new();
    Read::by_ref(&mut f)
        .take(512)
        .read_to_string(&mut text)
        .ok()?;
    let mut words = text.split_whitespace();
    let host = words.next().unwrap_or("?").to_owned();
    let pid = words.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some(LockHolder {
        host,
        pid,
        since: meta.modified().map(crate::unix_time).unwrap_or(0),
        stale: is_stale(&meta, stale_after),
    })
}

/// Remove what killed lock holders leave behind in `dir`: a `.NFSLock` older than
/// `stale_after` whose node is gone (no one will ever take it again), and lock temp
/// files (`.lk.*`) older than that. A stale lock whose node exists is left to the next
/// locker, which breaks it. Returns how many files went.
pub fn sweep(dir: &Path, stale_after: Duration) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let orphan = if let Some(node) = name.strip_suffix(LOCK_SUFFIX) {
            !dir.join(node).exists()
        } else {
            name.starts_with(".lk.")
        };
        if orphan
            && e.metadata().is_ok_and(|m| is_stale(&m, stale_after))
            && fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("1-id-a@b-c@d");
        fs::write(&node, "x").unwrap();
        let a = NodeLock::try_lock(&node, Duration::from_secs(60))
            .unwrap()
            .expect("first lock");
        assert!(
            NodeLock::try_lock(&node, Duration::from_secs(60))
                .unwrap()
                .is_none()
        );
        let text = fs::read_to_string(lock_path(&node)).unwrap();
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words.len(), 4, "host pid time rand: {text:?}");
        assert_eq!(words[1], std::process::id().to_string());
        let h = holder(&node, Duration::from_secs(60)).unwrap();
        assert_eq!(h.pid, std::process::id());
        assert!(!h.stale);
        drop(a);
        assert!(!lock_path(&node).exists());
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(
            NodeLock::try_lock(&node, Duration::from_secs(60))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn sweep_removes_only_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(120);
        let age = |p: &Path| {
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap()
        };
        fs::write(dir.path().join("1-a-b@c-"), "node").unwrap();
        for n in ["1-a-b@c-.NFSLock", "2-gone-b@c-.NFSLock", ".lk.1.2.3"] {
            fs::write(dir.path().join(n), "x").unwrap();
            age(&dir.path().join(n));
        }
        fs::write(dir.path().join("3-fresh-b@c-.NFSLock"), "x").unwrap();
        assert_eq!(sweep(dir.path(), Duration::from_secs(60)), 2);
        assert!(
            dir.path().join("1-a-b@c-.NFSLock").exists(),
            "its node exists: left to the next locker"
        );
        assert!(
            dir.path().join("3-fresh-b@c-.NFSLock").exists(),
            "not stale"
        );
    }

    #[test]
    fn stale_lock_is_broken_and_release_leaves_foreign_lock() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("1-id-a@b-c@d");
        fs::write(&node, "x").unwrap();
        // A lock left by a dead 0.50 process, two minutes old.
        fs::write(lock_path(&node), "otherhost 4242 1 77\n").unwrap();
        let old = SystemTime::now() - Duration::from_secs(120);
        fs::File::options()
            .write(true)
            .open(lock_path(&node))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let h = holder(&node, Duration::from_secs(60)).unwrap();
        assert_eq!((h.host.as_str(), h.pid, h.stale), ("otherhost", 4242, true));
        assert!(
            NodeLock::try_lock(&node, Duration::from_secs(300))
                .unwrap()
                .is_none(),
            "not stale at 300 s"
        );
        let lock = NodeLock::try_lock(&node, Duration::from_secs(60))
            .unwrap()
            .expect("stale lock broken");
        // Someone else overwrote our lock (a breaker): releasing must not remove theirs.
        fs::write(lock_path(&node), "thief 1 1 1\n").unwrap();
        lock.release();
        assert!(lock_path(&node).exists());
    }
}
