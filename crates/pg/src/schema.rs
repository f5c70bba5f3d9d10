//! Versioned migrations, shipped in the binary and applied by `mailspool db migrate`.

use mailspool_spool::SpoolError;

use crate::db;

/// The schema this mailspool reads and writes.
pub const SCHEMA_VERSION: i32 = 3;

/// Each version's SQL, in order: version i+1 is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_spool.sql"),
    include_str!("../migrations/0002_events.sql"),
    include_str!("../migrations/0003_shared.sql"),
];

/// Key of the advisory lock that keeps two `db migrate` runs from racing.
const MIGRATE_LOCK: i64 = 0x6d61_696c_7370_6f6f; // "mailspoo"

/// The version the database is at (0: never migrated).
pub async fn schema_version(c: &impl tokio_postgres::GenericClient) -> Result<i32, SpoolError> {
    let exists: bool = c
        .query_one("SELECT to_regclass('mailspool_schema') IS NOT NULL", &[])
        .await
        .map_err(|e| db("read the schema version", e))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = c
        .query_one("SELECT max(version) FROM mailspool_schema", &[])
        .await
        .map_err(|e| db("read the schema version", e))?
        .get(0);
    Ok(v.unwrap_or(0))
}

/// Bring the database to [`SCHEMA_VERSION`], each step in its own transaction; returns
/// the versions applied (none when it was already there). A database newer than this
/// mailspool is refused.
pub async fn migrate(url: &str, ca_file: Option<&std::path::Path>) -> Result<Vec<i32>, SpoolError> {
    let (config, tls) = crate::pool::settings(url, ca_file)
        .map_err(|e| SpoolError::Config(format!("spool {}: {e}", crate::redact(url))))?;
    let (mut c, conn) = config.connect(tls).await.map_err(|e| db("connect", e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS mailspool_schema (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(|e| db("create mailspool_schema", e))?;
    let mut applied = Vec::new();
    loop {
        let tx = c.transaction().await.map_err(|e| db("begin", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
            .await
            .map_err(|e| db("lock the schema", e))?;
        let at = schema_version(&tx).await?;
        if at > SCHEMA_VERSION {
            return Err(SpoolError::Config(format!(
                "the spool database is at schema version {at}, newer than this mailspool \
                 ({SCHEMA_VERSION}); upgrade mailspool"
            )));
        }
        if at == SCHEMA_VERSION {
            return Ok(applied);
        }
        let next = at + 1;
        tx.batch_execute(MIGRATIONS[(next - 1) as usize])
            .await
            .map_err(|e| db(&format!("apply schema version {next}"), e))?;
        tx.execute(
            "INSERT INTO mailspool_schema (version) VALUES ($1)",
            &[&next],
        )
        .await
        .map_err(|e| db("record the schema version", e))?;
        tx.commit()
            .await
            .map_err(|e| db("commit the migration", e))?;
        tracing::info!(version = next, "spool database migrated");
        applied.push(next);
    }
}
