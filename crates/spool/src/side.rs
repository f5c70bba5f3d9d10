//! Side data: what happened to a node, kept outside the tier directories so that
//! Mail::Spool 0.50 never sees it and a spool without it is still valid.
//!
//! `meta/<id>-<encoded to>-<encoded from>` holds one JSON object per line, one per
//! delivery attempt. The key is the node's name without its time (so it survives
//! fallbacks and retries), sender included: 0.50 spools reuse ids across messages.
//! Side data of a node that another dequeuer (0.50) delivered is pruned by the daemon
//! and by `fsck --repair`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::name::{NodeName, encode};
use crate::storage::os;
use crate::{Result, Spool, SpoolError};

/// One delivery attempt of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix time of the attempt.
    pub time: u64,
    /// Host tried (name or address), empty when none was reached.
    pub host: String,
    /// The reply or error, e.g. `451 4.3.0 try later`.
    pub reply: String,
    /// Whether this attempt delivered the node.
    #[serde(default)]
    pub delivered: bool,
    /// The stored message it was made for (the node file's inode): a 0.50 spool reuses
    /// ids, so side data another dequeuer orphaned (it delivered that node) must not
    /// show as the history of a new node of the same name. None in older side data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

/// The last failure among `attempts` made for the stored message `ino` (or recorded
/// without one), when the last such attempt failed: what listings show as a node's
/// last error.
pub fn last_failure(attempts: Vec<Attempt>, ino: u64) -> Option<String> {
    attempts_of(attempts, ino)
        .pop()
        .filter(|a| !a.delivered)
        .map(|a| a.reply)
}

/// The attempts made for the stored message `ino` (or recorded without one).
pub fn attempts_of(attempts: Vec<Attempt>, ino: u64) -> Vec<Attempt> {
    attempts
        .into_iter()
        .filter(|a| a.node.is_none_or(|n| n == ino))
        .collect()
}

/// Longest side-data file we read: attempts are short, and a node has at most a few
/// hundred of them in four days.
const MAX_SIDE_BYTES: u64 = 1 << 20;

/// Longest DKIM signature field we read back (an RSA-4096 one is under 1.5 KiB).
const MAX_SIGNATURE: u64 = 16 * 1024;

/// One whole `DKIM-Signature` field: its name, folded lines only, a final CRLF, and
/// nothing that could end the header block or add another field.
fn is_signature_field(data: &[u8]) -> bool {
    let Some(text) = data.strip_suffix(b"\r\n") else {
        return false;
    };
    let mut lines = text.split(|&b| b == b'\n');
    let clean = |line: &[u8]| !line.iter().any(|&b| b == b'\r' || b == 0);
    let first = lines.next().unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    data.len() as u64 <= MAX_SIGNATURE
        && first
            .get(..15)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"DKIM-Signature:"))
        && clean(first)
        && text.split(|&b| b == b'\n').count()
            == text.windows(2).filter(|w| w == b"\r\n").count() + 1
        && lines.all(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            clean(line) && matches!(line.first(), Some(b' ' | b'\t'))
        })
}

/// How long ago a directory entry was last written.
fn entry_age(e: &std::fs::DirEntry) -> Option<std::time::Duration> {
    let modified = e.metadata().and_then(|m| m.modified()).ok()?;
    std::time::SystemTime::now().duration_since(modified).ok()
}

/// The side-data file name of a node: its name without the time.
pub fn side_key(node: &NodeName) -> String {
    format!(
        "{}-{}-{}",
        node.id,
        encode(node.to.as_bytes()),
        encode(node.from.as_bytes())
    )
}

impl Spool {
    fn side_path(&self, node: &NodeName) -> PathBuf {
        self.dir.join("meta").join(side_key(node))
    }

