//! Reading and changing the queue: list nodes, and delete, hold, release or retry them.
//!
//! Every change takes the node's `.NFSLock` first, exactly as a dequeuer does, so an
//! operator's `queue delete` never races a delivery (ours or 0.50's). Held nodes move to
//! `hold/<tier>/`, outside the tiers, so that no dequeuer (0.50 included) sends them.
//! Names that do not parse are reported, never fatal.

use std::fs;
use std::ops::ControlFlow;
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
            .to
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

    fn visit_dir(
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
            };
            if f(Found::Node(node)).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Nodes whose message id, or whose file name, is `key`.
    pub fn find(&self, key: &str) -> Result<Vec<NodeEntry>> {
        let found: Vec<NodeEntry> = self
            .scan()?
            .nodes
            .into_iter()
            .filter(|n| n.name.id == key || n.file_name == key)
            .collect();
        if found.is_empty() {
            return Err(SpoolError::NotFound(key.to_owned()));
        }
        Ok(found)
    }

    /// Lock a node for a change, or say who holds it.
    pub fn lock_node(&self, entry: &NodeEntry) -> Result<NodeLock> {
        match NodeLock::try_lock(&entry.path, self.config.stale_lock_age()) {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(SpoolError::Locked {
                node: entry.file_name.clone(),
                holder: lock::holder(&entry.path, self.config.stale_lock_age())
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
