//! Claims: nodes taken with `FOR UPDATE SKIP LOCKED` and leased to this process,
//! renewed while it lives, given back when it is done with them.

use mailspool_spool::{LockHolder, NodeEntry, NodeLock, Result, SpoolError, Wanted, now};

use crate::read::{NODE_COLUMNS, node_entry, pk};
use crate::stage::row;
use crate::{Inner, PgSpool, db};

/// Extend this process's leases (the renewer calls this every third of the lease).
///
/// Only the claims this process still counts as its own: one whose settling failed (the
/// database went away mid-way) is dropped from that count and left to run out, so that
/// another host (or this one) takes it again instead of it staying leased forever.
pub(crate) async fn renew(inner: &Inner) -> Result<u64> {
    let held: Vec<i64> = inner
        .claims
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .collect();
    let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
    let secs = inner.lease.as_secs_f64();
    c.execute(
        "UPDATE mailspool_nodes SET lease_until = now() + make_interval(secs => $2)
         WHERE lease_token = $1 AND pk = ANY($3)",
        &[&inner.me.token, &secs, &held],
    )
    .await
    .map_err(|e| db("renew claims", e))
}

/// Why a node cannot be changed now: who holds it, or that it is gone.
pub(crate) async fn refusal(c: &tokio_postgres::Client, entry: &NodeEntry, pk: i64) -> SpoolError {
    match c
        .query_opt(
            "SELECT lease_host, lease_pid FROM mailspool_nodes WHERE pk = $1",
            &[&pk],
        )
        .await
    {
        Ok(Some(r)) => SpoolError::Locked {
            node: entry.file_name.clone(),
            // Another host wrote it: escaped like any name from outside.
            holder: format!(
                "{} pid {}",
                mailspool_spool::escape(&r.get::<_, Option<String>>(0).unwrap_or_default()),
                r.get::<_, Option<i32>>(1).unwrap_or_default()
            ),
        },
        Ok(None) => SpoolError::NotFound(entry.file_name.clone()),
        Err(e) => db("read a node", e),
    }
}

/// A claim nobody holds, or one that ran out, or ours.
pub(crate) const FREE: &str =
    "(lease_until IS NULL OR lease_until < now() OR lease_token = $TOKEN)";

impl PgSpool {
    pub(crate) fn forget_claims(&self, pks: &[i64]) {
        let mut claims = self.inner.claims.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken_over = self
            .inner
            .taken_over
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for p in pks {
            claims.remove(p);
            taken_over.remove(p);
        }
    }

    /// One statement on one node, under the rule that it is free or ours; returns the
    /// changed row, or why not.
    pub(crate) fn change(&self, entry: &NodeEntry, set: &'static str) -> Result<NodeEntry> {
        let pk = pk(entry)?;
        let e = entry.clone();
        let period_of: Vec<i64> = (0..self.inner.config.tiers())
            .map(|t| self.inner.config.period(t) as i64)
            .collect();
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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

    pub(crate) fn claim_nodes(
        &self,
        tiers: &[usize],
        limit: usize,
        wanted: Wanted<'_>,
    ) -> Result<Vec<NodeEntry>> {
        let tiers: Vec<i16> = tiers.iter().map(|&t| t as i16).collect();
        let (due, only): (i64, Option<Vec<i64>>) = match wanted {
            Wanted::Due => (now() as i64, None),
            Wanted::All => (i64::MAX, None),
            Wanted::Nodes(keys) => (i64::MAX, Some(keys.iter().filter_map(|k| row(k)).collect())),
        };
        let limit = limit as i64;
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let secs = inner.lease.as_secs_f64();
            let rows = c
                .query(
                    &format!(
                        "WITH c AS (
                           SELECT pk, lease_host AS was_host, lease_pid AS was_pid,
                             extract(epoch FROM lease_until)::bigint AS was_until
                           FROM mailspool_nodes
                           WHERE NOT held AND tier = ANY($1) AND due <= $2
                             AND ($3::bigint[] IS NULL OR pk = ANY($3))
                             AND (lease_until IS NULL OR lease_until < now())
                           ORDER BY due LIMIT $4
                           FOR UPDATE SKIP LOCKED),
                         n AS (
                           UPDATE mailspool_nodes n SET lease_host = $5, lease_pid = $6,
                             lease_token = $7, lease_until = now() + make_interval(secs => $8)
                           FROM c WHERE n.pk = c.pk
                           RETURNING n.*, c.was_host, c.was_pid, c.was_until)
                         SELECT {NODE_COLUMNS}, n.was_host, n.was_pid, n.was_until
                         FROM n JOIN mailspool_messages m ON m.pk = n.message
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
            let mut taken_over = inner.taken_over.lock().unwrap_or_else(|e| e.into_inner());
            taken_over.extend(
                rows.iter().filter_map(|r| {
                    previous_holder(r, inner.lease).map(|h| (r.get::<_, i64>(0), h))
                }),
            );
            Ok(entries)
        })
    }

    pub(crate) fn give_back(&self, keys: &[std::path::PathBuf]) {
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
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
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

    /// See [`mailspool_spool::Store::postpone`].
    pub(crate) fn postpone_claims(&self, keys: &[std::path::PathBuf], until: u64) {
        let pks: Vec<i64> = keys.iter().filter_map(|k| row(k)).collect();
        if pks.is_empty() {
            return;
        }
        self.forget_claims(&pks);
        let done = self.run(move |inner| async move {
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            c.execute(
                "UPDATE mailspool_nodes SET due = greatest(due, $3), lease_host = NULL,
                   lease_pid = NULL, lease_token = NULL, lease_until = NULL
                 WHERE pk = ANY($1) AND lease_token = $2",
                &[&pks, &inner.me.token, &(until as i64)],
            )
            .await
            .map_err(|e| db("postpone nodes", e))
        });
        if let Err(e) = done {
            tracing::debug!(error = %e, "cannot postpone nodes; their claims run out by themselves");
        }
    }

    pub(crate) fn lock_one(&self, entry: &NodeEntry) -> Result<NodeLock> {
        let pk = pk(entry)?;
        if self
            .inner
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&pk)
        {
            let broke = self
                .inner
                .taken_over
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pk);
            return Ok(NodeLock::claimed_after(broke));
        }
        // Not claimed by a plan (an operator's change, a migration): claim it alone.
        let e = entry.clone();
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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
}

/// Who held a node just claimed, from the claim's last columns (after the node's): a
/// holder whose lease ran out rather than one that gave the node back (a node given
/// back or settled has no lease time).
fn previous_holder(r: &tokio_postgres::Row, lease: std::time::Duration) -> Option<LockHolder> {
    let until: i64 = r.get::<_, Option<i64>>(10)?;
    Some(LockHolder {
        host: r.get::<_, Option<String>>(8).unwrap_or_default(),
        pid: r.get::<_, Option<i32>>(9).map_or(0, |p| p.max(0) as u32),
        // When it last renewed: the lease's end, less a lease.
        since: (until.max(0) as u64).saturating_sub(lease.as_secs()),
        ours: true,
        stale: true,
        why: "its lease ran out",
    })
}