    /// Remove side data whose node is gone from every tier and from hold/ (another
    /// dequeuer delivered or removed it). Returns how many files went.
    pub fn prune_side_data(&self) -> Result<usize> {
        if !self.has_side_data() {
            return Ok(0);
        }
        // The candidates are the old side files (usually few); the spool is then walked
        // once, striking each one whose node still exists. Memory follows the side data,
        // not the queue (a million nodes are walked, never held).
        let meta = self.dir.join("meta");
        let entries = std::fs::read_dir(&meta).map_err(|e| SpoolError::io("read", &meta, e))?;
        let mut old: std::collections::HashSet<String> = entries
            .flatten()
            // Young files may belong to a node the walk misses while it moves (a
            // release, a fallback): only history written 10 minutes ago or more goes.
            .filter(|e| entry_age(e).is_some_and(|a| a.as_secs() >= 600))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        self.visit_all(&mut |found| {
            if let crate::Found::Node(n) = found {
                old.remove(&side_key(&n.name));
                if old.is_empty() {
                    return std::ops::ControlFlow::Break(());
                }
            }
            std::ops::ControlFlow::Continue(())
        })?;
        let removed = old
            .iter()
            .filter(|name| std::fs::remove_file(meta.join(name)).is_ok())
            .count();
        Ok(removed)
    }

    /// Take the one "delayed" report of a message (its id and sender): true the first
    /// time, for whoever creates `delayed/<id>-<sender>` (O_EXCL, so one process and one
    /// host wins); false ever after.
    pub fn claim_delay_warning(&self, node: &NodeName) -> Result<bool> {
        let dir = self.dir.join("delayed");
        os::ensure_dir(&dir).map_err(|e| SpoolError::io("create", &dir, e))?;
        let path = self.delay_marker(node);
        match os::create_new(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(SpoolError::io("create", path, e)),
        }
    }

    /// Undo [`Spool::claim_delay_warning`] (the report could not be queued).
    pub fn release_delay_warning(&self, node: &NodeName) {
        let _ = std::fs::remove_file(self.delay_marker(node));
    }

    fn delay_marker(&self, node: &NodeName) -> PathBuf {
        self.dir
            .join("delayed")
            .join(format!("{}-{}", node.id, encode(node.from.as_bytes())))
    }

    /// Remove "delayed" markers older than `age`: by then their message has been
    /// delivered or bounced (a message lives the sum of the tier periods).
    pub fn prune_delay_warnings(&self, age: std::time::Duration) -> usize {
        self.prune_older(&self.dir.join("delayed"), age)
    }

