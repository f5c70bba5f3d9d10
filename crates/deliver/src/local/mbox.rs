//! Appending a message to a user's mbox (`<mail_spool_directory>/<user>`), as Postfix's
//! local(8) and dma do: a dot-lock (`<user>.lock`) and an `fcntl` lock, a `From `
//! line, `Return-Path:` and `Delivered-To:`, `>From ` quoting, a blank line after the
//! message, fsync; on any failure the mailbox is cut back to its old size and the
//! delivery is retried later (a full disk or quota never loses mail or leaves half a
//! message).
//!
//! Trust: the mailbox is opened without following a link or blocking on a FIFO, and
//! must be a regular file with one link belonging to the user. A missing mailbox is
//! created (`0600`, the user's) only by a daemon running as root or as that user:
//! mailspool never makes a file for someone else it cannot give them.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// A dot-lock older than this was left by a crash.
const STALE_LOCK: Duration = Duration::from_secs(300);
/// How long to wait for another writer's dot-lock.
const LOCK_WAIT: Duration = Duration::from_secs(20);

/// Why a mailbox delivery did not happen (always worth retrying: it is this host's
/// problem, not the sender's).
#[derive(Debug)]
pub struct MboxError(pub String);

/// Append `message` (the stored message, LF line ends) to `user`'s mailbox.
pub fn deliver(
    dir: &Path,
    user: &str,
    uid: u32,
    sender: &str,
    recipient: &str,
    message: &File,
) -> Result<(), MboxError> {
    if user.is_empty()
        || user.starts_with('.')
        || !user.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
    {
        return Err(MboxError(format!("{user:?} cannot name a mailbox")));
    }
    let path = dir.join(user);
    let file = open_or_create(&path, uid)?;
    let meta = file
        .metadata()
        .map_err(|e| MboxError(format!("{}: {e}", path.display())))?;
    if !meta.file_type().is_file() || meta.nlink() != 1 || meta.uid() != uid {
        return Err(MboxError(format!(
            "{} is not a regular file of {user}'s with one link: not delivering to it",
            path.display()
        )));
    }
    let dotlock = DotLock::take(dir, user)?;
    rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| MboxError(format!("lock {}: {e}", path.display())))?;
    let before = file
        .metadata()
        .map_err(|e| MboxError(format!("{}: {e}", path.display())))?
        .len();
    let written = append(&file, sender, recipient, message);
    let result = written.and_then(|()| file.sync_data());
    drop(dotlock);
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            // Never half a message: back to where it was.
            let _ = file.set_len(before);
            let _ = file.sync_data();
            Err(MboxError(format!("writing {}: {e}", path.display())))
        }
    }
}

fn open_or_create(path: &Path, uid: u32) -> Result<File, MboxError> {
    let flags = (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32;
    match std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(MboxError(format!("{}: {e}", path.display())));
        }
        Err(_) => {}
    }
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 && euid != uid {
        // The package's daemon is no root: its setuid helper makes /var/mail/USER
        // (USER:mail 0660), which the daemon, in group mail, may then append to.
        if path.parent() == Some(Path::new("/var/mail"))
            && let Some(helper) = mbox_create_helper()
            && let Some(user) = path.file_name().and_then(|n| n.to_str())
        {
            let made = std::process::Command::new(&helper)
                .arg(user)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| MboxError(format!("{}: {e}", helper.display())))?;
            if !made.status.success() {
                return Err(MboxError(format!(
                    "{} {user}: {}",
                    helper.display(),
                    String::from_utf8_lossy(&made.stderr).trim()
                )));
            }
            return std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(flags)
                .open(path)
                .map_err(|e| MboxError(format!("{}: {e}", path.display())));
        }
        return Err(MboxError(format!(
            "{} does not exist and only root or its user can make it (create it: install -m 0660 -o USER -g mail /dev/null {})",
            path.display(),
            path.display()
        )));
    }
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| MboxError(format!("create {}: {e}", path.display())))?;
    if euid == 0 && uid != 0 {
        rustix::fs::fchown(&f, Some(rustix::fs::Uid::from_raw(uid)), None)
            .map_err(|e| MboxError(format!("chown {}: {e}", path.display())))?;
    }
    Ok(f)
}

