//! Reading the queue from the database: node rows as entries, streamed listings,
//! paging, finding, opening a message's bytes, and the commit notifications.

use std::ops::ControlFlow;
use std::sync::Arc;

use futures_util::{StreamExt, pin_mut};
use mailspool_spool::{
    Cursor, Found, Listed, NodeEntry, NodeFile, NodeName, Page, Result, SpoolError,
};
use tokio_postgres::Row;

use crate::stage::{key, row};
use crate::{PgSpool, db};

/// The columns every node query returns, in this order (see [`node_entry`]).
pub(crate) const NODE_COLUMNS: &str =
    "n.pk, n.message, n.rcpt, n.tier, n.entered, n.held, m.id, m.sender";

/// A node row as the queue's currency.
pub(crate) fn node_entry(r: &Row) -> NodeEntry {
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
pub(crate) fn pk(entry: &NodeEntry) -> Result<i64> {
    row(&entry.path).ok_or_else(|| SpoolError::NotFound(entry.file_name.clone()))
}

/// LISTEN for commits on a connection of its own until it ends.
async fn listen(
    (config, tls): &(tokio_postgres::Config, crate::pool::Tls),
    wake: &Arc<dyn Fn() + Send + Sync>,
) -> Result<()> {
    let (client, mut connection) = config
        .connect(tls.clone())
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

impl PgSpool {
    pub(crate) fn find_nodes(&self, key: &str) -> Result<Vec<NodeEntry>> {
        let (k, pk) = (key.to_owned(), row(std::path::Path::new(key)).unwrap_or(-1));
        let found = self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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

    pub(crate) fn page_nodes(
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
                let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
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

    pub(crate) fn open_message(&self, entry: &NodeEntry) -> Result<NodeFile> {
        let message = entry.ino as i64;
        let name = entry.file_name.clone();
        self.run(move |inner| async move {
            use std::io::Write;
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            let mut file = tempfile::tempfile()
                .map_err(|e| SpoolError::io_path("create", std::env::temp_dir(), e))?;
            // One query, streamed chunk by chunk: memory holds one chunk, whatever the
            // message's size.
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&message];
            let stream = c
                .query_raw(
                    "SELECT m.size, c.data FROM mailspool_messages m
                     LEFT JOIN mailspool_chunks c ON c.message = m.pk
                     WHERE m.pk = $1 ORDER BY c.seq",
                    params,
                )
                .await
                .map_err(|e| db("read a message", e))?;
            pin_mut!(stream);
            let mut size = None;
            while let Some(r) = stream.next().await {
                let r = r.map_err(|e| db("read a message", e))?;
                size = Some(r.get::<_, i64>(0));
                if let Some(data) = r.get::<_, Option<&[u8]>>(1) {
                    file.write_all(data)
                        .map_err(|e| SpoolError::io_path("write", std::env::temp_dir(), e))?;
                }
            }
            let Some(size) = size else {
                return Err(SpoolError::NotFound(name));
            };
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

    pub(crate) fn watch_commits(&self, wake: Arc<dyn Fn() + Send + Sync>) -> bool {
        let config = self.inner.pool.settings();
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
}

impl PgSpool {
    /// Stream listing rows (node, message size, last reply) to `f`. Sorting a million
    /// rows in memory rather than on disk is most of the listing's time, hence the
    /// session settings (reset before the connection goes back to the pool).
    pub(crate) fn listing(&self, f: &mut dyn FnMut(Listed) -> ControlFlow<()>) -> Result<()> {
        let sql = format!(
            "SELECT {NODE_COLUMNS}, m.size, n.last_reply FROM mailspool_nodes n
             JOIN mailspool_messages m ON m.pk = n.message
             ORDER BY n.held, n.tier, n.entered, n.pk"
        );
        // Room to sort in memory, no JIT for one big query, and the join and the sort
        // spread over the server's cores (a gather merge keeps the order).
        let settings = Some((
            "SET work_mem = '256MB'; SET jit = off; SET parallel_setup_cost = 0; \
             SET parallel_tuple_cost = 0",
            "RESET work_mem; RESET jit; RESET parallel_setup_cost; RESET parallel_tuple_cost",
        ));
        let listed = |r: &Row| Listed {
            node: node_entry(r),
            size: r.get::<_, i64>(8) as u64,
            last_error: r.get(9),
        };
        self.stream(sql, settings, listed, f)
    }

    /// Stream node rows to `f` (a million rows never sit in memory at once).
    pub(crate) fn visit(
        &self,
        tail: String,
        f: &mut dyn FnMut(Found) -> ControlFlow<()>,
    ) -> Result<()> {
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM mailspool_nodes n
             JOIN mailspool_messages m ON m.pk = n.message {tail}"
        );
        self.stream(sql, None, |r| Found::Node(node_entry(r)), f)
    }

    /// Run `sql` (with `settings`: what to SET before and RESET after) on the spool's
    /// runtime and hand each row, made by `make`, to `f` here, in batches through a
    /// bounded channel; `f` breaking stops the query.
    fn stream<T: Send + 'static>(
        &self,
        sql: String,
        settings: Option<(&'static str, &'static str)>,
        make: fn(&Row) -> T,
        f: &mut dyn FnMut(T) -> ControlFlow<()>,
    ) -> Result<()> {
        const BATCH: usize = 4096;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<T>>>(16);
        let inner = self.inner.clone();
        self.driver.spawn(async move {
            let run = async {
                let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                if let Some((set, _)) = settings {
                    c.batch_execute(set)
                        .await
                        .map_err(|e| db("list nodes", e))?;
                }
                let streamed = async {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
                    let stream = c
                        .query_raw(&sql, params)
                        .await
                        .map_err(|e| db("list nodes", e))?;
                    pin_mut!(stream);
                    let mut batch = Vec::with_capacity(BATCH);
                    while let Some(r) = stream.next().await {
                        batch.push(make(&r.map_err(|e| db("list nodes", e))?));
                        if batch.len() == BATCH && tx.send(Ok(std::mem::take(&mut batch))).is_err()
                        {
                            return Ok(()); // The reader stopped.
                        }
                    }
                    let _ = tx.send(Ok(batch));
                    Ok::<(), SpoolError>(())
                };
                let result = streamed.await;
                if let Some((_, reset)) = settings {
                    let _ = c.batch_execute(reset).await;
                }
                result
            };
            if let Err(e) = run.await {
                let _ = tx.send(Err(e));
            }
        });
        for batch in rx {
            for item in batch? {
                if f(item).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
