//! The daemon's backlog: planned groups waiting for a task, and how much of a deep
//! queue planning may hold in memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use mailspool_spool::NodeEntry;

use crate::engine::{Group, PLAN_CHUNK};

/// Nodes held in the backlog at most, all domains together, before planning waits.
pub(crate) const BACKLOG_NODES: usize = 4 * PLAN_CHUNK;

/// Nodes of one domain the backlog holds at most: planning leaves the rest of that
/// domain's mail in the spool (a name costs a few hundred bytes planned, nothing on
/// disk) and comes back for it when half of these have started. A 200,000-node queue
/// for one domain is then read a window at a time, while other domains' mail is still
/// planned as it comes.
pub(crate) const DOMAIN_WINDOW: usize = 8_000;

/// Planned groups, queued per recipient domain and started round-robin, at most
/// `per_domain` tasks per domain at once: a domain with a deep queue, or one whose
/// receiver throttles us (its tasks wait at its gate), cannot take the task slots that
/// every other domain's mail needs (Postfix's queue manager keeps per-destination
/// queues for the same reason).
#[derive(Default)]
pub(super) struct Backlog {
    queues: HashMap<String, VecDeque<Group>>,
    /// Domains with queued groups, in turn.
    order: VecDeque<String>,
    len: usize,
    /// Nodes queued, in all and per domain (what memory grows with).
    nodes: usize,
    domain_nodes: HashMap<String, usize>,
    /// Tasks running per domain (decremented by the task itself, even if it panics).
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// Counts a running task of its domain while it lives.
pub(super) struct Running(Arc<Mutex<HashMap<String, usize>>>, String);

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.1);
            }
        }
    }
}

impl Backlog {
    pub(super) fn extend(&mut self, groups: Vec<Group>) {
        for g in groups {
            let q = self.queues.entry(g.domain().to_owned()).or_default();
            if q.is_empty() {
                self.order.push_back(g.domain().to_owned());
            }
            self.nodes += g.nodes().len();
            *self.domain_nodes.entry(g.domain().to_owned()).or_default() += g.nodes().len();
            q.push_back(g);
            self.len += 1;
        }
    }

    /// Everything still waiting, in no particular order.
    pub(super) fn drain(&mut self) -> Vec<Group> {
        self.order.clear();
        self.len = 0;
        self.nodes = 0;
        self.domain_nodes.clear();
        self.queues.drain().flat_map(|(_, q)| q).collect()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Nodes queued in all.
    pub(super) fn nodes(&self) -> usize {
        self.nodes
    }

    /// Nodes of `domain` queued.
    pub(super) fn domain_nodes(&self, domain: &str) -> usize {
        self.domain_nodes.get(domain).copied().unwrap_or(0)
    }

    /// What a plan made now may take: each domain up to the window.
    pub(super) fn window(&self) -> Window {
        Window {
            queued: self.domain_nodes.clone(),
            admitted: HashSet::new(),
            full: HashSet::new(),
        }
    }

    /// The next group whose domain has room, round-robin, with its running-task guard.
    pub(super) fn next(&mut self, per_domain: usize) -> Option<(Group, Running)> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..self.order.len() {
            let domain = self.order.pop_front()?;
            if running.get(&domain).copied().unwrap_or(0) >= per_domain {
                self.order.push_back(domain);
                continue;
            }
            let q = self
                .queues
                .get_mut(&domain)
                .expect("a queued domain has a queue");
            let g = q.pop_front().expect("queues in the order are not empty");
            if q.is_empty() {
                self.queues.remove(&domain);
            } else {
                self.order.push_back(domain.clone());
            }
            self.len -= 1;
            self.nodes -= g.nodes().len();
            if let Some(n) = self.domain_nodes.get_mut(&domain) {
                *n -= g.nodes().len();
                if *n == 0 {
                    self.domain_nodes.remove(&domain);
                }
            }
            *running.entry(domain.clone()).or_default() += 1;
            return Some((g, Running(self.running.clone(), domain)));
        }
        None
    }

    /// Whether some queued group could start now.
    pub(super) fn has_startable(&self, per_domain: usize) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        self.order
            .iter()
            .any(|d| running.get(d).copied().unwrap_or(0) < per_domain)
    }
}

/// The window a plan applies: for each domain, what the backlog already holds plus
/// what this plan took. A message's nodes at a domain are taken or left together (one
/// message, one transaction).
pub(crate) struct Window {
    queued: HashMap<String, usize>,
    /// Messages (id, sender, domain) taken, by hash.
    admitted: HashSet<u64>,
    full: HashSet<String>,
}