/// The setuid helper that makes a missing `/var/mail/USER` (the package installs it
/// in /usr/lib/mailspool; a build has it beside the program).
fn mbox_create_helper() -> Option<std::path::PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mailspool-mbox-create")));
    [
        Some(std::path::PathBuf::from(
            "/usr/lib/mailspool/mailspool-mbox-create",
        )),
        beside,
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

/// `<user>.lock` in the mail spool directory, made with O_EXCL; removed when dropped.
/// Without write access to the directory there is no dot-lock, only the `fcntl` lock.
struct DotLock(Option<std::path::PathBuf>);

impl DotLock {
    fn take(dir: &Path, user: &str) -> Result<DotLock, MboxError> {
        let path = dir.join(format!("{user}.lock"));
        let started = Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
            {
                Ok(_) => return Ok(DotLock(Some(path))),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Ok(DotLock(None));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let old = std::fs::symlink_metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age > STALE_LOCK);
                    if old {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        return Err(MboxError(format!("{} is held", path.display())));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(MboxError(format!("{}: {e}", path.display()))),
            }
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn append(file: &File, sender: &str, recipient: &str, message: &File) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(
        64 * 1024,
        crate::bounce::ReadAt {
            file: message,
            at: 0,
        },
    );
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let envelope = if sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        sender
    };
    writeln!(out, "From {envelope} {}", asctime(mailspool_spool::now()))?;
    writeln!(out, "Return-Path: <{sender}>")?;
    writeln!(out, "Delivered-To: {recipient}")?;
    let mut line = Vec::with_capacity(1024);
    let mut ended_with_newline = true;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        // mboxrd: ">From " quoting of any ">*From " line.
        if line
            .iter()
            .skip_while(|b| **b == b'>')
            .take(5)
            .eq(b"From ".iter())
        {
            out.write_all(b">")?;
        }
        out.write_all(&line)?;
        ended_with_newline = line.ends_with(b"\n");
    }
    if !ended_with_newline {
        out.write_all(b"\n")?;
    }
    // A blank line before the next `From ` line.
    out.write_all(b"\n")?;
    out.flush()
}

/// `Fri Dec  4 18:16:41 2026`, UTC, as the mbox `From ` line has it.
fn asctime(unix: u64) -> String {
    // rfc5322_date gives "Fri, 04 Dec 2026 18:16:41 +0000".
    let d = mailspool_spool::time::rfc5322_date(unix);
    let w: Vec<&str> = d.split_whitespace().collect();
    match w.as_slice() {
        [wd, day, mon, year, time, ..] => format!(
            "{} {mon} {:>2} {time} {year}",
            wd.trim_end_matches(','),
            day.trim_start_matches('0')
        ),
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines_are_quoted_and_a_failed_write_leaves_the_box_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let uid = rustix::process::geteuid().as_raw();
        let msg = dir.path().join("msg");
        std::fs::write(&msg, "Subject: hi\n\nFrom here on\n>From there\nbody").unwrap();
        let m = File::open(&msg).unwrap();
        let user = "someone";
        deliver(dir.path(), user, uid, "a@x.org", "someone@host.test", &m).unwrap();
        deliver(dir.path(), user, uid, "", "someone@host.test", &m).unwrap();
        let text = std::fs::read_to_string(dir.path().join(user)).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("From a@x.org ") && first.len() > 30,
            "{first}"
        );
        assert!(text.contains("Return-Path: <a@x.org>\nDelivered-To: someone@host.test\nSubject: hi\n\n>From here on\n>>From there\nbody\n\nFrom MAILER-DAEMON "), "{text}");
        assert!(text.ends_with("body\n\n"));
        assert!(
            !dir.path().join("someone.lock").exists(),
            "dot-lock removed"
        );
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        // A symlink where the mailbox should be is refused.
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("victim")).unwrap();
        assert!(deliver(dir.path(), "victim", uid, "a@x.org", "v@h", &m).is_err());
        assert!(deliver(dir.path(), "../x", uid, "a@x.org", "v@h", &m).is_err());
    }
}
