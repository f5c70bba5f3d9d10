//! Writing one drop file, durably: checked up front (so the caller hears about a bad
//! address or a missing recipient at once, with sendmail's exit code), created with
//! O_CREAT|O_EXCL|O_NOFOLLOW and mode 0000, written, given mode 0640 (done) and
//! fsynced. Exit 0 after this means the message survives a crash and waits for the
//! pickup, whether the daemon runs or not.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mailspool_message::{BodyCopier, IntakeError, address, header::dedup, read_head};

use crate::format::Envelope;

/// What a submission asks for.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The envelope (uid and login are the caller's; the rest from the arguments).
    pub envelope: Envelope,
    /// A line holding only `.` ends the message (sendmail without `-i`).
    pub dot_ends: bool,
    /// Largest message accepted, bytes.
    pub max_message_size: u64,
    /// Largest header block, bytes.
    pub max_header_size: usize,
    /// Bytes to leave free on the spool's file system (0: none).
    pub min_free_space: u64,
    /// What completes a bare name for the checks (the pickup completes it for real).
    pub qualify_domain: String,
    /// `fsync_directories` (see `mailspool_spool::durability`).
    pub fsync_directories: mailspool_spool::durability::Setting,
}

/// Why a message was not dropped; nothing of it is left behind.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// No recipient in the arguments or the headers.
    #[error("no recipients: give addresses as arguments or in To/Cc/Bcc headers (with -t)")]
    NoRecipients,
    /// The message or an address is refused.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// An address too long for the spool to name a node after it.
    #[error("{0}")]
    Unnameable(String),
    /// The spool's file system is below its reserve: try again later.
    #[error(
        "the spool's file system has {free} bytes free, below its min_free_space reserve of {reserve}: try again later"
    )]
    BelowReserve {
        /// Bytes free.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// The drop directory cannot be written.
    #[error("cannot write to {}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl From<address::AddressError> for DropError {
    fn from(e: address::AddressError) -> Self {
        DropError::Intake(IntakeError::Address(e))
    }
}

/// sysexits.h codes.
pub mod exit {
    /// Command line usage error.
    pub const USAGE: u8 = 64;
    /// Data format error.
    pub const DATAERR: u8 = 65;
    /// Cannot create (permission denied).
    pub const CANTCREAT: u8 = 73;
    /// Input/output error.
    pub const IOERR: u8 = 74;
    /// Temporary failure (disk full).
    pub const TEMPFAIL: u8 = 75;
    /// Configuration error.
    pub const CONFIG: u8 = 78;
    /// Internal error.
    pub const SOFTWARE: u8 = 70;
}

impl DropError {
    /// The sysexits.h code.
    pub fn exit_code(&self) -> u8 {
        let io_code = |e: &io::Error| {
            let full = e.raw_os_error().is_some_and(|n| {
                n == rustix::io::Errno::NOSPC.raw_os_error()
                    || n == rustix::io::Errno::DQUOT.raw_os_error()
            });
            if full {
                exit::TEMPFAIL
            } else if e.kind() == io::ErrorKind::PermissionDenied
                || e.kind() == io::ErrorKind::NotFound
            {
                exit::CANTCREAT
            } else {
                exit::IOERR
            }
        };
        match self {
            DropError::NoRecipients => exit::USAGE,
            DropError::Intake(IntakeError::Read(_)) => exit::IOERR,
            DropError::Intake(IntakeError::Write(e)) => io_code(e),
            DropError::Intake(_) => exit::DATAERR,
            DropError::Io { source, .. } => io_code(source),
            DropError::BelowReserve { .. } => exit::TEMPFAIL,
            DropError::Unnameable(_) => exit::DATAERR,
        }
    }
}

/// A name nobody else will pick: time, pid, and 64 random bits.
fn unique_name() -> String {
    let mut r = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}.{}.{:016x}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id(),
        u64::from_ne_bytes(r)
    )
}

