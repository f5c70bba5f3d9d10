//! The events a settlement records, and the suppression list's part in delivery.
//!
//! Events are stored durably before any node is deleted or moved (settle.rs calls
//! [`Engine::record_outcomes`] first): a crash never loses the event of a delivery
//! that happened. A node whose recipient is suppressed is removed before anything is
//! sent, with a `suppressed` event.

use std::os::unix::fs::FileExt;

use mailspool_events::{Class, Event, Kind, Tls, hard_bounce};
use mailspool_spool::store::emit;
use mailspool_spool::{NodeEntry, NodeLock, escape, now};

use super::{Claim, Engine, NodeResult, Outcome, Verdict};
use crate::config::DeliverConfig;

/// Where a delivery went: what its `delivered` event says.
#[derive(Debug, Clone)]
pub(crate) struct Via {
    pub host: String,
    pub addr: String,
    pub tls: Option<(String, String)>,
    pub policy: &'static str,
}

/// How much of a message is read for its Message-ID.
const HEAD_BYTES: usize = 32 * 1024;

/// The Message-ID field of a stored message, if its header has one.
pub(crate) fn message_id_of(file: &std::fs::File) -> Option<String> {
    let mut buf = vec![0u8; HEAD_BYTES];
    let n = file.read_at(&mut buf, 0).ok()?;
    buf.truncate(n);
    let head = mailspool_message::read_head(&mut &buf[..], HEAD_BYTES, false).ok()?;
    head.headers.values("Message-ID").next()
}

impl Engine {
    /// The event a verdict on node `n` makes (`last_tier`: a temporary failure there
    /// ends the schedule).
    fn event_of(&self, cfg: &DeliverConfig, n: &NodeEntry, v: &Verdict, last_tier: usize) -> Event {
        let new = |kind| Event::new(kind, &n.name.id, &n.name.from, &n.name.to);
        match v {
            Verdict::Delivered { reply, via } => {
                let mut e = new(Kind::Delivered).with_reply(reply);
                e.node = Some(n.ino);
                if let Some(via) = via {
                    e.mx = Some(via.host.clone());
                    e.address = (!via.addr.is_empty()).then(|| via.addr.clone());
                    e.tls = via
                        .tls
                        .clone()
                        .map(|(version, cipher)| Tls { version, cipher });
                    e.tls_policy = Some(via.policy.to_owned());
                }
                e
            }
            Verdict::Temporary { host, reply, .. } | Verdict::Throttled { host, reply } => {
                let expired = matches!(v, Verdict::Temporary { .. }) && n.tier >= last_tier;
                let mut e = new(if expired {
                    Kind::Expired
                } else {
                    Kind::Deferred
                })
                .with_reply(reply);
                e.mx = (!host.is_empty()).then(|| host.clone());
                e.class = Some(cfg.rules.classify(reply, None));
                if !expired {
                    // A throttled node waits in its tier; a deferred one in the next.
                    let tier = match v {
                        Verdict::Throttled { .. } => n.tier,
                        _ => n.tier + 1,
                    };
                    e.tier = Some(tier);
                    if matches!(v, Verdict::Temporary { .. }) {
                        e.next_attempt =
                            Some(now().saturating_add(self.spool.config().period(tier)));
                    }
                }
                e
            }
            Verdict::Permanent(f) => {
                let mut e = new(Kind::Bounced).with_reply(&f.diagnostic);
                e.mx = f.remote_mta.clone();
                e.class = Some(cfg.rules.classify(&f.diagnostic, Some(&f.status)));
                e
            }
        }
    }

