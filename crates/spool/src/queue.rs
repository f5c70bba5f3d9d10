//! Reading and changing the queue: list nodes, and delete, hold, release or retry them.
//!
//! Every change takes the node's `.NFSLock` first, exactly as a dequeuer does, so an
//! operator's `queue delete` never races a delivery (ours or 0.50's). Held nodes move to
//! `hold/<tier>/`, outside the tiers, so that no dequeuer (0.50 included) sends them.
//! Names that do not parse are reported, never fatal.

use std::fs;
use std::ops::ControlFlow;
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::lock::{self, NodeLock};
use crate::name::{NodeName, Parsed};
use crate::storage::os;
use crate::{Result, Spool, SpoolError, now};

/// A node found in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// Tier it is in (for a held node: the tier it returns to).
    pub tier: usize,
    /// Its parsed name.
    pub name: NodeName,
    /// The file name as found on disk (differs from the encoded name for rescued names).
    pub file_name: String,
    /// Full path.
    pub path: PathBuf,
    /// Recovered from a 0.50 fallback name with a raw `-`.
    pub rescued: bool,
    /// Held: never delivered until released.
    pub held: bool,
    /// Inode number as the directory listed it (nodes of one mailspool message share
    /// it). Only a hint: [`Spool::open_node`] says what the name points to now.
    pub ino: u64,
}

/// A node opened for reading: the file, and what identifies the message it holds.
#[derive(Debug)]
pub struct NodeFile {
    /// Open for reading (never through a symlink).
    pub file: fs::File,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file: nodes with the same (dev, ino) are one stored message.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Number of names the file has.
    pub nlink: u64,
}