/// Check the submission, then write it into `dir`. Returns the drop file's path.
pub fn drop_message(
    dir: &Path,
    sub: &Submission,
    input: &mut impl BufRead,
) -> Result<PathBuf, DropError> {
    let env = &sub.envelope;
    // Everything the caller can get wrong is refused before a byte is written.
    // A bare name (`root`) is this host's: accepted here, completed by the pickup with
    // the daemon's qualify_domain (checked here with the one the drop knows).
    let q = Some(sub.qualify_domain.as_str());
    let mut rcpts = Vec::with_capacity(env.rcpts.len());
    for r in &env.rcpts {
        rcpts.push(address::parse_recipient_in(r, q)?);
    }
    let from = match &env.from {
        Some(f) => Some(address::parse_sender_in(f, q)?),
        None => None,
    };
    let head = read_head(input, sub.max_header_size, sub.dot_ends)?;
    if rcpts.is_empty() || env.extract {
        rcpts.extend(head.headers.recipients_in(q)?);
    }
    let header_from = head.headers.from_address_in(q)?;
    // Refused now, not lost later: an address the spool cannot name (a node name is
    // at most 255 bytes) is the caller's error, 65.
    let sender = from.clone().or(header_from).unwrap_or_default();
    let probe_id = "0".repeat(26);
    mailspool_spool::check_envelope_names(&probe_id, &sender, &dedup(rcpts.clone()))
        .map_err(|e| DropError::Unnameable(e.to_string()))?;
    if dedup(rcpts.clone()).is_empty() {
        return Err(DropError::NoRecipients);
    }
    let envelope = Envelope {
        rcpts: env.rcpts.iter().map(|r| r.trim().to_owned()).collect(),
        from,
        full_name: env
            .full_name
            .as_ref()
            .map(|n| n.chars().filter(|c| !c.is_control()).collect()),
        ..env.clone()
    };

    // Below the reserve new mail waits, so that what was accepted can still move.
    if sub.min_free_space > 0
        && let Ok(st) = rustix::fs::statvfs(dir)
    {
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < sub.min_free_space {
            return Err(DropError::BelowReserve {
                free,
                reserve: sub.min_free_space,
            });
        }
    }

    // Written in place under its final name, created mode 0040 and locked (flock) until
    // it is complete: the pickup takes only files of mode 0640, and an
    // unfinished file it can lock has lost its writer (killed), so it is removed. The
    // mode is set to 0640 when the last byte is written; one fsync then makes data,
    // mode and name durable together where the file system journals a new file's
    // directory entry with its inode (XFS, btrfs, ext4 with a journal), and a sync of
    // the file system where it does not. A signal that ends the drop removes the file.
    let path = dir.join(unique_name());
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DropError::Io { path, source }
    };
    signals::writing(&path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(WRITING_MODE)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(io(&path));
    let result = file.and_then(|file| {
        // Held until `write_all` is done with the file (mode 0640, synced).
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| DropError::Intake(IntakeError::Write(e.into())))?;
        write_all(file, &envelope, &head, input, sub)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    signals::written();
    result.map(|()| path)
}

/// The mode of a drop file being written: readable by the drop's group (the daemon),
/// so that the pickup can tell, by its lock, whether its writer still lives.
pub const WRITING_MODE: u32 = 0o040;

/// A signal that ends the drop (SIGTERM, SIGHUP, SIGINT, SIGPIPE) removes the file it
/// was writing: the caller was not told 0, so nothing of it may stay.
pub mod signals {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicPtr, Ordering};

    static WRITING: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

    extern "C" fn remove_and_exit(sig: libc::c_int) {
        let p = WRITING.load(Ordering::SeqCst);
        // SAFETY: unlink and _exit are async-signal-safe; `p` is a leaked C string.
        unsafe {
            if !p.is_null() {
                libc::unlink(p);
            }
            libc::_exit(128 + sig);
        }
    }

    /// Install the handlers (the drop's main does, once).
    pub fn install() {
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGPIPE] {
            // SAFETY: a plain handler that only calls async-signal-safe functions.
            unsafe {
                libc::signal(sig, remove_and_exit as *const () as libc::sighandler_t);
            }
        }
    }

    pub(super) fn writing(path: &Path) {
        if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
            let old = WRITING.swap(c.into_raw(), Ordering::SeqCst);
            if !old.is_null() {
                // SAFETY: made by CString::into_raw above, and no longer published.
                drop(unsafe { CString::from_raw(old) });
            }
        }
    }

    pub(super) fn written() {
        // Left allocated: a handler running now may still be reading it.
        WRITING.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

fn write_all(
    file: File,
    envelope: &Envelope,
    head: &mailspool_message::Head,
    input: &mut impl BufRead,
    sub: &Submission,
) -> Result<(), DropError> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, file);
    let w = |e| DropError::Intake(IntakeError::Write(e));
    envelope.write_to(&mut out).map_err(w)?;
    head.headers.write_to(&mut out).map_err(w)?;
    let header_len = head.headers.len() as u64 + 1;
    if header_len > sub.max_message_size {
        return Err(IntakeError::TooLarge {
            limit: sub.max_message_size,
        }
        .into());
    }
    out.write_all(b"\n").map_err(w)?;
    if !head.ended {
        BodyCopier::new(sub.dot_ends)
            .copy(
                &head.body_start,
                input,
                &mut out,
                sub.max_message_size - header_len,
            )
            .map_err(|e| match e {
                IntakeError::TooLarge { .. } => IntakeError::TooLarge {
                    limit: sub.max_message_size,
                },
                e => e,
            })?;
    }
    let file = out.into_inner().map_err(|e| w(e.into_error()))?;
    rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(DONE_MODE))
        .map_err(|e| w(e.into()))?;
    file.sync_all().map_err(w)?;
    // Without a journal (ext2, ext4 made without one) a file's fsync does not carry its
    // new directory entry, and the drop cannot fsync maildrop/ (it may write there, not
    // read it): the whole file system is synced instead.
    if !mailspool_spool::durability::detect(&file, sub.fsync_directories).created_names_with_file {
        rustix::fs::syncfs(&file).map_err(|e| w(e.into()))?;
    }
    Ok(())
}

