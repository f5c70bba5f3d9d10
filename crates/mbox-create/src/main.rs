//! `mailspool-mbox-create USER`: make the empty mailbox `/var/mail/USER`, owned by USER,
//! group `mail`, mode 0660, when it does not exist. Installed setuid root and runnable
//! only by the daemon's group (mode 4750 root:mailspool), like dma's dma-mbox-create:
//! the daemon, in group `mail`, can append to a mailbox and make its dot-lock, but not
//! give a new file to its user. This program does that one thing and nothing else: it
//! writes no byte, takes no path (only a user name from the password file), never
//! follows a link (O_EXCL|O_NOFOLLOW in root's own /var/mail) and leaves an existing
//! file alone.

use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

/// The only directory this program ever writes in.
const MAIL_DIR: &str = "/var/mail";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailspool-mbox-create: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [_, user] = args else {
        return Err("usage: mailspool-mbox-create USER".into());
    };
    if user.is_empty()
        || user.len() > 64
        || user.starts_with(['.', '-'])
        || !user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!("{user:?} is not a user name"));
    }
    let uid = id_of("/etc/passwd", user).ok_or_else(|| format!("no user {user}"))?;
    let gid = id_of("/etc/group", "mail").ok_or("no group mail")?;
    let path = std::path::Path::new(MAIL_DIR).join(user);
    let flags = (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32;
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(&path)
    {
        Ok(f) => f,
        // There already: its owner and mode are the administrator's business.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let owner = Some(rustix::fs::Uid::from_raw(uid));
    let group = Some(rustix::fs::Gid::from_raw(gid));
    let made = rustix::fs::fchown(&file, owner, group)
        .and_then(|()| rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o660)));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(())
}

/// The numeric id of `name` in a colon-separated account file.
fn id_of(file: &str, name: &str) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
    })
}
