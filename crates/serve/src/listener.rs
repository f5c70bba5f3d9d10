//! Listening sockets: one task per `[[listen]]` port, a task per session, connection
//! limits (in all and per client address: a slowloris holds only its own slots), and a
//! graceful stop.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use mailspool_spool::Store;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::{Mode, ServeConfig};
use crate::session::{self, Context, Peer};
use crate::users::Users;

/// Load a certificate chain and key into a TLS acceptor (rustls, ring).
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Bound ports, ready to serve.
pub struct Bound {
    ports: Vec<(TcpListener, Arc<Context>)>,
    cfg: Arc<ServeConfig>,
}

/// Bind every `[[listen]]` port (port 0 picks a free one: see [`Bound::local_addrs`]).
pub async fn bind(cfg: ServeConfig, spool: Arc<dyn Store>, users: Users) -> Result<Bound, String> {
    let cfg = Arc::new(cfg);
    let users = Arc::new(users);
    let mut ports = Vec::new();
    for l in &cfg.listen {
        let tls = match (&l.tls_cert, &l.tls_key) {
            (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
            (None, None) if l.mode == Mode::Smtps => {
                return Err(format!("{}: smtps needs tls_cert and tls_key", l.address));
            }
            (None, None) => None,
            _ => return Err(format!("{}: give both tls_cert and tls_key", l.address)),
        };
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", l.address))?;
        let ctx = Arc::new(Context {
            cfg: cfg.clone(),
            spool: spool.clone(),
            users: users.clone(),
            tls,
            mode: l.mode,
        });
        ports.push((listener, ctx));
    }
    Ok(Bound { ports, cfg })
}

struct Limits {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Releases a client's per-address slot when its session ends.
struct IpSlot<'a> {
    limits: &'a Limits,
    ip: IpAddr,
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Bound {
    /// The addresses actually bound.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.ports
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serve until `stop` completes; then stop accepting and give sessions
    /// `shutdown_grace` to finish.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let limits = Arc::new(Limits {
            total: Arc::new(Semaphore::new(self.cfg.max_connections.max(1))),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip: self.cfg.max_connections_per_ip.max(1),
        });
        let mut sessions = JoinSet::new();
        let mut accepts = JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(TcpStream, SocketAddr, Arc<Context>)>(64);
        for (listener, ctx) in self.ports {
            tracing::info!(addr = ?listener.local_addr().ok(), mode = ?ctx.mode, tls = ctx.tls.is_some(), "listening");
            let tx = tx.clone();
            accepts.spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((sock, addr)) => {
                            if tx.send((sock, addr, ctx.clone())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        drop(tx);
        tokio::pin!(stop);
        let mut last_trim = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some((sock, addr, ctx)) = rx.recv() => {
                    let limits = limits.clone();
                    sessions.spawn(handle(sock, addr, ctx, limits));
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {
                    // A burst is over: give its memory back (at most once a second).
                    if sessions.is_empty() && last_trim.elapsed() >= std::time::Duration::from_secs(1) {
                        mailspool_spool::return_free_memory();
                        last_trim = std::time::Instant::now();
                    }
                }
            }
        }
        accepts.abort_all();
        tracing::info!(sessions = sessions.len(), "stopping: no new connections");
        let grace = self.cfg.shutdown_grace;
        if tokio::time::timeout(grace, async {
            while sessions.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            sessions.abort_all();
        }
    }
}

/// The key a client's connection limit is counted under: its IPv4 address, or the /64
/// of its IPv6 address (one host owns a whole /64 and can pick any address in it).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
        v4 => v4,
    }
}

async fn handle(mut sock: TcpStream, addr: SocketAddr, ctx: Arc<Context>, limits: Arc<Limits>) {
    let ip = client_key(addr.ip());
    let metrics = mailspool_metrics::global();
    let refused = |reason| {
        metrics
            .smtp_refused
            .get_or_create(&mailspool_metrics::ReasonLabel { reason })
            .inc();
    };
    let Ok(_total) = limits.total.clone().try_acquire_owned() else {
        refused("max_connections");
        let _ = sock
            .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
            .await;
        return;
    };
    // Clients in relay_networks (the local application server, a load generator on
    // loopback) are the ones we serve: only the total limit applies to them.
    let trusted = ctx.cfg.trusted(addr.ip());
    let admitted = {
        let mut map = limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        let ok = trusted || *n < limits.max_per_ip;
        if ok {
            *n += 1;
        }
        ok
    };
    if !admitted {
        refused("max_connections_per_ip");
        tracing::info!(client = %addr.ip(), key = %ip, "refused: too many connections from this address");
        let _ = sock
            .write_all(b"421 4.7.0 Too many connections from your address\r\n")
            .await;
        return;
    }
    let _slot = IpSlot {
        limits: &limits,
        ip,
    };
    let _ = sock.set_nodelay(true);
    metrics.smtp_sessions.inc();
    metrics.smtp_sessions_open.inc();
    let _open = OpenSession(metrics);
    let peer = Peer {
        ip: Some(addr.ip()),
        trusted,
    };
    if ctx.mode == Mode::Smtps {
        let Some(acceptor) = ctx.tls.clone() else {
            return;
        };
        let handshake = tokio::time::timeout(ctx.cfg.command_timeout, acceptor.accept(sock)).await;
        if let Ok(Ok(stream)) = handshake {
            mailspool_metrics::global().smtp_tls_sessions.inc();
            session::run(Box::new(stream), peer, ctx, true).await;
        }
        return;
    }
    session::run(Box::new(sock), peer, ctx, false).await;
}

/// Counts a session open until it ends, however it ends.
struct OpenSession(&'static mailspool_metrics::Metrics);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.smtp_sessions_open.dec();
    }
}
