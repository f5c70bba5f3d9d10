//! The durable commit: how a message becomes nodes.
//!
//! 1. Stage: create `tmp/<unique>` (O_EXCL|O_NOFOLLOW, 0600) and stream the message in.
//! 2. fdatasync the stage.
//! 3. One hard link per recipient into tier 0, named `<time>-<id>-<to>-<from>`: one
//!    inode, N names, no copy per recipient. `link` never replaces an existing name.
//! 4. fsync tier 0 (grouped: concurrent commits in this process share one fsync).
//!
//! Where the file system journals a link with its inode (see [`crate::durability`]),
//! steps 2 and 4 become one journal commit: the stage is written out (its blocks
//! allocated, no commit) before the links, and the file's own `fsync` after them makes
//! data, size and names durable together.
//! 5. Unlink the stage, append the usage line, and only then report success.
//!
//! A failure at any step removes what the commit made. A crash leaves only whole nodes
//! (their data was fsynced before any name existed) and a stage that the next
//! [`Spool::create`](crate::Spool::create) removes once it is old.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::durability::NameSync;
use crate::name::{NODE_NAME_MAX, NodeName, is_valid_id};
use crate::{Result, Spool, SpoolError, now};

const STAGE_BUFFER: usize = 64 * 1024;

/// A message being written to `tmp/`. Dropping it without [`Stage::commit`] removes it.
/// `S` is how it holds the spool: `&Spool`, or `Arc<Spool>` for a stage that must move
/// between threads (the SMTP listener commits on a blocking thread).
#[derive(Debug)]
pub struct Stage<S: Deref<Target = Spool> = &'static Spool> {
    spool: S,
    id: String,
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    written: u64,
}

/// What a commit produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The message id in the node names.
    pub id: String,
    /// The nodes, one per recipient, in tier 0.
    pub nodes: Vec<PathBuf>,
    /// Message size in bytes.
    pub size: u64,
}

/// [`Spool::check_envelope`] for any back end: every back end keeps the file spool's
/// limits, so that a spool can always be migrated to files.
pub fn check_envelope_names(id: &str, from: &str, to: &[String]) -> Result<()> {
    if !is_valid_id(id) {
        return Err(SpoolError::InvalidId(id.to_owned()));
    }
    for rcpt in to {
        // Ten digits of time: the length of every time until the year 2286.
        let len = NodeName::new(9_999_999_999, id, rcpt, from)
            .file_name()
            .len();
        if len > NODE_NAME_MAX {
            let address = if len - from.len() > NODE_NAME_MAX {
                rcpt
            } else {
                from
            };
            return Err(SpoolError::NameTooLong {
                address: address.to_owned(),
                len,
                max: NODE_NAME_MAX,
            });
        }
    }
    Ok(())
}

impl Spool {
    /// Check that every node of this envelope would have a legal name, before any byte
    /// of the message is read: an address too long for NAME_MAX is refused up front.
    pub fn check_envelope(&self, id: &str, from: &str, to: &[String]) -> Result<()> {
        check_envelope_names(id, from, to)
    }

    /// Start a commit for message `id` (see [`Spool::new_id`]).
    pub fn stage(&self, id: &str) -> Result<Stage<&Spool>> {
        Stage::new(self, id)
    }

    /// [`Spool::stage`] holding the spool by `Arc`, so the stage is `'static`.
    pub fn stage_arc(self: &Arc<Self>, id: &str) -> Result<Stage<Arc<Spool>>> {
        Stage::new(self.clone(), id)
    }
}

