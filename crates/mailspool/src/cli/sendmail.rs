//! The sendmail command line, as Postfix's sendmail(1) documents it, for programs that
//! run `/usr/sbin/sendmail` (cron, PHP's mail(), git send-email, monitoring).
//!
//! Options are parsed getopt-style (clustered flags, attached or separate values,
//! parsing stops at the first non-option or `--`), so an address is never taken for an
//! option and an option value is never taken for an address. Options sendmail(1)
//! documents as ignored are accepted and ignored; unknown ones fail with EX_USAGE.

use std::ffi::OsString;
use std::sync::Arc;

use mailspool::sysexits;
use mailspool_drop::args::{Mode, SendmailArgs};

use super::args::{ListArgs, SendArgs};
use super::send::{SendRequest, queue_message};
use super::{CliResult, Failure, config, init_logging, privilege, queue};

fn usage(msg: impl Into<String>) -> Failure {
    Failure::new(
        sysexits::USAGE,
        format!("{}\n{}", msg.into(), mailspool_drop::args::USAGE),
    )
}

fn parse(args: &[OsString]) -> Result<SendmailArgs, Failure> {
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.clone()
                .into_string()
                .map_err(|a| usage(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect::<Result<_, _>>()?;
    mailspool_drop::args::parse(&args).map_err(usage)
}

pub fn run(prog: &str, args: &[OsString]) -> CliResult {
    let p = parse(args)?;
    init_logging(p.verbose, false);
    match p.mode {
        Mode::Aliases => {
            let c = config(p.config.as_deref(), None)?;
            super::aliases::newaliases(prog, &c)
        }
        Mode::ListQueue => {
            let c = config(p.config.as_deref(), None)?;
            privilege::access(&c)?;
            super::list::list(&c, &ListArgs::default())
        }
        Mode::Smtp => {
            let c = config(p.config.as_deref(), None)?;
            match privilege::access(&c)? {
                privilege::Access::Owner => super::serve::stdio(&c),
                // Another user's spool: each message goes through the setgid drop.
                privilege::Access::Drop => {
                    let program = privilege::drop_program().ok_or_else(|| {
                        Failure::new(
                            sysexits::CONFIG,
                            "the spool is another user's and the drop (mailspool-drop) is not installed",
                        )
                    })?;
                    super::serve::stdio_with(
                        &c,
                        Arc::new(super::drop_intake::DropIntake { program }),
                    )
                }
            }
        }
        Mode::RunQueue => {
            let c = config(p.config.as_deref(), None)?;
            privilege::access(&c)?;
            queue::run_queue(&c, true)
        }
        Mode::Deliver => {
            let c = config(p.config.as_deref(), None)?;
            let verbose = p.verbose > 0;
            let sent = queue_message(
                &c,
                SendRequest {
                    args: SendArgs {
                        extract: p.extract,
                        ignore_dots: p.ignore_dots,
                        from: p.from,
                        full_name: p.full_name,
                        id: None,
                        file: None,
                        now: false,
                        background: false,
                        recipients: p.recipients,
                    },
                    dot_ends: true,
                },
            )?;
            if !c.found_file && mailspool::config::is_personal_default(&c.spool_dir) {
                // Queued, but only a daemon run by this user will ever see it: say so.
                eprintln!(
                    "{prog}: queued {} in your own spool {}: no /etc/mailspool/mailspool.toml \
                     names a shared one, so only `mailspool daemon` run as you delivers it",
                    sent.id,
                    c.spool_dir.display()
                );
            }
            if verbose {
                eprintln!(
                    "{prog}: queued {} from <{}> for {}",
                    sent.id,
                    sent.from,
                    sent.recipients.join(", ")
                );
            }
            Ok(())
        }
    }
}
