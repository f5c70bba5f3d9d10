//! The mailspool spool in PostgreSQL: the second back end under
//! [`mailspool_spool::Store`], for many hosts sharing one queue without NFS.
//!
//! ```text
//! mailspool_messages   one row per stored message (id, sender, size, DKIM signature)
//! mailspool_chunks     its bytes, 256 KiB a row, in order
//! mailspool_nodes      one row per recipient: tier, entered, due, held, attempts,
//!                      last reply, and the claim (lease host, pid, token, until)
//! mailspool_attempts   each delivery attempt of a node
//! mailspool_usage      0.50's usage/raw, as rows
//! ```
//!
//! Promises, as the file spool's: a commit that returned `Ok` is committed with
//! `synchronous_commit = on` (on the primary's disk, and on synchronous standbys if the
//! cluster has them); a failed one left nothing. A node is worked on only under its
//! claim: taken with `FOR UPDATE SKIP LOCKED`, so two hosts never take the same node,
//! and leased for `lease` (renewed every third of it while this process lives), so a
//! dead host's nodes are taken again once its lease runs out and a live host's never.
//! Every change a delivery makes checks that the claim is still this process's.

mod claim;
mod events;
mod pool;
mod queue;
mod read;
mod schema;
mod shared;
mod stage;
#[doc(hidden)]
pub mod testing;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailspool_spool::{SpoolConfig, SpoolError};

pub use schema::{SCHEMA_VERSION, migrate, schema_version};
pub use shared::SLOT_LEASE;

use pool::{Driver, Pool};

/// The default claim lease: long enough for a slow delivery, short enough that a dead
/// host's mail waits minutes, not hours.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

/// Bytes per chunk row.
pub const CHUNK: usize = 256 * 1024;

/// How a PostgreSQL spool is opened.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// Most connections this process opens.
    pub max_connections: usize,
    /// More trusted roots for `sslmode=require` (a private CA's PEM file).
    pub ca_file: Option<std::path::PathBuf>,
    /// The host name claims are taken under (shown to the other hosts; the
    /// configured `hostname`, else the system's).
    pub host: Option<String>,
    /// The database password, the first line of this file (`spool_password_file`):
    /// kept out of the URL and the world-readable configuration.
    pub password_file: Option<std::path::PathBuf>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            lease: DEFAULT_LEASE,
            max_connections: 16,
            password_file: None,
            host: None,
            ca_file: None,
        }
    }
}

/// Who holds a claim: this process, on this host, with a token no restart reuses.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    pub host: String,
    pub pid: i32,
    pub token: String,
}

pub(crate) struct Inner {
    pub pool: Pool,
    pub config: SpoolConfig,
    pub me: Holder,
    pub lease: Duration,
    /// Nodes this process has claimed and not yet settled or given back.
    pub claims: Mutex<std::collections::HashSet<i64>>,
    /// Of those, the ones whose last holder's lease ran out (it died, or lost the
    /// database for a lease): that holder, for the engine to ask the history about.
    pub taken_over: Mutex<std::collections::HashMap<i64, mailspool_spool::LockHolder>>,
    /// Bytes and nodes delivered and not yet counted in `mailspool_usage`.
    pub sent: Mutex<(u64, u64)>,
}

impl Inner {
    /// Write the delivered bytes and nodes summed since the last time as one row.
    pub(crate) async fn flush_sent(&self) {
        let (bytes, nodes) =
            std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()));
        if nodes == 0 {
            return;
        }
        let written = async {
            let mut c = self.pool.settling().await.map_err(|e| db("connect", e))?;
            c.execute(
                "INSERT INTO mailspool_usage (time, bytes, kind, nodes) VALUES ($1, $2, 'Sent', $3)",
                &[&(mailspool_spool::now() as i64), &(bytes as i64), &(nodes as i32)],
            )
            .await
            .map_err(|e| db("count usage", e))
        };
        if let Err(e) = written.await {
            tracing::debug!(error = %e, "usage not counted; kept for the next try");
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.0 += bytes;
            sent.1 += nodes;
        }
    }
}

impl Drop for PgSpool {
    fn drop(&mut self) {
        mailspool_spool::Store::flush(self);
    }
}

/// A spool in a PostgreSQL database.
pub struct PgSpool {
    pub(crate) inner: Arc<Inner>,
    pub(crate) driver: Driver,
    location: String,
    ids: Mutex<ulid::Generator>,
    suppressions: Mutex<events::SuppressionCache>,
    pub(crate) shared: Arc<shared::PgShared>,
}

impl std::fmt::Debug for PgSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSpool")
            .field("location", &self.location)
            .finish()
    }
}

