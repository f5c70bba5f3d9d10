//! `mailspool doctor`: check an installation and say what to fix. Owners and modes of
//! the spool and the drop, the setgid bit, the sendmail link, the daemon user's groups,
//! the relay secret, and whether DNS and the relay answer. Exit 0 when nothing needs
//! fixing (warnings allowed), 1 otherwise.

use std::net::ToSocketAddrs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use mailspool::Config;

use super::{CliResult, Failure, privilege};

#[derive(Default)]
struct Report {
    problems: usize,
    /// Run by neither root nor the spool's owner: what they alone may see is not
    /// judged (a file we may not look at is not a file to fix).
    outsider: bool,
}

impl Report {
    fn ok(&mut self, what: &str) {
        println!("ok    {what}");
    }
    fn warn(&mut self, what: &str) {
        println!("warn  {what}");
    }
    fn fix(&mut self, what: &str, how: &str) {
        self.problems += 1;
        println!("FIX   {what}\n      -> {how}");
    }
}

fn user(uid: u32) -> String {
    mailspool_spool::user_name(uid).unwrap_or_else(|| format!("uid {uid}"))
}

fn group_name(gid: u32) -> Option<String> {
    mailspool_spool::account_entry("/etc/group", gid)?
        .into_iter()
        .next()
}

