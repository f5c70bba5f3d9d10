//! Sending one group: try each address of each target, reuse pooled sessions, and turn
//! replies into verdicts; the message is read once when small, streamed when big.

use std::sync::Arc;
use std::time::Instant;

use mailspool_smtp::body::WireSize;
use mailspool_smtp::{ClientSettings, Envelope, Session, SmtpError, TlsPolicy};
use mailspool_spool::side::Attempt;
use mailspool_spool::{NodeEntry, NodeLock, escape, now};
use tokio::sync::Semaphore;

use super::{Claim, Engine, Verdict};
use crate::bounce::Failure;
use crate::config::DeliverConfig;
use crate::route::Target;

impl Engine {
    /// Try each address of each target until one takes the transaction.
    pub(super) async fn send_to_targets(
        &self,
        cfg: &DeliverConfig,
        targets: &[Target],
        claim: &Claim,
    ) -> Vec<Verdict> {
        let nodes = &claim.nodes[..];
        let first = &nodes[0].0;
        let file = &claim.file.file;
        let info = match read_message(file, claim.file.size).await {
            Ok(v) => v,
            Err(e) => return temporary_all(nodes, format!("cannot read the node: {e}")),
        };
        let small = info.small;
        let env = Envelope {
            from: first.name.from.clone(),
            to: nodes.iter().map(|(n, _)| n.name.to.clone()).collect(),
            size: info.wire,
            eight_bit: info.eight_bit,
            utf8_headers: info.utf8_headers,
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
                        tracing::info!(id = %first.name.id, host = %escape(&target.host), addr = %addr, error = %escape(&e.to_string()), ms = started.elapsed().as_millis() as u64, "connection failed");
                        self.record_all(nodes, &target.host, &e.to_string());
                        last = (target.host.clone(), e.to_string());
                        continue;
                    }
                };
                let mut session = session;
                let mut body = match open_body(file, small.as_ref()).await {
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
                            body = match open_body(file, small.as_ref()).await {
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
                            tracing::info!(id = %n.name.id, to = %escape(&n.name.to), host = %escape(&target.host), addr = %addr, code = reply.code, reply = %escape(&reply.to_string()), ms, "delivery attempt");
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
                        // 0.50's accounting: a `Sent` line per node, with the bytes sent.
                        let sent = verdicts
                            .iter()
                            .filter(|v| matches!(v, Verdict::Delivered { .. }))
                            .count();
                        self.spool.log_usage_nodes(info.sent_bytes, "Sent", sent);
                        return verdicts;
                    }
                    Err(e) if e.is_permanent() => {
                        tracing::info!(id = %first.name.id, host = %escape(&target.host), addr = %addr, error = %escape(&e.to_string()), ms, "delivery attempt");
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
                        tracing::info!(id = %first.name.id, host = %escape(&target.host), addr = %addr, error = %escape(&e.to_string()), ms, "delivery attempt");
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
                tracing::info!(host = %escape(&target.host), error = %escape(&e.to_string()), "TLS failed; retrying without TLS");
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
pub(super) const SMALL_MESSAGE: u64 = 256 * 1024;

type Body = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// What a delivery needs to know of a stored message before MAIL.
pub(super) struct MessageInfo {
    /// Size on the wire, CRLF line ends (SIZE=).
    wire: u64,
    /// Bytes sent with stuffing (the usage log's `Sent`).
    sent_bytes: u64,
    /// 8-bit bytes anywhere (BODY=8BITMIME).
    eight_bit: bool,
    /// 8-bit bytes in the header block (SMTPUTF8 when offered).
    utf8_headers: bool,
    /// The bytes, when small.
    small: Option<Arc<Vec<u8>>>,
}

/// Read all of a node through its open descriptor (pread: the offset is untouched).
pub(super) fn read_all_at(file: &std::fs::File, size: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; size as usize];
    let mut got = 0;
    while got < data.len() {
        match file.read_at(&mut data[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    data.truncate(got);
    Ok(data)
}

/// Where a stored message's header block ends: the first empty line.
#[derive(Default)]
struct HeaderEnd {
    done: bool,
    at_line_start: bool,
    non_ascii: bool,
}

impl HeaderEnd {
    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.done {
                return;
            }
            match b {
                b'\n' if self.at_line_start => self.done = true,
                b'\n' => self.at_line_start = true,
                b'\r' => {}
                _ => {
                    self.at_line_start = false;
                    self.non_ascii |= !b.is_ascii();
                }
            }
        }
    }
}

/// Measure a message through its descriptor. A small one is read once, here (a pread
/// of at most 256 KiB from the page cache; a hop to the blocking pool would cost more
/// than the read, and a blocking thread and its malloc arena per delivery under load),
/// and kept for sending; a big one is scanned in 64 KiB chunks on the blocking pool
/// (memory does not grow with its size) and streamed later.
async fn read_message(file: &std::fs::File, size: u64) -> std::io::Result<MessageInfo> {
    if size <= SMALL_MESSAGE {
        let data = read_all_at(file, size)?;
        let mut m = Measure::default();
        m.feed(&data);
        return Ok(m.finish(Some(Arc::new(data))));
    }
    let file = file.try_clone()?;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut m = Measure::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        loop {
            let n = file.read_at(&mut buf, at)?;
            if n == 0 {
                break;
            }
            at += n as u64;
            m.feed(&buf[..n]);
        }
        Ok(m.finish(None))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What [`read_message`] learns from the bytes as they pass.
struct Measure {
    wire: WireSize,
    head: HeaderEnd,
    eight_bit: bool,
}

impl Default for Measure {
    fn default() -> Self {
        Measure {
            wire: WireSize::default(),
            head: HeaderEnd {
                at_line_start: true,
                ..Default::default()
            },
            eight_bit: false,
        }
    }
}

impl Measure {
    fn feed(&mut self, chunk: &[u8]) {
        self.wire.feed(chunk);
        self.head.feed(chunk);
        self.eight_bit |= !chunk.is_ascii();
    }

    fn finish(mut self, small: Option<Arc<Vec<u8>>>) -> MessageInfo {
        self.wire.finish();
        MessageInfo {
            wire: self.wire.crlf,
            sent_bytes: self.wire.crlf + self.wire.stuffed,
            eight_bit: self.eight_bit,
            utf8_headers: self.head.non_ascii,
            small,
        }
    }
}

/// The body to send: the kept bytes, or the node's descriptor from its start.
async fn open_body(file: &std::fs::File, small: Option<&Arc<Vec<u8>>>) -> std::io::Result<Body> {
    Ok(match small {
        Some(data) => Box::new(std::io::Cursor::new(ArcBytes(data.clone()))),
        None => {
            use tokio::io::AsyncSeekExt;
            let mut f = tokio::fs::File::from_std(file.try_clone()?);
            f.seek(std::io::SeekFrom::Start(0)).await?;
            Box::new(f)
        }
    })
}

/// Shared message bytes as a cursor source.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