/// A database error as a spool error, with its causes (tokio-postgres says only
/// "db error" at the top; the server's message is the source), escaped: a server's
/// words.
pub(crate) fn db(op: &str, e: impl std::error::Error) -> SpoolError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    SpoolError::Database(format!("{op}: {}", mailspool_spool::escape(&text)))
}

/// The first line of a password file, without its line end (an empty line is an
/// error: a password file that holds none is a mistake to say, not to send).
pub fn read_password(path: &std::path::Path) -> Result<String, SpoolError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SpoolError::Config(format!("spool_password_file {}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(SpoolError::Config(format!(
            "spool_password_file {}: its first line is empty",
            path.display()
        )));
    }
    Ok(line.to_owned())
}

/// Whether `spool` names a database rather than a directory.
pub fn is_url(spool: &str) -> bool {
    spool.starts_with("postgresql://") || spool.starts_with("postgres://")
}

/// A URL with its password replaced, for logs (a password in `?password=` is not
/// shown either: the query is dropped).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    let url = &format!("{scheme}://{rest}");
    match rest.split_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl PgSpool {
    /// Connect to the spool at `url` (`postgresql://user@host1,host2/db?...`). The
    /// schema must be at [`SCHEMA_VERSION`] (`mailspool db migrate` puts it there).
    pub fn open(url: &str, config: SpoolConfig, options: PgOptions) -> Result<PgSpool, SpoolError> {
        config.validate().map_err(SpoolError::Config)?;
        let (mut pg, tls) = pool::settings(url, options.ca_file.as_deref())
            .map_err(|e| SpoolError::Config(format!("spool {}: {e}", redact(url))))?;
        if let Some(path) = &options.password_file {
            pg.password(read_password(path)?);
        }
        let driver = Driver::new().map_err(|e| db("start the database runtime", e))?;
        let token = ulid::Ulid::generate().to_string();
        let inner = Arc::new(Inner {
            pool: Pool::new(pg, options.max_connections, tls),
            config,
            me: Holder {
                host: options.host.unwrap_or_else(mailspool_spool::lock::hostname),
                pid: std::process::id() as i32,
                token,
            },
            lease: options.lease,
            claims: Mutex::new(Default::default()),
            taken_over: Mutex::new(Default::default()),
            sent: Mutex::new((0, 0)),
        });
        let spool = PgSpool {
            shared: shared::PgShared::start(inner.clone(), driver.handle()),
            inner,
            driver,
            location: redact(url),
            ids: Mutex::new(ulid::Generator::new()),
            suppressions: Mutex::new(Default::default()),
        };
        let at = {
            let inner = spool.inner.clone();
            spool.driver.run(async move {
                let c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                schema_version(&*c).await
            })?
        };
        if at != SCHEMA_VERSION {
            return Err(SpoolError::Config(format!(
                "the spool database {} is at schema version {at}, this mailspool needs \
                 {SCHEMA_VERSION}: run `mailspool db migrate`",
                spool.location
            )));
        }
        spool.start_renewing();
        let counted = Arc::downgrade(&spool.inner);
        spool.driver.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match counted.upgrade() {
                    Some(inner) => inner.flush_sent().await,
                    None => return,
                }
            }
        });
        Ok(spool)
    }

    /// Renew this process's claims every third of the lease while it lives.
    fn start_renewing(&self) {
        let inner = Arc::downgrade(&self.inner);
        self.driver.spawn(async move {
            loop {
                let every = match inner.upgrade() {
                    Some(i) => i.lease / 3,
                    None => return,
                };
                tokio::time::sleep(every).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if inner
                    .claims
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                {
                    continue;
                }
                if let Err(e) = claim::renew(&inner).await {
                    tracing::warn!(error = %e, "cannot renew the claims on the spool database");
                }
            }
        });
    }

    /// The holder of this process's claims, as other hosts see it.
    pub fn holder(&self) -> String {
        format!("{} pid {}", self.inner.me.host, self.inner.me.pid)
    }

    /// Run a database operation on the spool's runtime and wait for its result.
    pub(crate) fn run<T, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, SpoolError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, SpoolError>> + Send + 'static,
    {
        self.driver.run(f(self.inner.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_from_their_file_and_never_show() {
        let dir = std::env::temp_dir().join(format!("mailspool-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret\r\nignored\n").unwrap();
        assert_eq!(read_password(&f).unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert!(
            read_password(&f).is_err(),
            "an empty first line is an error"
        );
        assert!(read_password(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            redact("postgresql://u:s3cret@db1,db2/mail?sslmode=require"),
            "postgresql://u:***@db1,db2/mail"
        );
        assert_eq!(redact("postgresql://u@db/mail"), "postgresql://u@db/mail");
    }
}
