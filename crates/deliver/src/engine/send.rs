//! Sending one group: try each address of each target, reuse pooled sessions, and turn
//! replies into verdicts; the message is read once when small, streamed when big.

use std::sync::Arc;
use std::time::Instant;

use mailspool_smtp::{ClientSettings, Envelope, Session, SmtpError, TlsPolicy};
use mailspool_spool::side::Attempt;
use mailspool_spool::{NodeEntry, NodeLock, now};
use tokio::sync::Semaphore;

use super::{Engine, Verdict};
use crate::bounce::Failure;
use crate::config::DeliverConfig;
use crate::route::Target;

impl Engine {
    /// Try each address of each target until one takes the transaction.
    pub(super) async fn send_to_targets(
        &self,
        cfg: &DeliverConfig,
        targets: &[Target],
        nodes: &[(NodeEntry, NodeLock)],
    ) -> Vec<Verdict> {
        let first = &nodes[0].0;
        let (size, eight_bit, small) = match read_message(&first.path).await {
            Ok(v) => v,
            Err(e) => return temporary_all(nodes, format!("cannot read the node: {e}")),
        };
        let env = Envelope {
            from: first.name.from.clone(),
            to: nodes.iter().map(|(n, _)| n.name.to.clone()).collect(),
            size,
            eight_bit,
        };
        let mut last: (String, String) = (String::new(), "no server could be reached".into());
        for (ti, target) in targets.iter().enumerate() {
            // The first target's slot is held by the caller; a failover target's is
            // taken here.
            let _host = if ti == 0 {
                None
            } else {
                Some(
                    self.host_slots(&host_key(target), cfg.per_host_limit)
                        .acquire_owned()
                        .await
                        .expect("semaphore open"),
                )
            };
            for addr in &target.addrs {
                let started = Instant::now();
                let pool_key = format!("{addr}/{}/{:?}", target.host, target.tls);
                let session = match self.session(&pool_key, *addr, target, cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::info!(id = %first.name.id, host = %target.host, addr = %addr, error = %e, ms = started.elapsed().as_millis() as u64, "connection failed");
                        self.record_all(nodes, &target.host, &e.to_string());
                        last = (target.host.clone(), e.to_string());
                        continue;
                    }
                };
                let mut session = session;
                let mut body = match open_body(&first.path, small.as_ref()).await {
                    Ok(f) => f,
                    Err(e) => {
                        self.put_back(pool_key, session);
                        return temporary_all(nodes, format!("cannot read the node: {e}"));
                    }
                };
                let mut result = session.send(&env, &mut body).await;
                // A pooled connection the server closed while idle fails at its RSET,
                // before any MAIL: open a fresh one and try again, once.
                if let Err(e) = &result
                    && e.phase() == Some(mailspool_smtp::Phase::Rset)
                    && !matches!(e, SmtpError::Rejected { .. })
                {
                    match self.connect(*addr, target, cfg).await {
                        Ok(fresh) => {
                            session = fresh;
                            body = match open_body(&first.path, small.as_ref()).await {
                                Ok(f) => f,
                                Err(e) => {
                                    return temporary_all(
                                        nodes,
                                        format!("cannot read the node: {e}"),
                                    );
                                }
                            };
                            result = session.send(&env, &mut body).await;
                        }
                        Err(e) => result = Err(e),
                    }
                }
                let ms = started.elapsed().as_millis() as u64;
                match result {
                    Ok(outcome) => {
                        self.put_back(pool_key, session);
                        let mut verdicts = Vec::new();
                        for (i, (n, _)) in nodes.iter().enumerate() {
                            let reply = outcome.result(i);
                            tracing::info!(id = %n.name.id, to = %n.name.to, host = %target.host, addr = %addr, code = reply.code, reply = %reply, ms, "delivery attempt");
                            verdicts.push(if reply.is_positive() {
                                Verdict::Delivered {
                                    reply: reply.to_string(),
                                }
                            } else if reply.is_permanent() {
                                Verdict::Permanent(Failure {
                                    recipient: n.name.to.clone(),
                                    status: reply.status(),
                                    remote_mta: Some(target.host.clone()),
                                    diagnostic: reply.to_string(),
                                    from_smtp: true,
                                })
                            } else {
                                Verdict::Temporary {
                                    host: target.host.clone(),
                                    reply: reply.to_string(),
                                    recorded: false,
                                }
                            });
                        }
                        if outcome.data.as_ref().is_some_and(|d| d.is_positive()) {
                            self.spool.log_usage(size, "Sent");
                        }
                        return verdicts;
                    }
                    Err(e) if e.is_permanent() => {
                        tracing::info!(id = %first.name.id, host = %target.host, addr = %addr, error = %e, ms, "delivery attempt");
                        if matches!(
                            e,
                            SmtpError::Rejected { .. }
                                | SmtpError::NeedsSmtpUtf8
                                | SmtpError::TooLarge { .. }
                        ) {
                            self.put_back(pool_key, session);
                        }
                        return nodes
                            .iter()
                            .map(|(n, _)| {
                                Verdict::Permanent(Failure {
                                    recipient: n.name.to.clone(),
                                    status: e.status(),
                                    remote_mta: Some(target.host.clone()),
                                    diagnostic: e
                                        .reply()
                                        .map_or_else(|| e.to_string(), ToString::to_string),
                                    from_smtp: e.reply().is_some(),
                                })
                            })
                            .collect();
                    }
                    Err(e) => {
                        tracing::info!(id = %first.name.id, host = %target.host, addr = %addr, error = %e, ms, "delivery attempt");
                        self.record_all(nodes, &target.host, &e.to_string());
                        last = (target.host.clone(), e.to_string());
                        // A 4xx to MAIL is the server's verdict on this message: later.
                        if matches!(
                            &e,
                            SmtpError::Rejected {
                                phase: mailspool_smtp::Phase::Mail,
                                ..
                            }
                        ) {
                            self.put_back(pool_key, session);
                            break;
                        }
                    }
                }
            }
        }
        nodes
            .iter()
            .map(|_| Verdict::Temporary {
                host: last.0.clone(),
                reply: last.1.clone(),
                recorded: true,
            })
            .collect()
    }

    fn record_all(&self, nodes: &[(NodeEntry, NodeLock)], host: &str, reply: &str) {
        for (n, _) in nodes {
            let _ = self.spool.record_attempt(
                &n.name,
                &Attempt {
                    time: now(),
                    host: host.to_owned(),
                    reply: reply.to_owned(),
                    delivered: false,
                },
            );
        }
    }

    pub(super) fn host_slots(&self, key: &str, limit: usize) -> Arc<Semaphore> {
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(limit.max(1))))
            .clone()
    }

    /// A pooled session (after a successful RSET), or a new one. Opportunistic TLS that
    /// fails its handshake is retried once in plain text, as Postfix does.
    async fn session(
        &self,
        key: &str,
        addr: std::net::SocketAddr,
        target: &Target,
        cfg: &DeliverConfig,
    ) -> Result<Session, SmtpError> {
        loop {
            let pooled = self
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(key)
                .and_then(Vec::pop);
            let Some(mut s) = pooled else { break };
            if !s.expired() {
                s.reset_before_next();
                return Ok(s);
            }
        }
        self.connect(addr, target, cfg).await
    }

    async fn connect(
        &self,
        addr: std::net::SocketAddr,
        target: &Target,
        cfg: &DeliverConfig,
    ) -> Result<Session, SmtpError> {
        let mut settings = ClientSettings {
            helo_name: cfg.hostname.clone(),
            timeouts: cfg.timeouts.clone(),
            tls: target.tls,
            auth: target.auth.clone(),
        };
        match Session::connect(addr, &target.host, &settings, &self.tls).await {
            Err(SmtpError::Tls(e))
                if target.tls == TlsPolicy::Opportunistic && target.auth.is_none() =>
            {
                tracing::info!(host = %target.host, error = %e, "TLS failed; retrying without TLS");
                settings.tls = TlsPolicy::None;
                Session::connect(addr, &target.host, &settings, &self.tls).await
            }
            other => other,
        }
    }

    fn put_back(&self, key: String, session: Session) {
        if session.expired() {
            return;
        }
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .push(session);
    }

    /// QUIT every idle session.
    pub async fn close_idle(&self) {
        let sessions: Vec<Session> = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        for s in sessions {
            s.quit().await;
        }
    }
}

