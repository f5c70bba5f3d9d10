//! Delivering a claim whose domain is this host (see [`crate::local`]): each recipient
//! resolved through the aliases; addresses elsewhere get the message queued again
//! (same sender, a `Delivered-To:` line that stops forwarding loops), users of this
//! host get it in their mailbox. Unknown users, loops and refused targets bounce;
//! trouble on this host (a full disk, an unreadable include) is retried.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;

use mailspool_spool::escape;

use super::{Claim, Engine, Verdict};
use crate::bounce::{Failure, ReadAt};
use crate::config::DeliverConfig;
use crate::local::{self, Refusal, aliases::Aliases};

/// Largest header block read for `Delivered-To:` lines.
const MAX_HEADER_SCAN: u64 = 1024 * 1024;

impl Engine {
    pub(super) async fn deliver_local(&self, cfg: &DeliverConfig, claim: &Claim) -> Vec<Verdict> {
        let aliases = match &cfg.local.aliases {
            Some(p) => self.aliases.get(p),
            None => Arc::new(Aliases::default()),
        };
        let file = match claim.file.file.try_clone() {
            Ok(f) => f,
            Err(e) => return temporary_all(claim, &format!("4.3.0 cannot read the node: {e}")),
        };
        let delivered_to = match tokio::task::spawn_blocking({
            let f = file.try_clone();
            move || f.and_then(|f| delivered_to_lines(&f))
        })
        .await
        {
            Ok(Ok(v)) => v,
            _ => return temporary_all(claim, "4.3.0 cannot read the message's header"),
        };
        let mut verdicts = Vec::with_capacity(claim.nodes.len());
        for (n, _) in &claim.nodes {
            let to = n.name.envelope_to().to_owned();
            let from = n.name.envelope_from().to_owned();
            if delivered_to.iter().any(|d| d.eq_ignore_ascii_case(&to)) {
                verdicts.push(permanent(
                    &to,
                    Refusal {
                        status: "5.4.6",
                        text: format!(
                            "mail forwarding loop: the message was delivered to {to} before"
                        ),
                    },
                ));
                continue;
            }
            let resolved = match local::resolve(
                &cfg.local,
                &aliases,
                &to,
                &local::system_user_exists,
            ) {
                Ok(r) => r,
                Err(r) if r.status.starts_with('4') => {
                    verdicts.push(temporary(&r.text, r.status));
                    continue;
                }
                Err(r) => {
                    tracing::info!(id = %n.name.id, to = %escape(&to), status = r.status, reason = %escape(&r.text), "local recipient refused");
                    verdicts.push(permanent(&to, r));
                    continue;
                }
            };
            let mut done = Vec::new();
            let mut failed = None;
            if !resolved.forward.is_empty() {
                // A list's owner gets its bounces; a bounce stays a bounce (null sender).
                let sender = match &resolved.bounces_to {
                    Some(owner) if !from.is_empty() => owner.clone(),
                    _ => from.clone(),
                };
                match self.forward(&file, &sender, &to, &resolved.forward).await {
                    Ok(id) => done.push(format!(
                        "forwarded to {} as {id}",
                        resolved.forward.join(", ")
                    )),
                    Err(e) => failed = Some(e),
                }
            }
            for user in &resolved.mailboxes {
                if failed.is_some() {
                    break;
                }
                match self.to_mailbox(cfg, &file, user, &from, &to).await {
                    Ok(()) => done.push(format!("delivered to the mailbox of {user}")),
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                // What went through stays done; the rest is retried with the node (a
                // retry may repeat a forward or mailbox copy: never lose, maybe twice).
                Some(e) => {
                    tracing::warn!(id = %n.name.id, to = %escape(&to), error = %escape(&e), done = %escape(&done.join("; ")), "local delivery failed; retried later");
                    verdicts.push(temporary(&e, "4.3.0"));
                }
                None => {
                    let reply = format!("250 2.0.0 {}", done.join("; "));
                    tracing::info!(id = %n.name.id, to = %escape(&to), reply = %escape(&reply), "local delivery");
                    verdicts.push(Verdict::Delivered { reply, via: None });
                }
            }
        }
        verdicts
    }

    /// Queue the message again for `rcpts`, with the same sender and a `Delivered-To:`
    /// line for `to`; returns the new message's id.
    async fn forward(
        &self,
        file: &std::fs::File,
        from: &str,
        to: &str,
        rcpts: &[String],
    ) -> Result<String, String> {
        let spool = self.spool.clone();
        let file = file.try_clone().map_err(|e| e.to_string())?;
        let (from, to, rcpts) = (from.to_owned(), to.to_owned(), rcpts.to_vec());
        tokio::task::spawn_blocking(move || {
            let id = spool.new_id();
            spool
                .check_envelope(&id, &from, &rcpts)
                .map_err(|e| e.to_string())?;
            let mut stage = spool.clone().stage(&id).map_err(|e| e.to_string())?;
            let mut src = ReadAt { file: &file, at: 0 };
            stage
                .write_all(format!("Delivered-To: {to}\n").as_bytes())
                .map_err(|e| e.to_string())?;
            std::io::copy(&mut src, &mut stage).map_err(|e| e.to_string())?;
            stage.commit(&from, &rcpts).map_err(|e| e.to_string())?;
            Ok(id)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn to_mailbox(
        &self,
        cfg: &DeliverConfig,
        file: &std::fs::File,
        user: &str,
        from: &str,
        to: &str,
    ) -> Result<(), String> {
        let Some(uid) = local::passwd_entry(user).and_then(|f| f.get(2)?.parse::<u32>().ok())
        else {
            return Err(format!("user {user} is gone from the password database"));
        };
        let dir = cfg.mail_spool_directory.clone();
        let file = file.try_clone().map_err(|e| e.to_string())?;
        let (user, from, to) = (user.to_owned(), from.to_owned(), to.to_owned());
        tokio::task::spawn_blocking(move || {
            local::mbox::deliver(&dir, &user, uid, &from, &to, &file).map_err(|e| e.0)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The `Delivered-To:` values of the message's header block.
fn delivered_to_lines(file: &std::fs::File) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut reader = BufReader::new(ReadAt { file, at: 0 }.take(MAX_HEADER_SCAN));
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\n" || line == "\r\n" {
            return Ok(out);
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim_end().eq_ignore_ascii_case("Delivered-To")
        {
            out.push(value.trim().to_owned());
        }
    }
}

fn permanent(to: &str, r: Refusal) -> Verdict {
    Verdict::Permanent(Failure {
        recipient: to.to_owned(),
        status: r.status.into(),
        remote_mta: None,
        diagnostic: format!("{} {}", r.status, r.text),
        from_smtp: false,
    })
}

fn temporary(text: &str, status: &str) -> Verdict {
    Verdict::Temporary {
        host: "local".into(),
        reply: if text.starts_with(status) {
            text.to_owned()
        } else {
            format!("{status} {text}")
        },
        recorded: false,
    }
}

fn temporary_all(claim: &Claim, reply: &str) -> Vec<Verdict> {
    claim
        .nodes
        .iter()
        .map(|_| temporary(reply, "4.3.0"))
        .collect()
}
