//! Sending one group: try each address of each target, reuse pooled sessions, and turn
//! replies into verdicts; the message is read once when small, streamed when big.

use std::sync::Arc;
use std::time::Instant;

use mailspool_smtp::{ClientSettings, Envelope, Session, SmtpError, TlsPolicy};
use mailspool_spool::side::Attempt;
use mailspool_spool::{NodeEntry, NodeLock, escape, now};
use tokio::sync::Semaphore;

use super::gate::Destination;
use super::shared::SlotGuard;
use super::wire::transmit;
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
        // With a return path, bounces that come back later name this message (VERP);
        // the null sender stays null (a bounce is never bounced).
        let from = match &cfg.return_path {
            Some(rp) if !first.name.envelope_from().is_empty() => rp.sender(&first.name.id),
            _ => first.name.envelope_from().to_owned(),
        };
        let env = Envelope {
            from,
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
                let (pooled, slot) = match self.pooled(&pool_key) {
                    Some((session, slot)) => (Some(session), slot),
                    None => (None, None),
                };
                if pooled.is_none() && !self.connection_allowed(dest).await {
                    let reply = format!(
                        "4.4.5 {}: our connection_rate is reached; waiting",
                        dest.key
                    );
                    return held_back(nodes, &target.host, &reply);
                }
                // A new connection takes one of the destination's slots held across
                // the hosts sharing the spool, for as long as it stays open.
                let slot = match (&dest.sharing, pooled.is_none()) {
                    (Some(sharing), true) => match sharing.slot().await {
                        Ok(slot) => Some(slot),
                        Err(why) => {
                            let reply = format!("4.4.5 {}: {why}; waiting", escape(&dest.key));
                            return held_back(nodes, &target.host, &reply);
                        }
                    },
                    _ => slot,
                };
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
                        let tls_info = session.tls_info();
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
                        self.put_back(pool_key, session, slot, dest).await;
                        // A throttling reply, or a refusal the rules class as a
                        // reputation block or a rate limit: the destination cools.
                        let throttling = (0..nodes.len())
                            .map(|i| outcome.result(i).to_string())
                            .find(|r| is_throttling(r) || slows_down(&cfg.rules, r));
                        match &throttling {
                            Some(reply) => self.cool(dest, &target.host, reply),
                            None => dest.succeeded(),
                        }
                        let via = super::record::Via {
                            host: target.host.clone(),
                            addr: addr.to_string(),
                            tls: tls_info,
                            policy,
                        };
                        let mut verdicts = Vec::new();
                        for (i, (n, _)) in nodes.iter().enumerate() {
                            let reply = outcome.result(i);
                            tracing::info!(id = %n.name.id, to = %escape(&n.name.to), host = %escape(&target.host), addr = %addr, tls_policy = policy, why = %escape(&target.why), code = reply.code, reply = %escape(&reply.to_string()), ms, "delivery attempt");
                            let text = reply.to_string();
                            verdicts.push(if reply.is_positive() {
                                Verdict::Delivered {
                                    reply: reply.to_string(),
                                    via: Some(via.clone()),
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
                            self.put_back(pool_key, session, slot, dest).await;
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
                            self.put_back(pool_key, session, slot, dest).await;
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
    fn pooled(&self, key: &str) -> Option<(Session, Option<SlotGuard>)> {
        loop {
            let (mut s, slot) = self
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(key)
                .and_then(Vec::pop)?;
            if !s.expired() {
                s.reset_before_next();
                return Some((s, slot));
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
        Some(held_back(nodes, host, &reply))
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
    async fn put_back(
        &self,
        key: String,
        session: Session,
        slot: Option<SlotGuard>,
        dest: &Destination,
    ) {
        let session = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let idle = pool.entry(key).or_default();
            // `sessions_in_use` still counts this one: back in the pool, the
            // destination's connections are the idle ones plus the others in use.
            if !session.expired()
                && session.transactions < dest.limits.max_messages_per_connection
                && idle.len() + dest.sessions_in_use() <= dest.window()
            {
                idle.push((session, slot));
                return;
            }
            session
        };
        session.quit().await;
        // The slot goes back once the receiver has seen the connection close.
        drop(slot);
    }

    /// QUIT every idle session.
    pub async fn close_idle(&self) {
        let sessions: Vec<super::Idle> = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        for (s, slot) in sessions {
            s.quit().await;
            drop(slot);
        }
    }
}

/// Every node held in its tier (the destination cools, or may take no more now).
fn held_back(nodes: &[(NodeEntry, NodeLock)], host: &str, reply: &str) -> Vec<Verdict> {
    nodes
        .iter()
        .map(|_| Verdict::Throttled {
            host: host.to_owned(),
            reply: reply.to_owned(),
        })
        .collect()
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

/// Whether a failure says the receiver wants less of us: its class is a reputation
/// block or a rate limit (a provider's words, matched by the bounce rules).
fn slows_down(rules: &mailspool_events::Rules, reply: &str) -> bool {
    matches!(reply.as_bytes().first(), Some(b'4' | b'5'))
        && matches!(
            rules.classify(reply, None),
            mailspool_events::Class::ReputationBlock | mailspool_events::Class::RateLimit
        )
}
