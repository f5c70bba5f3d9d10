//! MAIL and RCPT: who may send, to whom. Never an open relay: a recipient is accepted
//! only for clients in `relay_networks`, authenticated users, or the local `-bs` user
//! (submission ports require AUTH). Routing tricks that could make a later hop relay
//! (`%` and `!` in the local part, source routes, a quoted `@`) are refused.

use mailspool_message::address::check_address;
use smtp_proto::{MailFrom, RcptTo};

use super::{Ended, Session, Tx};
use crate::config::Mode;

impl Session {
    pub(super) async fn mail(&mut self, from: MailFrom<String>) -> Ended {
        if self.helo.is_none() {
            return self.refuse("503 5.5.1 Send HELO or EHLO first").await;
        }
        if self.tx.is_some() {
            return self.refuse("503 5.5.1 Nested MAIL command").await;
        }
        if self.ctx.mode != Mode::Relay && self.auth.is_none() && self.peer.ip.is_some() {
            return self.refuse("530 5.7.0 Authentication required").await;
        }
        if from.size as u64 > self.ctx.cfg.max_message_size {
            return self
                .refuse("552 5.3.4 Message size exceeds the limit")
                .await;
        }
        let sender = from.address.trim().to_owned();
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
        });
        self.reply("250 2.1.0 Ok").await
    }

    pub(super) async fn rcpt(&mut self, to: RcptTo<String>, raw: &[u8]) -> Ended {
        let Some(tx) = &self.tx else {
            return self.refuse("503 5.5.1 Need MAIL before RCPT").await;
        };
        if tx.rcpts.len() >= self.ctx.cfg.max_recipients {
            return self.refuse("452 4.5.3 Too many recipients").await;
        }
        let smtputf8 = tx.smtputf8;
        let raw = String::from_utf8_lossy(raw);
        let address = to.address.trim().to_owned();
        if let Some(reply) = routing_trick(&raw, &address) {
            return self.refuse(reply).await;
        }
        let address = match check_address(&address) {
            Ok(a) => a,
            Err(e) => {
                let r = format!("501 5.1.3 Bad recipient address: {}", e.reason);
                return self.refuse(&r).await;
            }
        };
        if !address.is_ascii() && !smtputf8 {
            return self
                .refuse("553 5.6.7 Non-ASCII recipient needs SMTPUTF8")
                .await;
        }
        if !(self.peer.trusted || self.auth.is_some()) {
            return self.refuse("554 5.7.1 Relay access denied").await;
        }
        if let Some(tx) = &mut self.tx
            && !tx.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&address))
        {
            tx.rcpts.push(address);
        }
        self.reply("250 2.1.5 Ok").await
    }
}

/// Addresses that ask a later hop to relay on: refused outright.
fn routing_trick(raw_line: &str, address: &str) -> Option<&'static str> {
    // A source route: RCPT TO:<@hop1,@hop2:user@final> (smtp-proto may drop the route,
    // so look at the line as sent).
    if raw_line.contains("<@") {
        return Some("550 5.7.1 Source routes are not accepted");
    }
    // A quoted local part hiding an `@` ("u@evil"@relay), as sent or as parsed.
    let quoted = raw_line
        .split('"')
        .skip(1)
        .step_by(2)
        .any(|inside| inside.contains('@'));
    let (local, _) = address.rsplit_once('@')?;
    if quoted || local.contains('@') {
        return Some("550 5.1.3 Quoted @ in the local part is not accepted");
    }
    if local.contains('%') || local.contains('!') {
        return Some("550 5.7.1 Relaying with % or ! is not accepted");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::routing_trick;

    #[test]
    fn tricks() {
        assert!(routing_trick("RCPT TO:<@a,@b:u@c>\r\n", "u@c").is_some());
        assert!(routing_trick("RCPT TO:<\"u@evil\"@c>", "\"u@evil\"@c").is_some());
        assert!(routing_trick("", "u@evil@c").is_some());
        assert!(routing_trick("", "u%evil.com@c").is_some());
        assert!(routing_trick("", "evil!u@c").is_some());
        assert!(routing_trick("RCPT TO:<u@c>\r\n", "u@c").is_none());
    }
}
