//! Errors of the spool layer. Each says what was being done and to which path, so that a
//! log line or a CLI message is enough to act on.

use std::io;
use std::path::PathBuf;

/// Something went wrong in the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem call failed.
    #[error("cannot {op} {}: {source}{}", crate::escape(&path.display().to_string()), owner_hint(path, source))]
    Io {
        /// What we were doing ("create", "link", "fsync", ...).
        op: &'static str,
        /// The path we were doing it to.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// An address would make a node name longer than the filesystem allows.
    #[error(
        "address <{address}> is too long: its node name would be {len} bytes, over the {max}-byte limit"
    )]
    NameTooLong {
        /// The offending address.
        address: String,
        /// The length the name would have.
        len: usize,
        /// The longest name allowed.
        max: usize,
    },
    /// An id that cannot be part of a node name.
    #[error("invalid message id {0:?}: use 1-64 characters of A-Z a-z 0-9 . _ + =")]
    InvalidId(String),
    /// A caller-chosen id that queued nodes already carry.
    #[error("message id {0:?} is already queued: choose another id or let mailspool choose one")]
    IdInUse(String),
    /// A node is locked by another process.
    #[error("node {node} is locked by {holder}")]
    Locked {
        /// The node's file name.
        node: String,
        /// Who holds the lock, as the lock file says.
        holder: String,
    },
    /// No node has this id or name.
    #[error("no queued node matches {0:?}")]
    NotFound(String),
    /// A tier entry that is not a node we may read: a symlink, a FIFO, another
    /// user's file. It may have been planted; it is never read or delivered.
    #[error("{} is not a node mailspool will read: {reason}", crate::escape(&path.display().to_string()))]
    Untrusted {
        /// The entry.
        path: PathBuf,
        /// What it is.
        reason: String,
    },
    /// A spool directory others could plant files in, or another user's.
    #[error("refusing the spool {}: {reason}", crate::escape(&path.display().to_string()))]
    UnsafeSpool {
        /// The spool directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another user's spool: only root and its owner may look at it or deliver it.
    #[error(
        "the spool {} belongs to {owner} (uid {uid}): only root and {owner} may look at it or deliver it (run the command as root, e.g. `sudo mailq`); anyone may hand mail to sendmail",
        crate::escape(&path.display().to_string())
    )]
    NotOurs {
        /// The spool directory.
        path: PathBuf,
        /// Its owner's login name.
        owner: String,
        /// Its owner's uid.
        uid: u32,
    },
    /// The spool directory does not exist.
    #[error("spool directory {} does not exist", .0.display())]
    Missing(PathBuf),
    /// Settings that cannot work.
    #[error("invalid spool settings: {0}")]
    Config(String),
    /// A database back end failed (unreachable, restarting, a query refused): nothing
    /// was changed by the failed operation; try again later.
    #[error("spool database: {0}")]
    Database(String),
    /// The spool's file system is below its free-space reserve (`min_free_space`): new
    /// mail waits so that mail already accepted can still move and bounce.
    #[error(
        "the spool's file system has {free} bytes free, below the min_free_space reserve of {reserve}: new mail is refused for now"
    )]
    BelowReserve {
        /// Bytes free for us.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
}

/// For "permission denied": who owns the path (or the nearest directory above it that
/// exists), so the message says which user may do this.
fn owner_hint(path: &std::path::Path, e: &io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    if e.kind() != io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let Some((at, meta)) = path
        .ancestors()
        .find_map(|p| std::fs::symlink_metadata(p).ok().map(|m| (p, m)))
    else {
        return String::new();
    };
    format!(
        " ({} is owned by {} (uid {}), mode {:04o}; run as that user, or submit through sendmail)",
        at.display(),
        user_name(meta.uid()).unwrap_or_else(|| "?".into()),
        meta.uid(),
        meta.mode() & 0o7777
    )
}

/// The login name of `uid`, from /etc/passwd.
pub fn user_name(uid: u32) -> Option<String> {
    account_entry("/etc/passwd", uid)?.into_iter().next()
}

/// The fields of the line of a colon-separated account file (`/etc/passwd`,
/// `/etc/group`) whose third field, the numeric id, is `id`.
pub fn account_entry(path: &str, id: u32) -> Option<Vec<String>> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(':').collect();
        (fields.get(2)?.parse::<u32>().ok()? == id)
            .then(|| fields.iter().map(|f| (*f).to_owned()).collect())
    })
}

/// The fields of the line of a colon-separated account file whose first field, the
/// name, is `name`.
pub fn account_by_name(path: &str, name: &str) -> Option<Vec<String>> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(':').collect();
        (fields.first() == Some(&name)).then(|| fields.iter().map(|f| (*f).to_owned()).collect())
    })
}

/// Result of spool operations.
pub type Result<T, E = SpoolError> = std::result::Result<T, E>;

impl SpoolError {
    /// A filesystem call on `path` failed (for back ends outside this crate).
    pub fn io_path(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::io(op, path, source)
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The underlying system error, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The disk or quota is full (or below its reserve): worth retrying later.
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::BelowReserve { .. }) || self.io_error().is_some_and(is_full)
    }

    /// Permission denied or read-only filesystem: the spool cannot be written by us.
    pub fn is_unwritable(&self) -> bool {
        self.io_error().is_some_and(is_unwritable)
    }
}

/// A system error meaning the disk or the quota is full (ENOSPC, EDQUOT).
pub fn is_full(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|n| {
        n == rustix::io::Errno::NOSPC.raw_os_error() || n == rustix::io::Errno::DQUOT.raw_os_error()
    })
}

/// `Err` when the file system holding `dir` has less than `reserve` bytes free for
/// us (0: no reserve). A file system that cannot be asked is taken as having room: the
/// write itself will say ENOSPC if it has not.
pub fn check_reserve(dir: &std::path::Path, reserve: u64) -> Result<(), SpoolError> {
    if reserve == 0 {
        return Ok(());
    }
    let Ok(st) = rustix::fs::statvfs(dir) else {
        return Ok(());
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < reserve {
        return Err(SpoolError::BelowReserve { free, reserve });
    }
    Ok(())
}

/// A system error meaning we may not write there (EACCES, EPERM, EROFS).
pub fn is_unwritable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        || e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_names_the_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = SpoolError::io(
            "read",
            dir.path().join("0"),
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        let text = e.to_string();
        let uid = rustix::process::geteuid().as_raw();
        assert!(text.contains(&format!("(uid {uid})")), "{text}");
        assert!(text.contains("mode 0700"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        // Other errors say only what happened.
        let e = SpoolError::io("read", dir.path(), io::Error::from(io::ErrorKind::NotFound));
        assert!(!e.to_string().contains("owned by"));
    }
}
