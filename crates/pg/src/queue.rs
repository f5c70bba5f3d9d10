//! The queue in the database: claims and leases, what a delivery changes, reading the
//! queue, administration. Every change to a node a delivery makes names the claim
//! (`lease_token`): if the lease ran out and another host took the node, the change is
//! refused (`NotFound`), never applied twice.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use futures_util::{StreamExt, pin_mut};
use mailspool_spool::side::Attempt;
use mailspool_spool::usage::DayUsage;
use mailspool_spool::{
    Cursor, Found, Listed, NodeEntry, NodeFile, NodeLock, NodeName, Page, Placement, Result,
    SpoolConfig, SpoolError, Staged, Store, Wanted, now,
};
use tokio_postgres::Row;

use crate::stage::{PgStage, count_usage, key, row};
use crate::{Inner, PgSpool, db};

/// The columns every node query returns, in this order (see [`node_entry`]).
const NODE_COLUMNS: &str = "n.pk, n.message, n.rcpt, n.tier, n.entered, n.held, m.id, m.sender";

/// A node row as the queue's currency.
fn node_entry(r: &Row) -> NodeEntry {
    let pk: i64 = r.get(0);
    let message: i64 = r.get(1);
    let path = key(pk);
    NodeEntry {
        tier: r.get::<_, i16>(3) as usize,
        name: NodeName::new(
            r.get::<_, i64>(4) as u64,
            r.get::<_, &str>(6),
            r.get::<_, &str>(2),
            r.get::<_, &str>(7),
        ),
        file_name: path.display().to_string(),
        path,
        rescued: false,
        held: r.get(5),
        ino: message as u64,
    }
}

/// The row of an entry this back end made.
fn pk(entry: &NodeEntry) -> Result<i64> {
    row(&entry.path).ok_or_else(|| SpoolError::NotFound(entry.file_name.clone()))
}

/// Extend this process's leases (the renewer calls this every third of the lease).
pub(crate) async fn renew(inner: &Inner) -> Result<u64> {
    let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
    let secs = inner.lease.as_secs_f64();
    c.execute(
        "UPDATE mailspool_nodes SET lease_until = now() + make_interval(secs => $2)
         WHERE lease_token = $1",
        &[&inner.me.token, &secs],
    )
    .await
    .map_err(|e| db("renew claims", e))
}

/// LISTEN for commits on a connection of its own until it ends.
async fn listen(config: &tokio_postgres::Config, wake: &Arc<dyn Fn() + Send + Sync>) -> Result<()> {
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| db("connect", e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(e) => return Err(db("listen", e)),
            }
        }
        Ok(())
    });
    client
        .batch_execute("LISTEN mailspool_queued")
        .await
        .map_err(|e| db("listen", e))?;
    while rx.recv().await.is_some() {
        wake();
    }
    drop(client);
    driver.await.map_err(|e| db("listen", e))?
}

/// Why a node cannot be changed now: who holds it, or that it is gone.
async fn refusal(c: &tokio_postgres::Client, entry: &NodeEntry, pk: i64) -> SpoolError {
    match c
        .query_opt(
            "SELECT lease_host, lease_pid FROM mailspool_nodes WHERE pk = $1",
            &[&pk],
        )
        .await
    {
        Ok(Some(r)) => SpoolError::Locked {
            node: entry.file_name.clone(),
            holder: format!(
                "{} pid {}",
                r.get::<_, Option<String>>(0).unwrap_or_default(),
                r.get::<_, Option<i32>>(1).unwrap_or_default()
            ),
        },
        Ok(None) => SpoolError::NotFound(entry.file_name.clone()),
        Err(e) => db("read a node", e),
    }
}

/// A claim nobody holds, or one that ran out, or ours.
const FREE: &str = "(lease_until IS NULL OR lease_until < now() OR lease_token = $TOKEN)";

impl PgSpool {
    fn forget_claims(&self, pks: &[i64]) {
        let mut claims = self.inner.claims.lock().unwrap_or_else(|e| e.into_inner());
        for p in pks {
            claims.remove(p);
        }
    }