impl NodeFile {
    /// The identity of the stored message: (device, inode).
    pub fn identity(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// What a visit finds in a tier directory.
#[derive(Debug)]
pub enum Found {
    /// A node.
    Node(NodeEntry),
    /// A file whose name does not parse.
    Unparsable(PathBuf),
}

/// The result of scanning the spool.
#[derive(Debug, Default)]
pub struct Scan {
    /// Nodes, by tier, then by name.
    pub nodes: Vec<NodeEntry>,
    /// Files in tier directories whose names do not parse (callers report them).
    pub unparsable: Vec<PathBuf>,
}

impl NodeEntry {
    /// Recipient domain, lower-cased.
    pub fn domain(&self) -> String {
        self.name
            .envelope_to()
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

impl Spool {
    /// Unix time at which a node becomes due.
    pub fn due_at(&self, entry: &NodeEntry) -> u64 {
        entry
            .name
            .time
            .saturating_add(self.config.period(entry.tier))
    }

    /// All nodes: every tier, then the held ones.
    pub fn scan(&self) -> Result<Scan> {
        let mut scan = Scan::default();
        for tier in 0..self.config.tiers() {
            self.scan_dir(&self.tier_dir(tier), tier, false, &mut scan)?;
        }
        for tier in 0..self.config.tiers() {
            self.scan_dir(
                &self.dir.join("hold").join(tier.to_string()),
                tier,
                true,
                &mut scan,
            )?;
        }
        Ok(scan)
    }

    /// Visit every node, as [`Spool::scan`] orders directories (every tier, then the held
    /// ones) but in directory order within each, without collecting them: a listing of a
    /// million nodes keeps only what it needs of each.
    pub fn visit_all(&self, f: &mut dyn FnMut(Found) -> ControlFlow<()>) -> Result<()> {
        for tier in 0..self.config.tiers() {
            self.visit_dir(&self.tier_dir(tier), tier, false, f)?;
        }
        for tier in 0..self.config.tiers() {
            let dir = self.dir.join("hold").join(tier.to_string());
            self.visit_dir(&dir, tier, true, f)?;
        }
        Ok(())
    }

    /// The nodes of one tier (not held ones).
    pub fn scan_tier(&self, tier: usize) -> Result<Scan> {
        let mut scan = Scan::default();
        self.scan_dir(&self.tier_dir(tier), tier, false, &mut scan)?;
        Ok(scan)
    }

    fn scan_dir(&self, dir: &Path, tier: usize, held: bool, scan: &mut Scan) -> Result<()> {
        let start = scan.nodes.len();
        self.visit_dir(dir, tier, held, &mut |found| {
            match found {
                Found::Node(n) => scan.nodes.push(n),
                Found::Unparsable(p) => scan.unparsable.push(p),
            }
            ControlFlow::Continue(())
        })?;
        scan.nodes[start..]
            .sort_by(|a, b| (a.name.time, &a.file_name).cmp(&(b.name.time, &b.file_name)));
        Ok(())
    }

    /// Visit the nodes of one tier in directory order, without collecting them (a queue
    /// of 200,000 need not be held in memory to take the first 10,000); `f` may stop early.
    pub fn visit_tier(
        &self,
        tier: usize,
        f: &mut dyn FnMut(Found) -> ControlFlow<()>,
    ) -> Result<()> {
        self.visit_dir(&self.tier_dir(tier), tier, false, f)
    }

    pub(crate) fn visit_dir(
        &self,
        dir: &Path,
        tier: usize,
        held: bool,
        f: &mut dyn FnMut(Found) -> ControlFlow<()>,
    ) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            // 0.50 spools may lack tiers; no hold/ is normal.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SpoolError::io("read", dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io("read", dir, e))?;
            let Ok(file_name) = entry.file_name().into_string() else {
                tracing::debug!(path = %entry.path().display(), "node name is not UTF-8; skipped");
                if f(Found::Unparsable(entry.path())).is_break() {
                    break;
                }
                continue;
            };
            let (name, rescued) = match NodeName::parse(&file_name) {
                Parsed::Node(n) => (n, false),
                Parsed::Rescued(n) => (n, true),
                Parsed::NotANode => continue,
                Parsed::Unparsable => {
                    tracing::debug!(path = %entry.path().display(), "file name is not a node name; skipped");
                    if f(Found::Unparsable(entry.path())).is_break() {
                        break;
                    }
                    continue;
                }
            };
            let node = NodeEntry {
                tier,
                name,
                path: entry.path(),
                file_name,
                rescued,
                held,
                ino: entry.ino(),
            };
            if f(Found::Node(node)).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Split nodes into the stored messages they belong to: one inode is one message;
    /// separate files (0.50 writes one per recipient) are one message only when their
    /// id, sender and bytes are all the same. Order of first appearance is kept.
    pub fn group_messages(&self, nodes: Vec<NodeEntry>) -> Vec<Vec<NodeEntry>> {
        let mut groups: Vec<Vec<NodeEntry>> = Vec::new();
        let mut by_inode: std::collections::HashMap<u64, usize> = Default::default();
        for n in nodes {
            match by_inode.get(&n.ino) {
                Some(&i) => groups[i].push(n),
                None => {
                    by_inode.insert(n.ino, groups.len());
                    groups.push(vec![n]);
                }
            }
        }
        let mut merged: Vec<Vec<NodeEntry>> = Vec::new();
        'next: for g in groups {
            for m in merged.iter_mut() {
                let (a, b) = (&m[0], &g[0]);
                if a.name.id == b.name.id && a.name.from == b.name.from && self.same_bytes(a, b) {
                    m.extend(g);
                    continue 'next;
                }
            }
            merged.push(g);
        }
        merged
    }

    /// Whether two nodes hold the same bytes (read through [`Spool::open_node`]).
    fn same_bytes(&self, a: &NodeEntry, b: &NodeEntry) -> bool {
        use std::io::Read;
        let (Ok(fa), Ok(fb)) = (self.open_node(a), self.open_node(b)) else {
            return false;
        };
        if fa.size != fb.size {
            return false;
        }
        let (mut ra, mut rb) = (fa.file, fb.file);
        let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        loop {
            let Ok(n) = ra.read(&mut ba) else {
                return false;
            };
            if n == 0 {
                return rb.read(&mut bb[..1]).is_ok_and(|m| m == 0);
            }
            if rb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
                return false;
            }
        }
    }

    /// Nodes whose message id, or whose file name, is `key`.
    pub fn find(&self, key: &str) -> Result<Vec<NodeEntry>> {
        // Walked, not scanned: a million-node spool is never held to find a few.
        let mut found = Vec::new();
        self.visit_all(&mut |f| {
            if let Found::Node(n) = f
                && (n.name.id == key || n.file_name == key)
            {
                found.push(n);
            }
            ControlFlow::Continue(())
        })?;
        found.sort_by(|a, b| {
            (a.held, a.tier, a.name.time, &a.file_name).cmp(&(
                b.held,
                b.tier,
                b.name.time,
                &b.file_name,
            ))
        });
        if found.is_empty() {
            return Err(SpoolError::NotFound(key.to_owned()));
        }
        Ok(found)
    }

    /// Open a node to read it. Everything in a spool is untrusted: the name is opened
    /// without following a symlink and without blocking on a FIFO, and only a regular
    /// file is a node, owned by the spool's owner or by us, or standing in a tier only
    /// its owner can write to; anything else is [`SpoolError::Untrusted`] (see
    /// [`Spool::quarantine`]).
    pub fn open_node(&self, entry: &NodeEntry) -> Result<NodeFile> {
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(&entry.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(entry.file_name.clone()));
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(self.untrusted(entry, "a symbolic link"));
            }
            Err(e) => return Err(SpoolError::io("open", &entry.path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| SpoolError::io("stat", &entry.path, e))?;
        if !meta.file_type().is_file() {
            return Err(self.untrusted(entry, "not a regular file"));
        }
        if meta.uid() != self.owner
            && meta.uid() != rustix::process::geteuid().as_raw()
            && self.group != Some(meta.gid())
            && !Self::only_owner_writes(&entry.path)
        {
            return Err(self.untrusted(
                entry,
                &format!(
                    "owned by uid {}, not the spool's owner (uid {}), in a directory others can write",
                    meta.uid(),
                    self.owner
                ),
            ));
        }
        // O_NONBLOCK stays: it changes nothing for a regular file (Linux ignores it).
        Ok(NodeFile {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            nlink: meta.nlink(),
            file,
        })
    }

    /// Whether only the directory's owner (and root) can put names in the directory
    /// holding `path`: then whoever owns a file there, its owner or root placed it (a 0.50
    /// dequeuer running as another user, say), and it is as trustworthy as the spool.
    fn only_owner_writes(path: &Path) -> bool {
        path.parent()
            .and_then(|d| fs::metadata(d).ok())
            .is_some_and(|m| m.mode() & 0o022 == 0)
    }

    fn untrusted(&self, entry: &NodeEntry, reason: &str) -> SpoolError {
        SpoolError::Untrusted {
            path: entry.path.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Move a tier entry that is not a node we may read (a symlink, a FIFO, another
    /// user's file) to `corrupt/`, out of every dequeuer's sight. The entry itself is
    /// moved, never what it points to; nothing is deleted.
    pub fn quarantine(&self, entry: &NodeEntry) -> Result<PathBuf> {
        let dir = self.dir.join("corrupt");
        os::ensure_dir(&dir).map_err(|e| SpoolError::io("create", &dir, e))?;
        for n in 0..100u32 {
            let target = dir.join(format!("{}.{}.{n}", entry.tier, entry.file_name));
            match os::rename_noreplace(&entry.path, &target) {
                Ok(()) => return Ok(target),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SpoolError::io("move to corrupt/", &entry.path, e)),
            }
        }
        Err(SpoolError::io(
            "move to corrupt/",
            &entry.path,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ))
    }

    /// Lock a node for a change, or say who holds it.
    pub fn lock_node(&self, entry: &NodeEntry) -> Result<NodeLock> {
        let policy = self.config.lock_policy();
        match NodeLock::try_lock(&entry.path, &policy) {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(SpoolError::Locked {
                node: entry.file_name.clone(),
                holder: lock::holder(&entry.path, &policy)
                    .map_or_else(|| "another process".to_owned(), |h| h.to_string()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(SpoolError::NotFound(entry.file_name.clone()))
            }
            Err(e) => Err(SpoolError::io("lock", &entry.path, e)),
        }
    }

    /// Delete a node (and its side data), under its lock.
    pub fn delete(&self, entry: &NodeEntry) -> Result<()> {
        let _lock = self.lock_node(entry)?;
        self.delete_locked(entry)
    }

    /// Delete a node whose lock the caller holds.
    pub fn delete_locked(&self, entry: &NodeEntry) -> Result<()> {
        match fs::remove_file(&entry.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(entry.file_name.clone()));
            }
            Err(e) => return Err(SpoolError::io("remove", &entry.path, e)),
        }
        self.remove_side_data(&entry.name);
        Ok(())
    }

    /// Hold a node: move it out of its tier so that nothing delivers it.
    pub fn hold(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        if entry.held {
            return Ok(entry.clone());
        }
        let dir = self.dir.join("hold").join(entry.tier.to_string());
        os::ensure_dir(&self.dir.join("hold"))
            .and_then(|()| os::ensure_dir(&dir))
            .map_err(|e| SpoolError::io("create", &dir, e))?;
        self.move_node(entry, &dir, entry.name.clone(), true)
    }

    /// Release a held node back into its tier, with its time unchanged.
    pub fn release(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        if !entry.held {
            return Ok(entry.clone());
        }
        self.move_node(entry, &self.tier_dir(entry.tier), entry.name.clone(), false)
    }

    /// Make a node due now, in its tier (a held node stays held, but due).
    pub fn retry_now(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        let time = now().saturating_sub(self.config.period(entry.tier));
        let dir = entry.path.parent().unwrap_or(self.dir()).to_path_buf();
        self.move_node(entry, &dir, entry.name.with_time(time), entry.held)
    }

    /// Move a node to `tier` with a fresh time (a delivery fallback).
    pub fn move_to_tier_locked(&self, entry: &NodeEntry, tier: usize) -> Result<NodeEntry> {
        let dir = self.tier_dir(tier);
        os::ensure_dir(&dir).map_err(|e| SpoolError::io("create", &dir, e))?;
        let mut moved = self.rename_node(entry, &dir, entry.name.with_time(now()), false)?;
        moved.tier = tier;
        Ok(moved)
    }

    fn move_node(
        &self,
        entry: &NodeEntry,
        dir: &Path,
        name: NodeName,
        held: bool,
    ) -> Result<NodeEntry> {
        let _lock = self.lock_node(entry)?;
        self.rename_node(entry, dir, name, held)
    }

    /// Rename a node, written with its encoded name (which also repairs a rescued
    /// 0.50 name). Never replaces an existing node: on a clash the time is moved on by a
    /// second, a few times.
    fn rename_node(
        &self,
        entry: &NodeEntry,
        dir: &Path,
        mut name: NodeName,
        held: bool,
    ) -> Result<NodeEntry> {
        for _ in 0..10 {
            let file_name = name.file_name();
            let path = dir.join(&file_name);
            if path == entry.path {
                return Ok(entry.clone());
            }
            match self.storage.rename_noreplace(&entry.path, &path) {
                Ok(()) => {
                    return Ok(NodeEntry {
                        tier: entry.tier,
                        name,
                        file_name,
                        path,
                        rescued: false,
                        held,
                        ino: entry.ino,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    name.time += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SpoolError::NotFound(entry.file_name.clone()));
                }
                Err(e) => return Err(SpoolError::io("rename", &entry.path, e)),
            }
        }
        Err(SpoolError::io(
            "rename",
            &entry.path,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ))
    }
}
