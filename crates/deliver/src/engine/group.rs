//! Delivering one planned group: lock and open its nodes, split them into the stored
//! messages they are, send each message to its destination, settle the outcomes.

use super::*;

impl Engine {
    /// Deliver one group (the daemon spawns these itself).
    pub async fn deliver_group(
        self: Arc<Self>,
        group: Group,
        interactive: bool,
    ) -> Vec<NodeResult> {
        let paths: Vec<PathBuf> = group.nodes.iter().map(|n| n.path.clone()).collect();
        let results = self.deliver_locked_group(group, interactive).await;
        // What was left for later goes back to every host (a back end with claims).
        self.spool.release_claims(&paths);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for p in &paths {
            in_flight.remove(p);
        }
        results
    }

    async fn deliver_locked_group(&self, group: Group, interactive: bool) -> Vec<NodeResult> {
        let cfg = self.cfg();
        // This host's own mail is not routed: aliases and mailboxes (engine/local.rs),
        // unless a `[routes]` entry sends the domain somewhere on purpose.
        let local = cfg.local.is_local(&group.domain)
            && !cfg.routes.contains_key(&group.domain.to_ascii_lowercase());
        let mut routed = if local {
            Ok(Vec::new())
        } else {
            route(&group.domain, &cfg, self.dns.as_ref()).await
        };
        if !local
            && let Ok(targets) = &mut routed
            && let Err(e) = self.apply_tls_policies(&cfg, &group.domain, targets).await
        {
            routed = Err(e);
        }
        // Wait for a slot before locking anything: a node lock is held only while we
        // deliver (never while queued behind a busy host, where it could go stale and
        // be broken by another daemon), and other daemons can take what we cannot.
        // The destination's gate (its window, rates, cooling) replaces waiting for the
        // first host: what cannot pass soon is left for a later pass, unlocked.
        let dest = routed.as_ref().ok().and_then(|t| t.first()).map(|t| {
            let (key, limits) = cfg.shaping.destination(
                &group.domain,
                &t.host,
                &send::host_key(t),
                &cfg.default_limits(),
            );
            self.destinations
                .get(&key, &limits, self.spool.shared_limits())
        });
        let _pass = match &dest {
            // The daemon starts at most a quarter of its task slots per domain; a
            // destination (a provider group spans domains) may keep half of them
            // waiting at its gate, more is left for a later pass. A single pass (no
            // daemon to come back) waits for its turn.
            Some(d) => match d
                .enter(if self.has_daemon() {
                    self.task_cap() / 2
                } else {
                    usize::MAX
                })
                .await
            {
                Ok(pass) => Some(pass),
                Err(not_now) => {
                    mailspool_metrics::global().shaping_waits.inc();
                    self.look_again_in(not_now.after);
                    // A database queue would hand these straight back to the next
                    // plan (of any host): make them due when the destination may take
                    // mail again.
                    let keys: Vec<PathBuf> = group.nodes.iter().map(|n| n.path.clone()).collect();
                    self.spool
                        .postpone(&keys, now().saturating_add(not_now.after.as_secs().max(1)));
                    return group
                        .nodes
                        .iter()
                        .map(|n| skipped_for_now(n, not_now.reason.clone()))
                        .collect();
                }
            },
            None => None,
        };
        let _global = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let mut results = Vec::new();
        if self.stopping.load(Ordering::SeqCst) {
            return results;
        }
        let mut opened: Vec<(NodeEntry, NodeLock, NodeFile)> = Vec::new();
        let mut in_progress: HashSet<(u64, u64)> = HashSet::new();
        for n in group.nodes {
            let skipped = |reply: String| skipped_for_now(&n, reply);
            let lock = match self.spool.lock_node(&n) {
                Ok(lock) => lock,
                Err(e) => {
                    results.push(skipped(e.to_string()));
                    continue;
                }
            };
            // Another daemon may have delivered and deleted it since our scan; and what
            // the name points to now is what we send, opened without following links.
            match self.spool.open_node(&n) {
                // Its commit is still linking the message's other recipients: wait for
                // them, so that one message is one transaction (the daemon looks again
                // in a moment; a pass without a daemon takes it next time).
                Ok(file) if mailspool_spool::commit_in_progress(&file.file) => {
                    in_progress.insert(file.identity());
                    results.push(skipped("its commit is still under way".into()));
                    self.look_again_soon();
                }
                Ok(file) => opened.push((n, lock, file)),
                Err(SpoolError::NotFound(_)) => {
                    results.push(skipped("already gone".into()));
                }
                Err(e @ SpoolError::Untrusted { .. }) => {
                    let reply = match self.spool.quarantine(&n) {
                        Ok(to) => format!("{e}; moved to {}", escape(&to)),
                        Err(q) => format!("{e}; {q}"),
                    };
                    tracing::error!(node = %escape(&n.path.display().to_string()), reason = %reply, "refused to deliver");
                    results.push(skipped(reply));
                }
                Err(e) => {
                    tracing::error!(node = %escape(&n.path.display().to_string()), error = %e, "cannot open the node");
                    results.push(skipped(e.to_string()));
                }
            }
        }
        // A message whose commit was under way for one node waits as a whole, even for
        // nodes opened after the commit ended (it may end between two of them): one
        // message, one transaction.
        let (opened, waiting): (Vec<_>, Vec<_>) = opened
            .into_iter()
            .partition(|(_, _, file)| !in_progress.contains(&file.identity()));
        for (n, _lock, _file) in waiting {
            results.push(skipped_for_now(&n, "its commit is still under way".into()));
        }
        for mut claim in split_into_messages(opened) {
            let id = claim.nodes[0].0.name.id.clone(); // a claim has a node at least
            results.extend(self.drop_delivered_before(&mut claim));
            results.extend(self.drop_suppressed(&cfg, &mut claim));
            if claim.nodes.is_empty() {
                // Every name went unsent: a signature kept for the message goes with
                // its last name, as after a send.
                if !cfg.dkim.is_empty() {
                    self.settle_signature(&claim.file.file, claim.file.ino, &id, None);
                }
                continue;
            }
            let verdicts = match &routed {
                _ if local => self.deliver_local(&cfg, &claim).await,
                Err(e) if e.permanent => claim
                    .nodes
                    .iter()
                    .map(|(n, _)| {
                        Verdict::Permanent(Failure {
                            recipient: n.name.to.clone(),
                            status: e.status.into(),
                            remote_mta: None,
                            diagnostic: e.text.clone(),
                            from_smtp: false,
                        })
                    })
                    .collect(),
                Err(e) => claim
                    .nodes
                    .iter()
                    .map(|_| Verdict::Temporary {
                        host: String::new(),
                        reply: format!("{} {}", e.status, e.text),
                        recorded: false,
                    })
                    .collect(),
                // Boxed: every delivery task is moved when spawned, so its future
                // stays small and the sending state lives on the heap.
                Ok(targets) => {
                    let dest = dest.as_deref().expect("routed mail has a destination");
                    Box::pin(self.send_to_targets(&cfg, targets, &claim, dest)).await
                }
            };
            // Kept open past settling to see whether the message's last name went.
            let signed = (!cfg.dkim.is_empty())
                .then(|| claim.file.file.try_clone().ok())
                .flatten()
                .map(|f| {
                    let unsaved = claim
                        .unsaved_signature
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    (f, claim.file.ino, id, unsaved)
                });
            results.extend(self.settle(&cfg, claim, verdicts, interactive));
            if let Some((file, ino, id, unsaved)) = signed {
                self.settle_signature(&file, ino, &id, unsaved);
            }
        }
        results
    }
}

