//! The back-end seam: what the intake paths, the delivery engine and the queue admin
//! need from a spool, whatever stores it. The 0.50 file spool ([`Spool`]) is one
//! implementation; the PostgreSQL spool (`mailspool-pg`) is the other. Nothing above
//! this trait knows which one it has.
//!
//! The currency is [`NodeEntry`]: one recipient of one stored message. Its `path` is
//! the back end's own key for the node (a file path here, an opaque row key in a
//! database) and `ino` says which stored message it belongs to; callers only hand
//! entries back. A [`NodeLock`] is a file lock here and a row lease in a database.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use mailspool_events::{Event, Query, Suppression};

use crate::events::EventPage;
use crate::side::Attempt;
use crate::usage::DayUsage;
use crate::{
    Committed, Found, NodeEntry, NodeFile, NodeLock, NodeName, Result, Spool, SpoolConfig, Stage,
};

/// A message being written before its commit. Dropping it without committing leaves
/// nothing behind.
pub trait Staged: Write + Send + std::fmt::Debug {
    /// The message id its nodes will carry.
    fn id(&self) -> &str;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Make the message durable, one node per recipient in tier 0; only after this
    /// returns `Ok` may anyone be told the message is accepted.
    fn commit(self: Box<Self>, from: &str, to: &[String]) -> Result<Committed>;
    /// Commit, and remove `replaced` (nodes this process holds locked: those a bounce
    /// reports) in the same atomic step where the back end has one, so a crash between
    /// the two can neither lose the notice nor send it twice. Returns whether they were
    /// removed; when not (the file spool: a rename cannot be joined to an unlink), the
    /// caller removes them after, and a crash between the two duplicates the notice.
    fn commit_replacing(
        self: Box<Self>,
        from: &str,
        to: &[String],
        replaced: &[NodeEntry],
    ) -> Result<(Committed, bool)> {
        let _ = replaced;
        Ok((self.commit(from, to)?, false))
    }
    /// What was written, for a stage that only holds it in memory (a report that came
    /// back to the return path: read, never queued); none for a spool's stage.
    fn into_bytes(self: Box<Self>) -> Option<Vec<u8>> {
        None
    }
    /// The file spool's stage, for commits batched across messages; a back end that
    /// does not batch returns itself.
    fn into_file_stage(self: Box<Self>) -> std::result::Result<Stage<Arc<Spool>>, Box<dyn Staged>>;
}

/// A node as a listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The node.
    pub node: NodeEntry,
    /// Its message's size in bytes.
    pub size: u64,
    /// Its last failure, if any.
    pub last_error: Option<String>,
}

/// Which nodes a claim takes.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    /// Those whose tier wait is over.
    Due,
    /// All, due or not (`queue run --all`).
    All,
    /// These, due or not (`send --now`: the nodes it just committed), by their keys.
    Nodes(&'a std::collections::HashSet<std::path::PathBuf>),
}

/// Where a node goes when it is moved in by [`Store::import`] (a migration).
#[derive(Debug, Clone)]
pub struct Placement {
    /// Its tier.
    pub tier: usize,
    /// When it entered that tier (unix seconds).
    pub time: u64,
    /// Held.
    pub held: bool,
    /// The recipient.
    pub to: String,
}

/// What taking mail in needs of a spool: ids, the envelope check, a stage to write to,
/// the directory whose free space the reserve is kept on. The SMTP listener takes
/// mail into any of these: a [`Store`], or (`sendmail -bs` run by a user who does not
/// own the spool) the setgid drop.
pub trait Intake: Send + Sync {
    /// A local directory for this host's caches (MTA-STS policies), if any.
    fn cache_dir(&self) -> Option<&Path> {
        None
    }
    /// A fresh message id, unique across processes and hosts.
    fn new_id(&self) -> String;
    /// Refuse, before any byte is read, an envelope whose nodes could not be stored.
    fn check_envelope(&self, id: &str, from: &str, to: &[String]) -> Result<()>;
    /// Start writing message `id`.
    fn stage(self: Arc<Self>, id: &str) -> Result<Box<dyn Staged>>;
    /// The suppression entry that keeps mail from `from` to `to`, if one does (none
    /// where the list cannot be read: the setgid drop; the pickup checks again).
    fn suppressed(&self, from: &str, to: &str) -> Option<Suppression> {
        let _ = (from, to);
        None
    }
    /// Store events in the history; with `durable`, return only once they would
    /// survive a crash. A back end that keeps none (the drop) does nothing.
    fn record_events(&self, events: &[Event], durable: bool) -> Result<()> {
        let _ = (events, durable);
        Ok(())
    }
    /// One page of the history (the cursor "" is its beginning); an empty one where
    /// the history cannot be read (the drop).
    fn read_events(&self, q: &Query) -> Result<EventPage> {
        let _ = q;
        Ok(EventPage::default())
    }
    /// Add or replace a suppression entry (refused where the list cannot be written).
    fn suppress(&self, entry: &Suppression) -> Result<()> {
        let _ = entry;
        Err(crate::SpoolError::Config(
            "this intake keeps no suppression list".into(),
        ))
    }
}

