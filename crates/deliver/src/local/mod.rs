//! Mail for this host: a recipient whose domain is one of `local_domains` is resolved
//! here instead of over SMTP. Aliases first (`aliases`, sendmail's syntax, re-read
//! when the file changes); then each local user either goes to `admin_address` (the
//! relay-only host's shortcut, nullmailer's `adminaddr`) or, being a user of this
//! host, to a mailbox; a name that is neither is unknown (5.1.1). Addresses elsewhere
//! that aliases lead to get the message forwarded (queued again, same sender).
//!
//! Command (`|cmd`) and file (`/path`) targets are refused with a bounce: running a
//! program or appending to a path as the right user, safely, is what Postfix's local(8)
//! needs root for, and mailspool's daemon never has it.

pub mod aliases;
pub mod mbox;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use aliases::{Aliases, Target};

/// Deeper than this, an alias expansion is refused (5.4.6), as Postfix and sendmail do.
const MAX_DEPTH: usize = 20;
/// More addresses than this from one recipient are refused (a runaway include).
const MAX_EXPANSION: usize = 1000;

/// Settings for mail to this host.
#[derive(Debug, Clone, Default)]
pub struct LocalConfig {
    /// Domains that are this host (lower case); empty: none, every domain is remote.
    pub domains: Vec<String>,
    /// The aliases file; `None`: no aliases.
    pub aliases: Option<PathBuf>,
    /// Every local user's mail goes to this address instead (relay-only hosts).
    pub admin_address: Option<String>,
}

impl LocalConfig {
    /// Whether `domain` is this host.
    pub fn is_local(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        self.domains.iter().any(|l| l.eq_ignore_ascii_case(d))
    }
}

/// Why a local recipient cannot be resolved (for its bounce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// RFC 3463 status.
    pub status: &'static str,
    /// What to tell the sender.
    pub text: String,
}

fn refuse(status: &'static str, text: String) -> Refusal {
    Refusal { status, text }
}

/// What one local recipient comes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Addresses elsewhere the message goes on to.
    pub forward: Vec<String>,
    /// Users of this host whose mailbox gets it.
    pub mailboxes: Vec<String>,
    /// Where the forwarded copies' bounces go: `owner-NAME@domain` when the alias
    /// NAME has an `owner-NAME` alias (a list's owner, as sendmail and Postfix do);
    /// `None`: the original sender.
    pub bounces_to: Option<String>,
}

/// The aliases file, parsed once and again whenever it changes.
#[derive(Debug, Default)]
pub struct AliasCache {
    loaded: Mutex<Option<Loaded>>,
}

/// A parsed file, with the path and modification time it was read at.
type Loaded = (PathBuf, Option<SystemTime>, std::sync::Arc<Aliases>);

impl AliasCache {
    /// The aliases of `path` now (empty when it does not exist).
    pub fn get(&self, path: &Path) -> std::sync::Arc<Aliases> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut slot = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, m, a)) = &*slot
            && p == path
            && *m == modified
        {
            return a.clone();
        }
        let aliases = match Aliases::load(path) {
            Ok((a, errors)) => {
                for e in &errors {
                    tracing::warn!(error = %mailspool_spool::escape(&e.to_string()), "aliases: entry ignored (newaliases lists every error)");
                }
                a
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Aliases::default(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "aliases cannot be read; none used");
                Aliases::default()
            }
        };
        let a = std::sync::Arc::new(aliases);
        *slot = Some((path.to_owned(), modified, a.clone()));
        a
    }
}

