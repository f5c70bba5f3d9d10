//! Reports that come back to the return path (`[return_path]`): a bounce a remote MTA
//! sends after it accepted a message, or a feedback-loop complaint. The RCPT must be a
//! return path this host signed (so it names one message of ours); the report is read
//! into memory (at most [`MAX_REPORT`] bytes kept), parsed, and each recipient of that
//! message it speaks of gets a `bounced` or `complained` event; a hard bounce or a
//! complaint adds the recipient to the suppression list. Nothing is queued or relayed,
//! and the sender is never answered with a bounce of its own.

use std::collections::HashMap;
use std::io::Write;

use mailspool_events::report::{MAX_REPORT, ReportKind, parse};
use mailspool_events::{Event, Kind, Query, ReturnPath, hard_bounce};
use mailspool_spool::{Committed, Intake, NodeEntry, Result, Spool, Stage, Staged, escape};

use super::{Ended, Session};
use crate::config::ServeConfig;

/// A report held in memory: never a spool file.
#[derive(Debug)]
pub(super) struct ReportStage {
    id: String,
    bytes: Vec<u8>,
    written: u64,
}

impl ReportStage {
    pub(super) fn new(id: &str) -> ReportStage {
        ReportStage {
            id: id.to_owned(),
            bytes: Vec::new(),
            written: 0,
        }
    }
}

impl Write for ReportStage {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // What is past the limit is counted and dropped: a report's fields come first.
        let room = MAX_REPORT.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&buf[..buf.len().min(room)]);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Staged for ReportStage {
    fn id(&self) -> &str {
        &self.id
    }
    fn written(&self) -> u64 {
        self.written
    }
    fn commit(self: Box<Self>, _from: &str, _to: &[String]) -> Result<Committed> {
        Err(mailspool_spool::SpoolError::Config(
            "a report is read, never queued".into(),
        ))
    }
    fn commit_replacing(
        self: Box<Self>,
        from: &str,
        to: &[String],
        _replaced: &[NodeEntry],
    ) -> Result<(Committed, bool)> {
        self.commit(from, to).map(|c| (c, false))
    }
    fn into_bytes(self: Box<Self>) -> Option<Vec<u8>> {
        Some(self.bytes)
    }
    fn into_file_stage(
        self: Box<Self>,
    ) -> std::result::Result<Stage<std::sync::Arc<Spool>>, Box<dyn Staged>> {
        Err(self)
    }
}

/// Record what `raw` reports about the recipients of message `id`; returns how many
/// events it made.
pub(crate) fn record(spool: &dyn Intake, cfg: &ServeConfig, id: &str, raw: &[u8]) -> usize {
    let reports = parse(raw);
    // The message's recipients, sender and Message-ID, from its `accepted` events:
    // a report can speak only of those.
    let q = Query {
        key: Some(id.to_owned()),
        kinds: vec![Kind::Accepted],
        limit: mailspool_events::MAX_PAGE,
        ..Default::default()
    };
    let known: HashMap<String, Event> = match spool.read_events(&q) {
        Ok(page) => page
            .events
            .into_iter()
            .filter(|e| e.message == id)
            .map(|e| (e.recipient.to_lowercase(), e))
            .collect(),
        Err(e) => {
            tracing::warn!(id, error = %e, "cannot read the history for a report");
            HashMap::new()
        }
    };
    let mut events = Vec::new();
    for r in reports {
        let kind = match r.kind {
            ReportKind::Failed => Kind::Bounced,
            ReportKind::Complaint => Kind::Complained,
            ReportKind::Delayed => continue,
        };
        let Some(accepted) = r.recipient.as_deref().and_then(|to| known.get(to)) else {
            tracing::info!(id, to = %escape(r.recipient.as_deref().unwrap_or("-")), "a report about no recipient of that message: ignored");
            continue;
        };
        // The reply as a bounce would carry it: its status first when it has no code.
        let reply = match (&r.status, r.diagnostic.get(..1)) {
            (Some(s), Some(first)) if !matches!(first, "4" | "5") => {
                format!("{s} {}", r.diagnostic)
            }
            _ => r.diagnostic.clone(),
        };
        let mut e = Event::new(kind, id, &accepted.from, &accepted.recipient)
            .with_message_id(accepted.message_id.as_deref())
            .with_reply(&reply);
        e.mx = r.remote_mta.clone();
        e.source = Some("report".into());
        if kind == Kind::Bounced {
            e.class = Some(cfg.rules.classify(&reply, r.status.as_deref()));
        }
        events.push(e);
    }
    if events.is_empty() {
        return 0;
    }
    let _ = mailspool_spool::store::emit(spool, &events, true);
    for e in &events {
        if let Some(class) = e.class {
            mailspool_metrics::global().bounce(class.as_str());
        }
        if let Some(s) = hard_bounce(e, &cfg.suppression) {
            match spool.suppress(&s) {
                Ok(()) => {
                    tracing::info!(to = %escape(&s.address), reason = %s.reason, "suppressed after a report")
                }
                Err(err) => {
                    tracing::error!(to = %escape(&s.address), error = %err, "cannot add to the suppression list")
                }
            }
        }
    }
    events.len()
}

impl Session {
    /// RCPT to the return path's domain: taken only for a return path this host signed.
    pub(super) async fn report_rcpt(&mut self, rp: &ReturnPath, address: String) -> Ended {
        let Some(id) = rp.message_of(&address) else {
            return self.refuse("550 5.1.1 No such return path here").await;
        };
        let Some(tx) = &mut self.tx else {
            return self.refuse("503 5.5.1 Need MAIL before RCPT").await;
        };
        match (&tx.report_for, tx.rcpts.is_empty()) {
            (None, true) => tx.report_for = Some(id),
            (Some(other), _) if *other == id => {}
            _ => {
                return self
                    .refuse("452 4.5.3 A report goes alone: send this in another transaction")
                    .await;
            }
        }
        if !tx.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&address)) {
            tx.rcpts.push(address);
        }
        self.reply("250 2.1.5 Ok").await
    }

    /// The end of a report's DATA: record it, say 250 (it is never bounced back).
    pub(super) async fn take_report(&mut self, id: String, stage: Box<dyn Staged>) -> Ended {
        let raw = stage.into_bytes().unwrap_or_default();
        let (spool, ctx) = (self.ctx.spool.clone(), self.ctx.clone());
        let peer = self.peer.literal().to_string();
        let n = tokio::task::spawn_blocking(move || record(&*spool, &ctx.cfg, &id, &raw))
            .await
            .unwrap_or(0);
        tracing::info!(client = %peer, events = n, "report received");
        self.reply(&format!("250 2.0.0 Ok: report read, {n} event(s)"))
            .await
    }
}
