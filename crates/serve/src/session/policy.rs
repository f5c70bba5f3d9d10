//! MAIL and RCPT: who may send, to whom. Never an open relay: a recipient is accepted
//! only for clients in `relay_networks`, authenticated users, or the local `-bs` user
//! (submission ports require AUTH), except `<postmaster>`, which every SMTP server must
//! accept (RFC 5321 4.5.1) and which goes to the configured postmaster address. Routing
//! tricks that could make a later hop relay (`%` and `!` in the local part, a quoted
//! `@`) are refused; a source route is accepted and ignored (RFC 5321 4.1.1.3).
//!
//! The path between `<` and `>` is read here, as sent: smtp-proto turns `<postmaster>`
//! into an empty address, unquotes quoted local parts and refuses address literals, so
//! it parses only the parameters (with the path replaced by a placeholder).

use mailspool_message::address::check_address;
use smtp_proto::{MailFrom, RcptTo, Request};

use super::{Ended, Session, Tx};
use crate::config::Mode;

impl Session {
    /// A bare name from a trusted client (`RCPT TO:<root>` from cron's host, `sendmail
    /// -bs`) completed with qualify_domain, as Postfix does for its own users; from
    /// anyone else, or without qualify_domain, left to be refused.
    fn qualified(&self, address: String) -> String {
        match &self.ctx.cfg.qualify_domain {
            Some(domain)
                if (self.peer.trusted || self.auth.is_some())
                    && !address.contains('@')
                    && !address.eq_ignore_ascii_case("postmaster")
                    && !address.starts_with('-')
                    && !address.is_empty() =>
            {
                format!("{address}@{domain}")
            }
            _ => address,
        }
    }

