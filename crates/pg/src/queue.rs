//! The queue in the database: claims and leases, what a delivery changes, reading the
//! queue, administration. Every change to a node a delivery makes names the claim
//! (`lease_token`): if the lease ran out and another host took the node, the change is
//! refused (`NotFound`), never applied twice.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use mailspool_spool::side::Attempt;
use mailspool_spool::usage::DayUsage;
use mailspool_spool::{
    Cursor, Found, Listed, NodeEntry, NodeFile, NodeLock, NodeName, Page, Placement, Result,
    SpoolConfig, SpoolError, Staged, Store, Wanted, now,
};

use crate::claim::{FREE, refusal};
use crate::read::{NODE_COLUMNS, node_entry, pk};
use crate::stage::{PgStage, count_usage};
use crate::{PgSpool, db};

/// Remove node `pk` if `condition` holds (it names the claim token as `$2`), and its
/// message with it when no other node of the message is left. Two hosts removing a
/// message's last two nodes at once may each see the other's: the message row is then
/// left without nodes, never delivered, and [`Store::sweep`] removes it.
pub(crate) async fn remove(
    c: &impl tokio_postgres::GenericClient,
    pk: i64,
    condition: &str,
    token: &str,
) -> Result<bool> {
    let removed: i64 = c
        .query_one(
            &format!(
                "WITH d AS (
                   DELETE FROM mailspool_nodes WHERE pk = $1 AND {condition} RETURNING message),
                 a AS (
                   DELETE FROM mailspool_attempts WHERE node = $1 AND EXISTS (SELECT 1 FROM d)),
                 m AS (
                   DELETE FROM mailspool_messages m USING d WHERE m.pk = d.message
                   AND NOT EXISTS (SELECT 1 FROM mailspool_nodes n
                                   WHERE n.message = d.message AND n.pk <> $1)
                   RETURNING m.pk),
                 c AS (
                   DELETE FROM mailspool_chunks WHERE message IN (SELECT pk FROM m))
                 SELECT count(*) FROM d"
            ),
            &[&pk, &token],
        )
        .await
        .map_err(|e| db("delete a node", e))?
        .get(0);
    Ok(removed > 0)
}

impl mailspool_spool::Intake for PgSpool {
    fn new_id(&self) -> String {
        let mut generator = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        generator
            .generate()
            .unwrap_or_else(|overflow| overflow.commit_overflow_increment())
            .to_string()
    }

    fn check_envelope(&self, id: &str, from: &str, to: &[String]) -> Result<()> {
        // The file spool's limits, so that a migration back to files always fits.
        mailspool_spool::check_envelope_names(id, from, to)
    }

    fn stage(self: Arc<Self>, id: &str) -> Result<Box<dyn Staged>> {
        Ok(Box::new(PgStage::new(self, id)?))
    }

    fn suppressed(&self, from: &str, to: &str) -> Option<mailspool_events::Suppression> {
        self.lookup_suppression(from, to)
    }

    fn record_events(&self, events: &[mailspool_events::Event], durable: bool) -> Result<()> {
        self.insert_events(events, durable)
    }

    fn read_events(
        &self,
        q: &mailspool_events::Query,
    ) -> Result<mailspool_spool::events::EventPage> {
        self.select_events(q)
    }

    fn suppress(&self, entry: &mailspool_events::Suppression) -> Result<()> {
        self.upsert_suppression(entry)
    }
}

