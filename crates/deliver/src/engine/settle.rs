//! Settling a group under its locks: delete what was delivered, move what must wait to
//! the next tier, bounce what failed for good (bounce first, then delete).

use mailspool_spool::side::Attempt;
use mailspool_spool::{NodeEntry, NodeLock, escape, now};

use super::{Claim, Engine, NodeResult, Outcome, Verdict};
use crate::bounce::{Failure, Report, Spooled, spool_dsn};
use crate::config::DeliverConfig;

/// How long past its due time a node may be held in its tier by throttling: its
/// tier's period, and at least an hour.
const HOLD_AT_LEAST: u64 = 3600;

impl Engine {
    /// Whether a throttled node may stay in its tier rather than move on.
    fn may_hold(&self, n: &NodeEntry) -> bool {
        let period = self.spool.config().period(n.tier).max(HOLD_AT_LEAST);
        now() < self.spool.due_at(n).saturating_add(period)
    }

    /// Act on the verdicts, under the nodes' locks: delete, fall back, or bounce.
    pub(super) fn settle(
        &self,
        cfg: &DeliverConfig,
        claim: Claim,
        verdicts: Vec<Verdict>,
        interactive: bool,
    ) -> Vec<NodeResult> {
        let locked: Vec<(NodeEntry, NodeLock)> = claim.nodes;
        let last_tier = self.spool.config().tiers().saturating_sub(1);
        let mut results = Vec::new();
        let mut failures: Vec<(usize, Failure)> = Vec::new();
        // Deferred here, for a "delayed" report if the message has waited long enough.
        let mut delayed: Vec<Failure> = Vec::new();
        // A throttled node waits in its tier while the destination cools, unless it has
        // waited there long enough already (then the schedule goes on, so a destination
        // that never stops throttling still ends in a bounce).
        let verdicts: Vec<Verdict> = locked
            .iter()
            .zip(verdicts)
            .map(|((n, _), v)| match v {
                Verdict::Throttled { host, reply } if interactive || !self.may_hold(n) => {
                    Verdict::Temporary {
                        host,
                        reply,
                        recorded: false,
                    }
                }
                other => other,
            })
            .collect();
        // What happened is on disk before anything is deleted or moved.
        self.record_outcomes(cfg, &locked, &claim.file.file, &verdicts, interactive);
        for (i, ((n, _lock), v)) in locked.iter().zip(verdicts).enumerate() {
            let result = |outcome, reply: String| NodeResult {
                id: n.name.id.clone(),
                to: n.name.to.clone(),
                outcome,
                reply,
            };
            match v {
                Verdict::Throttled { host, reply } => {
                    mailspool_metrics::global().delivery("deferred", &reply, None);
                    let _ = self.spool.record_attempt(
                        &n.name,
                        &Attempt {
                            time: now(),
                            host,
                            reply: reply.clone(),
                            delivered: false,
                            node: Some(n.ino),
                        },
                    );
                    tracing::info!(event = "held back", id = %n.name.id, to = %escape(&n.name.to), from = %escape(&n.name.from), tier = n.tier, reply = %escape(&reply), "held in its tier while the destination cools");
                    results.push(result(Outcome::Deferred, reply));
                }
                Verdict::Delivered { reply, .. } => {
                    let accepted = n.name.accepted_at();
                    mailspool_metrics::global().delivery("delivered", &reply, Some(accepted));
                    tracing::info!(event = "delivered", id = %n.name.id, to = %escape(&n.name.to), from = %escape(&n.name.from), reply = %escape(&reply), duration = now().saturating_sub(accepted), "delivered");
                    if let Err(e) = self.spool.delete_locked(n) {
                        tracing::error!(node = %escape(&n.path.display().to_string()), error = %e, "delivered but cannot delete the node: it may be sent again");
                    }
                    results.push(result(Outcome::Delivered, reply));
                }
                Verdict::Temporary {
                    host,
                    reply,
                    recorded,
                } => {
                    mailspool_metrics::global().delivery("deferred", &reply, None);
                    if !recorded {
                        let _ = self.spool.record_attempt(
                            &n.name,
                            &Attempt {
                                time: now(),
                                host: host.clone(),
                                reply: reply.clone(),
                                delivered: false,
                                node: Some(n.ino),
                            },
                        );
                    }
                    if n.tier >= last_tier {
                        failures.push((
                            i,
                            Failure {
                                recipient: n.name.to.clone(),
                                status: "4.4.7".into(),
                                remote_mta: (!host.is_empty()).then(|| host.clone()),
                                diagnostic: format!("delivery time expired; last error: {reply}"),
                                from_smtp: false,
                            },
                        ));
                        continue;
                    }
                    match self.spool.move_to_tier_locked(n, n.tier + 1) {
                        Ok(moved) => {
                            tracing::info!(event = "deferred", id = %n.name.id, to = %escape(&n.name.to), from = %escape(&n.name.from), tier = moved.tier, reply = %escape(&reply), "deferred");
                            if cfg.delay_warning_time.is_some() && !n.name.from.is_empty() {
                                delayed.push(Failure {
                                    recipient: n.name.to.clone(),
                                    status: temporary_status(&reply),
                                    remote_mta: (!host.is_empty()).then(|| host.clone()),
                                    diagnostic: reply.clone(),
                                    from_smtp: reply.as_bytes().first() == Some(&b'4'),
                                });
                            }
                        }
                        Err(e) => {
                            tracing::error!(node = %escape(&n.path.display().to_string()), error = %e, "cannot move the node to the next tier; it stays where it is")
                        }
                    }
                    results.push(result(Outcome::Deferred, reply));
                }
                Verdict::Permanent(f) => failures.push((i, f)),
            }
        }
        if !delayed.is_empty() && !interactive {
            self.warn_delayed(cfg, &claim.file.file, &locked[0].0.name, &delayed);
        }
        if failures.is_empty() {
            return results;
        }
        // One DSN for this one stored message, to its own sender, committed together
        // with the removal of the nodes it reports where the back end can (PostgreSQL:
        // one transaction); else bounce first (durably), then delete: a crash between
        // them can only duplicate the bounce, never lose it.
        let first = &locked[failures[0].0].0;
        let list: Vec<Failure> = failures.iter().map(|(_, f)| f.clone()).collect();
        let failed: Vec<NodeEntry> = failures.iter().map(|(i, _)| locked[*i].0.clone()).collect();
        let bounced = if interactive {
            Ok(Spooled::default())
        } else {
            spool_dsn(
                &self.spool,
                &cfg.hostname,
                &first.name.from,
                &first.name.id,
                &claim.file.file,
                &list,
                cfg.bounce_max_headers,
                Report::Failed,
                &failed,
            )
        };
        if let Err(e) = &bounced {
            tracing::error!(id = %first.name.id, error = %e, "cannot spool the bounce; the nodes stay queued");
        }
        for (i, f) in failures {
            let n = &locked[i].0;
            if bounced.as_ref().is_ok_and(|b| !b.replaced)
                && let Err(e) = self.spool.delete_locked(n)
            {
                tracing::error!(node = %escape(&n.path.display().to_string()), error = %e, "cannot delete a failed node");
            }
            mailspool_metrics::global().delivery("failed", &f.diagnostic, None);
            tracing::info!(event = "failed", id = %n.name.id, to = %escape(&n.name.to), from = %escape(&n.name.from), status = %f.status, reply = %escape(&f.diagnostic), duration = now().saturating_sub(n.name.accepted_at()), "failed");
            results.push(NodeResult {
                id: n.name.id.clone(),
                to: n.name.to.clone(),
                outcome: Outcome::Failed,
                reply: f.diagnostic,
            });
        }
        results
    }
}

