//! Connections: a small pool of tokio-postgres clients, driven by a runtime of the
//! spool's own, so that synchronous callers (the `sendmail` path) and async ones (the
//! engine, the listener) use the same clients.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::HashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Error, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long to wait for a connection (and for a server that is restarting).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Open clients, up to `max` at once.
pub struct Pool {
    config: tokio_postgres::Config,
    tls: Tls,
    /// Idle connections: [durable, settling] (see [`Pool::settling`]).
    idle: Mutex<[Vec<Conn>; 2]>,
    permits: Arc<Semaphore>,
}

/// A connection and the statements prepared on it (tokio-postgres prepares a text
/// query in a round trip of its own each time; a prepared one is one round trip).
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// Which idle list it goes back to (0: durable, 1: settling).
    kind: usize,
}

/// A client on loan; back to the pool when dropped (unless its connection died).
pub struct Pooled<'a> {
    pool: &'a Pool,
    client: Option<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client.as_ref().expect("client until dropped").client
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client.as_mut().expect("client until dropped").client
    }
}

impl Pooled<'_> {
    /// `sql` prepared on this connection (once; then from its cache).
    pub async fn prepared(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let conn = self.client.as_mut().expect("client until dropped");
        if let Some(s) = conn.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = conn.client.prepare(sql).await?;
        conn.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    // The client's query methods, on statements prepared once per connection. (A
    // handful of fixed texts: the cache stays small.)

    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let s = self.prepared(sql).await?;
        std::ops::Deref::deref(self).query(&s, params).await
    }

    pub async fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Row, Error> {
        let s = self.prepared(sql).await?;
        std::ops::Deref::deref(self).query_one(&s, params).await
    }

    pub async fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let s = self.prepared(sql).await?;
        std::ops::Deref::deref(self).query_opt(&s, params).await
    }

    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, Error> {
        let s = self.prepared(sql).await?;
        std::ops::Deref::deref(self).execute(&s, params).await
    }

    pub async fn query_raw<P, I>(
        &mut self,
        sql: &str,
        params: I,
    ) -> Result<tokio_postgres::RowStream, Error>
    where
        P: tokio_postgres::types::BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let s = self.prepared(sql).await?;
        std::ops::Deref::deref(self).query_raw(&s, params).await
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.client.is_closed()
        {
            let kind = c.kind;
            self.pool.idle.lock().unwrap_or_else(|e| e.into_inner())[kind].push(c);
        }
    }
}

impl Pool {
    /// A pool for `config` (several hosts and `target_session_attrs=read-write` are
    /// tokio-postgres's: a failover to a promoted standby is followed on reconnect).
    pub fn new(mut config: tokio_postgres::Config, max: usize, tls: Tls) -> Pool {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("mailspool");
        Pool {
            config,
            tls,
            idle: Mutex::new([Vec::new(), Vec::new()]),
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// The connection settings and TLS (for a connection of its own: LISTEN).
    pub fn settings(&self) -> (tokio_postgres::Config, Tls) {
        (self.config.clone(), self.tls.clone())
    }

    /// A client for what must be durable when it returns (intake commits, imports, an
    /// operator's changes, and the delivery steps whose loss would send a message
    /// twice: claims, lease renewals, removing a delivered node, a bounce with the
    /// removal of what it reports): `synchronous_commit = on` whatever the server's
    /// default, so a commit returns once it is on disk (and on the synchronous
    /// standbys, if there are any).
    pub async fn get(&self) -> Result<Pooled<'_>, tokio_postgres::Error> {
        self.take(0).await
    }

    /// A client for bookkeeping whose loss in a database crash (its last fraction of a
    /// second) only repeats harmless work: moving a deferred node (a lost move is one
    /// more attempt after the lease), recording an attempt's reply, giving claims back
    /// (they run out instead), counting usage, reading. `synchronous_commit = off`.
    /// Never for a step whose loss would deliver a message twice (see [`Pool::get`]).
    pub async fn settling(&self) -> Result<Pooled<'_>, tokio_postgres::Error> {
        self.take(1).await
    }

    async fn take(&self, kind: usize) -> Result<Pooled<'_>, tokio_postgres::Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("pool semaphore open");
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner())[kind].pop();
            match idle {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => {
                    return Ok(Pooled {
                        pool: self,
                        client: Some(c),
                        _permit: permit,
                    });
                }
                None => break,
            }
        }
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        client
            .batch_execute(if kind == 0 {
                "SET synchronous_commit = on"
            } else {
                "SET synchronous_commit = off"
            })
            .await?;
        Ok(Pooled {
            pool: self,
            client: Some(Conn {
                client,
                statements: HashMap::new(),
                kind,
            }),
            _permit: permit,
        })
    }
}

/// The spool's own runtime: it drives the connections; callers on any thread (in a
/// runtime or not) wait for what they asked it to do.
pub struct Driver {
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Driver {
    /// Without waiting (a spool may be dropped inside another runtime, where blocking
    /// is not allowed): what is in flight is cut, as a crash would; nothing promised
    /// depends on it (a commit's caller waits for its result before it says yes).
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Driver {
    pub fn new() -> std::io::Result<Driver> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mailspool-pg")
            .enable_all()
            .build()?;
        Ok(Driver { rt: Some(rt) })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime until dropped")
    }

    /// Run `f` on the spool's runtime and wait for it here. Never called from the
    /// runtime's own threads (nothing of ours runs there but these futures). A caller
    /// on a multi-threaded runtime (the daemon's engine, the listener) waits in
    /// `block_in_place`, so its other tasks move on while the database answers: a
    /// round trip must not hold up a delivery thread.
    pub fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        run_on(self.rt().handle(), f)
    }

    /// A handle to the runtime, for parts that outlive a borrow of the spool.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt().handle().clone()
    }

    /// Start `f` and do not wait (usage counts, giving back claims).
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.rt().spawn(f);
    }
}

/// rustls for the database's connections. A Unix socket has no host name to give
/// rustls (tokio-postgres passes ""), which it refuses as a server name even though
/// no TLS is spoken there (the server offers none on a socket): it gets a placeholder.
#[derive(Clone)]
pub struct Tls(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for Tls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        let host = if host.is_empty() { "localhost" } else { host };
        MakeTlsConnect::<S>::make_tls_connect(&mut self.0, host)
    }
}

/// [`Driver::run`] on a runtime's handle.
pub fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    f: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    let wait = || {
        rx.recv()
            .expect("the database runtime runs until the spool is dropped")
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// The URL's settings, with TLS as the URL asks: `sslmode=require` is TLS with the
/// server's certificate verified (the web PKI roots and `ca_file`; its name checked
/// against the host); no `sslmode` is plain TCP (a Unix socket or a private network:
/// tokio-postgres's own default, "prefer", would try TLS and then refuse the
/// self-signed certificate a stock server has). `prefer` keeps its meaning.
pub fn settings(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<(tokio_postgres::Config, Tls), String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    if !url.contains("sslmode=") {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no certificate in it", path.display()));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok((config, Tls(MakeRustlsConnect::new(tls))))
}