pub(super) fn temporary_all(nodes: &[(NodeEntry, NodeLock)], reply: String) -> Vec<Verdict> {
    nodes
        .iter()
        .map(|_| Verdict::Temporary {
            host: String::new(),
            reply: reply.clone(),
            recorded: false,
        })
        .collect()
}

/// The per-host limit applies to this key: host name and port.
pub(super) fn host_key(t: &Target) -> String {
    format!("{}:{}", t.host, t.addrs.first().map_or(0, |a| a.port()))
}

/// Messages up to this size are read once into memory for the whole delivery.
const SMALL_MESSAGE: u64 = 256 * 1024;

type Body = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// Size of the message, whether it has 8-bit bytes, and its bytes when it is small (a
/// big one is streamed from the file: memory does not grow with message size).
async fn read_message(
    path: &std::path::Path,
) -> std::io::Result<(u64, bool, Option<Arc<Vec<u8>>>)> {
    let size = std::fs::metadata(path)?.len();
    if size <= SMALL_MESSAGE {
        let data = std::fs::read(path)?;
        return Ok((data.len() as u64, !data.is_ascii(), Some(Arc::new(data))));
    }
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut size, mut eight_bit) = (0u64, false);
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        eight_bit |= !buf[..n].is_ascii();
    }
    Ok((size, eight_bit, None))
}

async fn open_body(path: &std::path::Path, small: Option<&Arc<Vec<u8>>>) -> std::io::Result<Body> {
    Ok(match small {
        Some(data) => Box::new(std::io::Cursor::new(ArcBytes(data.clone()))),
        None => Box::new(tokio::fs::File::open(path).await?),
    })
}

/// Shared message bytes as a cursor source.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