/// Record events in `store`'s history and write each to the log as a JSON line
/// (target `mailspool::event`); a failure to store them is logged, and returned.
pub fn emit(store: &(impl Intake + ?Sized), events: &[Event], durable: bool) -> Result<()> {
    for e in events {
        // JSON escapes every control character: a line a sender cannot forge.
        tracing::info!(target: "mailspool::event", event = %e.to_line().trim_end(), "{}", e.kind);
    }
    let r = store.record_events(events, durable);
    if let Err(err) = &r {
        tracing::error!(error = %err, events = events.len(), "cannot store events in the history");
    }
    r
}

/// A spool back end. Every method is synchronous: callers on an async runtime treat it
/// as they treat file I/O (quick, bounded work per call).
pub trait Store: Intake + std::fmt::Debug {
    /// The settings in force (tiers, periods, limits).
    fn config(&self) -> &SpoolConfig;
    /// Where it is, for logs and `doctor` (a directory, or a database URL without its
    /// password).
    fn location(&self) -> String;
    /// The file spool, when this is one (fsck, the drop directory, `usage/raw`).
    fn as_files(&self) -> Option<&Spool> {
        None
    }

    // --- intake ---

    /// Whether a queued node carries message id `id`.
    fn id_in_use(&self, id: &str) -> Result<bool>;
    /// Move a stored message in from another spool (a migration): `file` holds its
    /// bytes; each placement keeps its tier, time and hold. `origin` names the source
    /// node of each placement, so that a resumed migration never moves one twice: a
    /// placement whose origin is already here is skipped. Returns how many were added.
    fn import(
        &self,
        id: &str,
        from: &str,
        file: &std::fs::File,
        placements: &[(Placement, String)],
    ) -> Result<usize>;

    // --- reading the queue ---

    /// Unix time at which a node becomes due.
    fn due_at(&self, entry: &NodeEntry) -> u64 {
        entry
            .name
            .time
            .saturating_add(self.config().period(entry.tier))
    }
    /// Visit the nodes of one tier (not held ones).
    fn visit_tier(&self, tier: usize, f: &mut dyn FnMut(Found) -> ControlFlow<()>) -> Result<()>;
    /// Visit every node: every tier, then the held ones.
    fn visit_all(&self, f: &mut dyn FnMut(Found) -> ControlFlow<()>) -> Result<()>;
    /// Every node with its size and last failure, every tier then the held ones (a
    /// listing).
    fn visit_listing(&self, f: &mut dyn FnMut(Listed) -> ControlFlow<()>) -> Result<()>;
    /// Nodes whose message id, or whose key (`file_name`), is `key`.
    fn find(&self, key: &str) -> Result<Vec<NodeEntry>>;
    /// Up to `limit` nodes that `keep` accepts, from `start`, looking at no more than
    /// `max_scan`; the page says where the next one starts.
    fn page(
        &self,
        start: crate::Cursor,
        limit: usize,
        max_scan: usize,
        keep: &mut dyn FnMut(&NodeEntry) -> bool,
    ) -> Result<crate::Page>;
    /// A node's size in bytes (its message's), and who works on it now, if anyone.
    fn node_state(&self, entry: &NodeEntry) -> (Option<u64>, Option<String>);
    /// Whether attempts are recorded (a file spool written by 0.50 alone has none).
    fn has_side_data(&self) -> bool {
        true
    }
    /// Group nodes into the stored messages they are.
    fn group_messages(&self, nodes: Vec<NodeEntry>) -> Vec<Vec<NodeEntry>>;
    /// The delivery attempts recorded for a node.
    fn attempts(&self, node: &NodeName) -> Vec<Attempt>;
    /// The last recorded failure of a node.
    fn last_error(&self, node: &NodeName) -> Option<String> {
        self.attempts(node)
            .into_iter()
            .rev()
            .find(|a| !a.delivered)
            .map(|a| a.reply)
    }
    /// Messages and bytes spooled and sent per day, for the last `days` days.
    fn usage(&self, days: u64) -> Result<BTreeMap<u64, DayUsage>>;

