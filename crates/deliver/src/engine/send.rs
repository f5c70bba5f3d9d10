//! Sending one group: try each address of each target, reuse pooled sessions, and turn
//! replies into verdicts; the message is read once when small, streamed when big.

use std::sync::Arc;
use std::time::Instant;

use mailspool_smtp::body::{DataEncoder, WireSize};
use mailspool_smtp::{ClientSettings, Envelope, Session, SmtpError, TlsPolicy};
use mailspool_spool::side::Attempt;
use mailspool_spool::{NodeEntry, NodeLock, escape, now};
use tokio::sync::Semaphore;

use super::gate::Destination;
use super::{Claim, Engine, Verdict};
use crate::bounce::Failure;
use crate::config::DeliverConfig;
use crate::route::Target;
use crate::shaping::is_throttling;

impl Engine {
    /// Try each address of each target until one takes the transaction.
    pub(super) async fn send_to_targets(
        &self,
        cfg: &DeliverConfig,
        targets: &[Target],
        claim: &Claim,
        dest: &Destination,
    ) -> Vec<Verdict> {
        let nodes = &claim.nodes[..];
        let first = &nodes[0].0;
        let file = &claim.file.file;
        let info = match self.prepare_message(cfg, claim).await {
            Ok(v) => v,
            Err(reply) => return temporary_all(nodes, reply),
        };
        let env = Envelope {
            from: first.name.envelope_from().to_owned(),
            to: nodes
                .iter()
                .map(|(n, _)| n.name.envelope_to().to_owned())
                .collect(),
            size: info.wire,
            eight_bit: info.eight_bit,
            utf8_headers: info.utf8_headers,
        };
        let mut last: (String, String) = (String::new(), "no server could be reached".into());
        for (ti, target) in targets.iter().enumerate() {
            // The first target's place is the destination gate's (taken by the
            // caller); a failover target's slot is taken here.
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
            for (ai, addr) in target.addrs.iter().enumerate() {
                let started = Instant::now();
                // Sessions are shared only under the same policy: one authenticated
                // by DANE is not one checked against the web PKI, nor the reverse.
                let pool_key = format!("{addr}/{}/{:?}/{}", target.host, target.tls, target.policy);
                let pooled = self.pooled(&pool_key);
                if pooled.is_none() && !self.connection_allowed(dest).await {
                    let reply = format!(
                        "4.4.5 {}: our connection_rate is reached; waiting",
                        dest.key
                    );
                    return nodes
                        .iter()
                        .map(|_| Verdict::Throttled {
                            host: target.host.clone(),
                            reply: reply.clone(),
                        })
                        .collect();
                }
                let connected = match pooled {
                    Some(s) => Ok(s),
                    None => self.connect(&target.addrs[ai..], target, cfg).await,
                };
                let session = match connected {
                    Ok(s) => s,
                    Err(e) => {
                        let text = failure_text(target, &e);
                        tracing::info!(id = %first.name.id, host = %escape(&target.host), addr = %addr, tls_policy = target.policy, why = %escape(&target.why), error = %escape(&text), ms = started.elapsed().as_millis() as u64, "connection failed");
                        self.record_all(nodes, &target.host, &text);
                        if let Some(held) = self.throttled_by(dest, nodes, &target.host, &e) {
                            return held;
                        }
                        dest.connection_failed();
                        last = (target.host.clone(), text);
                        // No TCP connection: every address left was tried in the race.
                        if e.phase() == Some(mailspool_smtp::Phase::Connect) {
                            break;
                        }
                        continue;
                    }
                };
                let mut session = session;
                // Counted while this delivery uses it (for the window, with the idle ones).
                let _in_use = dest.session_in_use();
                let mut result = transmit(&mut session, &env, &info, file).await;
                // A pooled connection the server closed while idle fails at its RSET,
                // before any MAIL: open a fresh one and try again, once.
                if let Err(e) = &result
                    && e.phase() == Some(mailspool_smtp::Phase::Rset)
                    && !matches!(e, SmtpError::Rejected { .. })
                {
                    match self.connect(&target.addrs[ai..], target, cfg).await {
                        Ok(fresh) => {
                            session = fresh;
                            result = transmit(&mut session, &env, &info, file).await;
                        }
                        Err(e) => result = Err(e),
                    }
                }
                if let Err(SmtpError::Source(e)) = &result {
                    return temporary_all(nodes, format!("cannot read the node: {e}"));
                }
                let ms = started.elapsed().as_millis() as u64;
                match result {
                    Ok(outcome) => {
                        let tls = if session.tls { "yes" } else { "no" };
                        let policy = match target.policy {
                            "opportunistic" if !session.tls => "plaintext",
                            p => p,
                        };
                        let m = mailspool_metrics::global();
                        m.outbound_tls
                            .get_or_create(&mailspool_metrics::TlsLabel { tls })
                            .inc();
                        m.outbound_policy
                            .get_or_create(&mailspool_metrics::PolicyLabel { policy })
                            .inc();
                        self.put_back(pool_key, session, dest).await;
                        let throttling = (0..nodes.len())
                            .map(|i| outcome.result(i).to_string())
                            .find(|r| is_throttling(r));
                        match &throttling {
                            Some(reply) => self.cool(dest, &target.host, reply),
                            None => dest.succeeded(),
                        }
                        let mut verdicts = Vec::new();
                        for (i, (n, _)) in nodes.iter().enumerate() {
                            let reply = outcome.result(i);
                            tracing::info!(id = %n.name.id, to = %escape(&n.name.to), host = %escape(&target.host), addr = %addr, tls_policy = policy, why = %escape(&target.why), code = reply.code, reply = %escape(&reply.to_string()), ms, "delivery attempt");
                            let text = reply.to_string();
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
                            } else if throttling.is_some() && is_throttling(&text) {
                                Verdict::Throttled {
                                    host: target.host.clone(),
                                    reply: text,
                                }
                            } else {
                                Verdict::Temporary {
                                    host: target.host.clone(),
                                    reply: text,
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
                        tracing::info!(id = %first.name.id, host = %escape(&target.host), addr = %addr, tls_policy = target.policy, why = %escape(&target.why), error = %escape(&e.to_string()), ms, "delivery attempt");
                        if matches!(
                            e,
                            SmtpError::Rejected { .. }
                                | SmtpError::NeedsSmtpUtf8
                                | SmtpError::TooLarge { .. }
                        ) {
                            self.put_back(pool_key, session, dest).await;
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
                        let text = failure_text(target, &e);
                        tracing::info!(id = %first.name.id, host = %escape(&target.host), addr = %addr, tls_policy = target.policy, why = %escape(&target.why), error = %escape(&text), ms, "delivery attempt");
                        self.record_all(nodes, &target.host, &text);
                        if let Some(held) = self.throttled_by(dest, nodes, &target.host, &e) {
                            return held;
                        }
                        last = (target.host.clone(), text);
                        // A 4xx to MAIL is the server's verdict on this message: later.
                        if matches!(
                            &e,
                            SmtpError::Rejected {
                                phase: mailspool_smtp::Phase::Mail,
                                ..
                            }
                        ) {
                            self.put_back(pool_key, session, dest).await;
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
                    node: Some(n.ino),
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

    /// A pooled session for `key` that is still good for another transaction.
    fn pooled(&self, key: &str) -> Option<Session> {
        loop {
            let mut s = self
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(key)
                .and_then(Vec::pop)?;
            if !s.expired() {
                s.reset_before_next();
                return Some(s);
            }
        }
    }

    /// Wait (briefly) for the destination's connection rate to allow a new connection.
    async fn connection_allowed(&self, dest: &Destination) -> bool {
        for _ in 0..20 {
            if dest.may_connect() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    /// The receiver throttled us (a throttling reply, anywhere in the session): cool
    /// the destination, and hold every node of the claim in its tier.
    fn throttled_by(
        &self,
        dest: &Destination,
        nodes: &[(NodeEntry, NodeLock)],
        host: &str,
        e: &SmtpError,
    ) -> Option<Vec<Verdict>> {
        let reply = e.reply()?.to_string();
        if !is_throttling(&reply) {
            return None;
        }
        self.cool(dest, host, &reply);
        Some(
            nodes
                .iter()
                .map(|_| Verdict::Throttled {
                    host: host.to_owned(),
                    reply: reply.clone(),
                })
                .collect(),
        )
    }

    /// Start (or lengthen) a destination's cooling period after a throttling reply.
    fn cool(&self, dest: &Destination, host: &str, reply: &str) {
        let cfg = self.cfg();
        let period = dest.throttled(cfg.shaping.cooling, cfg.shaping.max_cooling);
        mailspool_metrics::global().throttled.inc();
        tracing::warn!(event = "throttled", destination = %escape(&dest.key), host = %escape(host), reply = %escape(reply), cooling = period.as_secs(), window = dest.window(), "the receiver throttled us; its mail waits in place");
        self.look_again_in(period);
    }

    /// The name to say EHLO with: `hostname`, or with `ehlo_from_ptr` the PTR name of
    /// the source address used for `peer` when that name resolves back to the address
    /// (forward-confirmed); looked up once an hour per address.
    async fn ehlo_name(&self, cfg: &DeliverConfig, peer: std::net::SocketAddr) -> String {
        let source = cfg
            .bind_addresses
            .iter()
            .find(|ip| ip.is_ipv4() == peer.is_ipv4())
            .copied();
        let Some(source) = source.filter(|_| cfg.ehlo_from_ptr) else {
            return cfg.hostname.clone();
        };
        {
            let names = self.ehlo_names.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((name, until)) = names.get(&source)
                && *until > Instant::now()
            {
                return name.clone();
            }
        }
        let mut chosen = cfg.hostname.clone();
        if let Ok(names) = self.dns.ptr(source).await {
            for name in names {
                let confirmed = self
                    .dns
                    .ips(&name)
                    .await
                    .is_ok_and(|ips| ips.contains(&source));
                if confirmed {
                    chosen = name;
                    break;
                }
            }
        }
        if chosen == cfg.hostname {
            tracing::warn!(source = %source, "no PTR name of the source address resolves back to it; saying EHLO {}", escape(&cfg.hostname));
        }
        self.ehlo_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                source,
                (
                    chosen.clone(),
                    Instant::now() + std::time::Duration::from_secs(3600),
                ),
            );
        chosen
    }

    /// A new session to the first of `addrs` that answers (happy eyeballs: each next
    /// address is tried 250 ms after the one before if it has not answered, so an
    /// IPv6 route that drops packets costs a quarter second, not a timeout).
    async fn connect(
        &self,
        addrs: &[std::net::SocketAddr],
        target: &Target,
        cfg: &DeliverConfig,
    ) -> Result<Session, SmtpError> {
        let Some(&addr) = addrs.first() else {
            return Err(SmtpError::Io {
                phase: mailspool_smtp::Phase::Connect,
                source: std::io::Error::other("no address"),
            });
        };
        let mut settings = ClientSettings {
            helo_name: self.ehlo_name(cfg, addr).await,
            timeouts: cfg.timeouts.clone(),
            tls: target.tls,
            auth: target.auth.clone(),
            bind: cfg.bind_addresses.clone(),
            verifier: target.verifier.clone(),
        };
        let stagger = HAPPY_EYEBALLS_DELAY;
        match Session::connect_any(addrs, &target.host, &settings, &self.tls, stagger).await {
            Err(SmtpError::Tls(e))
                if target.tls == TlsPolicy::Opportunistic && target.auth.is_none() =>
            {
                tracing::info!(host = %escape(&target.host), error = %escape(&e.to_string()), "TLS failed; retrying without TLS");
                settings.tls = TlsPolicy::None;
                Session::connect_any(addrs, &target.host, &settings, &self.tls, stagger).await
            }
            other => other,
        }
    }

    /// Keep a session for the next message to the same host, unless it carried its
    /// share of transactions or the destination's window would not allow it: receivers
    /// count idle connections too, so deliveries under way plus idle connections stay
    /// within the window. One not kept is closed (QUIT answered) before this delivery
    /// frees its place, so a new connection never overlaps the old one's goodbye.
    async fn put_back(&self, key: String, session: Session, dest: &Destination) {
        let session = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let idle = pool.entry(key).or_default();
            // `sessions_in_use` still counts this one: back in the pool, the
            // destination's connections are the idle ones plus the others in use.
            if !session.expired()
                && session.transactions < dest.limits.max_messages_per_connection
                && idle.len() + dest.sessions_in_use() <= dest.window()
            {
                idle.push(session);
                return;
            }
            session
        };
        session.quit().await;
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

/// RFC 8305's recommended Connection Attempt Delay.
const HAPPY_EYEBALLS_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// The per-host limit applies to this key: host name and port.
pub(super) fn host_key(t: &Target) -> String {
    format!("{}:{}", t.host, t.addrs.first().map_or(0, |a| a.port()))
}

/// Messages up to this size are read once into memory for the whole delivery.
pub(super) const SMALL_MESSAGE: u64 = 256 * 1024;

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
    /// A small message's DATA, encoded once for every attempt.
    encoded: Option<Arc<Vec<u8>>>,
    /// A field sent before a big message's stored bytes (its DKIM signature).
    prefix: Option<Vec<u8>>,
}

/// Read all of a node through its open descriptor (pread: the offset is untouched).
pub(super) fn read_all_at(file: &std::fs::File, size: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = Vec::with_capacity(size as usize);
    // Read straight into the spare capacity: no zeroing of a buffer about to be filled.
    let mut got = 0usize;
    loop {
        let spare = data.spare_capacity_mut();
        if spare.is_empty() {
            break;
        }
        // SAFETY: u8 has no invalid bit patterns, and only the bytes pread reports
        // written are counted as initialised below.
        let buf = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        match file.read_at(buf, got as u64)? {
            0 => break,
            n => {
                got += n;
                // SAFETY: pread wrote n more bytes after the `got` already there.
                unsafe { data.set_len(got) };
            }
        }
    }
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
/// and encoded once as DATA for every attempt; a big one is scanned in 64 KiB chunks
/// on the blocking pool (memory does not grow with its size) and streamed later.
/// `prefix` (a signature field, CRLF line ends) goes before the stored bytes.
pub(super) async fn scan_big_message(
    file: &std::fs::File,
    prefix: Option<Vec<u8>>,
) -> std::io::Result<MessageInfo> {
    let file = file.try_clone()?;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut wire = WireSize::default();
        let mut head = HeaderEnd {
            at_line_start: true,
            ..Default::default()
        };
        let mut eight_bit = false;
        if let Some(p) = &prefix {
            wire.feed(p);
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        loop {
            let n = file.read_at(&mut buf, at)?;
            if n == 0 {
                break;
            }
            at += n as u64;
            wire.feed(&buf[..n]);
            head.feed(&buf[..n]);
            eight_bit |= !buf[..n].is_ascii();
        }
        wire.finish();
        Ok(MessageInfo {
            wire: wire.crlf,
            sent_bytes: wire.crlf + wire.stuffed,
            eight_bit,
            utf8_headers: head.non_ascii,
            encoded: None,
            prefix,
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Encode a whole message (after `prefix`, a signature field) as DATA and measure it
/// from the result.
pub(super) fn encode_small(prefix: Option<&[u8]>, data: &[u8]) -> MessageInfo {
    let mut enc = DataEncoder::default();
    let extra = prefix.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(extra + data.len() + data.len() / 32 + 8);
    if let Some(p) = prefix {
        enc.feed(p, &mut out);
    }
    enc.feed(data, &mut out);
    enc.finish(&mut out);
    let sent_bytes = out.len() as u64 - 3; // without the final ".\r\n"
    let mut head = HeaderEnd {
        at_line_start: true,
        ..Default::default()
    };
    head.feed(data);
    MessageInfo {
        wire: sent_bytes - enc.stuffed(),
        sent_bytes,
        eight_bit: !data.is_ascii(),
        utf8_headers: head.non_ascii,
        encoded: Some(Arc::new(out)),
        prefix: None,
    }
}

/// Send one transaction: the encoded DATA of a small message, or a big one streamed
/// from the node's descriptor from its start.
async fn transmit(
    session: &mut Session,
    env: &Envelope,
    info: &MessageInfo,
    file: &std::fs::File,
) -> Result<mailspool_smtp::TxOutcome, SmtpError> {
    match &info.encoded {
        Some(data) => session.send_encoded(env, data).await,
        None => {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let mut f = tokio::fs::File::from_std(file.try_clone().map_err(SmtpError::Source)?);
            f.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(SmtpError::Source)?;
            let prefix = std::io::Cursor::new(info.prefix.clone().unwrap_or_default());
            session.send(env, &mut prefix.chain(f)).await
        }
    }
}

/// What a failed attempt records and reports: under DANE or MTA-STS, a failure to
/// set up authenticated TLS is the policy's refusal, 4.7.5 (RFC 7672 §2.2, RFC 8461
/// §4.2), naming the policy; anything else as it happened.
fn failure_text(target: &Target, e: &SmtpError) -> String {
    let tls = matches!(e, SmtpError::Tls(_) | SmtpError::TlsUnavailable)
        || matches!(
            e,
            SmtpError::Rejected {
                phase: mailspool_smtp::Phase::StartTls,
                ..
            }
        );
    match target.policy {
        "dane" if tls => format!("4.7.5 DANE: {}: {e}", target.host),
        "mta-sts" if tls => format!("4.7.5 MTA-STS (enforce): {}: {e}", target.host),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoding small messages up front measures them as the streaming count does.
    #[test]
    fn small_and_streamed_measures_agree() {
        for text in [
            &b""[..],
            b"\n",
            b".",
            b"Subject: x\n\nbody\n",
            b"Subject: caf\xc3\xa9\n\n.dot\n..two\nend",
            b"A: b\nC: d\n\n\xff\n",
            b"\n\nbody only\n",
            b"no header end\n.still",
            b"bare\rcr and crlf\r\n.x\r\n",
        ] {
            let small = encode_small(None, text);
            let mut wire = WireSize::default();
            for chunk in text.chunks(3) {
                wire.feed(chunk);
            }
            wire.finish();
            assert_eq!(
                (small.wire, small.sent_bytes),
                (wire.crlf, wire.crlf + wire.stuffed),
                "{:?}",
                String::from_utf8_lossy(text)
            );
            let data = small.encoded.unwrap();
            assert!(data.ends_with(b".\r\n"));
            // What the receiver gets back is the message, line ends made LF.
            let mut want = Vec::new();
            let mut i = 0;
            while i < text.len() {
                match (text[i], text.get(i + 1)) {
                    (b'\r', Some(b'\n')) => {
                        want.push(b'\n');
                        i += 2;
                        continue;
                    }
                    (b'\r', _) => want.push(b'\n'),
                    (b, _) => want.push(b),
                }
                i += 1;
            }
            if !want.is_empty() && !want.ends_with(b"\n") {
                want.push(b'\n');
            }
            assert_eq!(mailspool_smtp::body::unstuff(&data), want, "{text:?}");
        }
    }
}