fn group_members(name: &str) -> Vec<String> {
    std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| l.split(':').nth(3))
        .map(|m| {
            m.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(config: &Config) -> CliResult {
    let mut r = Report::default();
    match &config.found_file {
        true => r.ok("configuration read"),
        false => r.warn("no configuration file: built-in defaults (/etc/mailspool/mailspool.toml is the system one)"),
    }
    if !config.hostname.contains('.') {
        r.warn(&format!(
            "hostname {:?} is not fully qualified: bare names (cron's `alice`, `root`) become user@{} and mail leaves as from it; set hostname (or qualify_domain) to this host's FQDN",
            config.hostname, config.qualify_domain()
        ));
    }
    if config.spool_url().is_some() {
        // A database spool: no directory to check, and its URL shown without a password.
        r.ok(&format!("spool: database {}", config.spool_location()));
        // Root checks for the daemon's user (the package's `mailspool`).
        let owner = match mailspool_deliver::local::passwd_entry("mailspool") {
            Some(f) if rustix::process::geteuid().is_root() => {
                f.get(2).and_then(|u| u.parse().ok()).unwrap_or(0)
            }
            _ => rustix::process::geteuid().as_raw(),
        };
        if let Some(pw) = &config.spool_password_file {
            check_private_file(&mut r, "spool_password_file", pw, owner);
        } else if config.spool_location().contains(":***@") {
            r.warn("the spool URL carries a password that every user who can read the configuration can read: move it to spool_password_file (mailspool 0600)");
        }
        check_network(&mut r, config);
        return finish(r);
    }
    let spool = &config.spool_dir;
    let Ok(meta) = std::fs::metadata(spool) else {
        r.fix(
            &format!("spool {} does not exist", spool.display()),
            "install the package, or create it: install -d -o mailspool -g mailspool -m 0700 DIR",
        );
        return finish(r);
    };
    let owner = meta.uid();
    if meta.mode() & 0o022 != 0 && !config.spool.shared {
        r.fix(
            &format!(
                "spool {} has mode {:04o}: users other than its owner can write it",
                spool.display(),
                meta.mode() & 0o7777
            ),
            "chmod 0700 it (or set shared_spool = true if it is shared on purpose)",
        );
    } else {
        r.ok(&format!(
            "spool {}: owned by {}, mode {:04o}",
            spool.display(),
            user(owner),
            meta.mode() & 0o7777
        ));
    }
    check_durability(&mut r, config, spool);
    if owner == 0 {
        r.warn("the spool belongs to root: run the daemon as a dedicated user (the package's `mailspool`)");
    }
    let euid = rustix::process::geteuid();
    r.outsider = !euid.is_root() && euid.as_raw() != owner;
    if r.outsider {
        r.warn(&format!(
            "running as {}, neither root nor the spool's owner ({}): the drop directory, \
             corrupt/ and the daemon's private files are not checked; run \
             `sudo mailspool doctor` for every check",
            user(euid.as_raw()),
            user(owner)
        ));
    } else {
        check_drop(&mut r, spool, owner);
        check_quarantine(&mut r, spool);
    }
    check_secret(&mut r, config, owner);
    check_dkim(&mut r, config, owner);
    check_network(&mut r, config);
    if spool != Path::new(mailspool::config::SYSTEM_SPOOL)
        && Path::new("/lib/systemd/system/mailspool.service").exists()
    {
        r.warn(&format!(
            "the spool is not /var/spool/mailspool: `systemctl edit mailspool` and set ReadWritePaths={}",
            spool.display()
        ));
    }
    finish(r)
}

/// What the file system under tier 0 guarantees, and so whether commits fsync it.
fn check_durability(r: &mut Report, config: &Config, spool: &Path) {
    use mailspool_spool::durability::{NameSync, Setting, detect_path};
    let tier0 = spool.join("0");
    let at = if tier0.is_dir() {
        tier0
    } else {
        spool.to_owned()
    };
    match detect_path(&at, config.spool.fsync_directories) {
        Ok(d) if d.links == NameSync::FileFsync && d.setting == Setting::Never => r.warn(&format!(
            "file system: {d}; a crash may lose acknowledged mail if it is wrong"
        )),
        Ok(d) => r.ok(&format!("file system: {d}")),
        Err(e) => r.warn(&format!("file system under {}: {e}", at.display())),
    }
    if spool.is_dir()
        && let Err(e) = mailspool_spool::durability::check_hard_links(spool)
    {
        r.fix(
            &e,
            "move the spool to a local file system, NFS or GlusterFS (mailspool migrate --from OLD --to NEW)",
        );
    }
}

/// Whatever was set aside in corrupt/ waits for a person: say so until it is gone.
fn check_quarantine(r: &mut Report, spool: &Path) {
    let n = std::fs::read_dir(spool.join("corrupt")).map_or(0, |d| d.count());
    if n > 0 {
        r.fix(
            &format!(
                "{n} file{} in {}/corrupt, never delivered",
                if n == 1 { "" } else { "s" },
                spool.display()
            ),
            "`mailspool fsck` lists them: requeue what is mail (sendmail -t < FILE), then remove them",
        );
    }
}

fn finish(r: Report) -> CliResult {
    if r.problems == 0 {
        println!("nothing to fix");
        Ok(())
    } else {
        println!(
            "{} thing{} to fix",
            r.problems,
            if r.problems == 1 { "" } else { "s" }
        );
        Err(Failure::new(1, ""))
    }
}

fn check_drop(r: &mut Report, spool: &Path, owner: u32) {
    let drop_dir = spool.join(mailspool_drop::MAILDROP);
    let Ok(d) = std::fs::metadata(&drop_dir) else {
        r.fix(
            &format!(
                "{} does not exist: other users cannot submit mail",
                drop_dir.display()
            ),
            "install -d -o mailspool -g mailspool-drop -m 1730 it",
        );
        return;
    };
    let group = group_name(d.gid()).unwrap_or_else(|| format!("gid {}", d.gid()));
    if d.uid() != owner || d.mode() & 0o7777 != 0o1730 {
        r.fix(
            &format!(
                "{}: owned by {}, group {group}, mode {:04o}",
                drop_dir.display(),
                user(d.uid()),
                d.mode() & 0o7777
            ),
            "chown SPOOL-OWNER:mailspool-drop and chmod 1730 it (others create files, nobody lists)",
        );
    } else {
        r.ok(&format!("{}: group {group}, mode 1730", drop_dir.display()));
    }
    if !group_members(&group).contains(&user(owner)) && d.gid() != owner_gid(owner) {
        r.fix(
            &format!(
                "{} is not in group {group}: the pickup cannot read dropped files",
                user(owner)
            ),
            &format!("adduser {} {group}", user(owner)),
        );
    }
    match privilege::drop_program() {
        None => r.fix(
            "mailspool-drop is not installed: users other than the spool's owner cannot send",
            "install the package, or: install -o root -g mailspool-drop -m 2755 target/release/mailspool-drop /usr/sbin/",
        ),
        Some(p) => match std::fs::metadata(&p) {
            Ok(m) if m.mode() & 0o2000 != 0 && m.gid() == d.gid() && m.uid() == 0 => {
                r.ok(&format!("{}: setgid {group}", p.display()))
            }
            Ok(m) => r.fix(
                &format!(
                    "{}: owner {}, group {}, mode {:04o}",
                    p.display(),
                    user(m.uid()),
                    group_name(m.gid()).unwrap_or_default(),
                    m.mode() & 0o7777
                ),
                &format!("chown root:{group} and chmod 2755 it (dpkg-statoverride on Debian)"),
            ),
            Err(e) => r.fix(&format!("{}: {e}", p.display()), "reinstall it"),
        },
    }
    match std::fs::canonicalize("/usr/sbin/sendmail") {
        Ok(t)
            if t.file_name()
                .is_some_and(|n| n == "mailspool-drop" || n == "mailspool") =>
        {
            r.ok(&format!(
                "/usr/sbin/sendmail is mailspool ({})",
                t.display()
            ))
        }
        Ok(t) => r.warn(&format!(
            "/usr/sbin/sendmail is {}, not mailspool",
            t.display()
        )),
        Err(_) => r.warn("/usr/sbin/sendmail does not exist: programs that run it will fail"),
    }
}

fn owner_gid(uid: u32) -> u32 {
    mailspool_spool::account_entry("/etc/passwd", uid)
        .and_then(|f| f.get(3)?.parse().ok())
        .unwrap_or(u32::MAX)
}

fn check_secret(r: &mut Report, config: &Config, owner: u32) {
    if let Some((_, file)) = &config.relay_secret {
        check_private_file(r, "relay password_file", file, owner);
    }
    // The API tokens and SMTP users (hashes, but still the keys to the API and AUTH).
    if let Some(http) = &config.http
        && http.tokens_file.exists()
    {
        check_private_file(r, "HTTP tokens file", &http.tokens_file, owner);
    }
    if let Some(users) = &config.serve.users_file
        && users.exists()
    {
        check_private_file(r, "SMTP users_file", users, owner);
    }
}

/// A file only the daemon (the spool's owner) may read; true when it is fine.
fn check_private_file(r: &mut Report, what: &str, file: &Path, owner: u32) -> bool {
    match std::fs::metadata(file) {
        Err(e) if r.outsider && e.kind() == std::io::ErrorKind::PermissionDenied => {
            r.warn(&format!(
                "{what} {}: not visible to this user (checked by `sudo mailspool doctor`)",
                file.display()
            ));
            return false;
        }
        Err(e) => r.fix(
            &format!("{what} {}: {e}", file.display()),
            "create it, readable by the spool's owner only",
        ),
        Ok(m) if m.mode() & 0o004 != 0 => r.fix(
            &format!("{what} {} is world-readable", file.display()),
            "chmod 0600 it, owned by the spool's owner (only the daemon reads it)",
        ),
        // Whether the daemon can read it is root's or the owner's to judge.
        Ok(_) if r.outsider => {}
        Ok(m) if m.uid() != owner && m.mode() & 0o040 == 0 => r.fix(
            &format!(
                "{what} {}: the daemon ({}) cannot read it",
                file.display(),
                user(owner)
            ),
            "chown it to the spool's owner, mode 0600",
        ),
        Ok(_) => return true,
    }
    false
}

/// DKIM keys: readable by the daemon only, and keys at all (the big receivers junk
/// unsigned mail).
fn check_dkim(r: &mut Report, config: &Config, owner: u32) {
    if config.dkim.is_empty() {
        r.warn("no [[dkim]] keys: Gmail, Yahoo and Microsoft junk or refuse unsigned mail (mailspool dkim keygen; docs/deliverability.md)");
        return;
    }
    for d in &config.dkim {
        let what = format!("DKIM key of {} (selector {})", d.domain, d.selector);
        if !check_private_file(r, &what, &d.key_file, owner) {
            continue;
        }
        match mailspool_deliver::dkim::DkimKey::load(&d.domain, &d.selector, &d.key_file, None, None)
        {
            Ok(k) => r.ok(&format!(
                "{what}: {} key in {}; `mailspool dkim check --domain {} --selector {}` compares it with DNS",
                k.algorithm(),
                d.key_file.display(),
                d.domain,
                d.selector
            )),
            Err(e) => r.fix(&format!("{what}: {e}"), "make a new one: mailspool dkim keygen"),
        }
    }
}

fn check_network(r: &mut Report, config: &Config) {
    if config.deliver.relayhosts.is_empty() {
        // MX delivery: the configured resolver answers, and DANE can work as set.
        let findings = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(mailspool_deliver::dnssec::readiness(&config.deliver)));
        match findings {
            Ok(findings) => {
                for f in findings {
                    match f {
                        mailspool_deliver::dnssec::Finding::Ok(t) => r.ok(&t),
                        mailspool_deliver::dnssec::Finding::Warn(t) => r.warn(&t),
                        mailspool_deliver::dnssec::Finding::Fix(t, how) => r.fix(&t, &how),
                    }
                }
            }
            Err(e) => r.warn(&format!("DNS: cannot check ({e})")),
        }
        return;
    }
    for hp in &config.deliver.relayhosts {
        let target = format!("{}:{}", hp.host, hp.port);
        let reached = target
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
        match reached {
            Some(Ok(_)) => r.ok(&format!("relay {target} answers")),
            Some(Err(e)) => r.warn(&format!("relay {target}: {e}")),
            None => r.warn(&format!("relay {target}: cannot resolve")),
        }
    }
}
