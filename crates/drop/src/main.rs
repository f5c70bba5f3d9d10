//! `mailspool-drop`: the setgid sendmail fast path. Installed as `/usr/sbin/sendmail`
//! (through a link), it queues what `sendmail -t -i` and friends hand it by writing one
//! file into the spool's `maildrop/`; anything else (`-bp`, `-bs`, `-q`, `mailq`) goes to
//! the full `mailspool` program, without the group's privilege.

use std::ffi::OsString;
use std::io::BufReader;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mailspool_drop::args::{self, Mode};
use mailspool_drop::config::DropConfig;
use mailspool_drop::format::Envelope;
use mailspool_drop::submit::{Submission, drop_message, exit};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let prog = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("sendmail")
        .to_owned();
    match run(&prog, &argv[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            if !message.is_empty() {
                eprintln!("{prog}: {message}");
            }
            ExitCode::from(code)
        }
    }
}

/// Whether we run with more than the caller's rights (the setgid group).
fn privileged() -> bool {
    rustix::process::getegid() != rustix::process::getgid()
        || rustix::process::geteuid() != rustix::process::getuid()
}

fn run(prog: &str, argv: &[OsString]) -> Result<(), (u8, String)> {
    if matches!(prog, "mailq" | "newaliases") {
        return Err(hand_over(prog, argv));
    }
    let strings: Vec<String> = argv
        .iter()
        .map(|a| a.clone().into_string())
        .collect::<Result<_, _>>()
        .map_err(|a| (exit::USAGE, format!("argument {a:?} is not valid UTF-8")))?;
    let a = args::parse(&strings).map_err(|e| (exit::USAGE, format!("{e}\n{}", args::USAGE)))?;
    if a.mode != Mode::Deliver {
        return Err(hand_over(prog, argv));
    }
    let privileged = privileged();
    let config =
        DropConfig::load(privileged, a.config.as_deref()).map_err(|e| (exit::CONFIG, e))?;
    let uid = rustix::process::getuid().as_raw();
    let sub = Submission {
        envelope: Envelope {
            uid,
            // The pickup looks the login up itself (it trusts nothing here); skipping the
            // lookup spares every sendmail the system's NSS modules.
            login: String::new(),
            from: a.from.clone(),
            full_name: a.full_name.clone(),
            rcpts: a.recipients.clone(),
            extract: a.extract || a.recipients.is_empty(),
        },
        dot_ends: !a.ignore_dots,
        max_message_size: config.max_message_size,
        max_header_size: 1024 * 1024,
        min_free_space: config.reserve(),
        fsync_directories: config.fsync_directories,
        // The node name's length is what is checked: the kernel's name stands in for a
        // qualify_domain the configuration does not give.
        qualify_domain: config.qualify_domain.clone().unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        }),
    };
    mailspool_drop::submit::signals::install();
    let dir = mailspool_drop::maildrop_dir(&config.spool);
    let stdin = std::io::stdin();
    let mut input = BufReader::with_capacity(64 * 1024, stdin.lock());
    match drop_message(&dir, &sub, &mut input) {
        Ok(path) => {
            if a.verbose > 0 {
                eprintln!("{prog}: handed to the mail system as {}", path.display());
            }
            Ok(())
        }
        Err(e) => {
            let hint = if e.exit_code() == exit::CANTCREAT {
                format!(
                    " (is mailspool installed? {} must exist, group mailspool-drop, mode 1730, \
                     and this program setgid mailspool-drop: `mailspool doctor` checks)",
                    dir.display()
                )
            } else {
                String::new()
            };
            Err((e.exit_code(), format!("{e}{hint}")))
        }
    }
}

/// The full program, for the modes the drop does not do.
fn full_program() -> Option<PathBuf> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mailspool")));
    let from_env = (!privileged())
        .then(|| std::env::var_os("MAILSPOOL_BIN").map(PathBuf::from))
        .flatten();
    from_env
        .into_iter()
        .chain(sibling)
        .chain(["/usr/bin/mailspool", "/usr/local/bin/mailspool"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Run the full program in our place, as the caller alone: the group goes first.
fn hand_over(prog: &str, argv: &[OsString]) -> (u8, String) {
    let gid = rustix::process::getgid().as_raw();
    let uid = rustix::process::getuid().as_raw();
    // SAFETY: plain system calls; on failure we stop rather than run with privilege.
    let dropped =
        unsafe { libc::setresgid(gid, gid, gid) == 0 && libc::setresuid(uid, uid, uid) == 0 };
    if !dropped || privileged() {
        return (exit::SOFTWARE, "cannot give up the drop's group".into());
    }
    let Some(full) = full_program() else {
        return (
            exit::CONFIG,
            "this mode needs the full mailspool program, which is not installed".into(),
        );
    };
    let err = std::process::Command::new(&full)
        .arg0(prog)
        .args(argv)
        .exec();
    (
        exit::SOFTWARE,
        format!("cannot run {}: {err}", full.display()),
    )
}
