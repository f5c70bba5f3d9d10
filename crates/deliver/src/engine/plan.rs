//! Planning a pass: which due nodes this process takes (a scan of the tiers, or the
//! database's claims), grouped by message and destination for delivery.

use super::*;

impl Engine {
    /// Scan the spool and group what this pass should deliver. Nodes this process has
    /// already planned are left out; every group returned must go to
    /// [`Engine::deliver_group`] (which releases its nodes when done).
    pub fn plan(&self, opts: &PassOptions) -> Result<Plan, SpoolError> {
        self.plan_except(opts, &|_| false)
    }

    /// [`Engine::plan`], leaving out the nodes `skip` names.
    pub fn plan_except(
        &self,
        opts: &PassOptions,
        skip: &dyn Fn(&NodeEntry) -> bool,
    ) -> Result<Plan, SpoolError> {
        // A pass over the queue may meet nodes a killed process delivered: read the
        // recent deliveries once (a pass over the nodes just committed cannot).
        if !matches!(opts.selection, Selection::Nodes(_)) {
            self.delivered_before
                .get_or_init(|| restart::DeliveredBefore::read(&*self.spool));
        }
        if let Some(plan) = self.plan_claims(opts, skip) {
            return plan;
        }
        let config = self.spool.config();
        let now = now();
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let mut groups: HashMap<(String, String, String), Vec<NodeEntry>> = HashMap::new();
        let mut order = Vec::new();
        let mut plan = Plan::default();
        let mut taken = 0usize;
        // Names this scan saw of each planned message and each fresh tier-0 one (see
        // `incomplete_messages`).
        let mut names_seen: HashMap<MessageKey, u64> = HashMap::new();
        let mut planned: HashSet<MessageKey> = HashSet::new();
        // Planned inodes with names this scan has not reached yet: past the limit, the
        // scan reads on until there are none.
        let mut unseen: HashMap<MessageKey, u64> = HashMap::new();
        for tier in 0..config.tiers() {
            if opts.tiers.as_ref().is_some_and(|t| !t.contains(&tier)) {
                continue;
            }
            if opts.use_priority {
                let p = config.priorities.get(tier).copied().unwrap_or(1).max(1);
                if rand::random_range(0..p) != 0 {
                    continue;
                }
            }
            plan.tiers.push(tier);
            if plan.truncated {
                continue;
            }
            self.spool.visit_tier(tier, &mut |found| {
                let n = match found {
                    Found::Node(n) => n,
                    Found::Unparsable(path) => {
                        let mut warned =
                            self.warned_names.lock().unwrap_or_else(|e| e.into_inner());
                        if warned.len() >= MAX_WARNED_NAMES {
                            warned.clear();
                        }
                        if warned.insert(path.clone()) {
                            tracing::warn!(path = %escape(&path.display().to_string()), "file name is not a node name; skipped (said once; `mailspool fsck --repair` sets it aside)");
                        } else {
                            tracing::debug!(path = %escape(&path.display().to_string()), "file name is not a node name; skipped");
                        }
                        return ControlFlow::Continue(());
                    }
                };
                let key = message_key(&n);
                // Counted only where a count is used: names of a commit that may still
                // be linking (tier 0, named in the last few seconds) and of messages
                // already planned. A deep queue of older mail keeps no count per name.
                let seen = if planned.contains(&key) || (tier == 0 && n.name.time + FRESH >= now) {
                    let seen = names_seen.entry(key).or_default();
                    *seen += 1;
                    *seen
                } else {
                    names_seen.get(&key).copied().unwrap_or(0) + 1
                };
                if let Some(left) = unseen.get_mut(&key) {
                    *left -= 1;
                    if *left == 0 {
                        unseen.remove(&key);
                    }
                }
                let wanted = match &opts.selection {
                    Selection::Due => self.spool.due_at(&n) <= now,
                    Selection::All => true,
                    Selection::Nodes(paths) => paths.contains(&n.path),
                };
                if !wanted || in_flight.contains(&n.path) || skip(&n) {
                    return ControlFlow::Continue(());
                }
                // Past the limit, the directory is read on only for the other names of
                // messages already planned: a chunk never cuts a message (names come in
                // hash order, so a message's are spread over the directory).
                let completing = taken >= limit;
                if completing && !planned.contains(&key) {
                    plan.truncated = true;
                    return if unseen.is_empty() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    };
                }
                if planned.insert(key) {
                    names_seen.insert(key, seen);
                    // How many of its names are still to come (never through a symlink;
                    // a name gone meanwhile is the delivery's to see).
                    if let Ok(meta) = std::fs::symlink_metadata(&n.path) {
                        let left = meta.nlink().saturating_sub(seen);
                        if meta.ino() == n.ino && left > 0 {
                            unseen.insert(key, left);
                        }
                    }
                }
                // Planned nodes count as in flight until their group is done, so a
                // later pass does not plan them again.
                in_flight.insert(n.path.clone());
                add_to_group(&mut groups, &mut order, n);
                if !completing {
                    taken += 1;
                }
                if taken >= limit && unseen.is_empty() {
                    // Every planned message is whole: the rest waits for the next chunk.
                    plan.truncated = true;
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })?;
        }
        let incomplete = incomplete_messages(&groups, &names_seen);
        if !incomplete.is_empty() {
            for nodes in groups.values_mut() {
                nodes.retain(|n| {
                    let keep = !incomplete.contains(&message_key(n));
                    if !keep {
                        in_flight.remove(&n.path);
                    }
                    keep
                });
            }
            self.look_again_in(std::time::Duration::from_millis(10));
        }
        plan.groups = order
            .into_iter()
            .map(|key| Group {
                nodes: groups.remove(&key).unwrap_or_default(),
                domain: key.2,
            })
            .filter(|g| !g.nodes.is_empty())
            .collect();
        Ok(plan)
    }

