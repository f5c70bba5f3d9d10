//! Pickup: messages that users dropped into `<spool>/maildrop` (see `mailspool_drop`)
//! become queued mail.
//!
//! Every dropped file is untrusted input: it is opened without following a link or
//! blocking on a FIFO, and must be a regular file with one link, of a sane size, created
//! through the drop (its group is the drop directory's, or it is ours), whose envelope
//! names its real owner. It then goes through the same intake as `send` (addresses
//! checked again, Bcc removed, a `Received: ... from userid N` line) and the same
//! durable commit, and only then is it removed: a crash in between queues it twice,
//! never loses it. Anything that fails these checks goes to `corrupt/`, logged, never
//! delivered; a full disk leaves the file for the next pass.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mailspool_drop::format::{Envelope, MAX_ENVELOPE};
use mailspool_spool::escape;

use crate::send::Submitter;
use crate::{Mailspool, MessageSource, SendMail};

/// A drop file still being written (mode 0000) older than this was left by a crash.
const ABANDONED: Duration = Duration::from_secs(3600);

/// Dropped files committed at once by one pass.
const PICKUP_THREADS: usize = 4;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PickupReport {
    /// Messages queued.
    pub picked: usize,
    /// Files moved to `corrupt/`.
    pub corrupt: usize,
    /// Files left for later (a full disk, another pickup holding them).
    pub left: usize,
}

enum Verdict {
    Picked,
    Corrupt(String),
    Left,
}

impl Mailspool {
    /// The drop directory of this spool.
    pub fn maildrop(&self) -> PathBuf {
        mailspool_drop::maildrop_dir(&self.config.spool_dir)
    }

    /// One pass over the drop directory. A missing directory is an empty one.
    pub fn pickup(&self) -> std::io::Result<PickupReport> {
        let dir = self.maildrop();
        let mut report = PickupReport::default();
        let dir_meta = match fs::metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                self.to_corrupt(&entry.path(), "name is not UTF-8");
                report.corrupt += 1;
                continue;
            };
            if name.starts_with('.') {
                remove_if_abandoned(&entry.path());
                continue;
            }
            names.push(entry.path());
        }
        // A few at a time: their commits share tier 0's directory fsync (group commit),
        // so a backlog drains faster than one thread could commit it.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = names.len().min(PICKUP_THREADS);
        let reports: Vec<PickupReport> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut r = PickupReport::default();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(path) = names.get(i) else { break };
                            self.count(&mut r, path, &dir_meta);
                        }
                        r
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for r in reports {
            report.picked += r.picked;
            report.corrupt += r.corrupt;
            report.left += r.left;
        }
        if report.picked > 0 {
            // The removals are only a duplicate's worth of risk; make them stick anyway.
            let _ = File::open(&dir).and_then(|d| d.sync_all());
        }
        Ok(report)
    }

    fn count(&self, r: &mut PickupReport, path: &Path, dir_meta: &fs::Metadata) {
        match self.pickup_one(path, dir_meta) {
            Verdict::Picked => r.picked += 1,
            Verdict::Corrupt(why) => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                tracing::warn!(file = %escape(&name), reason = %escape(&why), "dropped file refused; moved to corrupt/");
                self.to_corrupt(path, &why);
                r.corrupt += 1;
            }
            Verdict::Left => r.left += 1,
        }
    }

    fn pickup_one(&self, path: &Path, dir_meta: &fs::Metadata) -> Verdict {
        // A drop still writing its file keeps it at mode 0000, which we cannot open
        // (and, as root, must not take): wait for it, or clear it after an hour.
        if fs::symlink_metadata(path).is_ok_and(|m| {
            m.file_type().is_file() && m.mode() & 0o777 != mailspool_drop::submit::DONE_MODE
        }) {
            remove_if_abandoned(path);
            return Verdict::Left;
        }
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Verdict::Left,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Verdict::Corrupt("a symbolic link".into());
            }
            Err(e) => return Verdict::Corrupt(format!("cannot open: {e}")),
        };
        // Two pickups (two daemons) never take one file twice: the lock, then a check
        // that it is still there (the first one unlinks before it unlocks).
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Verdict::Left;
        }
        let Ok(meta) = file.metadata() else {
            return Verdict::Left;
        };
        if meta.nlink() == 0 {
            return Verdict::Left;
        }
        if !meta.file_type().is_file() {
            return Verdict::Corrupt("not a regular file".into());
        }
        if meta.nlink() != 1 {
            return Verdict::Corrupt(format!("{} links (a drop file has one)", meta.nlink()));
        }
        let euid = rustix::process::geteuid().as_raw();
        if meta.gid() != dir_meta.gid() && meta.uid() != euid {
            return Verdict::Corrupt(format!(
                "group {} is not the drop's ({}): not written by mailspool-drop",
                meta.gid(),
                dir_meta.gid()
            ));
        }
        if meta.len() > self.config.max_message_size + MAX_ENVELOPE as u64 {
            return Verdict::Corrupt(format!("{} bytes: over the size limit", meta.len()));
        }
        let mut input = BufReader::with_capacity(64 * 1024, (&file).take(meta.len()));
        let env = match Envelope::read_from(&mut input) {
            Ok(e) => e,
            Err(e) => return Verdict::Corrupt(e.to_string()),
        };
        if env.uid != meta.uid() {
            return Verdict::Corrupt(format!(
                "claims uid {} but belongs to uid {}",
                env.uid,
                meta.uid()
            ));
        }
        let login = mailspool_drop::login_of(env.uid).unwrap_or_else(|| format!("uid{}", env.uid));
        let mut mail = SendMail::new(MessageSource::Reader(Box::new(input))).to(env.rcpts);
        mail.extract_recipients = env.extract;
        mail.from = env.from;
        mail.full_name = env.full_name;
        mail.submitter = Some(Submitter {
            uid: env.uid,
            login,
        });
        // The drop said 0 to its caller: this is accepted mail, not new mail.
        mail.already_accepted = true;
        mail.source = "drop";
        match self.send_mail(mail) {
            Ok(sent) => {
                mailspool_metrics::global().accepted("drop");
                tracing::info!(event = "picked up", id = %sent.id, uid = env.uid, from = %escape(&sent.from), to = ?sent.recipients, size = sent.size, "picked up");
                match fs::remove_file(path) {
                    Ok(()) => Verdict::Picked,
                    Err(e) => {
                        tracing::error!(file = %escape(&path.display().to_string()), error = %e, "queued, but cannot remove the dropped file: it may be queued again");
                        Verdict::Picked
                    }
                }
            }
            // A full disk, a failing disk, a database that is away: the file stays and
            // is tried again; only what is not mail goes to corrupt/.
            Err(e) if e.is_temporary() => {
                tracing::warn!(file = %escape(&path.display().to_string()), error = %e, "cannot queue a dropped message now; it waits");
                Verdict::Left
            }
            Err(e) => Verdict::Corrupt(e.to_string()),
        }
    }

    fn to_corrupt(&self, path: &Path, why: &str) {
        // Beside the drop directory (the spool's own corrupt/ for a file spool).
        let dir = self.maildrop().with_file_name("corrupt");
        let _ = mailspool_spool::storage::os::ensure_dir(&dir);
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = dir.join(format!("maildrop.{base}"));
        if let Err(e) = mailspool_spool::storage::os::rename_noreplace(path, &target) {
            tracing::error!(file = %escape(&path.display().to_string()), reason = %escape(why), error = %e, "cannot move a refused dropped file aside");
        }
    }
}