impl<S: Deref<Target = Spool>> Stage<S> {
    fn new(spool: S, id: &str) -> Result<Stage<S>> {
        if !is_valid_id(id) {
            return Err(SpoolError::InvalidId(id.to_owned()));
        }
        let path = spool.dir.join("tmp").join(spool.new_id());
        let file = spool
            .storage
            .create_new(&path)
            .map_err(|e| SpoolError::io("create", &path, e))?;
        // Held until the stage is closed: a stage nobody holds is a crash's leftover.
        let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
        // Root writing a spool that is another user's (a root program through the C or
        // Perl binding) gives the message to that user: their daemon must read it.
        if rustix::process::geteuid().is_root()
            && let Ok(dir) = std::fs::metadata(&spool.dir)
            && std::os::unix::fs::MetadataExt::uid(&dir) != 0
        {
            use std::os::unix::fs::MetadataExt;
            if let Err(e) = std::os::unix::fs::fchown(&file, Some(dir.uid()), Some(dir.gid())) {
                let _ = std::fs::remove_file(&path);
                return Err(SpoolError::io("chown", &path, e));
            }
        }
        Ok(Stage {
            spool,
            id: id.to_owned(),
            path,
            file: Some(file),
            buf: Vec::with_capacity(STAGE_BUFFER),
            written: 0,
        })
    }
}

impl<S: Deref<Target = Spool>> Stage<S> {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The message id the nodes will carry.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().expect("stage file open until commit");
        let result = self.spool.storage.write(file, &self.buf);
        self.buf.clear();
        result
    }

    /// Make the message durable and visible as one node per recipient in tier 0.
    ///
    /// `from` is the envelope sender ("" for the null sender). If a node of the same
    /// name already exists (only possible with an id taken from a `Received:` header),
    /// nothing is replaced: the message gets a fresh id instead.
    pub fn commit(mut self, from: &str, to: &[String]) -> Result<Committed> {
        let result = self.try_commit(from, to);
        if result.is_err() {
            self.abort();
        }
        result
    }

    fn try_commit(&mut self, from: &str, to: &[String]) -> Result<Committed> {
        let file = self.written_file()?;
        let journaled = self.spool.durability().links == NameSync::FileFsync;
        // The data is on disk before any name points to it: fdatasync'd, or (where a
        // journal will commit names and data together) written out and allocated.
        let storage = &self.spool.storage;
        if journaled {
            storage.write_out(&file)
        } else {
            storage.sync_file(&file)
        }
        .map_err(|e| SpoolError::io("fsync", &self.path, e))?;
        // `file` stays open, and its flock held, until the commit is over: a dequeuer
        // that finds one of the new nodes sees the lock on their shared inode and waits
        // for the rest of the message (see `Spool::commit_in_progress`).
        let mut nodes = self.link_nodes(from, to)?;
        let spool: &Spool = &self.spool;
        let synced = if journaled {
            // One journal commit for data, size and every link (concurrent commits
            // share it: jbd2 and XFS's log batch them).
            let at = nodes.first().unwrap_or(&self.path);
            spool
                .storage
                .sync_inode(&file)
                .map_err(|e| SpoolError::io("fsync", at, e))
        } else {
            spool
                .tier0_sync
                .sync(|dir| spool.storage.sync_dir(dir))
                .map_err(|e| SpoolError::io("fsync", spool.tier_dir(0), e))
        };
        if let Err(e) = synced {
            remove_all(spool, &mut nodes);
            return Err(e);
        }
        self.finish(nodes, file)
    }

    /// Flush and fsync what was written and hand over the stage's path and file: the
    /// caller links it where it belongs and removes the path (a migration's import).
    pub(crate) fn into_synced(mut self) -> Result<(PathBuf, File)> {
        let file = self.written_file()?;
        self.spool
            .storage
            .sync_file(&file)
            .map_err(|e| SpoolError::io("fsync", &self.path, e))?;
        let path = std::mem::take(&mut self.path);
        Ok((path, file))
    }

    /// Flush what is buffered and take the file out of the stage (still open: its flock
    /// marks the commit under way).
    fn written_file(&mut self) -> Result<File> {
        self.flush_buf()
            .map_err(|e| SpoolError::io("write", &self.path, e))?;
        Ok(self.file.take().expect("stage file open until commit"))
    }

    /// One hard link per recipient into tier 0 (not yet synced).
    fn link_nodes(&mut self, from: &str, to: &[String]) -> Result<Vec<PathBuf>> {
        let spool: &Spool = &self.spool;
        let tier0 = spool.tier_dir(0);
        let mut nodes = Vec::with_capacity(to.len());
        let mut renamed = false;
        let time = now();
        let mut i = 0;
        while i < to.len() {
            let node = tier0.join(NodeName::new(time, &self.id, &to[i], from).file_name());
            match spool.storage.link(&self.path, &node) {
                Ok(()) => {
                    nodes.push(node);
                    i += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !renamed => {
                    // Undo this id's links and start over with an id of our own.
                    tracing::info!(id = %self.id, "node name taken; committing under a new id");
                    remove_all(spool, &mut nodes);
                    self.id = spool.new_id();
                    renamed = true;
                    i = 0;
                }
                Err(e) => {
                    remove_all(spool, &mut nodes);
                    return Err(SpoolError::io("link", node, e));
                }
            }
        }
        Ok(nodes)
    }

    /// The nodes are durable: remove the stage's own name, count the usage.
    fn finish(&mut self, mut nodes: Vec<PathBuf>, file: File) -> Result<Committed> {
        let spool: &Spool = &self.spool;
        if let Err(e) = spool.storage.remove(&self.path) {
            remove_all(spool, &mut nodes);
            return Err(SpoolError::io("remove", &self.path, e));
        }
        self.path.clear();
        drop(file);
        let size = self.written;
        spool.log_usage_nodes(size, "Spool", nodes.len());
        Ok(Committed {
            id: self.id.clone(),
            nodes,
            size,
        })
    }

    fn abort(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            let _ = self.spool.storage.remove(&self.path);
            self.path.clear();
        }
    }
}