    pub(super) async fn mail(&mut self, from: MailFrom<String>, path: Option<String>) -> Ended {
        if self.helo.is_none() {
            return self.refuse("503 5.5.1 Send HELO or EHLO first").await;
        }
        if self.tx.is_some() {
            return self.refuse("503 5.5.1 Nested MAIL command").await;
        }
        if self.ctx.mode != Mode::Relay && self.auth.is_none() && self.peer.ip.is_some() {
            return self.refuse("530 5.7.0 Authentication required").await;
        }
        // Below the free-space reserve new mail waits (RFC 3463's 4.3.1), so that what
        // was accepted can still move through the tiers and bounces can be written.
        if let Some(dir) = self.ctx.spool.cache_dir()
            && let Err(e) = mailspool_spool::check_reserve(dir, self.ctx.cfg.min_free_space)
        {
            tracing::warn!(error = %e, "MAIL refused: the spool is below its reserve");
            return self
                .refuse("452 4.3.1 Insufficient system storage, try again later")
                .await;
        }
        if from.size as u64 > self.ctx.cfg.max_message_size {
            return self
                .refuse("552 5.3.4 Message size exceeds the limit")
                .await;
        }
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return self
                .refuse("555 5.5.4 BODY=BINARYMIME is not offered here")
                .await;
        }
        if from.flags & (smtp_proto::MAIL_RET_FULL | smtp_proto::MAIL_RET_HDRS) != 0
            || from.env_id.is_some()
        {
            return self
                .refuse("555 5.5.4 DSN parameters (RET, ENVID) are not offered here")
                .await;
        }
        let sender = strip_source_route(path.as_deref().unwrap_or(&from.address))
            .trim()
            .to_owned();
        let sender = if sender.is_empty() {
            sender
        } else {
            self.qualified(sender)
        };
        if !sender.is_empty() {
            if let Err(e) = check_address(&sender) {
                let r = format!("553 5.1.7 Bad sender address: {}", e.reason);
                return self.refuse(&r).await;
            }
            if !sender.is_ascii() && from.flags & smtp_proto::MAIL_SMTPUTF8 == 0 {
                return self
                    .refuse("553 5.6.7 Non-ASCII sender needs SMTPUTF8")
                    .await;
            }
        }
        self.tx = Some(Tx {
            from: sender,
            rcpts: Vec::new(),
            id: self.ctx.spool.new_id(),
            bdat: None,
            bdat_failed: None,
            smtputf8: from.flags & smtp_proto::MAIL_SMTPUTF8 != 0,
            report_for: None,
        });
        self.reply("250 2.1.0 Ok").await
    }

    pub(super) async fn rcpt(&mut self, to: RcptTo<String>, path: Option<String>) -> Ended {
        let Some(tx) = &self.tx else {
            return self.refuse("503 5.5.1 Need MAIL before RCPT").await;
        };
        if tx.rcpts.len() >= self.ctx.cfg.max_recipients {
            return self.refuse("452 4.5.3 Too many recipients").await;
        }
        if to.flags
            & (smtp_proto::RCPT_NOTIFY_SUCCESS
                | smtp_proto::RCPT_NOTIFY_FAILURE
                | smtp_proto::RCPT_NOTIFY_DELAY
                | smtp_proto::RCPT_NOTIFY_NEVER)
            != 0
            || to.orcpt.is_some()
        {
            return self
                .refuse("555 5.5.4 DSN parameters (NOTIFY, ORCPT) are not offered here")
                .await;
        }
        let smtputf8 = tx.smtputf8;
        let written = strip_source_route(path.as_deref().unwrap_or(&to.address))
            .trim()
            .to_owned();
        let written = self.qualified(written);
        let postmaster = written.eq_ignore_ascii_case("postmaster");
        let address = if postmaster {
            self.ctx.cfg.postmaster.clone()
        } else {
            if let Some(reply) = routing_trick(&written) {
                return self.refuse(reply).await;
            }
            match check_address(&written) {
                Ok(a) => a,
                Err(e) => {
                    let r = format!("553 5.1.3 Bad recipient address: {}", e.reason);
                    return self.refuse(&r).await;
                }
            }
        };
        if !address.is_ascii() && !smtputf8 {
            return self
                .refuse("553 5.6.7 Non-ASCII recipient needs SMTPUTF8")
                .await;
        }
        // The return path's domain takes reports from anyone, for messages it signed;
        // one message's reports per transaction, and nothing else with them.
        if let Some(rp) = self.ctx.cfg.return_path.clone()
            && !postmaster
            && rp.is_ours(&address)
        {
            return self.report_rcpt(&rp, address).await;
        }
        if self.tx.as_ref().is_some_and(|t| t.report_for.is_some()) {
            return self
                .refuse("452 4.5.3 A report goes alone: send this in another transaction")
                .await;
        }
        // Every SMTP server takes mail for <postmaster>; everything else is relaying.
        if !(postmaster || self.peer.trusted || self.auth.is_some()) {
            return self.refuse("554 5.7.1 Relay access denied").await;
        }
        // Refuse this recipient alone, now, if its node could not be named: after DATA
        // it would fail the whole transaction, and the client would retry for days.
        if let Some(tx) = &self.tx
            && let Err(e) =
                self.ctx
                    .spool
                    .check_envelope(&tx.id, &tx.from, std::slice::from_ref(&address))
        {
            let r = match e {
                mailspool_spool::SpoolError::NameTooLong { .. } => {
                    "553 5.1.3 Address too long for the spool (sender and recipient together)"
                }
                _ => "451 4.3.0 Cannot take this recipient now",
            };
            return self.refuse(r).await;
        }
        // Mail to an address that bounced for good (or complained) is refused here,
        // before it can hurt the sender's reputation; postmaster never is.
        if self.ctx.cfg.refuse_suppressed
            && !postmaster
            && let Some(tx) = &self.tx
            && let Some(s) = self.ctx.spool.suppressed(&tx.from, &address)
        {
            tracing::info!(to = %mailspool_spool::escape(&address), reason = %s.reason, "refused a suppressed recipient");
            return self
                .refuse("550 5.1.1 Recipient suppressed: it bounced or complained before")
                .await;
        }
        if let Some(tx) = &mut self.tx
            && !tx.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&address))
        {
            tx.rcpts.push(address);
        }
        self.reply("250 2.1.5 Ok").await
    }
}

/// `@hop1,@hop2:user@final` is `user@final`: the route is ignored (RFC 5321 4.1.1.3).
fn strip_source_route(path: &str) -> &str {
    match path.trim_start().strip_prefix('@') {
        Some(route) => route.split_once(':').map_or(path, |(_, addr)| addr),
        None => path,
    }
}