/// An unfinished drop file: removed when its writer is gone. A file being written
/// (mode 0040) is locked by its writer, so one we can lock, untouched for a minute
/// (the lock is taken just after the file is made), lost its writer to a kill. One
/// we cannot open (mode 0000, an older drop's) goes after an hour.
fn remove_if_abandoned(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    if meta.mode() & 0o777 == mailspool_drop::submit::WRITING_MODE && age > WRITER_GRACE {
        if writer_gone(path, &meta) {
            tracing::info!(file = %escape(&path.display().to_string()), "removed an unfinished dropped file: its writer is gone");
            let _ = fs::remove_file(path);
        }
        return;
    }
    if age > ABANDONED {
        let _ = fs::remove_file(path);
    }
}

/// Time between a drop making its file and locking it, at most.
const WRITER_GRACE: Duration = Duration::from_secs(60);

/// Whether nobody holds the write lock of the unfinished drop file `path` any more (the
/// same file as `meta`, still unfinished).
fn writer_gone(path: &Path, meta: &fs::Metadata) -> bool {
    let Ok(file) = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
    else {
        return false;
    };
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    file.metadata().is_ok_and(|m| {
        m.ino() == meta.ino()
            && m.dev() == meta.dev()
            && m.file_type().is_file()
            && m.mode() & 0o777 == mailspool_drop::submit::WRITING_MODE
    })
}

/// Pick up in the background: at once when a file lands in the drop directory
/// (inotify), and every `tick` anyway (a missed event, a drop on another host). Runs
/// until the process ends.
pub fn spawn(ms: std::sync::Arc<Mailspool>, tick: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pickup".into())
        .spawn(move || {
            let dir = ms.maildrop();
            let mut watch = Watch::new(&dir);
            loop {
                match ms.pickup() {
                    Ok(r) if r.left > 0 => {
                        // Something could not be queued now (full disk): not in a loop.
                        watch.wait(tick);
                    }
                    Ok(_) => watch.wait(tick),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot read the drop directory");
                        watch.wait(tick);
                    }
                }
                if watch.fd.is_none() && dir.is_dir() {
                    watch = Watch::new(&dir);
                }
            }
        })
        .map(drop)
}

/// An inotify watch for files renamed into place, with a timeout.
struct Watch {
    fd: Option<rustix::fd::OwnedFd>,
}

impl Watch {
    fn new(dir: &Path) -> Watch {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .ok()
            .filter(|fd| {
                inotify::add_watch(
                    fd,
                    dir,
                    inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE,
                )
                .is_ok()
            });
        Watch { fd }
    }

    /// Wait for an event or the timeout, then drain the events.
    fn wait(&mut self, timeout: Duration) {
        let Some(fd) = &self.fd else {
            std::thread::sleep(timeout);
            return;
        };
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        let mut buf = [0u8; 4096];
        while rustix::io::read(fd, &mut buf).is_ok_and(|n| n > 0) {}
    }
}
