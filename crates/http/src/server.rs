//! Accepting HTTP connections: a bounded number at a time, HTTPS when configured,
//! HTTP/1.1 through hyper with a header read timeout and a bounded header buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::slots::{Conn, Refused, Slots};
use super::{AppState, router, sampler};
use crate::Mailspool;
use crate::config::HttpConfig;

/// Longest wait for a request's headers (also between keep-alive requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest life of one connection.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet serving, HTTP server.
pub struct Bound {
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Bind `addr` for the spool `ms` with the `[http]` settings `http` (the certificate,
/// the key and the tokens file are read now: a mistake fails the start, not a request).
pub async fn bind(ms: Arc<Mailspool>, http: HttpConfig, addr: SocketAddr) -> Result<Bound, String> {
    let tls = match &http.tls {
        Some((cert, key)) => Some(mailspool_serve::tls_acceptor(cert, key)?),
        None => None,
    };
    let state = Arc::new(AppState::new(ms, http)?);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for HTTP: {e}"))?;
    Ok(Bound {
        listener,
        state,
        tls,
    })
}

impl Bound {
    /// The address bound (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// The shared state (tests and the sampler).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serve until `stop` completes; then finish requests under way (keep-alive
    /// connections are closed after their current request).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        sampler::spawn(self.state.clone());
        let app = router(self.state.clone());
        let slots = Slots::new(
            self.state.http.max_connections,
            self.state.http.max_connections_per_ip,
        );
        let (stopping, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut stop => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let tls = self.tls.clone();
            let mut stop_rx = stop_rx.clone();
            let slots = slots.clone();
            tasks.spawn(async move {
                // Taken in the connection's task: waiting for an evicted connection to
                // go must not hold up the accept loop.
                let slot = match slots.take(peer.ip()).await {
                    Ok(s) => s,
                    Err(why) => {
                        let limit = match why {
                            Refused::PerIp => "max_connections_per_ip",
                            Refused::Full => "max_connections (every connection busy)",
                        };
                        tracing::warn!(%peer, "HTTP connection refused: {limit} reached");
                        return;
                    }
                };
                let service = Tracked {
                    inner: TowerToHyperService::new(app),
                    conn: slot.conn.clone(),
                    slots: slots.clone(),
                };
                let close = &slot.conn.close;
                let serve = async {
                    match tls {
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => {
                                    connection(TokioIo::new(s), service, &mut stop_rx, close).await
                                }
                                _ => tracing::debug!(%peer, "HTTPS handshake failed"),
                            }
                        }
                        None => {
                            connection(TokioIo::new(stream), service, &mut stop_rx, close).await
                        }
                    }
                };
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, serve).await;
            });
            while tasks.try_join_next().is_some() {}
        }
        let _ = stopping.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

/// The service, marking its connection busy while a request is inside it (an idle
/// connection may be closed to make room for a new one).
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    slots: Arc<Slots>,
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: R) -> Self::Future {
        self.conn.enter();
        let future = self.inner.call(req);
        let (conn, slots) = (self.conn.clone(), self.slots.clone());
        Box::pin(async move {
            let response = future.await;
            conn.leave(&slots);
            response
        })
    }
}

async fn connection<I, S>(
    io: I,
    service: S,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    close: &tokio::sync::Notify,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = close.notified() => {}
            }
        } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