/// One message of a batch: its stage and envelope.
pub type BatchItem<S> = (Stage<S>, String, Vec<String>);

/// Commit several staged messages at once, each with the guarantees of
/// [`Stage::commit`] but sharing the flushes: one `syncfs` makes every stage's data
/// durable (instead of an fsync each), then every message is linked, then one fsync of
/// tier 0 makes all the names durable. Results are per message, in order; a failed
/// flush fails every message (none is visible).
pub fn commit_batch<S: Deref<Target = Spool>>(batch: Vec<BatchItem<S>>) -> Vec<Result<Committed>> {
    // A stage whose data is written, with its still-open file and envelope.
    type Written<S> = (Stage<S>, File, String, Vec<String>);
    let mut staged: Vec<Option<Written<S>>> = Vec::new();
    let mut results: Vec<Option<Result<Committed>>> = Vec::new();
    for (mut stage, from, to) in batch {
        match stage.written_file() {
            Ok(file) => {
                staged.push(Some((stage, file, from, to)));
                results.push(None);
            }
            Err(e) => {
                stage.abort();
                staged.push(None);
                results.push(Some(Err(e)));
            }
        }
    }
    let Some(first) = staged.iter().flatten().next().map(|(s, ..)| s) else {
        return results.into_iter().flatten().collect();
    };
    let spool: &Spool = &first.spool;
    // Concurrent batches share a sync: one that started after this batch's data was
    // written covers it.
    if let Err(e) = spool.fs_sync.sync(|dir| spool.storage.sync_fs(dir)) {
        let path = spool.dir.join("tmp");
        for (i, item) in staged.iter_mut().enumerate() {
            if let Some((mut stage, ..)) = item.take() {
                stage.abort();
                results[i] = Some(Err(SpoolError::io(
                    "sync",
                    &path,
                    io::Error::new(e.kind(), e.to_string()),
                )));
            }
        }
        return results.into_iter().flatten().collect();
    }
    let mut linked: Vec<(usize, Vec<PathBuf>)> = Vec::new();
    for (i, item) in staged.iter_mut().enumerate() {
        let Some((stage, _, from, to)) = item.as_mut() else {
            continue;
        };
        match stage.link_nodes(from, to) {
            Ok(nodes) => linked.push((i, nodes)),
            Err(e) => {
                if let Some((mut stage, ..)) = item.take() {
                    stage.abort();
                }
                results[i] = Some(Err(e));
            }
        }
    }
    let dir_synced = linked.first().map(|_| {
        let spool: &Spool = &staged[linked[0].0].as_ref().expect("linked").0.spool;
        spool.tier0_sync.sync(|dir| spool.storage.sync_dir(dir))
    });
    for (i, mut nodes) in linked {
        let Some((mut stage, file, ..)) = staged[i].take() else {
            continue;
        };
        results[i] = Some(match &dir_synced {
            Some(Err(e)) => {
                remove_all(&stage.spool, &mut nodes);
                stage.abort();
                Err(SpoolError::io(
                    "fsync",
                    stage.spool.tier_dir(0),
                    io::Error::new(e.kind(), e.to_string()),
                ))
            }
            _ => {
                let r = stage.finish(nodes, file);
                if r.is_err() {
                    stage.abort();
                }
                r
            }
        });
    }
    results
        .into_iter()
        .map(|r| r.expect("every message has a result"))
        .collect()
}