    // --- delivery ---

    /// Claim up to `limit` due nodes of these tiers for this process at once (a
    /// database's `FOR UPDATE SKIP LOCKED` with a lease). `None`: this back end has no
    /// claims; the engine scans with [`Store::visit_tier`] and locks node by node.
    fn claim(
        &self,
        _tiers: &[usize],
        _limit: usize,
        _wanted: Wanted<'_>,
    ) -> Option<Result<Vec<NodeEntry>>> {
        None
    }
    /// Nodes this process claimed that cannot go before `until` (unix seconds: their
    /// destination cools after throttling us): a back end with claims makes them due
    /// then and gives them back, so no host takes them again meanwhile. The file spool
    /// has nothing to do (its scans are the daemon's ticks).
    fn postpone(&self, _keys: &[std::path::PathBuf], _until: u64) {}
    /// Call `wake` whenever another process (on any host) queues mail, if this back end
    /// can tell (a database's LISTEN/NOTIFY); false when it cannot (the file spool's
    /// daemon watches tier 0 with inotify instead).
    fn watch(&self, _wake: Arc<dyn Fn() + Send + Sync>) -> bool {
        false
    }
    /// Give back claims of nodes this process did not settle (left for later); nodes
    /// settled meanwhile are not touched. Nodes are named by their keys (`path`).
    fn release_claims(&self, _keys: &[std::path::PathBuf]) {}
    /// Lock a node for a change, or say who holds it.
    fn lock_node(&self, entry: &NodeEntry) -> Result<NodeLock>;
    /// Open what a node holds, for reading.
    fn open_node(&self, entry: &NodeEntry) -> Result<NodeFile>;
    /// Move an entry that is not a node we may read out of every dequeuer's sight;
    /// says where.
    fn quarantine(&self, entry: &NodeEntry) -> Result<String>;
    /// Delete a node whose lock the caller holds (delivered, or bounced).
    fn delete_locked(&self, entry: &NodeEntry) -> Result<()>;
    /// Move a locked node to `tier` with a fresh time (a delivery fallback).
    fn move_to_tier_locked(&self, entry: &NodeEntry, tier: usize) -> Result<NodeEntry>;
    /// Record one delivery attempt of a node.
    fn record_attempt(&self, node: &NodeName, attempt: &Attempt) -> Result<()>;
    /// Count `nodes` nodes of `bytes` bytes as `kind` ("Spool" or "Sent").
    fn log_usage_nodes(&self, bytes: u64, kind: &str, nodes: usize);
    /// Write out what is counted but not yet stored (a database sums deliveries and
    /// writes them once a second); the daemon calls it as it stops.
    fn flush(&self) {}
    /// The DKIM signature kept for a message (see the file spool's `dkim/`).
    fn dkim_signature(&self, ino: u64, id: &str) -> Option<Vec<u8>>;
    /// Keep a message's DKIM signature; returns the one kept (an earlier one wins).
    fn keep_dkim_signature(&self, ino: u64, id: &str, field: &[u8]) -> Result<Vec<u8>>;
    /// Forget a message's DKIM signature (its last node is gone).
    fn forget_dkim_signature(&self, ino: u64, id: &str);
    /// Take the right to send a node's one delay warning (false: already sent).
    fn claim_delay_warning(&self, node: &NodeName) -> Result<bool>;
    /// Give that right back (the warning could not be queued).
    fn release_delay_warning(&self, node: &NodeName);
    /// Every suppression entry (expired ones too, until removed).
    fn suppressions(&self) -> Result<Vec<Suppression>>;
    /// Remove the entry for `address` in scope `domain` ("" global); says whether
    /// there was one.
    fn unsuppress(&self, address: &str, domain: &str) -> Result<bool>;
    /// Where the reader `name` of the history (a webhook) is, if it saved a place.
    fn load_cursor(&self, name: &str) -> Option<String>;
    /// Save reader `name`'s place in the history.
    fn save_cursor(&self, name: &str, cursor: &str) -> Result<()>;
    /// Take, or keep, the job `name` (work one process of a cluster does at a time):
    /// true while this process holds it. Call it again every few seconds: a holder that
    /// stops renewing loses it (a minute on a database; the lock's staleness on files).
    fn take_job(&self, name: &str) -> bool;
    /// Hourly housekeeping: expired side data, signatures, claims.
    fn sweep(&self, max_age: std::time::Duration) -> usize;
    /// Limits held with the other hosts on this store (`None`: this host's own, as on
    /// a spool directory). See [`crate::shared`].
    fn shared_limits(&self) -> Option<Arc<dyn crate::shared::SharedLimits>> {
        None
    }
    /// Records shared with the other hosts on this store (`None`: files beside the
    /// spool are used instead). See [`crate::shared::SharedRecords`].
    fn records(&self) -> Option<Arc<dyn crate::shared::SharedRecords>> {
        None
    }