    /// A plan on a back end that claims (a database): the claimed nodes, grouped.
    /// `None` when the back end has no claims (the file spool: see `plan_except`).
    fn plan_claims(
        &self,
        opts: &PassOptions,
        skip: &dyn Fn(&NodeEntry) -> bool,
    ) -> Option<Result<Plan, SpoolError>> {
        let config = self.spool.config();
        // Claims are indexed by due time: no dice needed to keep a deep tier cheap.
        let tiers: Vec<usize> = (0..config.tiers())
            .filter(|t| opts.tiers.as_ref().is_none_or(|only| only.contains(t)))
            .collect();
        // One round of this host's delivery slots at a time, not a whole chunk: what
        // one host claims, the others cannot take, and they may be idle (a host that
        // claimed 800 nodes for a slow receiver would keep the other hosts waiting).
        let limit = opts
            .limit
            .unwrap_or(PLAN_CHUNK)
            .min(self.cfg().max_deliveries.max(1));
        let wanted = match &opts.selection {
            Selection::Due => mailspool_spool::Wanted::Due,
            Selection::All => mailspool_spool::Wanted::All,
            Selection::Nodes(keys) => mailspool_spool::Wanted::Nodes(keys),
        };
        let claimed = match self.spool.claim(&tiers, limit, wanted)? {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let full = claimed.len() >= limit;
        let (claimed, skipped): (Vec<_>, Vec<_>) = claimed.into_iter().partition(|n| !skip(n));
        let skipped: Vec<PathBuf> = skipped.into_iter().map(|n| n.path).collect();
        self.spool.release_claims(&skipped);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let mut groups: HashMap<(String, String, String), Vec<NodeEntry>> = HashMap::new();
        let mut order = Vec::new();
        for n in claimed {
            in_flight.insert(n.path.clone());
            add_to_group(&mut groups, &mut order, n);
        }
        let groups: Vec<Group> = order
            .into_iter()
            .map(|key| Group {
                nodes: groups.remove(&key).unwrap_or_default(),
                domain: key.2,
            })
            .collect();
        Some(Ok(Plan {
            // Nothing new taken (all skipped): stop, or a pass would spin.
            truncated: full && !groups.is_empty(),
            groups,
            tiers,
        }))
    }
}

/// What the scan counts a message's names by: its inode number *and* its id. An inode
/// number alone is not enough while the directory is read: a message delivered (its
/// names seen, then unlinked) frees its inode, and a commit made meanwhile can get the
/// same number; counted together, the new message's names seen looked like all of them
/// and it went in two transactions (bench/load `-r 10`: 9 to 13 extra per 20,000
/// messages). The id is hashed, not cloned: a scan of 200,000 names keeps no strings.
pub(super) type MessageKey = (u64, u64);

/// Seconds a tier-0 name counts as fresh: its commit may still be linking names (the
/// commit takes its time once, before its first link).
const FRESH: u64 = 5;

pub(super) fn message_key(n: &NodeEntry) -> MessageKey {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let id = BuildHasherDefault::<DefaultHasher>::default().hash_one(n.name.id.as_str());
    (n.ino, id)
}

/// One message's nodes at one domain, by (id, sender, domain), in first-seen order.
type GroupKey = (String, String, String);

/// Add node `n` to its group, remembering the order groups were first seen in.
fn add_to_group(
    groups: &mut HashMap<GroupKey, Vec<NodeEntry>>,
    order: &mut Vec<GroupKey>,
    n: NodeEntry,
) {
    let key = (n.name.id.clone(), n.name.from.clone(), n.domain());
    let entry = groups.entry(key.clone()).or_default();
    if entry.is_empty() {
        order.push(key);
    }
    entry.push(n);
}

/// Tier-0 inodes whose scan saw fewer names than the inode has, changed in the last two
/// seconds: a commit was still linking the message's recipients while the directory was
/// read. Planned now, the names seen would go in one transaction and the rest in
/// another; left for the next scan (which counts in-flight names too), they go in one.
/// An older inode with more names has them elsewhere (another tier, held, or being
/// delivered) and goes as it is.
fn incomplete_messages(
    groups: &HashMap<(String, String, String), Vec<NodeEntry>>,
    names_seen: &HashMap<MessageKey, u64>,
) -> HashSet<MessageKey> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut checked = HashSet::new();
    let mut incomplete = HashSet::new();
    for n in groups.values().flatten().filter(|n| n.tier == 0 && !n.held) {
        let key = message_key(n);
        if !checked.insert(key) {
            continue;
        }
        let seen = names_seen.get(&key).copied().unwrap_or(0);
        // Stat'ed again, not the plan's first look: a commit may have linked more names
        // (and the scan seen them) since. Never through a symlink; a name gone since the
        // scan is the delivery's to see.
        let Ok(meta) = std::fs::symlink_metadata(&n.path) else {
            continue;
        };
        if meta.ino() == n.ino && meta.nlink() > seen {
            if now - meta.ctime() < 2 {
                incomplete.insert(key);
            } else {
                tracing::debug!(id = %n.name.id, nlink = meta.nlink(), seen, "planned with names this scan did not see (not a fresh commit)");
            }
        }
    }
    incomplete
}