/// The mode of a drop file whose writer finished: the pickup takes only these.
pub const DONE_MODE: u32 = 0o640;

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(rcpts: &[&str], extract: bool) -> Submission {
        Submission {
            envelope: Envelope {
                uid: 1001,
                login: "alice".into(),
                rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
                extract,
                ..Default::default()
            },
            dot_ends: true,
            max_message_size: 10_000,
            max_header_size: 4096,
            min_free_space: 0,
            qualify_domain: "host.test".into(),
            fsync_directories: Default::default(),
        }
    }

    #[test]
    fn drops_a_whole_file_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let msg = b"To: Bob <bob@example.org>\r\nSubject: hi\r\n\r\nline\r\n.\r\nnot read\r\n";
        let path = drop_message(dir.path(), &sub(&[], true), &mut &msg[..]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "mailspool-drop 1\nuid 1001\nlogin alice\nextract\n\nTo: Bob <bob@example.org>\nSubject: hi\n\nline\n"
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "no hidden leftovers: {names:?}");
        assert!(!names[0].starts_with('.'));

        for (s, input, code) in [
            (sub(&[], false), &b"Subject: nobody\n\nx\n"[..], exit::USAGE),
            (
                sub(&["a b@example.org"], false),
                b"Subject: x\n\nx\n",
                exit::DATAERR,
            ),
            (sub(&["ok@example.org"], false), b"Subject: x\n\nx\n", 0),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let r = drop_message(dir.path(), &s, &mut &input[..]);
            match r {
                Ok(_) => assert_eq!(code, 0),
                Err(e) => assert_eq!(e.exit_code(), code, "{e}"),
            }
            if code != 0 {
                assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let big = format!("Subject: x\n\n{}\n", "y".repeat(20_000));
        let e = drop_message(
            dir.path(),
            &sub(&["a@example.org"], false),
            &mut big.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), exit::DATAERR);
        assert!(e.to_string().contains("10000"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing half-written"
        );
    }
}