/// Addresses that ask a later hop to relay on: refused outright.
fn routing_trick(address: &str) -> Option<&'static str> {
    // A quoted local part hiding an `@` ("u@evil"@relay).
    let (local, _) = address.rsplit_once('@')?;
    if local.contains('@') {
        return Some("550 5.1.3 Quoted @ in the local part is not accepted");
    }
    if local.contains('%') || local.contains('!') {
        return Some("550 5.7.1 Relaying with % or ! is not accepted");
    }
    None
}

/// Parse a command line; for MAIL and RCPT also return the path as sent (between `<`
/// and `>`, quotes kept), with smtp-proto parsing only the parameters.
pub(super) fn parse_command(
    line: &[u8],
) -> (Result<Request<String>, smtp_proto::Error>, Option<String>) {
    let parse = |l: &[u8]| Request::parse(&mut l.iter()).map(Request::into_owned);
    let upper: Vec<u8> = line.iter().take(10).map(u8::to_ascii_uppercase).collect();
    let prefix = if upper.starts_with(b"MAIL FROM:") {
        10
    } else if upper.starts_with(b"RCPT TO:") {
        8
    } else {
        return (parse(line), None);
    };
    let Some((start, end)) = path_span(line, prefix) else {
        return (parse(line), None);
    };
    let Ok(path) = std::str::from_utf8(&line[start + 1..end]) else {
        return (parse(line), None);
    };
    let placeholder: &[u8] = if path.is_empty() {
        b"<>"
    } else {
        b"<placeholder@placeholder.invalid>"
    };
    let mut rebuilt = Vec::with_capacity(line.len() + 32);
    rebuilt.extend_from_slice(&line[..start]);
    rebuilt.extend_from_slice(placeholder);
    rebuilt.extend_from_slice(&line[end + 1..]);
    (parse(&rebuilt), Some(path.to_owned()))
}

/// Where `<path>` is in a MAIL/RCPT line: the `<` after the colon (spaces allowed) and
/// its `>`, quoted strings and escapes skipped.
fn path_span(line: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while line.get(i) == Some(&b' ') {
        i += 1;
    }
    if line.get(i) != Some(&b'<') {
        return None;
    }
    let start = i;
    let mut quoted = false;
    i += 1;
    while i < line.len() {
        match line[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some((start, i)),
            b'\r' | b'\n' => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tricks() {
        assert!(routing_trick("\"u@evil\"@c").is_some());
        assert!(routing_trick("u@evil@c").is_some());
        assert!(routing_trick("u%evil.com@c").is_some());
        assert!(routing_trick("evil!u@c").is_some());
        assert!(routing_trick("u@c").is_none());
        assert!(routing_trick("\"quoted local\"@c").is_none());
    }

    #[test]
    fn paths_are_read_as_sent_and_parameters_by_smtp_proto() {
        let (r, p) = parse_command(b"RCPT TO:<postmaster>\r\n");
        assert!(matches!(r, Ok(Request::Rcpt { .. })));
        assert_eq!(p.as_deref(), Some("postmaster"));
        let (r, p) = parse_command(b"RCPT TO:<\"quoted > local\"@d.test> NOTIFY=NEVER\r\n");
        let Ok(Request::Rcpt { to }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(to.flags, smtp_proto::RCPT_NOTIFY_NEVER);
        assert_eq!(p.as_deref(), Some("\"quoted > local\"@d.test"));
        let (r, p) = parse_command(b"RCPT TO:<u@[127.0.0.1]>\r\n");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(p.as_deref(), Some("u@[127.0.0.1]"));
        let (r, p) = parse_command(b"MAIL FROM:<> SIZE=10\r\n");
        let Ok(Request::Mail { from }) = r else {
            panic!()
        };
        assert_eq!((from.size, p.as_deref()), (10, Some("")));
        assert_eq!(strip_source_route("@a.test,@b.test:u@c.test"), "u@c.test");
        assert_eq!(strip_source_route("u@c.test"), "u@c.test");
        let (r, p) = parse_command(b"NOOP\r\n");
        assert!(r.is_ok() && p.is_none());
    }
}
