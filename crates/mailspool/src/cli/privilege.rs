//! Who may write a spool: its owner, and no one else. On a shared server the spool
//! belongs to the `mailspool` user: root running a command becomes that user first (so
//! every file it makes is the daemon's to read and remove), and any other user hands
//! messages to the setgid drop (`mailspool-drop`) instead of writing the spool.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use mailspool::{Config, sysexits};

use super::Failure;

/// How this process may put mail into the configured spool.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// We own it (or it does not exist yet and will be ours): write it directly.
    Owner,
    /// Someone else owns it: submit through the drop.
    Drop,
}

/// Who ran this command, as the process started (root stays root here after it has
/// become the spool's owner): the submitter named in Received and the default sender,
/// the same for `mailspool send` and `sendmail`.
static CALLER: std::sync::OnceLock<mailspool::Submitter> = std::sync::OnceLock::new();

/// Remember the caller; called first thing, before any change of user.
pub fn remember_caller() {
    let _ = CALLER.set(mailspool::Submitter {
        uid: rustix::process::getuid().as_raw(),
        login: mailspool::send::login_name(),
    });
}

/// The caller (see [`remember_caller`]).
pub fn caller() -> Option<mailspool::Submitter> {
    CALLER.get().cloned()
}

/// Decide how we write the spool; root becomes the spool's owner on the way.
pub fn access(config: &Config) -> Result<Access, Failure> {
    let meta = match std::fs::metadata(&config.spool_dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Access::Owner),
        // Not even visible to us (a 0700 parent): someone else's spool.
        Err(_) => return Ok(Access::Drop),
    };
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() == euid {
        return Ok(Access::Owner);
    }
    if euid == 0 {
        become_user(meta.uid(), meta.gid())?;
        return Ok(Access::Owner);
    }
    // A spool declared shared is written directly by the members of its group.
    if config.spool.shared
        && rustix::fs::access(
            &config.spool_dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok()
    {
        return Ok(Access::Owner);
    }
    Ok(Access::Drop)
}

/// A user's primary group, from the password file.
pub fn primary_group(uid: u32) -> Option<u32> {
    mailspool_spool::account_entry("/etc/passwd", uid)?
        .get(3)?
        .parse()
        .ok()
}

/// Root turns into the spool's owner: its uid, its own primary group (`fallback_gid`
/// when the password file does not name one) and its supplementary groups (the
/// daemon's user reads dropped files through `mailspool-drop`), so files made on its
/// behalf get its group, never the spool directory's. Process-wide: glibc applies
/// set*id to every thread.
pub fn become_user(uid: u32, fallback_gid: u32) -> Result<(), Failure> {
    let gid = primary_group(uid).unwrap_or(fallback_gid);
    let name = mailspool_spool::user_name(uid).and_then(|n| std::ffi::CString::new(n).ok());
    // SAFETY: plain system calls with valid arguments (a NUL-terminated name); checked
    // below.
    let ok = unsafe {
        let groups = match &name {
            Some(n) => libc::initgroups(n.as_ptr(), gid) == 0,
            None => libc::setgroups(1, &gid) == 0,
        };
        groups && libc::setresgid(gid, gid, gid) == 0 && libc::setresuid(uid, uid, uid) == 0
    };
    if !ok || rustix::process::geteuid().as_raw() != uid {
        return Err(Failure::new(
            sysexits::OSERR,
            format!("cannot become the spool's owner (uid {uid})"),
        ));
    }
    tracing::debug!(uid, gid, "running as the spool's owner");
    Ok(())
}

/// The drop program: next to us, or where the package puts it.
pub fn drop_program() -> Option<PathBuf> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mailspool-drop")));
    std::env::var_os("MAILSPOOL_DROP")
        .map(PathBuf::from)
        .into_iter()
        .chain(sibling)
        .chain(["/usr/sbin/mailspool-drop", "/usr/local/sbin/mailspool-drop"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Hand the message to the drop: it reads our stdin (or `file`) and writes the spool's
/// `maildrop/`. Replaces this process; returns only on failure.
pub fn exec_drop(config: &Config, args: Vec<OsString>, file: Option<&Path>) -> Failure {
    let Some(prog) = drop_program() else {
        return Failure::new(
            sysexits::CANTCREAT,
            format!(
                "{} belongs to another user and mailspool-drop is not installed: \
                 ask the administrator to install mailspool (`mailspool doctor` checks)",
                config.spool_dir.display()
            ),
        );
    };
    // A setgid drop writes only into the system's spool: a spool this user named
    // (--spool, --config, $MAILSPOOL_SPOOL, $MAILSPOOL_CONFIG) is not where it goes. Said,
    // not silently ignored.
    let setgid = std::fs::metadata(&prog)
        .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o2000 != 0);
    let named = std::env::args().any(|a| {
        a == "--spool" || a == "--config" || a.starts_with("--spool=") || a.starts_with("--config=")
    }) || std::env::var_os("MAILSPOOL_SPOOL").is_some_and(|v| !v.is_empty())
        || std::env::var_os("MAILSPOOL_CONFIG").is_some_and(|v| !v.is_empty());
    if setgid && named {
        eprintln!(
            "mailspool: {} is not yours to write, so the message goes to the system's mail \
             system through {}, which ignores --spool, --config, $MAILSPOOL_SPOOL and \
             $MAILSPOOL_CONFIG",
            config.spool_dir.display(),
            prog.display()
        );
    }
    let mut cmd = std::process::Command::new(&prog);
    cmd.arg0("sendmail").args(args);
    cmd.env("MAILSPOOL_SPOOL", &config.spool_dir);
    if let Some(f) = file {
        match std::fs::File::open(f) {
            Ok(f) => {
                cmd.stdin(f);
            }
            Err(e) => {
                let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    sysexits::NOPERM
                } else {
                    sysexits::NOINPUT
                };
                return Failure::new(code, format!("cannot open {}: {e}", f.display()));
            }
        }
    }
    let e = cmd.exec();
    Failure::new(
        sysexits::OSERR,
        format!("cannot run {}: {e}", prog.display()),
    )
}

/// Whom files made for the daemon belong to: the spool's owner and its own group when
/// root makes them (`token add`, `dkim keygen`, `user add`), never the spool
/// directory's group (`mailspool-drop`, which every user's sendmail runs with); else
/// nobody else (the caller keeps them).
pub fn daemon_owner(config: &Config) -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    std::fs::metadata(&config.spool_dir)
        .ok()
        .map(|m| (m.uid(), primary_group(m.uid()).unwrap_or(m.gid())))
}
