//! Queue administration, one implementation for the command line (`mailspool queue`)
//! and the HTTP admin API: select nodes, change them, filter, summarise, describe.
//!
//! Works on any Mail::Spool 0.50 spool as well as ours: nothing is created by reading,
//! and every change takes the node's `.NFSLock` first (in the spool crate).

mod detail;
mod filter;

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;

use mailspool_spool::{Found, NodeEntry, SpoolError, Store};
use serde::Serialize;

pub use detail::{MessageDetail, NodeDetail, detail, header_block};
pub use filter::Filter;

/// Why a selector selected nothing.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// No node has this id or file name.
    #[error("no queued message or node {0:?}")]
    NotFound(String),
    /// The message has no node for that recipient.
    #[error("no queued node of {key:?} is for <{}>", mailspool_spool::escape(.to))]
    NoSuchRecipient {
        /// The selector.
        key: String,
        /// The recipient asked for.
        to: String,
    },
    /// Several messages share the id (Mail::Spool 0.50 reused ids): nothing is changed
    /// until the caller names one.
    #[error("{} messages share the id {key:?} (Mail::Spool 0.50 reused ids); name one by recipient or node file name", messages.len())]
    Ambiguous {
        /// The selector.
        key: String,
        /// The messages, each its nodes.
        messages: Vec<Vec<NodeEntry>>,
    },
    /// The spool could not be read.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// The nodes a selector names: a node's file name (that node), or a message id (its
/// nodes; with `to`, only that recipient's). An id that several messages share selects
/// nothing: [`SelectError::Ambiguous`] lists them.
pub fn select(
    spool: &dyn Store,
    key: &str,
    to: Option<&str>,
) -> Result<Vec<NodeEntry>, SelectError> {
    let mut nodes = match spool.find(key) {
        Ok(n) => n,
        Err(SpoolError::NotFound(_)) => return Err(SelectError::NotFound(key.to_owned())),
        Err(e) => return Err(e.into()),
    };
    if nodes.iter().any(|n| n.file_name == key) {
        nodes.retain(|n| n.file_name == key);
    }
    if let Some(to) = to {
        let want = mailspool_message::address::dedup_key(to.trim_matches(['<', '>']));
        nodes.retain(|n| mailspool_message::address::dedup_key(&n.name.to) == want);
        if nodes.is_empty() {
            return Err(SelectError::NoSuchRecipient {
                key: key.to_owned(),
                to: to.to_owned(),
            });
        }
    }
    let messages = spool.group_messages(nodes.clone());
    if messages.len() > 1 {
        return Err(SelectError::Ambiguous {
            key: key.to_owned(),
            messages,
        });
    }
    Ok(nodes)
}

/// A change an operator makes to queued nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Remove the node.
    Delete,
    /// Keep it queued but never deliver it.
    Hold,
    /// Put a held node back into its tier.
    Release,
    /// Make it due now.
    Retry,
}

impl Change {
    /// Parse the API's spelling: `delete`, `hold`, `release`, `retry`.
    pub fn parse(word: &str) -> Option<Change> {
        Some(match word {
            "delete" => Change::Delete,
            "hold" => Change::Hold,
            "release" => Change::Release,
            "retry" => Change::Retry,
            _ => return None,
        })
    }

    /// What was done, for reports and logs.
    pub fn past_tense(self) -> &'static str {
        match self {
            Change::Delete => "deleted",
            Change::Hold => "held",
            Change::Release => "released",
            Change::Retry => "made due now",
        }
    }

    /// Apply to one node (under its lock); log the change, and record it in the
    /// history with who made it (`by`).
    pub fn apply(self, spool: &dyn Store, n: &NodeEntry, by: &str) -> Result<(), SpoolError> {
        match self {
            Change::Delete => spool.delete(n),
            Change::Hold => spool.hold(n).map(drop),
            Change::Release => spool.release(n).map(drop),
            Change::Retry => spool.retry_now(n).map(drop),
        }?;
        tracing::info!(
            event = self.past_tense(),
            id = %n.name.id,
            to = %mailspool_spool::escape(&n.name.to),
            from = %mailspool_spool::escape(&n.name.from),
            "{}", self.past_tense()
        );
        let kind = match self {
            Change::Delete => mailspool_events::Kind::Deleted,
            Change::Hold => mailspool_events::Kind::Held,
            Change::Release => mailspool_events::Kind::Released,
            Change::Retry => return Ok(()),
        };
        let mut e = mailspool_events::Event::new(kind, &n.name.id, &n.name.from, &n.name.to);
        e.by = Some(by.to_owned());
        let _ = mailspool_spool::store::emit(spool, &[e], self == Change::Delete);
        Ok(())
    }
}