    // --- administration ---

    /// Delete a node (taking its lock).
    fn delete(&self, entry: &NodeEntry) -> Result<()>;
    /// Hold a node: nothing delivers it until released.
    fn hold(&self, entry: &NodeEntry) -> Result<NodeEntry>;
    /// Release a held node into its tier, its time unchanged.
    fn release(&self, entry: &NodeEntry) -> Result<NodeEntry>;
    /// Make a node due now in its tier.
    fn retry_now(&self, entry: &NodeEntry) -> Result<NodeEntry>;
}

/// A file spool's stage is a [`Staged`] message.
impl Staged for Stage<Arc<Spool>> {
    fn id(&self) -> &str {
        Stage::id(self)
    }
    fn written(&self) -> u64 {
        Stage::written(self)
    }
    fn commit(self: Box<Self>, from: &str, to: &[String]) -> Result<Committed> {
        Stage::commit(*self, from, to)
    }
    fn into_file_stage(self: Box<Self>) -> std::result::Result<Stage<Arc<Spool>>, Box<dyn Staged>> {
        Ok(*self)
    }
}

impl Intake for Spool {
    fn cache_dir(&self) -> Option<&Path> {
        Some(self.dir())
    }
    fn new_id(&self) -> String {
        Spool::new_id(self)
    }
    fn check_envelope(&self, id: &str, from: &str, to: &[String]) -> Result<()> {
        Spool::check_envelope(self, id, from, to)
    }
    fn stage(self: Arc<Self>, id: &str) -> Result<Box<dyn Staged>> {
        Ok(Box::new(self.stage_arc(id)?))
    }
    fn suppressed(&self, from: &str, to: &str) -> Option<Suppression> {
        self.suppressions.lookup(from, to, crate::now())
    }
    fn record_events(&self, events: &[Event], durable: bool) -> Result<()> {
        match self.config().events {
            true => self.events.append(events, durable),
            false => Ok(()),
        }
    }
    fn read_events(&self, q: &Query) -> Result<EventPage> {
        self.events.read(q)
    }
    fn suppress(&self, entry: &Suppression) -> Result<()> {
        self.suppressions.add(entry)
    }
}

