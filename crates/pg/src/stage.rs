//! Intake into the database: a message is written to a local unnamed temporary file
//! first (any size, fixed memory), then streamed into one transaction: the message row,
//! its chunks, one node row per recipient. The commit returns only once PostgreSQL has
//! committed it with `synchronous_commit = on`.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;

use mailspool_spool::{
    Committed, NodeEntry, Placement, Result, Spool, SpoolError, Stage, Staged, now,
};
use tokio_postgres::Transaction;

use crate::read::pk;
use crate::{CHUNK, Inner, PgSpool, db};

/// A message on its way into the database.
pub struct PgStage {
    spool: Arc<PgSpool>,
    id: String,
    file: BufWriter<File>,
    written: u64,
}

impl std::fmt::Debug for PgStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStage").field("id", &self.id).finish()
    }
}

impl PgStage {
    pub(crate) fn new(spool: Arc<PgSpool>, id: &str) -> Result<PgStage> {
        if !mailspool_spool::name::is_valid_id(id) {
            return Err(SpoolError::InvalidId(id.to_owned()));
        }
        // Unnamed (O_TMPFILE): nothing to clean up after a crash.
        let file = tempfile::tempfile()
            .map_err(|e| SpoolError::io_path("create", std::env::temp_dir(), e))?;
        Ok(PgStage {
            spool,
            id: id.to_owned(),
            file: BufWriter::with_capacity(64 * 1024, file),
            written: 0,
        })
    }
}

impl Write for PgStage {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Staged for PgStage {
    fn id(&self) -> &str {
        &self.id
    }
    fn written(&self) -> u64 {
        self.written
    }
    fn commit(self: Box<Self>, from: &str, to: &[String]) -> Result<Committed> {
        Ok(self.commit_replacing(from, to, &[])?.0)
    }

    /// One transaction: the message and its nodes in, the replaced nodes out (only if
    /// every one is still this process's claim; otherwise nothing is committed).
    fn commit_replacing(
        self: Box<Self>,
        from: &str,
        to: &[String],
        replaced: &[NodeEntry],
    ) -> Result<(Committed, bool)> {
        let replaced_pks = replaced.iter().map(pk).collect::<Result<Vec<i64>>>()?;
        let PgStage {
            spool,
            id,
            file,
            written,
        } = *self;
        let file = file
            .into_inner()
            .map_err(|e| SpoolError::io_path("write", std::env::temp_dir(), e.into_error()))?;
        let (from, to) = (from.to_owned(), to.to_vec());
        let id2 = id.clone();
        let pks = replaced_pks.clone();
        let nodes = spool.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let time = now() as i64;
            if written as usize <= CHUNK && pks.is_empty() {
                return commit_small(&mut c, &inner, &id2, &from, &file, written, time, &to).await;
            }
            let tx = c.transaction().await.map_err(|e| db("begin", e))?;
            let message = insert_message(&tx, &id2, &from, &file, written, time).await?;
            let due = time + inner.config.period(0) as i64;
            let rows = tx
                .query(
                    "INSERT INTO mailspool_nodes (message, rcpt, tier, entered, due)
                     SELECT $1, r, 0, $2, $3 FROM unnest($4::text[]) WITH ORDINALITY AS t(r, i)
                     ORDER BY i RETURNING pk",
                    &[&message, &time, &due, &to],
                )
                .await
                .map_err(|e| db("insert the nodes", e))?;
            for &node in &pks {
                if !crate::queue::remove(&tx, node, "lease_token = $2", &inner.me.token).await? {
                    // Not ours any more (or gone): whoever holds it now reports it.
                    return Err(SpoolError::NotFound(key(node).display().to_string()));
                }
            }
            count_usage(&tx, written, "Spool", to.len()).await?;
            // Daemons on every host LISTEN: delivered with the commit, never before.
            tx.batch_execute("NOTIFY mailspool_queued")
                .await
                .map_err(|e| db("notify", e))?;
            tx.commit().await.map_err(|e| db("commit", e))?;
            Ok(rows.iter().map(|r| key(r.get(0))).collect::<Vec<_>>())
        })?;
        spool.forget_claims(&replaced_pks);
        Ok((
            Committed {
                id,
                nodes,
                size: written,
            },
            !replaced_pks.is_empty(),
        ))
    }
    fn into_file_stage(self: Box<Self>) -> std::result::Result<Stage<Arc<Spool>>, Box<dyn Staged>> {
        Err(self)
    }
}

/// A message of one chunk in one statement, one round trip: the message, its bytes,
/// its nodes, its usage row and the notification, committed together (the connection
/// runs with `synchronous_commit = on`).
const COMMIT_SMALL: &str = "
    WITH m AS (
      INSERT INTO mailspool_messages (id, sender, size, created)
      VALUES ($1, $2, $3, $4) RETURNING pk),
    c AS (
      INSERT INTO mailspool_chunks (message, seq, data) SELECT pk, 0, $5 FROM m),
    n AS (
      INSERT INTO mailspool_nodes (message, rcpt, tier, entered, due)
      SELECT m.pk, t.r, 0, $4, $6 FROM m, unnest($7::text[]) WITH ORDINALITY AS t(r, i)
      ORDER BY t.i RETURNING pk),
    u AS (
      INSERT INTO mailspool_usage (time, bytes, kind, nodes)
      VALUES ($4, $3 * cardinality($7::text[]), 'Spool', cardinality($7::text[])))
    SELECT n.pk FROM n, (SELECT pg_notify('mailspool_queued', '')) AS notified";

