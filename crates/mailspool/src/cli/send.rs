//! `mailspool send`: queue one message from stdin or a file.

use mailspool::{
    Config, Delivery, Mailspool, MessageSource, NodeResult, Outcome, SendMail, Sent, sysexits,
};

use super::args::SendArgs;
use super::privilege;
use super::{CliResult, Failure};

/// What a front end (mailspool send, sendmail) asks for.
pub struct SendRequest {
    pub args: SendArgs,
    /// A `.` line ends the message unless -i/-oi: sendmail's rule, for the sendmail
    /// interface only; `mailspool send` reads its whole input.
    pub dot_ends: bool,
}

pub fn run(config: &Config, args: SendArgs) -> CliResult {
    let now = args.now;
    let sent = queue_message(
        config,
        SendRequest {
            args,
            dot_ends: false,
        },
    )?;
    // The id names what stays queued: nothing once every recipient is delivered or
    // refused for good.
    let kept = match &sent.delivery {
        None => true,
        Some(results) => results
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Deferred | Outcome::Skipped)),
    };
    if kept {
        println!("{}", sent.id);
    }
    match &sent.delivery {
        Some(results) => report(results, now),
        None => Ok(()),
    }
}

/// Print each recipient's result. The exit code is 0 when the message was accepted
/// (each recipient delivered, or queued: the printed id names it); with --now, 69 when
/// a recipient was refused for good (not kept, and no bounce: the caller has the
/// reply). Never 75: that would tell the caller to send again what is queued already.
fn report(results: &[NodeResult], now: bool) -> CliResult {
    for r in results {
        let what = match r.outcome {
            Outcome::Failed if !now => "failed (bounced to the sender)",
            o => mailspool::embed::outcome_text(o),
        };
        eprintln!(
            "<{}>: {what}: {}",
            mailspool::escape(&r.to),
            mailspool::escape(&r.reply)
        );
    }
    if now && results.iter().any(|r| r.outcome == Outcome::Failed) {
        Err(Failure::new(sysexits::UNAVAILABLE, ""))
    } else {
        Ok(())
    }
}

/// Open the spool and queue the message; stdin unless a file is named.
pub fn queue_message(config: &Config, req: SendRequest) -> Result<Sent, Failure> {
    let a = req.args;
    // Refuse arguments that look like options before touching the spool or stdin.
    if let Some(bad) = a
        .recipients
        .iter()
        .chain(a.from.iter())
        .find(|r| r.trim_start().starts_with('-'))
    {
        return Err(Failure::new(
            mailspool::sysexits::DATAERR,
            format!("refusing address {bad:?}: addresses may not start with '-'"),
        ));
    }
    if privilege::access(config)? == privilege::Access::Drop {
        return Err(through_drop(config, a, req.dot_ends));
    }
    let spool = Mailspool::open(config.clone())?;
    let stdin = std::io::stdin();
    let message = match a.file {
        Some(path) => MessageSource::Path(path),
        None => MessageSource::Reader(Box::new(stdin.lock())),
    };
    let mut mail = SendMail::new(message).to(a.recipients);
    // The caller, not the spool's owner root became on the way.
    mail.submitter = privilege::caller();
    mail.source = "sendmail";
    mail.extract_recipients = a.extract;
    mail.from = a.from;
    mail.full_name = a.full_name;
    mail.id = a.id;
    mail.dot_ends = req.dot_ends && !a.ignore_dots;
    mail.delivery = if a.now {
        Delivery::Interactive
    } else if a.background {
        Delivery::Background
    } else {
        Delivery::Deferred
    };
    let sent = spool.send_mail(mail)?;
    mailspool_metrics::global().accepted("send");
    Ok(sent)
}

/// Someone else owns the spool: the drop takes the message (the same checks, then one
/// file in `maildrop/` that the daemon picks up). Only plain queueing goes that way.
fn through_drop(config: &Config, a: SendArgs, dot_ends: bool) -> Failure {
    if a.id.is_some() || a.now || a.background {
        return Failure::new(
            sysexits::NOPERM,
            format!(
                "--id, --now and --background need to run as the owner of {}; \
                 without them the message is handed to the mail system",
                config.spool_dir.display()
            ),
        );
    }
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if a.extract {
        args.push("-t".into());
    }
    if !dot_ends || a.ignore_dots {
        args.push("-i".into());
    }
    if let Some(f) = a.from {
        args.push("-f".into());
        args.push(f.into());
    }
    if let Some(n) = a.full_name {
        args.push("-F".into());
        args.push(n.into());
    }
    args.push("--".into());
    args.extend(a.recipients.into_iter().map(Into::into));
    privilege::exec_drop(config, args, a.file.as_deref())
}