impl Engine {
    /// One "delayed" report per message, to its sender, once it has waited
    /// `delay_warning_time`: never for the null sender, never twice (a marker in the
    /// spool, taken with O_EXCL, so not twice across processes and hosts either).
    fn warn_delayed(
        &self,
        cfg: &DeliverConfig,
        file: &std::fs::File,
        name: &mailspool_spool::NodeName,
        delayed: &[Failure],
    ) {
        let Some(after) = cfg.delay_warning_time else {
            return;
        };
        let arrived = name.accepted_at();
        if name.from.is_empty() || now().saturating_sub(arrived) < after.as_secs() {
            return;
        }
        match self.spool.claim_delay_warning(name) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(id = %name.id, error = %e, "cannot record the delay warning; none sent");
                return;
            }
        }
        let config = self.spool.config();
        let life: u64 = (0..config.tiers()).map(|t| config.period(t)).sum();
        let report = Report::Delayed {
            arrived,
            until: arrived.saturating_add(life),
        };
        if let Err(e) = spool_dsn(
            &self.spool,
            &cfg.hostname,
            &name.from,
            &name.id,
            file,
            delayed,
            cfg.bounce_max_headers,
            report,
            &[],
        ) {
            // Not sent: give the claim back, so a later deferral tries again.
            self.spool.release_delay_warning(name);
            tracing::error!(id = %name.id, error = %e, "cannot queue the delay warning");
            return;
        }
        let recipients: Vec<String> = delayed.iter().map(|f| f.recipient.clone()).collect();
        self.record_delayed(file, name, &recipients);
    }
}

/// The enhanced status of a temporary reply (`451 4.7.1 ...` gives 4.7.1), else 4.0.0.
fn temporary_status(reply: &str) -> String {
    reply
        .split_whitespace()
        .nth(1)
        .filter(|s| {
            let parts: Vec<&str> = s.split('.').collect();
            parts.len() == 3
                && parts[0] == "4"
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or("4.0.0")
        .to_owned()
}