impl Window {
    /// Whether the plan should leave node `n` in the spool for now. A message is
    /// charged all its names when its first is taken (names come in hash order: by the
    /// time a window's worth of names was seen, as many messages may have been started).
    pub(crate) fn leaves(&mut self, n: &NodeEntry) -> bool {
        self.leaves_charging(n, |n| {
            std::fs::symlink_metadata(&n.path).map_or(1, |m| {
                use std::os::unix::fs::MetadataExt;
                m.nlink().max(1) as usize
            })
        })
    }

    fn leaves_charging(&mut self, n: &NodeEntry, names: impl Fn(&NodeEntry) -> usize) -> bool {
        // Called for every name a scan reads: one string (the domain) per name, the
        // message itself by a hash of its group key, not three copies.
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let domain = n.domain();
        let key = BuildHasherDefault::<DefaultHasher>::default().hash_one((
            n.name.id.as_str(),
            n.name.from.as_str(),
            domain.as_str(),
        ));
        if self.admitted.contains(&key) {
            return false;
        }
        if self.queued.get(&domain).copied().unwrap_or(0) >= DOMAIN_WINDOW {
            self.full.insert(domain);
            return true;
        }
        *self.queued.entry(domain).or_default() += names(n);
        self.admitted.insert(key);
        false
    }

    /// The domains whose mail was left for later.
    pub(crate) fn into_full(self) -> HashSet<String> {
        self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_takes_domains_in_turn_and_caps_each() {
        let mut b = Backlog::default();
        b.extend((0..6).map(|_| Group::empty("deep.test")).collect());
        b.extend(vec![Group::empty("a.test"), Group::empty("b.test")]);
        let mut started = Vec::new();
        let mut guards = Vec::new();
        while let Some((g, r)) = b.next(2) {
            started.push(g.domain().to_owned());
            guards.push(r);
        }
        // Round-robin, and the deep domain stops at its two tasks.
        assert_eq!(started, ["deep.test", "a.test", "b.test", "deep.test"]);
        assert_eq!(b.len(), 4);
        assert!(!b.has_startable(2), "only the capped domain is left");
        // A task of the deep domain ends (its guard drops): one more may start.
        guards.remove(0);
        assert!(b.has_startable(2));
        let (g, _running) = b.next(2).unwrap();
        assert_eq!(g.domain(), "deep.test");
        assert!(b.next(2).is_none());
    }

    fn node(id: &str, to: &str) -> NodeEntry {
        let name = format!("1700000000-{id}-{to}-a@corp.test");
        let parsed = match mailspool_spool::NodeName::parse(&name) {
            mailspool_spool::Parsed::Node(n) => n,
            _ => panic!("{name}"),
        };
        NodeEntry {
            tier: 0,
            name: parsed,
            path: name.clone().into(),
            file_name: name,
            rescued: false,
            held: false,
            ino: 1,
        }
    }

    #[test]
    fn the_window_takes_whole_messages_up_to_its_size_per_domain() {
        let mut w = Window {
            queued: HashMap::from([("deep.test".to_owned(), DOMAIN_WINDOW - 1)]),
            admitted: HashSet::new(),
            full: HashSet::new(),
        };
        let three = |_: &NodeEntry| 3;
        // The first message fits (one node under the window): all its names are taken,
        // charged at once, past the window too.
        for r in 0..3 {
            assert!(!w.leaves_charging(&node("M1", &format!("r{r}@deep.test")), three));
        }
        assert_eq!(w.queued["deep.test"], DOMAIN_WINDOW + 2);
        // The next one does not start: every name of it stays.
        for r in 0..3 {
            assert!(w.leaves_charging(&node("M2", &format!("r{r}@deep.test")), three));
        }
        assert!(
            !w.leaves_charging(&node("M3", "x@other.test"), three),
            "other domains go on"
        );
        assert_eq!(w.into_full(), HashSet::from(["deep.test".to_owned()]));
    }

    #[test]
    fn the_window_counts_whole_messages_not_first_names() {
        // Names in hash order: a window's worth of first names must not start a
        // window's worth of ten-recipient messages.
        let mut w = Window {
            queued: HashMap::new(),
            admitted: HashSet::new(),
            full: HashSet::new(),
        };
        let ten = |_: &NodeEntry| 10;
        let taken = (0..DOMAIN_WINDOW)
            .filter(|m| !w.leaves_charging(&node(&format!("M{m}"), "r@d.test"), ten))
            .count();
        assert_eq!(taken, DOMAIN_WINDOW / 10);
    }
}