    /// Record, durably, what the verdicts say happened, before they are acted on; add
    /// the recipients of hard bounces to the suppression list (not for an interactive
    /// send: its caller has the refusal); count failures by class.
    pub(super) fn record_outcomes(
        &self,
        cfg: &DeliverConfig,
        nodes: &[(NodeEntry, NodeLock)],
        file: &std::fs::File,
        verdicts: &[Verdict],
        interactive: bool,
    ) {
        let last_tier = self.spool.config().tiers().saturating_sub(1);
        let message_id = message_id_of(file);
        let events: Vec<Event> = nodes
            .iter()
            .zip(verdicts)
            .map(|((n, _), v)| {
                self.event_of(cfg, n, v, last_tier)
                    .with_message_id(message_id.as_deref())
            })
            .collect();
        // A failure to store them is logged by `emit`; the outcome is acted on anyway
        // (a delivered node kept for want of a history line would be sent again). The
        // sync waits (for its group's fdatasync): off the runtime's worker, so the other
        // deliveries' I/O goes on meanwhile.
        let store = || emit(&*self.spool, &events, true);
        let _ = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(store),
            _ => store(),
        };
        let m = mailspool_metrics::global();
        for e in &events {
            if let (Kind::Bounced | Kind::Expired, Some(class)) = (e.kind, e.class) {
                m.bounce(class.as_str());
            }
            // An interactive caller was told the refusal itself, and decides.
            let entry = match interactive {
                true => None,
                false => hard_bounce(e, &cfg.suppression).or_else(|| self.soft_bounced(cfg, e)),
            };
            if let Some(entry) = entry {
                match self.spool.suppress(&entry) {
                    Ok(()) => {
                        tracing::info!(to = %escape(&entry.address), reason = %entry.reason, domain = %escape(&entry.domain), "suppressed after a hard bounce")
                    }
                    Err(err) => {
                        tracing::error!(to = %escape(&entry.address), error = %err, "cannot add to the suppression list")
                    }
                }
            }
        }
    }

    /// The suppression `[suppression] soft_bounces` calls for after the soft bounce `e`,
    /// from the recipient's recent history.
    fn soft_bounced(
        &self,
        cfg: &DeliverConfig,
        e: &Event,
    ) -> Option<mailspool_events::Suppression> {
        let p = &cfg.suppression;
        if p.soft_bounces == 0 || !mailspool_events::is_soft_bounce(e) {
            return None;
        }
        let mut q = mailspool_events::Query {
            recipient: Some(e.recipient.clone()),
            since: Some(
                e.time
                    .saturating_sub(p.soft_bounce_days.saturating_mul(86_400)),
            ),
            limit: mailspool_events::MAX_PAGE,
            ..Default::default()
        };
        let mut history = Vec::new();
        // Bounded: a recipient with more events than this in the window is not counted.
        for _ in 0..10 {
            let page = self.spool.read_events(&q).ok()?;
            history.extend(page.events);
            if !page.more {
                return mailspool_events::soft_bounce(e, p, &history);
            }
            q.cursor = page.next;
        }
        None
    }

    /// Take the claim's suppressed recipients out of it: each is removed from the spool
    /// with a `suppressed` event, before anything is sent.
    pub(super) fn drop_suppressed(
        &self,
        cfg: &DeliverConfig,
        claim: &mut Claim,
    ) -> Vec<NodeResult> {
        if !cfg.suppression.enabled {
            return Vec::new();
        }
        let nodes = std::mem::take(&mut claim.nodes);
        let (mut keep, mut gone): (Vec<(NodeEntry, NodeLock)>, Vec<_>) = (Vec::new(), Vec::new());
        for (n, lock) in nodes {
            match self.spool.suppressed(&n.name.from, &n.name.to) {
                Some(s) => gone.push((n, lock, s)),
                None => keep.push((n, lock)),
            }
        }
        claim.nodes = keep;
        if gone.is_empty() {
            return Vec::new();
        }
        let message_id = message_id_of(&claim.file.file);
        let events: Vec<Event> = gone
            .iter()
            .map(|(n, _, s)| {
                let mut e = Event::new(Kind::Suppressed, &n.name.id, &n.name.from, &n.name.to)
                    .with_message_id(message_id.as_deref())
                    .with_reply(&format!("550 5.1.1 suppressed: {}", s.reason));
                e.class = Some(Class::InvalidRecipient).filter(|_| s.reason == "invalid_recipient");
                e
            })
            .collect();
        let _ = emit(&*self.spool, &events, true);
        gone.into_iter()
            .map(|(n, _lock, s)| {
                if let Err(e) = self.spool.delete_locked(&n) {
                    tracing::error!(node = %escape(&n.path.display().to_string()), error = %e, "cannot remove a suppressed node");
                }
                tracing::info!(event = "suppressed", id = %n.name.id, to = %escape(&n.name.to), from = %escape(&n.name.from), reason = %s.reason, "not sent: the recipient is suppressed");
                NodeResult {
                    id: n.name.id.clone(),
                    to: n.name.to.clone(),
                    outcome: Outcome::Failed,
                    reply: format!("550 5.1.1 suppressed: {}", s.reason),
                }
            })
            .collect()
    }

    /// `delayed` events, once the notice to the sender is queued.
    pub(super) fn record_delayed(
        &self,
        claim_file: &std::fs::File,
        name: &mailspool_spool::NodeName,
        recipients: &[String],
    ) {
        let message_id = message_id_of(claim_file);
        let events: Vec<Event> = recipients
            .iter()
            .map(|to| {
                Event::new(Kind::Delayed, &name.id, &name.from, to)
                    .with_message_id(message_id.as_deref())
            })
            .collect();
        let _ = emit(&*self.spool, &events, false);
    }
}