/// A node left for a later pass, and why (logged at debug: it is not an attempt).
fn skipped_for_now(n: &NodeEntry, reply: String) -> NodeResult {
    tracing::debug!(id = %n.name.id, to = %escape(&n.name.to), reason = %escape(&reply), "skipped for now");
    NodeResult {
        id: n.name.id.clone(),
        to: n.name.to.clone(),
        outcome: Outcome::Skipped,
        reply,
    }
}

/// Split the locked nodes of a candidate group (same id, sender and domain) into the
/// stored messages they are: one inode is one message; separate files join only when
/// their bytes are the same too (0.50's one-file-per-recipient copies of one message).
fn split_into_messages(opened: Vec<(NodeEntry, NodeLock, NodeFile)>) -> Vec<Claim> {
    let mut claims: Vec<Claim> = Vec::new();
    let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
    for (n, lock, file) in opened {
        match by_inode.get(&file.identity()) {
            Some(&i) => claims[i].nodes.push((n, lock)),
            None => {
                by_inode.insert(file.identity(), claims.len());
                claims.push(Claim {
                    nodes: vec![(n, lock)],
                    file,
                    unsaved_signature: Mutex::new(None),
                });
            }
        }
    }
    if claims.len() < 2 {
        return claims;
    }
    // Separate files with one id and sender: compare their bytes (small ones only; a
    // big one goes alone, which costs a transaction, never a wrong delivery).
    let mut merged: Vec<Claim> = Vec::new();
    let mut by_bytes: HashMap<Vec<u8>, usize> = HashMap::new();
    for claim in claims {
        let bytes = (claim.file.size <= wire::SMALL_MESSAGE)
            .then(|| wire::read_all_at(&claim.file.file, claim.file.size))
            .and_then(Result::ok);
        match bytes.as_ref().and_then(|b| by_bytes.get(b)) {
            Some(&i) => merged[i].nodes.extend(claim.nodes),
            None => {
                if let Some(b) = bytes {
                    by_bytes.insert(b, merged.len());
                }
                merged.push(claim);
            }
        }
    }
    merged
}
