//! `fsck`: check a spool after a crash or a migration from Mail::Spool 0.50, and repair
//! what can be repaired without losing mail.
//!
//! Found: leftovers in `tmp/`, names that do not parse (and 0.50 raw-`-` names that can be
//! recovered), stale locks and lock temp files, empty or unreadable nodes, side data with
//! no node. Repair (only when asked): old stages removed (they were never acknowledged),
//! recoverable names rewritten encoded, stale locks removed, side data without a node
//! removed; anything that may be a message we cannot account for is moved to `corrupt/`,
//! never deleted (as Postfix does).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::lock::NodeLock;
use crate::name::{LOCK_SUFFIX, NodeName, Parsed, is_nfslock_temp};
use crate::side::side_key;
use crate::storage::os;
use crate::{Spool, now};

/// One thing fsck found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A stage in tmp/ that no live commit holds: a crash leftover.
    StaleStage(PathBuf),
    /// A stage in tmp/ that may be a commit under way: left alone.
    LiveStage(PathBuf),
    /// A tier file whose name does not parse.
    Unparsable(PathBuf),
    /// A 0.50 fallback name with a raw `-`, recoverable.
    Recoverable(PathBuf),
    /// A lock (or lock temp file) older than the stale age.
    StaleLock(PathBuf),
    /// A node of zero bytes, or one that cannot be read.
    BadNode(PathBuf),
    /// Side data for a node that does not exist (delivered by another dequeuer).
    OrphanSideData(PathBuf),
    /// A tier entry that is not a node mailspool reads (symlink, FIFO, another user's).
    Untrusted(PathBuf, String),
    /// A file in `corrupt/`: set aside, never delivered; for a person to look at.
    Quarantined(PathBuf),
}

impl Finding {
    /// What was found, for a person.
    pub fn describe(&self) -> String {
        match self {
            Finding::StaleStage(p) => format!("crash leftover in tmp/: {}", p.display()),
            Finding::LiveStage(p) => format!("commit under way (left alone): {}", p.display()),
            Finding::Unparsable(p) => format!("name does not parse: {}", p.display()),
            Finding::Recoverable(p) => format!(
                "Mail::Spool 0.50 name with a raw '-', recoverable: {}",
                p.display()
            ),
            Finding::StaleLock(p) => format!("stale lock: {}", p.display()),
            Finding::BadNode(p) => format!("empty or unreadable node: {}", p.display()),
            Finding::OrphanSideData(p) => format!(
                "side data of a node that is gone (pruned by --repair and by the daemon): {}",
                p.display()
            ),
            Finding::Untrusted(p, why) => format!("not a node ({why}): {}", p.display()),
            Finding::Quarantined(p) => format!(
                "in corrupt/, never delivered (look at it; requeue it with sendmail if it is mail, then remove it): {}",
                p.display()
            ),
        }
    }

    /// Whether `fsck` counts it as a problem (a commit under way is not, nor is the
    /// side data of a node another dequeuer delivered).
    pub fn is_problem(&self) -> bool {
        !matches!(self, Finding::LiveStage(_) | Finding::OrphanSideData(_))
    }
}

/// The outcome of one run.
#[derive(Debug, Default)]
pub struct Report {
    /// What was found.
    pub findings: Vec<Finding>,
    /// What was done about it (only with repair).
    pub actions: Vec<String>,
    /// Nodes looked at.
    pub nodes: usize,
    /// Files `--repair` moved to `corrupt/`: not repaired, set aside. What was mail in
    /// them is neither delivered nor bounced until a person requeues it.
    pub set_aside: usize,
}

fn age(path: &Path) -> Duration {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default()
}