/// Resolve `recipient` (on a local domain). `user_exists` says whether a name is a
/// user of this host (the password database; a parameter for tests).
pub fn resolve(
    cfg: &LocalConfig,
    aliases: &Aliases,
    recipient: &str,
    user_exists: &dyn Fn(&str) -> bool,
) -> Result<Resolved, Refusal> {
    let mut out = Resolved::default();
    let mut done = HashSet::new();
    let mut ancestors = Vec::new();
    expand(
        cfg,
        aliases,
        recipient,
        0,
        &mut ancestors,
        &mut done,
        &mut out,
        user_exists,
    )?;
    let (local, domain) = recipient.rsplit_once('@').unwrap_or((recipient, ""));
    let owner = format!("owner-{}", local.to_ascii_lowercase());
    if aliases.get(local).is_some() && aliases.get(&owner).is_some() && !domain.is_empty() {
        out.bounces_to = Some(format!("{owner}@{domain}"));
    }
    if let Some(admin) = &cfg.admin_address {
        // Relay-only: no mailboxes here, everything local goes to the admin.
        if !out.mailboxes.is_empty() {
            out.mailboxes.clear();
            if !out.forward.contains(admin) {
                out.forward.push(admin.clone());
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn expand(
    cfg: &LocalConfig,
    aliases: &Aliases,
    address: &str,
    depth: usize,
    ancestors: &mut Vec<String>,
    done: &mut HashSet<String>,
    out: &mut Resolved,
    user_exists: &dyn Fn(&str) -> bool,
) -> Result<(), Refusal> {
    if depth > MAX_DEPTH {
        return Err(refuse(
            "5.4.6",
            format!("alias expansion deeper than {MAX_DEPTH} levels at {address}"),
        ));
    }
    if out.forward.len() + out.mailboxes.len() > MAX_EXPANSION {
        return Err(refuse(
            "5.4.6",
            format!("alias expansion gives more than {MAX_EXPANSION} addresses"),
        ));
    }
    let (local, domain) = match address.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (address, None),
    };
    if let Some(d) = domain
        && !cfg.is_local(d)
    {
        if !out.forward.iter().any(|f| f.eq_ignore_ascii_case(address)) {
            out.forward.push(address.to_owned());
        }
        return Ok(());
    }
    // `\user`: this user's mailbox, no aliasing (sendmail's escape).
    let (local, no_alias) = match local.strip_prefix('\\') {
        Some(l) => (l, true),
        None => (local, false),
    };
    let key = local.to_ascii_lowercase();
    if ancestors.contains(&key) {
        return Err(refuse(
            "5.4.6",
            format!("alias loop: {} -> {key}", ancestors.join(" -> ")),
        ));
    }
    if !done.insert(key.clone()) {
        return Ok(());
    }
    let targets = if no_alias { None } else { aliases.get(&key) };
    let Some(targets) = targets else {
        // Not an alias: a user of this host, or nobody.
        if cfg.admin_address.is_some() || user_exists(&key) {
            out.mailboxes.push(key);
            return Ok(());
        }
        return Err(refuse(
            "5.1.1",
            format!("user unknown: {key} (no such user or alias)"),
        ));
    };
    ancestors.push(key.clone());
    let mut targets: Vec<Target> = targets.to_vec();
    // Includes are read as met, each once.
    let mut included = HashSet::new();
    let mut i = 0;
    while i < targets.len() {
        match targets[i].clone() {
            Target::Include(path) => {
                if included.insert(path.clone()) {
                    let more = aliases::load_include(&path).map_err(|e| {
                        refuse("4.3.0", format!("alias {key}: cannot read :include: {e}"))
                    })?;
                    targets.extend(more);
                }
            }
            Target::Pipe(cmd) => {
                return Err(refuse(
                    "5.7.1",
                    format!(
                        "alias {key} pipes to a command (|{cmd}): mailspool does not run commands for mail"
                    ),
                ));
            }
            Target::File(path) => {
                return Err(refuse(
                    "5.7.1",
                    format!(
                        "alias {key} writes to a file ({path}): mailspool does not append mail to files"
                    ),
                ));
            }
            Target::Address(a) => {
                let a_local = a.rsplit_once('@').map_or(a.as_str(), |(l, _)| l);
                let bare = !a.contains('@');
                let a_key = a_local.trim_start_matches('\\').to_ascii_lowercase();
                if (bare || a.rsplit_once('@').is_some_and(|(_, d)| cfg.is_local(d)))
                    && a_key == key
                {
                    // `alice: alice, bob`: alice's own mailbox too.
                    if cfg.admin_address.is_some() || user_exists(&key) {
                        if !out.mailboxes.contains(&key) {
                            out.mailboxes.push(key.clone());
                        }
                    } else {
                        return Err(refuse(
                            "5.1.1",
                            format!("alias {key} names itself, and no user {key} exists"),
                        ));
                    }
                } else {
                    expand(
                        cfg,
                        aliases,
                        &a,
                        depth + 1,
                        ancestors,
                        done,
                        out,
                        user_exists,
                    )?;
                }
            }
        }
        i += 1;
    }
    ancestors.pop();
    Ok(())
}

/// Whether `name` is a user in the password database (`/etc/passwd`).
pub fn system_user_exists(name: &str) -> bool {
    passwd_entry(name).is_some()
}

/// The `/etc/passwd` fields of user `name`.
pub fn passwd_entry(name: &str) -> Option<Vec<String>> {
    mailspool_spool::account_by_name("/etc/passwd", name).filter(|f| f.len() >= 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(admin: Option<&str>) -> LocalConfig {
        LocalConfig {
            domains: vec!["host.test".into(), "localhost".into()],
            aliases: None,
            admin_address: admin.map(str::to_owned),
        }
    }

    fn users(n: &str) -> bool {
        matches!(n, "alice" | "bob" | "root")
    }

    fn aliases(text: &str) -> Aliases {
        let (a, errors) = Aliases::parse(text, Path::new("aliases"));
        assert!(errors.is_empty(), "{errors:?}");
        a
    }

    #[test]
    fn aliases_expand_to_mailboxes_and_addresses_elsewhere() {
        let a = aliases(
            "postmaster: root\nroot: alice, ops@example.org\nteam: alice, bob\nbob: bob, bob@example.net\nloop1: loop2\nloop2: loop1\ncmd: \"|/bin/sh\"\nfile: /tmp/x\nghost: nobody-here\n",
        );
        let c = cfg(None);
        let r = resolve(&c, &a, "postmaster@host.test", &users).unwrap();
        assert_eq!(r.mailboxes, ["alice"]);
        assert_eq!(r.forward, ["ops@example.org"]);
        let r = resolve(&c, &a, "Team@HOST.test", &users).unwrap();
        assert_eq!(r.mailboxes, ["alice", "bob"], "a self-reference is no loop");
        assert_eq!(
            resolve(&c, &a, "bob@localhost", &users).unwrap().mailboxes,
            ["bob"]
        );
        let e = resolve(&c, &a, "loop1@host.test", &users).unwrap_err();
        assert_eq!(e.status, "5.4.6");
        assert!(e.text.contains("loop1 -> loop2"), "{e:?}");
        assert_eq!(
            resolve(&c, &a, "cmd@host.test", &users).unwrap_err().status,
            "5.7.1"
        );
        assert_eq!(
            resolve(&c, &a, "file@host.test", &users)
                .unwrap_err()
                .status,
            "5.7.1"
        );
        assert_eq!(
            resolve(&c, &a, "ghost@host.test", &users)
                .unwrap_err()
                .status,
            "5.1.1"
        );
        assert_eq!(
            resolve(&c, &a, "carol@host.test", &users)
                .unwrap_err()
                .status,
            "5.1.1"
        );
        // Deep chains stop.
        let chain: String = (0..30).map(|i| format!("a{i}: a{}\n", i + 1)).collect();
        let e = resolve(&c, &aliases(&chain), "a0@host.test", &users).unwrap_err();
        assert_eq!(e.status, "5.4.6");
    }

    #[test]
    fn a_list_with_an_owner_sends_its_bounces_there() {
        let a = aliases("staff: a@example.org, b@example.org\nowner-staff: alice\n");
        let r = resolve(&cfg(None), &a, "staff@host.test", &users).unwrap();
        assert_eq!(r.bounces_to.as_deref(), Some("owner-staff@host.test"));
        let r = resolve(&cfg(None), &a, "alice@host.test", &users).unwrap();
        assert_eq!(r.bounces_to, None);
    }

    #[test]
    fn admin_address_takes_every_local_user() {
        let a = aliases("root: alice, ops@example.org\n");
        let c = cfg(Some("admin@example.net"));
        let r = resolve(&c, &a, "root@host.test", &users).unwrap();
        assert_eq!(r.forward, ["ops@example.org", "admin@example.net"]);
        assert!(r.mailboxes.is_empty());
        // Even names that are no user: the admin sorts them out (nullmailer's rule).
        let r = resolve(&c, &a, "whoever@host.test", &users).unwrap();
        assert_eq!(r.forward, ["admin@example.net"]);
    }

    #[test]
    fn includes_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list");
        std::fs::write(
            &list,
            "# members\nbob\ncarol@example.org, dave@example.org\n",
        )
        .unwrap();
        let a = aliases(&format!("staff: :include:{}\n", list.display()));
        let r = resolve(&cfg(None), &a, "staff@host.test", &users).unwrap();
        assert_eq!(r.mailboxes, ["bob"]);
        assert_eq!(r.forward, ["carol@example.org", "dave@example.org"]);
    }
}