    /// Remove the files of `dir` older than `age`; how many went.
    fn prune_older(&self, dir: &std::path::Path, age: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| entry_age(e).is_some_and(|a| a >= age))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// The DKIM signature kept for a stored message (its inode and id), if any: the
    /// `DKIM-Signature` field with its CRLF, as every delivery of the message sends it.
    /// A file that is not one whole field (a crash while writing it) counts as none.
    pub fn dkim_signature(&self, ino: u64, id: &str) -> Option<Vec<u8>> {
        let file = os::open_read(&self.dkim_path(ino, id)).ok()?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_SIGNATURE), &mut data)
            .ok()?;
        is_signature_field(&data).then_some(data)
    }

    /// Keep the first signature made for a message: O_EXCL, so when two deliveries (or
    /// two hosts) sign it at once, both send the one that was kept. Returns that one.
    pub fn keep_dkim_signature(&self, ino: u64, id: &str, field: &[u8]) -> Result<Vec<u8>> {
        use std::io::Write;
        let dir = self.dir.join("dkim");
        os::ensure_dir(&dir).map_err(|e| SpoolError::io("create", &dir, e))?;
        let path = self.dkim_path(ino, id);
        match os::create_new(&path) {
            Ok(mut f) => {
                if let Err(e) = f.write_all(field) {
                    // No half-written field left for later deliveries to find.
                    let _ = std::fs::remove_file(&path);
                    return Err(SpoolError::io("write", &path, e));
                }
                Ok(field.to_vec())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Being written by the winner this instant, or torn by a crash: ours
                // serves this delivery.
                Ok(self
                    .dkim_signature(ino, id)
                    .unwrap_or_else(|| field.to_vec()))
            }
            Err(e) => Err(SpoolError::io("create", path, e)),
        }
    }

    /// Forget a message's signature (its last node is gone).
    pub fn forget_dkim_signature(&self, ino: u64, id: &str) {
        let _ = std::fs::remove_file(self.dkim_path(ino, id));
    }

    /// Remove signatures older than `age` (their message was delivered, bounced or
    /// deleted by something that did not forget them).
    pub fn prune_dkim_signatures(&self, age: std::time::Duration) -> usize {
        self.prune_older(&self.dir.join("dkim"), age)
    }

    fn dkim_path(&self, ino: u64, id: &str) -> PathBuf {
        self.dir
            .join("dkim")
            .join(format!("{ino}-{}", encode(id.as_bytes())))
    }

    /// Append an attempt to a node's history.
    pub fn record_attempt(&self, node: &NodeName, attempt: &Attempt) -> Result<()> {
        let meta = self.dir.join("meta");
        os::ensure_dir(&meta).map_err(|e| SpoolError::io("create", &meta, e))?;
        let path = self.side_path(node);
        let mut line = serde_json::to_string(attempt).expect("attempt serializes");
        line.push('\n');
        os::append_line(&path, &line).map_err(|e| SpoolError::io("append to", path, e))
    }

    /// A node's attempts, oldest first; none when there is no side data.
    pub fn attempts(&self, node: &NodeName) -> Vec<Attempt> {
        let Ok(file) = os::open_read(&self.side_path(node)) else {
            return Vec::new();
        };
        BufReader::new(std::io::Read::take(file, MAX_SIDE_BYTES))
            .lines()
            .map_while(|l| l.ok())
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// The last failed attempt's reply, if the last attempt failed.
    pub fn last_error(&self, node: &NodeName) -> Option<String> {
        self.attempts(node)
            .pop()
            .filter(|a| !a.delivered)
            .map(|a| a.reply)
    }

    /// Forget a node's side data (after delivery or deletion).
    pub fn remove_side_data(&self, node: &NodeName) {
        let _ = std::fs::remove_file(self.side_path(node));
    }

    /// Whether any side data exists at all (saves a lookup per node in big listings).
    pub fn has_side_data(&self) -> bool {
        std::fs::read_dir(self.dir.join("meta")).is_ok_and(|mut d| d.next().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &[u8] = b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.org;\r\n\tb=abc=;\r\n";

    #[test]
    fn the_first_kept_signature_wins_and_torn_or_planted_files_are_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path(), crate::SpoolConfig::default()).unwrap();
        assert_eq!(spool.dkim_signature(7, "id1"), None);
        assert_eq!(spool.keep_dkim_signature(7, "id1", FIELD).unwrap(), FIELD);
        let other = b"DKIM-Signature: v=1; d=other;\r\n";
        assert_eq!(
            spool.keep_dkim_signature(7, "id1", other).unwrap(),
            FIELD,
            "the first one kept"
        );
        assert_eq!(spool.dkim_signature(7, "id1").as_deref(), Some(FIELD));
        assert_eq!(spool.dkim_signature(8, "id1"), None, "another inode");
        // A crash mid-write, or a field that would add headers: not sent.
        for bad in [
            &b"DKIM-Signature: v=1; d=x"[..],
            b"DKIM-Signature: v=1;\r\nBcc: a@b\r\n",
            b"DKIM-Signature: v=1;\n\tb=x\r\n",
            b"DKIM-Signature: v=1;\r\n\r\nbody\r\n",
            b"X-Other: 1\r\n",
            b"",
        ] {
            assert!(
                !is_signature_field(bad),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        std::fs::write(spool.dkim_path(9, "torn"), b"DKIM-Signature: v=1; d=").unwrap();
        assert_eq!(spool.dkim_signature(9, "torn"), None);
        assert_eq!(
            spool.keep_dkim_signature(9, "torn", FIELD).unwrap(),
            FIELD,
            "a torn file does not stop this delivery's own signature"
        );
        // A symlink planted in its place is never followed.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, FIELD).unwrap();
        std::os::unix::fs::symlink(&target, spool.dkim_path(10, "link")).unwrap();
        assert_eq!(spool.dkim_signature(10, "link"), None);
        spool.forget_dkim_signature(7, "id1");
        assert_eq!(spool.dkim_signature(7, "id1"), None);
        assert_eq!(spool.prune_dkim_signatures(std::time::Duration::ZERO), 2);
    }
}