impl Spool {
    /// The files in `corrupt/` (set aside by the daemon, the pickup or fsck), sorted.
    pub fn quarantined(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut out = match fs::read_dir(self.dir.join("corrupt")) {
            Ok(d) => d
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<Vec<_>>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        out.sort();
        Ok(out)
    }

    /// Check the spool; with `repair`, fix what was found (see the module comment).
    /// A spool (or a tier) that cannot be read is an error, never "no problems".
    pub fn fsck(&self, repair: bool) -> std::io::Result<Report> {
        let mut report = Report::default();
        let policy = self.config.lock_policy();
        let read_dir = |dir: &Path| match fs::read_dir(dir) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", dir.display()),
            )),
        };
        read_dir(&self.dir)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("spool directory {} does not exist", self.dir.display()),
            )
        })?;
        // corrupt/: nothing here is repaired, all of it is reported.
        for p in self.quarantined()? {
            report.findings.push(Finding::Quarantined(p));
        }
        // tmp/
        if let Some(entries) = read_dir(&self.dir.join("tmp"))? {
            for e in entries.flatten() {
                let p = e.path();
                if self.stage_abandoned(&p, age(&p)) {
                    report.findings.push(Finding::StaleStage(p));
                } else {
                    report.findings.push(Finding::LiveStage(p));
                }
            }
        }
        // Tiers and held nodes.
        let mut live: HashSet<String> = HashSet::new();
        let mut dirs: Vec<PathBuf> = (0..self.config.tiers()).map(|t| self.tier_dir(t)).collect();
        dirs.extend((0..self.config.tiers()).map(|t| self.dir.join("hold").join(t.to_string())));
        for dir in &dirs {
            let Some(entries) = read_dir(dir)? else {
                continue;
            };
            for e in entries {
                let e = e?;
                let p = e.path();
                let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                    report.findings.push(Finding::Unparsable(p));
                    continue;
                };
                if name.ends_with(LOCK_SUFFIX) || name.starts_with(".lk.") || is_nfslock_temp(&name)
                {
                    let stale = match name.strip_suffix(LOCK_SUFFIX) {
                        Some(_) => crate::lock::judge_lock(&p, &policy).is_none_or(|h| h.stale),
                        None => e
                            .metadata()
                            .is_ok_and(|m| crate::lock::is_sweepable(dir, &name, &m, &policy)),
                    };
                    if stale {
                        report.findings.push(Finding::StaleLock(p));
                    }
                    continue;
                }
                match NodeName::parse(&name) {
                    Parsed::NotANode => {}
                    Parsed::Unparsable => report.findings.push(Finding::Unparsable(p)),
                    Parsed::Rescued(n) => {
                        live.insert(side_key(&n));
                        report.findings.push(Finding::Recoverable(p));
                    }
                    Parsed::Node(n) => {
                        report.nodes += 1;
                        live.insert(side_key(&n));
                        let entry = crate::NodeEntry {
                            tier: 0,
                            name: n,
                            file_name: name,
                            path: p.clone(),
                            rescued: false,
                            held: false,
                            ino: 0,
                        };
                        match self.open_node(&entry) {
                            Ok(f) if f.size > 0 => {}
                            Ok(_) => report.findings.push(Finding::BadNode(p)),
                            Err(crate::SpoolError::Untrusted { reason, .. }) => {
                                report.findings.push(Finding::Untrusted(p, reason))
                            }
                            Err(crate::SpoolError::NotFound(_)) => {}
                            Err(_) => report.findings.push(Finding::BadNode(p)),
                        }
                    }
                }
            }
        }
        // Side data of nodes that are gone (another dequeuer delivered them): not a
        // problem, only pruned.
        if let Some(entries) = read_dir(&self.dir.join("meta"))? {
            for e in entries.flatten() {
                if !e.file_name().to_str().is_some_and(|n| live.contains(n)) {
                    report.findings.push(Finding::OrphanSideData(e.path()));
                }
            }
        }
        if repair {
            for f in report.findings.clone() {
                if let Some(action) = self.repair(&f)? {
                    if matches!(
                        f,
                        Finding::Unparsable(_) | Finding::BadNode(_) | Finding::Untrusted(..)
                    ) {
                        report.set_aside += 1;
                    }
                    report.actions.push(action);
                }
            }
        }
        Ok(report)
    }

    fn repair(&self, f: &Finding) -> std::io::Result<Option<String>> {
        Ok(match f {
            Finding::StaleStage(p) | Finding::StaleLock(p) | Finding::OrphanSideData(p) => {
                fs::remove_file(p)?;
                Some(format!("removed {}", p.display()))
            }
            Finding::LiveStage(_) | Finding::Quarantined(_) => None,
            Finding::Unparsable(p) | Finding::BadNode(p) | Finding::Untrusted(p, _) => {
                Some(self.to_corrupt(p)?)
            }
            Finding::Recoverable(p) => {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let Parsed::Rescued(n) = NodeName::parse(name) else {
                    return Ok(None);
                };
                let dir = p.parent().unwrap_or(&self.dir);
                let Ok(Some(_lock)) = NodeLock::try_lock(p, &self.config.lock_policy()) else {
                    return Ok(Some(format!("left {} (locked)", p.display())));
                };
                let mut target = n.clone();
                loop {
                    let to = dir.join(target.file_name());
                    match os::rename_noreplace(p, &to) {
                        Ok(()) => {
                            return Ok(Some(format!(
                                "renamed {} to {}",
                                p.display(),
                                to.display()
                            )));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => target.time += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
        })
    }

    /// Move a file we cannot account for to `corrupt/`, keeping it.
    fn to_corrupt(&self, p: &Path) -> std::io::Result<String> {
        let dir = self.dir.join("corrupt");
        os::ensure_dir(&dir)?;
        let base = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = dir.join(format!("{}-{base}", now()));
        os::rename_noreplace(p, &to)?;
        Ok(format!("moved {} to {}", p.display(), to.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpoolConfig;
    use std::io::Write;

    #[test]
    fn finds_and_repairs_without_losing_mail() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            legacy_lock_timeout: Duration::from_secs(3600),
            ..SpoolConfig::default()
        };
        let spool = Spool::create(dir.path(), cfg).unwrap();
        let id = spool.new_id();
        let mut s = spool.stage(&id).unwrap();
        s.write_all(b"Subject: ok\n\nbody\n").unwrap();
        let good = s
            .commit("a@x.org", &["b@y.org".into()])
            .unwrap()
            .nodes
            .remove(0);
        let old = SystemTime::now() - Duration::from_secs(7200);
        let aged = |p: &Path| {
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap()
        };
        let t0 = dir.path().join("0");
        fs::write(dir.path().join("tmp/old"), "x").unwrap();
        aged(&dir.path().join("tmp/old"));
        fs::write(dir.path().join("tmp/young"), "x").unwrap();
        fs::write(t0.join("garbage"), "keep me").unwrap();
        fs::write(
            t0.join("1700000000-abc-first-last@x.org-me@y.org"),
            "old mail",
        )
        .unwrap();
        fs::write(t0.join("1700000001-def-empty@x.org-"), "").unwrap();
        let lock = t0.join("1700000002-ghi-a@x.org-.NFSLock");
        fs::write(&lock, "host 1 1 1\n").unwrap();
        aged(&lock);
        // A planted symlink to a secret, and a FIFO that would hang a plain open().
        std::os::unix::fs::symlink("/etc/shadow", t0.join("1700000003-jkl-x@y.org-me@y.org"))
            .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t0.join("1700000004-mno-x@y.org-me@y.org"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // A File::NFSLock temp file left by a killed 0.50 dequeuer: a lock artefact.
        let nfstemp = t0.join("1700000002-ghi-a@x.org-.tmp.1234.4242.77");
        fs::write(&nfstemp, "host 4242 1 77\n").unwrap();
        aged(&nfstemp);
        fs::create_dir_all(dir.path().join("meta")).unwrap();
        fs::write(dir.path().join("meta/NOPE-b@y.org-a@x.org"), "{}").unwrap();
        aged(&dir.path().join("meta/NOPE-b@y.org-a@x.org"));
        let node = NodeName::parse(good.file_name().unwrap().to_str().unwrap());
        let Parsed::Node(node) = node else { panic!() };
        spool
            .record_attempt(
                &node,
                &crate::side::Attempt {
                    time: 1,
                    host: "h".into(),
                    reply: "451".into(),
                    delivered: false,
                    node: None,
                },
            )
            .unwrap();

        let r = spool.fsck(false).unwrap();
        let problems: Vec<_> = r.findings.iter().filter(|f| f.is_problem()).collect();
        // old stage, garbage, raw '-', empty node, stale lock, symlink, FIFO, NFSLock temp.
        assert_eq!(problems.len(), 8, "{:#?}", r.findings);
        assert!(
            r.findings.contains(&Finding::OrphanSideData(
                dir.path().join("meta/NOPE-b@y.org-a@x.org")
            )),
            "side data of a node another dequeuer delivered is seen, not a problem"
        );
        assert!(r.actions.is_empty(), "no repair without --repair");
        assert!(t0.join("garbage").exists());

        let r = spool.fsck(true).unwrap();
        assert_eq!(r.actions.len(), 9, "{:#?}", r.actions);
        let r = spool.fsck(false).unwrap();
        // Repaired, but what went to corrupt/ is still reported, for a person.
        assert!(
            r.findings
                .iter()
                .all(|f| !f.is_problem() || matches!(f, Finding::Quarantined(_))),
            "{:#?}",
            r.findings
        );
        assert_eq!(
            r.findings
                .iter()
                .filter(|f| matches!(f, Finding::Quarantined(_)))
                .count(),
            4
        );
        assert!(
            r.findings
                .iter()
                .any(|f| f.describe().contains("in corrupt/"))
        );
        // Nothing lost: the garbage and the empty node are in corrupt/, the 0.50 node renamed.
        let corrupt: Vec<String> = fs::read_dir(dir.path().join("corrupt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            corrupt.len(),
            4,
            "garbage, empty node, symlink, FIFO: {corrupt:?}"
        );
        assert!(
            !dir.path().join("meta/NOPE-b@y.org-a@x.org").exists(),
            "pruned"
        );
        assert!(
            t0.join("1700000000-abc-first%2Dlast@x.org-me@y.org")
                .exists()
        );
        assert!(
            good.exists() && spool.last_error(&node).is_some(),
            "good node and its side data kept"
        );
        assert!(
            dir.path().join("tmp/young").exists(),
            "a live stage is left alone"
        );
    }

    #[test]
    fn a_spool_that_cannot_be_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path().join("s"), SpoolConfig::default()).unwrap();
        fs::remove_dir_all(dir.path().join("s")).unwrap();
        let e = spool.fsck(false).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // A tier that is a file, not a directory, cannot be read: loud, not "0 problems".
        fs::create_dir(dir.path().join("s")).unwrap();
        fs::write(dir.path().join("s/0"), "").unwrap();
        let e = spool.fsck(false).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