/// Remove the node names a failed commit made. If that fails too, the state is what a
/// crash leaves: every remaining name still points to a whole, fsynced message.
fn remove_all(spool: &Spool, nodes: &mut Vec<PathBuf>) {
    while let Some(node) = nodes.pop() {
        if let Err(e) = spool.storage.remove(&node) {
            tracing::error!(node = %node.display(), error = %e, "cannot undo a failed commit");
        }
    }
}

impl<S: Deref<Target = Spool>> Write for Stage<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > STAGE_BUFFER {
            self.flush_buf()?;
        }
        if data.len() >= STAGE_BUFFER {
            let file = self.file.as_mut().expect("stage file open until commit");
            self.spool.storage.write(file, data)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

impl<S: Deref<Target = Spool>> Drop for Stage<S> {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Whether the commit that made this node is still under way: its writer holds an
/// exclusive `flock` on the inode (the stage) until every node is linked and synced.
/// A dequeuer that sees this waits, so that one message is not split over several
/// transactions. Nodes of 0.50 and of finished commits are never locked so.
pub fn commit_in_progress(node: &File) -> bool {
    match rustix::fs::flock(node, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(node, rustix::fs::FlockOperation::Unlock);
            false
        }
        Err(e) => e == rustix::io::Errno::WOULDBLOCK,
    }
}

/// Whether a stage's writer is gone (its `flock` is free). Errors count as "not
/// abandoned": when in doubt, a stage is left for the age rule.
pub(crate) fn is_abandoned(path: &Path) -> bool {
    let f = match crate::storage::os::open_read(path) {
        Ok(f) => f,
        // Not a file a commit made (a symlink, a FIFO): nobody's stage.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => return true,
        Err(e) if e.kind() == io::ErrorKind::Other => return true,
        Err(_) => return false,
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}

/// Group commit for one directory's fsync: a caller is covered by any fsync that
/// *started* after it asked, so N threads committing at once share a few fsyncs instead
/// of paying N.
#[derive(Debug)]
pub(crate) struct GroupSync {
    dir: PathBuf,
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    requested: u64,
    completed: u64,
    running: bool,
    /// Set when the last fsync failed: every ticket it covered gets the error.
    failed_through: u64,
}

impl GroupSync {
    pub(crate) fn new(dir: PathBuf) -> Self {
        GroupSync {
            dir,
            state: Mutex::new(SyncState::default()),
            done: Condvar::new(),
        }
    }

    pub(crate) fn sync(&self, fsync: impl Fn(&Path) -> io::Result<()>) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.completed >= ticket {
                return if state.failed_through >= ticket {
                    Err(io::Error::other("directory fsync failed"))
                } else {
                    Ok(())
                };
            }
            if !state.running {
                state.running = true;
                let target = state.requested;
                drop(state);
                let result = fsync(&self.dir);
                state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.running = false;
                state.completed = target;
                if result.is_err() {
                    state.failed_through = target;
                }
                self.done.notify_all();
                if state.failed_through >= ticket {
                    return result;
                }
                continue;
            }
            state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}