#[allow(clippy::too_many_arguments)]
async fn commit_small(
    c: &mut crate::pool::Pooled<'_>,
    inner: &Inner,
    id: &str,
    from: &str,
    file: &File,
    size: u64,
    time: i64,
    to: &[String],
) -> Result<Vec<PathBuf>> {
    let mut data = Vec::with_capacity(size as usize);
    let mut reader = file;
    reader
        .seek(io::SeekFrom::Start(0))
        .and_then(|_| reader.read_to_end(&mut data))
        .map_err(|e| SpoolError::io_path("read", std::env::temp_dir(), e))?;
    let due = time + inner.config.period(0) as i64;
    let rows = c
        .query(
            COMMIT_SMALL,
            &[&id, &from, &(size as i64), &time, &data, &due, &to],
        )
        .await
        .map_err(|e| db("commit", e))?;
    Ok(rows.iter().map(|r| key(r.get(0))).collect())
}

/// A node's key (what `NodeEntry::path` holds): `pg:<row>`.
pub(crate) fn key(pk: i64) -> PathBuf {
    PathBuf::from(format!("pg:{pk}"))
}

/// The row a key names.
pub(crate) fn row(key: &std::path::Path) -> Option<i64> {
    key.to_str()?.strip_prefix("pg:")?.parse().ok()
}

/// Insert the message row and its chunks (read from `file` from the start); returns
/// the row. `synchronous_commit` is set on for this transaction whatever the server's
/// default: an acknowledged message must survive the primary's crash.
async fn insert_message(
    tx: &Transaction<'_>,
    id: &str,
    from: &str,
    file: &File,
    size: u64,
    time: i64,
) -> Result<i64> {
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .map_err(|e| db("set synchronous_commit", e))?;
    let message: i64 = tx
        .query_one(
            "INSERT INTO mailspool_messages (id, sender, size, created)
             VALUES ($1, $2, $3, $4) RETURNING pk",
            &[&id, &from, &(size as i64), &time],
        )
        .await
        .map_err(|e| db("insert the message", e))?
        .get(0);
    let insert = tx
        .prepare("INSERT INTO mailspool_chunks (message, seq, data) VALUES ($1, $2, $3)")
        .await
        .map_err(|e| db("prepare", e))?;
    let mut reader = file;
    reader
        .seek(io::SeekFrom::Start(0))
        .map_err(|e| SpoolError::io_path("read", std::env::temp_dir(), e))?;
    let mut buf = vec![0u8; CHUNK.min(size.max(1) as usize)];
    let mut seq = 0i32;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SpoolError::io_path("read", std::env::temp_dir(), e)),
            }
        }
        if filled == 0 {
            break;
        }
        tx.execute(&insert, &[&message, &seq, &&buf[..filled]])
            .await
            .map_err(|e| db("insert a chunk", e))?;
        seq += 1;
        if filled < buf.len() {
            break;
        }
    }
    Ok(message)
}

/// 0.50's usage line, `nodes` times, as one row (`bytes` in all).
pub(crate) async fn count_usage(
    tx: &impl tokio_postgres::GenericClient,
    bytes: u64,
    kind: &str,
    nodes: usize,
) -> Result<()> {
    tx.execute(
        "INSERT INTO mailspool_usage (time, bytes, kind, nodes) VALUES ($1, $2, $3, $4)",
        &[
            &(now() as i64),
            &(bytes.saturating_mul(nodes as u64) as i64),
            &kind,
            &(nodes as i32),
        ],
    )
    .await
    .map_err(|e| db("count usage", e))?;
    Ok(())
}

/// A migration's import: the message and the placements whose origin is not here yet,
/// in one transaction (the unique origin makes a resumed or concurrent import add each
/// node once).
pub(crate) async fn import(
    inner: Arc<Inner>,
    id: String,
    from: String,
    file: File,
    placements: Vec<(Placement, String)>,
) -> Result<usize> {
    let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
    let tx = c.transaction().await.map_err(|e| db("begin", e))?;
    let origins: Vec<String> = placements.iter().map(|(_, o)| o.clone()).collect();
    let present: Vec<String> = tx
        .query(
            "SELECT origin FROM mailspool_nodes WHERE origin = ANY($1)",
            &[&origins],
        )
        .await
        .map_err(|e| db("look for moved nodes", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let wanted: Vec<&(Placement, String)> = placements
        .iter()
        .filter(|(_, o)| !present.contains(o))
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let size = file
        .metadata()
        .map_err(|e| SpoolError::io_path("read", std::env::temp_dir(), e))?
        .len();
    let message = insert_message(&tx, &id, &from, &file, size, now() as i64).await?;
    for (p, origin) in &wanted {
        let due = p.time.saturating_add(inner.config.period(p.tier)) as i64;
        tx.execute(
            "INSERT INTO mailspool_nodes (message, rcpt, tier, entered, due, held, origin)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &message,
                &p.to,
                &(p.tier as i16),
                &(p.time as i64),
                &due,
                &p.held,
                origin,
            ],
        )
        .await
        .map_err(|e| db("insert a node", e))?;
    }
    tx.commit().await.map_err(|e| db("commit", e))?;
    Ok(wanted.len())
}