    /// One statement on one node, under the rule that it is free or ours; returns the
    /// changed row, or why not.
    fn change(&self, entry: &NodeEntry, set: &'static str) -> Result<NodeEntry> {
        let pk = pk(entry)?;
        let e = entry.clone();
        let period_of: Vec<i64> = (0..self.inner.config.tiers())
            .map(|t| self.inner.config.period(t) as i64)
            .collect();
        self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let sql = format!(
                "WITH n AS (UPDATE mailspool_nodes SET {set}
                   WHERE pk = $1 AND {} AND $3::bigint IS NOT NULL
                     AND $4::bigint[] IS NOT NULL RETURNING *)
                 SELECT {NODE_COLUMNS} FROM n JOIN mailspool_messages m ON m.pk = n.message",
                FREE.replace("$TOKEN", "$2")
            );
            let now = now() as i64;
            let rows = c
                .query(&sql, &[&pk, &inner.me.token, &now, &period_of])
                .await
                .map_err(|e| db("change a node", e))?;
            match rows.first() {
                Some(r) => Ok(node_entry(r)),
                None => Err(refusal(&c, &e, pk).await),
            }
        })
    }
}

impl Store for PgSpool {
    fn config(&self) -> &SpoolConfig {
        &self.inner.config
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn new_id(&self) -> String {
        let mut generator = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        generator
            .generate()
            .unwrap_or_else(|overflow| overflow.commit_overflow_increment())
            .to_string()
    }

    fn id_in_use(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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

    fn check_envelope(&self, id: &str, from: &str, to: &[String]) -> Result<()> {
        // The file spool's limits, so that a migration back to files always fits.
        mailspool_spool::check_envelope_names(id, from, to)
    }

    fn stage(self: Arc<Self>, id: &str) -> Result<Box<dyn Staged>> {
        Ok(Box::new(PgStage::new(self, id)?))
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

    fn visit_listing(&self, f: &mut dyn FnMut(Listed) -> ControlFlow<()>) -> Result<()> {
        self.listing(f)
    }

    fn find(&self, key: &str) -> Result<Vec<NodeEntry>> {
        let (k, pk) = (key.to_owned(), row(std::path::Path::new(key)).unwrap_or(-1));
        let found = self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {NODE_COLUMNS} FROM mailspool_nodes n
                         JOIN mailspool_messages m ON m.pk = n.message
                         WHERE m.id = $1 OR n.pk = $2 ORDER BY n.pk"
                    ),
                    &[&k, &pk],
                )
                .await
                .map_err(|e| db("find nodes", e))?;
            Ok(rows.iter().map(node_entry).collect::<Vec<_>>())
        })?;
        if found.is_empty() {
            return Err(SpoolError::NotFound(key.to_owned()));
        }
        Ok(found)
    }

    fn page(
        &self,
        start: Cursor,
        limit: usize,
        max_scan: usize,
        keep: &mut dyn FnMut(&NodeEntry) -> bool,
    ) -> Result<Page> {
        // Keyset paging on the node row: the cursor's offset is the last row returned.
        let mut page = Page::default();
        let mut after = start.offset;
        loop {
            let batch = (limit.max(1) * 2)
                .min(max_scan.saturating_sub(page.scanned))
                .max(1);
            let rows = self.run(move |inner| async move {
                let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                let rows = c
                    .query(
                        &format!(
                            "SELECT {NODE_COLUMNS} FROM mailspool_nodes n
                             JOIN mailspool_messages m ON m.pk = n.message
                             WHERE n.pk > $1 ORDER BY n.pk LIMIT $2"
                        ),
                        &[&after, &(batch as i64)],
                    )
                    .await
                    .map_err(|e| db("list nodes", e))?;
                Ok(rows.iter().map(node_entry).collect::<Vec<_>>())
            })?;
            let ended = rows.len() < batch;
            for n in rows {
                page.scanned += 1;
                after = row(&n.path).unwrap_or(after);
                if keep(&n) {
                    page.nodes.push(n);
                }
                if page.nodes.len() >= limit || page.scanned >= max_scan {
                    page.next = Some(Cursor {
                        dir: 0,
                        offset: after,
                    });
                    return Ok(page);
                }
            }
            if ended {
                return Ok(page);
            }
        }
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
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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
                })
                .collect())
        })
        .unwrap_or_default()
    }

    fn usage(&self, days: u64) -> Result<BTreeMap<u64, DayUsage>> {
        let since = (now() / 86_400).saturating_sub(days.saturating_sub(1)) * 86_400;
        self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let rows = c
                .query(
                    "SELECT time / 86400 * 86400, kind, sum(nodes)::bigint,
                            sum(bytes * nodes)::bigint
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
        let tiers: Vec<i16> = tiers.iter().map(|&t| t as i16).collect();
        let (due, only): (i64, Option<Vec<i64>>) = match wanted {
            Wanted::Due => (now() as i64, None),
            Wanted::All => (i64::MAX, None),
            Wanted::Nodes(keys) => (i64::MAX, Some(keys.iter().filter_map(|k| row(k)).collect())),
        };
        let limit = limit as i64;
        let claimed = self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let secs = inner.lease.as_secs_f64();
            let rows = c
                .query(
                    &format!(
                        "WITH c AS (
                           SELECT pk FROM mailspool_nodes
                           WHERE NOT held AND tier = ANY($1) AND due <= $2
                             AND ($3::bigint[] IS NULL OR pk = ANY($3))
                             AND (lease_until IS NULL OR lease_until < now())
                           ORDER BY due LIMIT $4
                           FOR UPDATE SKIP LOCKED),
                         n AS (
                           UPDATE mailspool_nodes n SET lease_host = $5, lease_pid = $6,
                             lease_token = $7, lease_until = now() + make_interval(secs => $8)
                           FROM c WHERE n.pk = c.pk RETURNING n.*)
                         SELECT {NODE_COLUMNS} FROM n JOIN mailspool_messages m ON m.pk = n.message
                         ORDER BY n.message, n.pk"
                    ),
                    &[
                        &tiers,
                        &due,
                        &only,
                        &limit,
                        &inner.me.host,
                        &inner.me.pid,
                        &inner.me.token,
                        &secs,
                    ],
                )
                .await
                .map_err(|e| db("claim nodes", e))?;
            let entries: Vec<NodeEntry> = rows.iter().map(node_entry).collect();
            let mut claims = inner.claims.lock().unwrap_or_else(|e| e.into_inner());
            claims.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
            Ok(entries)
        });
        Some(claimed)
    }

    fn watch(&self, wake: Arc<dyn Fn() + Send + Sync>) -> bool {
        let config = self.inner.pool.config().clone();
        self.driver.spawn(async move {
            loop {
                match listen(&config, &wake).await {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(error = %e, "lost the spool database's notifications; reconnecting"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                // What was queued while we were not listening is found by this look.
                wake();
            }
        });
        true
    }

    fn release_claims(&self, keys: &[std::path::PathBuf]) {
        let pks: Vec<i64> = keys.iter().filter_map(|k| row(k)).collect();
        let held: Vec<i64> = {
            let claims = self.inner.claims.lock().unwrap_or_else(|e| e.into_inner());
            pks.into_iter().filter(|p| claims.contains(p)).collect()
        };
        if held.is_empty() {
            return;
        }
        self.forget_claims(&held);
        // Waited for: a daemon that stops gives its claims back before it exits.
        let given = self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "UPDATE mailspool_nodes SET lease_host = NULL, lease_pid = NULL,
                   lease_token = NULL, lease_until = NULL
                 WHERE pk = ANY($1) AND lease_token = $2",
                &[&held, &inner.me.token],
            )
            .await
            .map_err(|e| db("give back claims", e))
        });
        if let Err(e) = given {
            tracing::debug!(error = %e, "cannot give back claims; they run out by themselves");
        }
    }

    fn lock_node(&self, entry: &NodeEntry) -> Result<NodeLock> {
        let pk = pk(entry)?;
        if self
            .inner
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&pk)
        {
            return Ok(NodeLock::claimed());
        }
        // Not claimed by a plan (an operator's change, a migration): claim it alone.
        let e = entry.clone();
        self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let secs = inner.lease.as_secs_f64();
            let n = c
                .execute(
                    &format!(
                        "UPDATE mailspool_nodes SET lease_host = $3, lease_pid = $4,
                           lease_token = $2, lease_until = now() + make_interval(secs => $5)
                         WHERE pk = $1 AND {}",
                        FREE.replace("$TOKEN", "$2")
                    ),
                    &[&pk, &inner.me.token, &inner.me.host, &inner.me.pid, &secs],
                )
                .await
                .map_err(|e| db("claim a node", e))?;
            if n == 0 {
                return Err(refusal(&c, &e, pk).await);
            }
            inner
                .claims
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pk);
            Ok(NodeLock::claimed())
        })
    }

    fn open_node(&self, entry: &NodeEntry) -> Result<NodeFile> {
        let message = entry.ino as i64;
        let name = entry.file_name.clone();
        self.run(move |inner| async move {
            use std::io::Write;
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let size: i64 = match c
                .query_opt(
                    "SELECT size FROM mailspool_messages WHERE pk = $1",
                    &[&message],
                )
                .await
                .map_err(|e| db("read a message", e))?
            {
                Some(r) => r.get(0),
                None => return Err(SpoolError::NotFound(name)),
            };
            let mut file = tempfile::tempfile()
                .map_err(|e| SpoolError::io_path("create", std::env::temp_dir(), e))?;
            // Chunk by chunk: memory holds one chunk, whatever the message's size.
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&message];
            let stream = c
                .query_raw(
                    "SELECT data FROM mailspool_chunks WHERE message = $1 ORDER BY seq",
                    params,
                )
                .await
                .map_err(|e| db("read a message", e))?;
            pin_mut!(stream);
            while let Some(r) = stream.next().await {
                let r = r.map_err(|e| db("read a message", e))?;
                file.write_all(r.get::<_, &[u8]>(0))
                    .map_err(|e| SpoolError::io_path("write", std::env::temp_dir(), e))?;
            }
            // Read from the start, as a node file opened afresh is.
            std::io::Seek::rewind(&mut file)
                .map_err(|e| SpoolError::io_path("read", std::env::temp_dir(), e))?;
            Ok(NodeFile {
                file,
                dev: 0,
                ino: message as u64,
                size: size as u64,
                nlink: 1,
            })
        })
    }

    fn quarantine(&self, entry: &NodeEntry) -> Result<String> {
        // A row is not a planted file: nothing here needs moving out of sight.
        Err(SpoolError::NotFound(entry.file_name.clone()))
    }

    fn delete_locked(&self, entry: &NodeEntry) -> Result<()> {
        let pk = pk(entry)?;
        let name = entry.file_name.clone();
        let done = self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let tx = c.transaction().await.map_err(|e| db("begin", e))?;
            // The node, if still ours; then its message, locked, so that of two hosts
            // removing its last two nodes one sees the other's and the message goes.
            let Some(r) = tx
                .query_opt(
                    "DELETE FROM mailspool_nodes WHERE pk = $1 AND lease_token = $2
                     RETURNING message",
                    &[&pk, &inner.me.token],
                )
                .await
                .map_err(|e| db("delete a node", e))?
            else {
                return Err(SpoolError::NotFound(name));
            };
            let message: i64 = r.get(0);
            tx.execute(
                "SELECT 1 FROM mailspool_messages WHERE pk = $1 FOR UPDATE",
                &[&message],
            )
            .await
            .map_err(|e| db("lock a message", e))?;
            tx.execute(
                "DELETE FROM mailspool_messages m WHERE pk = $1
                 AND NOT EXISTS (SELECT 1 FROM mailspool_nodes WHERE message = $1)",
                &[&message],
            )
            .await
            .map_err(|e| db("delete a message", e))?;
            tx.commit().await.map_err(|e| db("commit", e))
        });
        self.forget_claims(&[pk]);
        done
    }

    fn move_to_tier_locked(&self, entry: &NodeEntry, tier: usize) -> Result<NodeEntry> {
        let pk = pk(entry)?;
        let name = entry.file_name.clone();
        let period = self.inner.config.period(tier) as i64;
        let moved = self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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

    fn dkim_signature(&self, ino: u64, _id: &str) -> Option<Vec<u8>> {
        self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "UPDATE mailspool_nodes n SET delay_warned = false FROM mailspool_messages m
                 WHERE m.pk = n.message AND m.id = $1 AND n.rcpt = $2 AND m.sender = $3",
                &[&id, &to, &from],
            )
            .await
            .map_err(|e| db("unmark a delay warning", e))
        });
    }

    fn sweep(&self, max_age: std::time::Duration) -> usize {
        // Usage rows older than the longest life are kept (they are the history); what
        // could be left over is a message with no node (an operator's delete by hand).
        let _ = max_age;
        self.run(move |inner| async move {
            let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "DELETE FROM mailspool_messages m WHERE created < $1
                 AND NOT EXISTS (SELECT 1 FROM mailspool_nodes n WHERE n.message = m.pk)",
                &[&(now().saturating_sub(3600) as i64)],
            )
            .await
            .map_err(|e| db("sweep", e))
        })
        .unwrap_or(0) as usize
    }

    fn delete(&self, entry: &NodeEntry) -> Result<()> {
        let pk = pk(entry)?;
        let e = entry.clone();
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let tx = c.transaction().await.map_err(|e| db("begin", e))?;
            let r = tx
                .query_opt(
                    &format!(
                        "DELETE FROM mailspool_nodes WHERE pk = $1 AND {} RETURNING message",
                        FREE.replace("$TOKEN", "$2")
                    ),
                    &[&pk, &inner.me.token],
                )
                .await
                .map_err(|e| db("delete a node", e))?;
            let Some(r) = r else {
                drop(tx);
                return Err(refusal(&c, &e, pk).await);
            };
            let message: i64 = r.get(0);
            tx.execute(
                "SELECT 1 FROM mailspool_messages WHERE pk = $1 FOR UPDATE",
                &[&message],
            )
            .await
            .map_err(|e| db("lock a message", e))?;
            tx.execute(
                "DELETE FROM mailspool_messages WHERE pk = $1
                 AND NOT EXISTS (SELECT 1 FROM mailspool_nodes WHERE message = $1)",
                &[&message],
            )
            .await
            .map_err(|e| db("delete a message", e))?;
            tx.commit().await.map_err(|e| db("commit", e))
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

impl PgSpool {
    /// Stream listing rows (node, message size, last reply) to `f`.
    pub(crate) fn listing(&self, f: &mut dyn FnMut(Listed) -> ControlFlow<()>) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Listed>>>(16);
        let inner = self.inner.clone();
        self.driver.spawn(async move {
            let run = async {
                let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
                let stream = c
                    .query_raw(
                        &format!(
                            "SELECT {NODE_COLUMNS}, m.size, n.last_reply FROM mailspool_nodes n
                             JOIN mailspool_messages m ON m.pk = n.message
                             ORDER BY n.held, n.tier, n.entered, n.pk"
                        ),
                        params,
                    )
                    .await
                    .map_err(|e| db("list nodes", e))?;
                pin_mut!(stream);
                let mut batch = Vec::with_capacity(4096);
                while let Some(r) = stream.next().await {
                    let r = r.map_err(|e| db("list nodes", e))?;
                    batch.push(Listed {
                        node: node_entry(&r),
                        size: r.get::<_, i64>(8) as u64,
                        last_error: r.get(9),
                    });
                    if batch.len() == 4096 && tx.send(Ok(std::mem::take(&mut batch))).is_err() {
                        return Ok(());
                    }
                }
                let _ = tx.send(Ok(batch));
                Ok::<(), SpoolError>(())
            };
            if let Err(e) = run.await {
                let _ = tx.send(Err(e));
            }
        });
        for batch in rx {
            for l in batch? {
                if f(l).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Stream node rows to `f` (a million rows never sit in memory at once).
    fn visit(&self, tail: String, f: &mut dyn FnMut(Found) -> ControlFlow<()>) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<NodeEntry>>>(16);
        let inner = self.inner.clone();
        self.driver.spawn(async move {
            let run = async {
                let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
                let stream = c
                    .query_raw(
                        &format!(
                            "SELECT {NODE_COLUMNS} FROM mailspool_nodes n
                             JOIN mailspool_messages m ON m.pk = n.message {tail}"
                        ),
                        params,
                    )
                    .await
                    .map_err(|e| db("list nodes", e))?;
                pin_mut!(stream);
                let mut batch = Vec::with_capacity(1024);
                while let Some(r) = stream.next().await {
                    batch.push(node_entry(&r.map_err(|e| db("list nodes", e))?));
                    if batch.len() == 1024 && tx.send(Ok(std::mem::take(&mut batch))).is_err() {
                        return Ok(()); // The reader stopped.
                    }
                }
                let _ = tx.send(Ok(batch));
                Ok::<(), SpoolError>(())
            };
            if let Err(e) = run.await {
                let _ = tx.send(Err(e));
            }
        });
        for batch in rx {
            for n in batch? {
                if f(Found::Node(n)).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
