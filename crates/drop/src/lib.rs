//! The drop: how a user who does not own the spool hands mailspool a message.
//!
//! A multi-user server has one spool, owned by the `mailspool` user, and many users whose
//! cron jobs, scripts and web apps call `/usr/sbin/sendmail`. They cannot write the
//! spool (nor read or change anyone's queued mail). Instead `mailspool-drop`, a small
//! program installed setgid to the `mailspool-drop` group, writes each message as one
//! file into `<spool>/maildrop/` (mode 1730: the group may create files there, nobody
//! but the owner may list or read the directory), and the daemon's pickup takes it from
//! there, trusting nothing in it. This is Postfix's postdrop/maildrop/pickup model.
//!
//! - [`args`]: the sendmail command line (the full program uses it too).
//! - [`format`]: the drop file (an envelope, then the message).
//! - [`submit`]: writing one, checked first and durable before exit 0.
//! - [`config`]: the two settings the drop reads, and only from where it may.
//!
//! The drop holds no secrets, opens no network connection and reads no configuration a
//! user can choose while it runs with its group.

pub mod args;
pub mod config;
pub mod format;
pub mod submit;

/// The drop directory inside a spool.
pub const MAILDROP: &str = "maildrop";

/// The drop directory when the spool is a database: on the local disk, since users'
/// `sendmail` never gets the database's credentials; the daemon on this host picks it up.
pub const DATABASE_MAILDROP: &str = "/var/lib/mailspool/maildrop";

/// The drop directory of a spool (a directory, or a `postgresql://` URL).
pub fn maildrop_dir(spool: &std::path::Path) -> std::path::PathBuf {
    match spool.to_str() {
        Some(s) if s.starts_with("postgresql://") || s.starts_with("postgres://") => {
            std::path::PathBuf::from(DATABASE_MAILDROP)
        }
        _ => spool.join(MAILDROP),
    }
}

/// The login name of `uid`, from the system's user database (never from the
/// environment, which the caller controls).
pub fn login_of(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, which outlive the call; `result`
    // points to `pwd` or is null.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated, while `buf` lives.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_str().ok().map(str::to_owned)
}