impl Store for Spool {
    fn config(&self) -> &SpoolConfig {
        Spool::config(self)
    }
    fn location(&self) -> String {
        self.dir().display().to_string()
    }
    fn as_files(&self) -> Option<&Spool> {
        Some(self)
    }
    fn id_in_use(&self, id: &str) -> Result<bool> {
        Spool::id_in_use(self, id)
    }
    fn import(
        &self,
        id: &str,
        from: &str,
        file: &std::fs::File,
        placements: &[(Placement, String)],
    ) -> Result<usize> {
        Spool::import(self, id, from, file, placements)
    }
    fn due_at(&self, entry: &NodeEntry) -> u64 {
        Spool::due_at(self, entry)
    }
    fn visit_tier(&self, tier: usize, f: &mut dyn FnMut(Found) -> ControlFlow<()>) -> Result<()> {
        Spool::visit_tier(self, tier, f)
    }
    fn visit_all(&self, f: &mut dyn FnMut(Found) -> ControlFlow<()>) -> Result<()> {
        Spool::visit_all(self, f)
    }
    fn group_messages(&self, nodes: Vec<NodeEntry>) -> Vec<Vec<NodeEntry>> {
        Spool::group_messages(self, nodes)
    }
    fn find(&self, key: &str) -> Result<Vec<NodeEntry>> {
        Spool::find(self, key)
    }
    fn visit_listing(&self, f: &mut dyn FnMut(Listed) -> ControlFlow<()>) -> Result<()> {
        // `queue list` has its own faster way through a directory; this one serves
        // callers that hold any back end.
        self.visit_all(&mut |found| match found {
            Found::Node(node) => {
                let size = self.open_node(&node).map_or(0, |n| n.size);
                let last_error =
                    crate::side::last_failure(Spool::attempts(self, &node.name), node.ino);
                f(Listed {
                    node,
                    size,
                    last_error,
                })
            }
            Found::Unparsable(_) => ControlFlow::Continue(()),
        })
    }
    fn page(
        &self,
        start: crate::Cursor,
        limit: usize,
        max_scan: usize,
        keep: &mut dyn FnMut(&NodeEntry) -> bool,
    ) -> Result<crate::Page> {
        Spool::page(self, start, limit, max_scan, keep)
    }
    fn has_side_data(&self) -> bool {
        Spool::has_side_data(self)
    }
    fn node_state(&self, entry: &NodeEntry) -> (Option<u64>, Option<String>) {
        // Never through a symlink: a planted one says nothing about what it points to.
        let size = std::fs::symlink_metadata(&entry.path).ok().map(|m| m.len());
        let holder = crate::lock::holder(&entry.path, &self.config().lock_policy());
        (size, holder.map(|h| h.to_string()))
    }
    fn attempts(&self, node: &NodeName) -> Vec<Attempt> {
        Spool::attempts(self, node)
    }
    fn last_error(&self, node: &NodeName) -> Option<String> {
        Spool::last_error(self, node)
    }
    fn usage(&self, days: u64) -> Result<BTreeMap<u64, DayUsage>> {
        Spool::usage(self, days)
    }
    fn lock_node(&self, entry: &NodeEntry) -> Result<NodeLock> {
        Spool::lock_node(self, entry)
    }
    fn open_node(&self, entry: &NodeEntry) -> Result<NodeFile> {
        Spool::open_node(self, entry)
    }
    fn quarantine(&self, entry: &NodeEntry) -> Result<String> {
        Spool::quarantine(self, entry).map(|p| p.display().to_string())
    }
    fn delete_locked(&self, entry: &NodeEntry) -> Result<()> {
        Spool::delete_locked(self, entry)
    }
    fn move_to_tier_locked(&self, entry: &NodeEntry, tier: usize) -> Result<NodeEntry> {
        Spool::move_to_tier_locked(self, entry, tier)
    }
    fn record_attempt(&self, node: &NodeName, attempt: &Attempt) -> Result<()> {
        Spool::record_attempt(self, node, attempt)
    }
    fn log_usage_nodes(&self, bytes: u64, kind: &str, nodes: usize) {
        Spool::log_usage_nodes(self, bytes, kind, nodes)
    }
    fn dkim_signature(&self, ino: u64, id: &str) -> Option<Vec<u8>> {
        Spool::dkim_signature(self, ino, id)
    }
    fn keep_dkim_signature(&self, ino: u64, id: &str, field: &[u8]) -> Result<Vec<u8>> {
        Spool::keep_dkim_signature(self, ino, id, field)
    }
    fn forget_dkim_signature(&self, ino: u64, id: &str) {
        Spool::forget_dkim_signature(self, ino, id)
    }
    fn claim_delay_warning(&self, node: &NodeName) -> Result<bool> {
        Spool::claim_delay_warning(self, node)
    }
    fn release_delay_warning(&self, node: &NodeName) {
        Spool::release_delay_warning(self, node)
    }
    fn load_cursor(&self, name: &str) -> Option<String> {
        let f = crate::storage::os::open_read(&self.dir().join("cursors").join(name)).ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, 1024), &mut text).ok()?;
        // Empty is a place too: the beginning (written whole: temp, fsync, rename).
        Some(text.trim().to_owned())
    }
    fn save_cursor(&self, name: &str, cursor: &str) -> Result<()> {
        let dir = self.dir().join("cursors");
        crate::events::write_small(&dir, name, cursor.as_bytes())
    }
    fn take_job(&self, name: &str) -> bool {
        self.jobs
            .take(&self.dir().join("jobs"), name, &self.config().lock_policy())
    }
    fn suppressions(&self) -> Result<Vec<Suppression>> {
        let mut all: Vec<Suppression> = self.suppressions.with(|m| m.values().cloned().collect());
        all.sort_by(|a, b| (&a.address, &a.domain).cmp(&(&b.address, &b.domain)));
        Ok(all)
    }
    fn unsuppress(&self, address: &str, domain: &str) -> Result<bool> {
        self.suppressions.remove(address, domain)
    }
    fn sweep(&self, max_age: std::time::Duration) -> usize {
        let pruned = self.events.prune(self.config().event_retention_days);
        if pruned > 0 {
            tracing::info!(days = pruned, "removed event files past their retention");
        }
        let side = Spool::prune_side_data(self).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot prune side data");
            0
        });
        side + Spool::prune_delay_warnings(self, max_age)
            + Spool::prune_dkim_signatures(self, max_age)
    }
    fn delete(&self, entry: &NodeEntry) -> Result<()> {
        Spool::delete(self, entry)
    }
    fn hold(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        Spool::hold(self, entry)
    }
    fn release(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        Spool::release(self, entry)
    }
    fn retry_now(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        Spool::retry_now(self, entry)
    }
}