/// What a change did to a set of nodes.
#[derive(Debug, Default, Serialize)]
pub struct ChangeReport {
    /// Nodes the selector or filter named.
    pub matched: usize,
    /// Nodes changed.
    pub changed: usize,
    /// Nodes that could not be changed, with why (a locked node: try again).
    pub failed: Vec<NodeFailure>,
}

/// One node a change could not be made to.
#[derive(Debug, Serialize)]
pub struct NodeFailure {
    /// Message id.
    pub id: String,
    /// Recipient.
    pub to: String,
    /// Why.
    pub error: String,
    /// The sysexits code the command line exits with for it.
    #[serde(skip)]
    pub code: u8,
}

impl ChangeReport {
    /// Apply `change` to `nodes`, collecting what failed.
    pub fn apply(spool: &dyn Store, change: Change, nodes: &[NodeEntry], by: &str) -> ChangeReport {
        let mut report = ChangeReport::default();
        for n in nodes {
            report.record(change, spool, n, by);
        }
        report
    }

    fn record(&mut self, change: Change, spool: &dyn Store, n: &NodeEntry, by: &str) {
        self.matched += 1;
        if change == Change::Retry && n.held {
            // Held means never delivered until released: a retry would change nothing
            // but the node's queue time (and make it look older than it is).
            self.failed.push(NodeFailure {
                id: n.name.id.clone(),
                to: n.name.to.clone(),
                code: crate::sysexits::DATAERR,
                error: "held: release it (`queue release`) to deliver it; retry does not".into(),
            });
            return;
        }
        match change.apply(spool, n, by) {
            Ok(()) => self.changed += 1,
            Err(e) => self.failed.push(NodeFailure {
                id: n.name.id.clone(),
                to: n.name.to.clone(),
                code: crate::send::spool_exit_code(&e),
                error: e.to_string(),
            }),
        }
    }
}

/// The nodes `filter` matches, the spool walked once; at most `limit` of them, and
/// whether more matched.
pub fn matching(
    spool: &dyn Store,
    filter: &Filter,
    limit: Option<usize>,
) -> Result<(Vec<NodeEntry>, bool), SpoolError> {
    let now = mailspool_spool::now();
    let mut nodes = Vec::new();
    let mut more = false;
    spool.visit_all(&mut |found| {
        if let Found::Node(n) = found
            && filter.matches(&n, now)
        {
            if limit.is_some_and(|l| nodes.len() >= l) {
                more = true;
                return ControlFlow::Break(());
            }
            nodes.push(n);
        }
        ControlFlow::Continue(())
    })?;
    Ok((nodes, more))
}

/// Apply `change` to every node `filter` matches (the bulk form). Matching nodes are
/// collected first, so a move never shows a node twice.
pub fn change_matching(
    spool: &dyn Store,
    change: Change,
    filter: &Filter,
    by: &str,
) -> Result<ChangeReport, SpoolError> {
    let (nodes, _) = matching(spool, filter, None)?;
    Ok(ChangeReport::apply(spool, change, &nodes, by))
}

/// Counts by tier and by domain.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Nodes (one per recipient).
    pub nodes: usize,
    /// Distinct messages.
    pub messages: usize,
    /// Held nodes.
    pub held: usize,
    /// Files whose names do not parse.
    pub unparsable: usize,
    /// Per tier: queued and held.
    pub tiers: Vec<TierCount>,
    /// Per recipient domain, most nodes first.
    pub domains: Vec<DomainCount>,
    /// Queued time of the oldest node (unix), if any.
    pub oldest: Option<u64>,
    /// The messages waiting longest (when asked for: see [`summary`]'s `tops`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub oldest_nodes: Vec<NodeBrief>,
    /// The nodes deferred most (highest tier, then oldest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub most_deferred: Vec<NodeBrief>,
}

/// A node in a summary's top lists.
#[derive(Debug, Clone, Serialize)]
pub struct NodeBrief {
    /// Message id.
    pub id: String,
    /// The node's file name.
    pub node: String,
    /// Recipient.
    pub to: String,
    /// Sender.
    pub from: String,
    /// Tier.
    pub tier: usize,
    /// Held.
    pub held: bool,
    /// Unix time the message was accepted.
    pub accepted_at: u64,
    /// The last attempt's reply, if it failed.
    pub last_error: Option<String>,
}

