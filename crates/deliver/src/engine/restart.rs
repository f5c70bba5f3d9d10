//! Deliveries a killed process finished but did not settle: the receiver said 250 and
//! the `delivered` event was written (it is, before the node goes), then the process
//! died before it removed the node. Sent again, the recipient would get it twice. So
//! an engine reads the recent history once, at its first pass over the queue, and
//! removes such nodes instead of sending them: the window for a duplicate shrinks from
//! the event log's flush to the few instructions between the 250 and the event's write.
//!
//! Another host's daemon that dies holding nodes of a shared spool does not restart
//! here: the node's lock tells. When taking a node means breaking the stale lock of a
//! mailspool process, the history of that node since shortly before the lock's last
//! refresh is asked the same question.
//!
//! A node is matched by its id, its recipient and its stored message's inode: ids
//! repeat (0.50 gives one id to a process's messages within a second), an inode is
//! reused only once its message is gone.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mailspool_events::{Kind, MAX_PAGE, Query};
use mailspool_spool::{LockHolder, NodeEntry, NodeLock, Store, escape, now};

use super::{Claim, Engine, NodeResult, Outcome};

/// How far back the history is read: a daemon restarted by its supervisor, or a
/// host rebooted, comes back well within it.
const LOOKBACK: u64 = 15 * 60;
/// Most deliveries remembered (the newest are kept): about 10 MB.
const MAX_REMEMBERED: usize = 100_000;
/// Longest the first pass waits for that reading.
const MAX_READING: Duration = Duration::from_secs(5);
/// How long after they are read they are consulted: past it, every node the killed
/// process held has been taken up again (its locks are stale long before).
const CONSULTED_FOR: Duration = Duration::from_secs(3600);

/// Furthest back a dead holder's history is searched, however old its lock says it is
/// (a lock's time is whatever its file says).
const MAX_BACK: u64 = 24 * 3600;

type Key = (String, String, u64);

/// The deliveries of the last minutes before this engine's first pass: (id, recipient)
/// by inode, so that looking a node up allocates nothing.
pub(super) struct DeliveredBefore {
    by_inode: Mutex<HashMap<u64, Vec<(String, String)>>>,
    until: Instant,
}

impl DeliveredBefore {
    /// Read from `spool`'s history (nothing where it keeps none).
    pub(super) fn read(spool: &dyn Store) -> DeliveredBefore {
        let started = Instant::now();
        let mut newest: VecDeque<Key> = VecDeque::new();
        let mut q = Query {
            since: Some(now().saturating_sub(LOOKBACK)),
            kinds: vec![Kind::Delivered],
            limit: MAX_PAGE,
            ..Query::default()
        };
        loop {
            let page = match spool.read_events(&q) {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the recent deliveries: a delivery cut short by a kill may be sent twice");
                    break;
                }
            };
            for e in page.events {
                if let Some(ino) = e.node {
                    newest.push_back((e.message, e.recipient, ino));
                    if newest.len() > MAX_REMEMBERED {
                        newest.pop_front();
                    }
                }
            }
            if !page.more || page.next.is_none() {
                break;
            }
            if started.elapsed() > MAX_READING {
                tracing::warn!(
                    seconds = MAX_READING.as_secs(),
                    "the recent history is too long to read at the start: only its first part was"
                );
                break;
            }
            q.cursor = page.next;
        }
        tracing::debug!(
            deliveries = newest.len(),
            ms = started.elapsed().as_millis() as u64,
            "read the recent deliveries"
        );
        let mut by_inode: HashMap<u64, Vec<(String, String)>> = HashMap::new();
        for (id, to, ino) in newest {
            by_inode.entry(ino).or_default().push((id, to));
        }
        DeliveredBefore {
            by_inode: Mutex::new(by_inode),
            until: Instant::now() + CONSULTED_FOR,
        }
    }

    /// Whether `n` was delivered before (forgotten once said).
    fn take(&self, n: &NodeEntry) -> bool {
        let mut by_inode = self.by_inode.lock().unwrap_or_else(|e| e.into_inner());
        if by_inode.is_empty() {
            return false;
        }
        if Instant::now() > self.until {
            *by_inode = HashMap::new();
            return false;
        }
        let Some(delivered) = by_inode.get_mut(&n.ino) else {
            return false;
        };
        let Some(i) = delivered
            .iter()
            .position(|(id, to)| *id == n.name.id && *to == n.name.to)
        else {
            return false;
        };
        delivered.swap_remove(i);
        if delivered.is_empty() {
            by_inode.remove(&n.ino);
        }
        true
    }
}

impl Engine {
    /// Remove from `claim` (and from the spool) the nodes already delivered by a
    /// process that died before removing them.
    pub(super) fn drop_delivered_before(&self, claim: &mut Claim) -> Vec<NodeResult> {
        let before = self.delivered_before.get();
        let nodes = std::mem::take(&mut claim.nodes);
        let (mut keep, mut done): (Vec<(NodeEntry, NodeLock)>, Vec<_>) = (Vec::new(), Vec::new());
        for (n, lock) in nodes {
            let delivered = before.is_some_and(|b| b.take(&n))
                || lock
                    .broke()
                    .is_some_and(|h| h.ours && self.delivered_while_held(&n, h));
            match delivered {
                true => done.push((n, lock)),
                false => keep.push((n, lock)),
            }
        }
        claim.nodes = keep;
        done.into_iter()
            .map(|(n, _lock)| {
                if let Err(e) = self.spool.delete_locked(&n) {
                    tracing::error!(node = %escape(&n.path.display().to_string()), error = %e, "cannot remove a delivered node");
                }
                tracing::info!(event = "delivered before", id = %n.name.id, to = %escape(&n.name.to), from = %escape(&n.name.from), "not sent again: delivered by a process that died before removing it (the history says so)");
                NodeResult {
                    id: n.name.id.clone(),
                    to: n.name.to.clone(),
                    outcome: Outcome::Delivered,
                    reply: "delivered before, by a process that died before removing it".into(),
                }
            })
            .collect()
    }

    /// Whether the history says `n` was delivered by `holder`, the mailspool process
    /// that died holding it (its lock was stale and broken to take the node).
    fn delivered_while_held(&self, n: &NodeEntry, holder: &LockHolder) -> bool {
        let ask = || {
            let started = Instant::now();
            let mut q = Query {
                // The holder refreshed its lock until it died, and wrote the event
                // before it would have removed the node.
                since: Some(
                    holder
                        .since
                        .saturating_sub(LOOKBACK)
                        .max(now().saturating_sub(MAX_BACK)),
                ),
                kinds: vec![Kind::Delivered],
                key: Some(n.name.id.clone()),
                recipient: Some(n.name.to.clone()),
                limit: MAX_PAGE,
                ..Query::default()
            };
            loop {
                let Ok(page) = self.spool.read_events(&q) else {
                    return false;
                };
                if page.events.iter().any(|e| {
                    e.message == n.name.id && e.recipient == n.name.to && e.node == Some(n.ino)
                }) {
                    return true;
                }
                if !page.more || page.next.is_none() || started.elapsed() > MAX_READING {
                    return false;
                }
                q.cursor = page.next;
            }
        };
        // A search of the history is file reading: off the runtime's workers.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(ask),
            _ => ask(),
        }
    }
}