impl Store for PgSpool {
    fn config(&self) -> &SpoolConfig {
        &self.inner.config
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn id_in_use(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.query_one(
                "SELECT EXISTS (SELECT 1 FROM mailspool_messages m
                   JOIN mailspool_nodes n ON n.message = m.pk WHERE m.id = $1)",
                &[&id],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| db("look up an id", e))
        })
    }

    fn import(
        &self,
        id: &str,
        from: &str,
        file: &std::fs::File,
        placements: &[(Placement, String)],
    ) -> Result<usize> {
        let file = file
            .try_clone()
            .map_err(|e| SpoolError::io_path("read", "the message", e))?;
        let (id, from, placements) = (id.to_owned(), from.to_owned(), placements.to_vec());
        self.run(move |inner| crate::stage::import(inner, id, from, file, placements))
    }

    fn visit_tier(&self, tier: usize, f: &mut dyn FnMut(Found) -> ControlFlow<()>) -> Result<()> {
        self.visit(
            format!(
                "WHERE n.tier = {} AND NOT n.held ORDER BY n.pk",
                tier as i16
            ),
            f,
        )
    }

    fn visit_all(&self, f: &mut dyn FnMut(Found) -> ControlFlow<()>) -> Result<()> {
        self.visit("ORDER BY n.held, n.tier, n.pk".to_owned(), f)
    }

    fn node_state(&self, entry: &NodeEntry) -> (Option<u64>, Option<String>) {
        let Ok(pk) = pk(entry) else {
            return (None, None);
        };
        self.run(move |inner| async move {
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            let r = c
                .query_opt(
                    "SELECT m.size, CASE WHEN n.lease_until > now()
                       THEN n.lease_host || ' pid ' || n.lease_pid END
                     FROM mailspool_nodes n JOIN mailspool_messages m ON m.pk = n.message
                     WHERE n.pk = $1",
                    &[&pk],
                )
                .await
                .map_err(|e| db("read a node", e))?;
            Ok(r.map_or((None, None), |r| {
                (
                    Some(r.get::<_, i64>(0) as u64),
                    r.get::<_, Option<&str>>(1)
                        .map(|h| mailspool_spool::escape(h).into_owned()),
                )
            }))
        })
        .unwrap_or((None, None))
    }

    fn visit_listing(&self, f: &mut dyn FnMut(Listed) -> ControlFlow<()>) -> Result<()> {
        self.listing(f)
    }

    fn find(&self, key: &str) -> Result<Vec<NodeEntry>> {
        self.find_nodes(key)
    }

    fn page(
        &self,
        start: Cursor,
        limit: usize,
        max_scan: usize,
        keep: &mut dyn FnMut(&NodeEntry) -> bool,
    ) -> Result<Page> {
        self.page_nodes(start, limit, max_scan, keep)
    }
    fn group_messages(&self, nodes: Vec<NodeEntry>) -> Vec<Vec<NodeEntry>> {
        // One message row is one message.
        let mut groups: Vec<Vec<NodeEntry>> = Vec::new();
        let mut at: std::collections::HashMap<u64, usize> = Default::default();
        for n in nodes {
            match at.get(&n.ino) {
                Some(&i) => groups[i].push(n),
                None => {
                    at.insert(n.ino, groups.len());
                    groups.push(vec![n]);
                }
            }
        }
        groups
    }

    fn attempts(&self, node: &NodeName) -> Vec<Attempt> {
        let (id, to, from) = (node.id.clone(), node.to.clone(), node.from.clone());
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let rows = c
                .query(
                    "SELECT a.time, a.host, a.reply, a.delivered FROM mailspool_attempts a
                     JOIN mailspool_nodes n ON n.pk = a.node
                     JOIN mailspool_messages m ON m.pk = n.message
                     WHERE m.id = $1 AND n.rcpt = $2 AND m.sender = $3 ORDER BY a.time",
                    &[&id, &to, &from],
                )
                .await
                .map_err(|e| db("read attempts", e))?;
            Ok(rows
                .iter()
                .map(|r| Attempt {
                    time: r.get::<_, i64>(0) as u64,
                    host: r.get(1),
                    reply: r.get(2),
                    delivered: r.get(3),
                    // A row's attempts are its own: no other node's can be read back.
                    node: None,
                })
                .collect())
        })
        .unwrap_or_default()
    }

    fn usage(&self, days: u64) -> Result<BTreeMap<u64, DayUsage>> {
        let since = (now() / 86_400).saturating_sub(days.saturating_sub(1)) * 86_400;
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let rows = c
                .query(
                    "SELECT time / 86400, kind, sum(nodes)::bigint, sum(bytes)::bigint
                     FROM mailspool_usage WHERE time >= $1 GROUP BY 1, 2",
                    &[&(since as i64)],
                )
                .await
                .map_err(|e| db("read usage", e))?;
            let mut out: BTreeMap<u64, DayUsage> = BTreeMap::new();
            for r in rows {
                let day = out.entry(r.get::<_, i64>(0) as u64).or_default();
                let (n, b) = (r.get::<_, i64>(2) as u64, r.get::<_, i64>(3) as u64);
                match r.get::<_, &str>(1) {
                    "Spool" => (day.spooled, day.spooled_bytes) = (n, b),
                    _ => (day.sent, day.sent_bytes) = (n, b),
                }
            }
            Ok(out)
        })
    }

    fn claim(
        &self,
        tiers: &[usize],
        limit: usize,
        wanted: Wanted<'_>,
    ) -> Option<Result<Vec<NodeEntry>>> {
        Some(self.claim_nodes(tiers, limit, wanted))
    }
    fn watch(&self, wake: Arc<dyn Fn() + Send + Sync>) -> bool {
        self.watch_commits(wake);
        true
    }
    fn postpone(&self, keys: &[std::path::PathBuf], until: u64) {
        self.postpone_claims(keys, until)
    }

    fn release_claims(&self, keys: &[std::path::PathBuf]) {
        self.give_back(keys)
    }
    fn lock_node(&self, entry: &NodeEntry) -> Result<NodeLock> {
        self.lock_one(entry)
    }
    fn open_node(&self, entry: &NodeEntry) -> Result<NodeFile> {
        self.open_message(entry)
    }
    fn quarantine(&self, entry: &NodeEntry) -> Result<String> {
        // A row is not a planted file: nothing here needs moving out of sight.
        Err(SpoolError::NotFound(entry.file_name.clone()))
    }

    fn delete_locked(&self, entry: &NodeEntry) -> Result<()> {
        // One statement, one round trip: the window between a server's 250 and the
        // node's removal (where a crash means the message is sent again) is as short
        // as the database allows.
        //
        // The database unreachable (a restart, a failover) is waited out for up to half
        // a lease, the claim still ours and renewed meanwhile: the node was delivered,
        // and giving up now would send it again once the lease ran out.
        let pk = pk(entry)?;
        let e = entry.clone();
        let done = self.run(move |inner| async move {
            let started = std::time::Instant::now();
            let mut pause = std::time::Duration::from_millis(50);
            loop {
                let attempt = async {
                    let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                    remove(&*c, pk, "lease_token = $2", &inner.me.token).await
                };
                match attempt.await {
                    Ok(true) => return Ok(()),
                    Ok(false) => return Err(SpoolError::NotFound(e.file_name)),
                    Err(SpoolError::Database(m)) if started.elapsed() + pause < inner.lease / 2 => {
                        tracing::warn!(error = %m, "cannot remove a delivered node yet; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(2));
                    }
                    Err(err) => return Err(err),
                }
            }
        });
        self.forget_claims(&[pk]);
        done
    }

    fn move_to_tier_locked(&self, entry: &NodeEntry, tier: usize) -> Result<NodeEntry> {
        let pk = pk(entry)?;
        let name = entry.file_name.clone();
        let period = self.inner.config.period(tier) as i64;
        let moved = self.run(move |inner| async move {
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            let now = now() as i64;
            let rows = c
                .query(
                    &format!(
                        "WITH n AS (UPDATE mailspool_nodes SET tier = $3, entered = $4::bigint,
                           due = $4::bigint + $5::bigint, attempts = attempts + 1, lease_host = NULL,
                           lease_pid = NULL, lease_token = NULL, lease_until = NULL
                         WHERE pk = $1 AND lease_token = $2 RETURNING *)
                         SELECT {NODE_COLUMNS} FROM n
                         JOIN mailspool_messages m ON m.pk = n.message"
                    ),
                    &[&pk, &inner.me.token, &(tier as i16), &now, &period],
                )
                .await
                .map_err(|e| db("move a node", e))?;
            rows.first()
                .map(node_entry)
                .ok_or(SpoolError::NotFound(name))
        });
        self.forget_claims(&[pk]);
        moved
    }

    fn record_attempt(&self, node: &NodeName, attempt: &Attempt) -> Result<()> {
        if attempt.delivered {
            // The node is deleted next, and its history with it (as in the file spool).
            return Ok(());
        }
        let (id, to, from, a) = (
            node.id.clone(),
            node.to.clone(),
            node.from.clone(),
            attempt.clone(),
        );
        self.run(move |inner| async move {
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            c.execute(
                "WITH n AS (UPDATE mailspool_nodes n SET last_reply = $4
                   FROM mailspool_messages m
                   WHERE m.pk = n.message AND m.id = $1 AND n.rcpt = $2 AND m.sender = $3
                   RETURNING n.pk)
                 INSERT INTO mailspool_attempts (node, time, host, reply, delivered)
                 SELECT pk, $5, $6, $4, $7 FROM n",
                &[
                    &id,
                    &to,
                    &from,
                    &a.reply,
                    &(a.time as i64),
                    &a.host,
                    &a.delivered,
                ],
            )
            .await
            .map_err(|e| db("record an attempt", e))?;
            Ok(())
        })
    }

    fn log_usage_nodes(&self, bytes: u64, kind: &str, nodes: usize) {
        if nodes == 0 {
            return;
        }
        if kind == "Sent" {
            // Summed here and written once a second (see `PgSpool::open`): a row per
            // delivered message would be a write per delivery.
            let mut sent = self.inner.sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.0 += bytes.saturating_mul(nodes as u64);
            sent.1 += nodes as u64;
            return;
        }
        let inner = self.inner.clone();
        let kind = kind.to_owned();
        self.driver.spawn(async move {
            if let Ok(c) = inner.pool.get().await
                && let Err(e) = count_usage(&*c, bytes, &kind, nodes).await
            {
                tracing::debug!(error = %e, "usage not counted");
            }
        });
    }

    fn flush(&self) {
        let inner = self.inner.clone();
        self.driver.run(async move { inner.flush_sent().await });
    }

    fn dkim_signature(&self, ino: u64, _id: &str) -> Option<Vec<u8>> {
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let r = c
                .query_opt(
                    "SELECT dkim FROM mailspool_messages WHERE pk = $1",
                    &[&(ino as i64)],
                )
                .await
                .map_err(|e| db("read a signature", e))?;
            Ok(r.and_then(|r| r.get::<_, Option<Vec<u8>>>(0)))
        })
        .ok()
        .flatten()
    }

    fn keep_dkim_signature(&self, ino: u64, _id: &str, field: &[u8]) -> Result<Vec<u8>> {
        let field = field.to_vec();
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            // The first one kept wins: every host sends the same signature.
            let r = c
                .query_opt(
                    "UPDATE mailspool_messages SET dkim = COALESCE(dkim, $2) WHERE pk = $1
                     RETURNING dkim",
                    &[&(ino as i64), &field],
                )
                .await
                .map_err(|e| db("keep a signature", e))?;
            Ok(r.and_then(|r| r.get::<_, Option<Vec<u8>>>(0))
                .unwrap_or(field))
        })
    }

    fn forget_dkim_signature(&self, _ino: u64, _id: &str) {
        // It goes with the message row.
    }

    fn claim_delay_warning(&self, node: &NodeName) -> Result<bool> {
        let (id, to, from) = (node.id.clone(), node.to.clone(), node.from.clone());
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let n = c
                .execute(
                    "UPDATE mailspool_nodes n SET delay_warned = true FROM mailspool_messages m
                     WHERE m.pk = n.message AND m.id = $1 AND n.rcpt = $2 AND m.sender = $3
                       AND NOT n.delay_warned",
                    &[&id, &to, &from],
                )
                .await
                .map_err(|e| db("mark a delay warning", e))?;
            Ok(n > 0)
        })
    }

    fn release_delay_warning(&self, node: &NodeName) {
        let (id, to, from) = (node.id.clone(), node.to.clone(), node.from.clone());
        let _ = self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "UPDATE mailspool_nodes n SET delay_warned = false FROM mailspool_messages m
                 WHERE m.pk = n.message AND m.id = $1 AND n.rcpt = $2 AND m.sender = $3",
                &[&id, &to, &from],
            )
            .await
            .map_err(|e| db("unmark a delay warning", e))
        });
    }

    fn load_cursor(&self, name: &str) -> Option<String> {
        self.cursor(name)
    }

    fn save_cursor(&self, name: &str, cursor: &str) -> Result<()> {
        self.set_cursor(name, cursor)
    }

    fn take_job(&self, name: &str) -> bool {
        self.lease_job(name)
    }

    fn suppressions(&self) -> Result<Vec<mailspool_events::Suppression>> {
        self.all_suppressions()
    }

    fn unsuppress(&self, address: &str, domain: &str) -> Result<bool> {
        self.delete_suppression(address, domain)
    }

    fn shared_limits(&self) -> Option<Arc<dyn mailspool_spool::shared::SharedLimits>> {
        Some(self.shared.clone())
    }

    fn records(&self) -> Option<Arc<dyn mailspool_spool::shared::SharedRecords>> {
        Some(self.shared.clone())
    }

    fn sweep(&self, max_age: std::time::Duration) -> usize {
        let pruned = self.prune_events();
        if pruned > 0 {
            tracing::info!(events = pruned, "removed events past their retention");
        }
        // Usage rows are kept (they are the history). What can be left over is a
        // message without nodes (see `remove`), and the chunks and attempts of rows
        // gone: a message and its nodes are committed together, so any committed
        // message without one is such a leftover.
        let _ = max_age;
        self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.batch_execute(
                "DELETE FROM mailspool_messages m
                   WHERE NOT EXISTS (SELECT 1 FROM mailspool_nodes n WHERE n.message = m.pk);
                 DELETE FROM mailspool_chunks c
                   WHERE NOT EXISTS (SELECT 1 FROM mailspool_messages m WHERE m.pk = c.message);
                 DELETE FROM mailspool_attempts a
                   WHERE NOT EXISTS (SELECT 1 FROM mailspool_nodes n WHERE n.pk = a.node);
                 DELETE FROM mailspool_records WHERE expires < now();",
            )
            .await
            .map_err(|e| db("sweep", e))?;
            // Shared limits of destinations nobody has used for a day: no slot held or
            // used since, no token taken since, not cooling.
            let idle = crate::shared::IDLE_DESTINATION;
            c.batch_execute(&format!(
                "DELETE FROM mailspool_destinations d
                   WHERE d.tokens_at < now() - interval '{idle}'
                     AND (d.cooling_until IS NULL OR d.cooling_until < now())
                     AND NOT EXISTS (SELECT 1 FROM mailspool_slots s
                                      WHERE s.destination = d.destination
                                        AND (s.holder IS NOT NULL
                                             OR s.expires >= now() - interval '{idle}'));
                 DELETE FROM mailspool_slots s
                   WHERE NOT EXISTS (SELECT 1 FROM mailspool_destinations d
                                      WHERE d.destination = s.destination);"
            ))
            .await
            .map(|()| 0u64)
            .map_err(|e| db("sweep", e))
        })
        .unwrap_or(0) as usize
    }

    fn delete(&self, entry: &NodeEntry) -> Result<()> {
        let pk = pk(entry)?;
        let e = entry.clone();
        self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let free = FREE.replace("$TOKEN", "$2");
            match remove(&*c, pk, &free, &inner.me.token).await? {
                true => Ok(()),
                false => Err(refusal(&c, &e, pk).await),
            }
        })
    }

    fn hold(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        self.change(entry, "held = true")
    }

    fn release(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        self.change(entry, "held = false")
    }

    fn retry_now(&self, entry: &NodeEntry) -> Result<NodeEntry> {
        // Due now: its time set back by its tier's period, as the file spool renames it.
        self.change(
            entry,
            "entered = $3 - ($4::bigint[])[tier + 1], due = $3, lease_until = NULL",
        )
    }
}