/// The `n` nodes with the smallest `key`, kept in a bounded heap while walking.
struct Smallest<K: Ord> {
    n: usize,
    heap: std::collections::BinaryHeap<(K, u64, NodeEntryKey)>,
    seq: u64,
}

/// What a top list keeps of a node (its key in the heap must be `Ord`).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct NodeEntryKey(String, String, String, String, usize, bool, u64, u64);

impl<K: Ord> Smallest<K> {
    fn new(n: usize) -> Self {
        Smallest {
            n,
            heap: Default::default(),
            seq: 0,
        }
    }

    fn offer(&mut self, key: K, n: &NodeEntry, accepted: u64) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() >= self.n && self.heap.peek().is_some_and(|(k, ..)| key >= *k) {
            return;
        }
        self.seq += 1;
        self.heap.push((
            key,
            self.seq,
            NodeEntryKey(
                n.name.id.clone(),
                n.file_name.clone(),
                n.name.to.clone(),
                n.name.from.clone(),
                n.tier,
                n.held,
                accepted,
                n.ino,
            ),
        ));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    fn finish(self, spool: &dyn Store) -> Vec<NodeBrief> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(
                |(_, _, NodeEntryKey(id, node, to, from, tier, held, accepted_at, ino))| {
                    let name = mailspool_spool::NodeName::new(0, &id, &to, &from);
                    NodeBrief {
                        last_error: mailspool_spool::side::last_failure(spool.attempts(&name), ino),
                        id,
                        node,
                        to,
                        from,
                        tier,
                        held,
                        accepted_at,
                    }
                },
            )
            .collect()
    }
}

/// One tier's counts.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TierCount {
    /// Tier number.
    pub tier: usize,
    /// Nodes waiting in it.
    pub queued: usize,
    /// Held nodes that return to it.
    pub held: usize,
    /// Seconds a node waits in it.
    pub wait: u64,
}

/// One domain's count.
#[derive(Debug, Clone, Serialize)]
pub struct DomainCount {
    /// Recipient domain, lower-cased.
    pub domain: String,
    /// Nodes for it.
    pub nodes: usize,
}

/// Walk the spool once and count. Keeps counts only (a million nodes in a few MB),
/// plus, when `tops` > 0, the `tops` oldest and most deferred nodes; `on_unparsable`
/// and `on_rescued` let the command line warn.
pub fn summary(
    spool: &dyn Store,
    tops: usize,
    on_unparsable: &mut dyn FnMut(&std::path::Path),
    on_rescued: &mut dyn FnMut(&NodeEntry),
) -> Result<Summary, SpoolError> {
    let mut s = Summary {
        tiers: (0..spool.config().tiers())
            .map(|tier| TierCount {
                tier,
                wait: spool.config().period(tier),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut domains: BTreeMap<String, usize> = BTreeMap::new();
    let hasher = std::collections::hash_map::RandomState::new();
    let mut messages = HashSet::new();
    let mut oldest = Smallest::new(tops);
    let mut deferred = Smallest::new(tops);
    spool.visit_all(&mut |found| {
        match found {
            Found::Node(n) => {
                if n.rescued {
                    on_rescued(&n);
                }
                s.nodes += 1;
                if let Some(t) = s.tiers.get_mut(n.tier) {
                    if n.held {
                        t.held += 1;
                    } else {
                        t.queued += 1;
                    }
                }
                s.held += usize::from(n.held);
                s.oldest = Some(s.oldest.map_or(n.name.time, |o| o.min(n.name.time)));
                *domains.entry(n.domain()).or_default() += 1;
                if tops > 0 {
                    let accepted = n.name.accepted_at();
                    oldest.offer(accepted, &n, accepted);
                    if n.tier > 0 {
                        deferred.offer((std::cmp::Reverse(n.tier), accepted), &n, accepted);
                    }
                }
                messages.insert(std::hash::BuildHasher::hash_one(
                    &hasher,
                    (&n.name.id, &n.name.from),
                ));
            }
            Found::Unparsable(p) => {
                on_unparsable(&p);
                s.unparsable += 1;
            }
        }
        ControlFlow::Continue(())
    })?;
    s.messages = messages.len();
    s.oldest_nodes = oldest.finish(spool);
    s.most_deferred = deferred.finish(spool);
    s.domains = domains
        .into_iter()
        .map(|(domain, nodes)| DomainCount { domain, nodes })
        .collect();
    s.domains
        .sort_by(|a, b| b.nodes.cmp(&a.nodes).then(a.domain.cmp(&b.domain)));
    Ok(s)
}
