//! `send_mail`: hand a message to the spool.
//!
//! Mail::Spool 0.50's intake rules, made correct: recipients from To/Cc/Bcc when none
//! are given (address lists parsed properly, duplicates dropped), the sender from From
//! when none is given, Bcc removed, Date/Message-ID/From added when missing, and a
//! `Received:` line naming the local submitter. Every message gets a fresh unique id:
//! nothing the sender wrote chooses it (0.50 took it from a `Received: ... id (x)`
//! header, which let anyone pick the id of someone else's queued message), and an id
//! the caller chooses is refused when a queued node already carries it. The message
//! streams from its source into the spool's stage in fixed memory; only the header
//! block is held.
//! `Ok` means the nodes are on disk (see `mailspool_spool`'s commit).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;

use mailspool_message::{BodyCopier, IntakeError, address, header::dedup, read_head};
use mailspool_spool::time::rfc5322_date;
use mailspool_spool::{SpoolError, name::is_valid_id};

use crate::Mailspool;

mod error;
pub use error::{SendError, io_exit_code, spool_exit_code};

/// When the message is delivered (Mail::Spool 0.50's modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Spool and return at once; the daemon delivers.
    #[default]
    Deferred,
    /// Deliver before returning and tell the caller each recipient's result: one
    /// refused for good is not kept and not bounced (the caller has the reply); one
    /// that cannot be reached now stays queued for retry, as in Deferred mode. Runs its
    /// own tokio runtime: call it from synchronous code.
    Interactive,
    /// Try now; on a temporary failure the message stays queued for the daemon, on a
    /// permanent one it is bounced, as in Deferred mode.
    Background,
}

/// Where the message comes from.
pub enum MessageSource<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A reader (stdin, a socket…), read to its end.
    Reader(Box<dyn Read + 'a>),
    /// A file.
    Path(PathBuf),
}

impl std::fmt::Debug for MessageSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            MessageSource::Reader(_) => f.write_str("Reader"),
            MessageSource::Path(p) => write!(f, "Path({})", p.display()),
        }
    }
}

/// A message to send, with its envelope options.
#[derive(Debug)]
pub struct SendMail<'a> {
    /// Recipients given explicitly, one address each (`user@domain`, `<user@domain>` or
    /// `Name <user@domain>`); when empty, they come from To/Cc/Bcc.
    pub to: Vec<String>,
    /// Also take recipients from To/Cc/Bcc when some are given (sendmail `-t`).
    pub extract_recipients: bool,
    /// Envelope sender; `""` or `"<>"` is the null sender. Default: the From address,
    /// else the user running us at our host name.
    pub from: Option<String>,
    /// Full name for a From header we add (sendmail `-F`).
    pub full_name: Option<String>,
    /// Message id to use instead of a new one; refused when a node already has it.
    pub id: Option<String>,
    /// Delivery mode.
    pub delivery: Delivery,
    /// A line holding only `.` ends the message (sendmail without `-i`).
    pub dot_ends: bool,
    /// The message: headers and body.
    pub message: MessageSource<'a>,
    /// Who submitted it, when not the user running us (the pickup of a dropped
    /// message): named in the Received line, and the default sender's login.
    pub submitter: Option<Submitter>,
    /// Mail another intake already acknowledged (the drop's files): the free-space
    /// reserve does not apply to it.
    pub already_accepted: bool,
    /// Who submitted it when not a local user (`HTTP API token NAME`): named in the
    /// Received line instead of a userid. Characters outside A-Z a-z 0-9 space and
    /// `-_.@+` are dropped.
    pub origin: Option<String>,
    /// Where it comes in, for its `accepted` event: `sendmail`, `drop`, `http`,
    /// `library` (the default).
    pub source: &'static str,
}

/// The local user a message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    /// Real uid.
    pub uid: u32,
    /// Login name.
    pub login: String,
}

impl<'a> SendMail<'a> {
    /// A message with no explicit envelope: recipients and sender from its headers.
    pub fn new(message: MessageSource<'a>) -> Self {
        SendMail {
            to: Vec::new(),
            extract_recipients: false,
            from: None,
            full_name: None,
            id: None,
            delivery: Delivery::Deferred,
            dot_ends: false,
            message,
            submitter: None,
            already_accepted: false,
            origin: None,
            source: "library",
        }
    }

    /// Set explicit recipients.
    pub fn to<I: IntoIterator<Item = S>, S: Into<String>>(mut self, to: I) -> Self {
        self.to = to.into_iter().map(Into::into).collect();
        self
    }

    /// Set the envelope sender.
    pub fn from(mut self, from: impl Into<String>) -> Self {
        self.from = Some(from.into());
        self
    }

    /// Set the message id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// A message parsed and staged, not yet committed (see [`Mailspool::prepare`]).
#[derive(Debug)]
pub struct Prepared<'s> {
    stage: Box<dyn mailspool_spool::Staged>,
    from: String,
    recipients: Vec<String>,
    delivery: Delivery,
    /// What its `accepted` events say.
    intake: Intake,
    _spool: std::marker::PhantomData<&'s Mailspool>,
}

/// Where a message came from and who handed it in, for its `accepted` events.
#[derive(Debug, Clone)]
struct Intake {
    source: &'static str,
    submitter: String,
    message_id: Option<String>,
}

/// What was queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message id (in every node name).
    pub id: String,
    /// The envelope sender ("" is the null sender).
    pub from: String,
    /// The recipients queued, one node each.
    pub recipients: Vec<String>,
    /// Size of the stored message in bytes.
    pub size: u64,
    /// The node files.
    pub nodes: Vec<PathBuf>,
    /// Per-recipient results of the immediate attempt (Interactive and Background).
    pub delivery: Option<Vec<mailspool_deliver::NodeResult>>,
}

impl Mailspool {
    /// Queue a message: one node per recipient in tier 0. See the module comment.
    pub fn send_mail(&self, mail: SendMail<'_>) -> Result<Sent, SendError> {
        let prepared = self.prepare(mail)?;
        self.commit_prepared(prepared)
    }

    /// Everything of [`Mailspool::send_mail`] up to the commit: the message parsed,
    /// checked and written to a stage in `tmp/`. Nothing is visible until
    /// [`Mailspool::commit_prepared`] or [`Mailspool::commit_batch`]; dropping it
    /// removes the stage.
    pub fn prepare(&self, mail: SendMail<'_>) -> Result<Prepared<'_>, SendError> {
        // Below the reserve new mail waits; what another intake already acknowledged (a
        // dropped file) is let through, it only moves from one file to another.
        if !mail.already_accepted
            && let Some(dir) = self.spool.cache_dir()
        {
            mailspool_spool::check_reserve(dir, self.config.min_free_space)?;
        }
        let mut input: Box<dyn BufRead + '_> = match mail.message {
            MessageSource::Bytes(b) => Box::new(b),
            MessageSource::Reader(r) => Box::new(BufReader::with_capacity(64 * 1024, r)),
            MessageSource::Path(ref path) => {
                let f = File::open(path).map_err(|source| SendError::NoInput {
                    path: path.clone(),
                    source,
                })?;
                Box::new(BufReader::with_capacity(64 * 1024, f))
            }
        };
        let config = &self.config;
        let head = read_head(&mut input, config.max_header_size, mail.dot_ends)?;
        let mut headers = head.headers;

        // A bare name (`root`, as cron and mail(1) give it) is this host's: completed
        // with qualify_domain wherever it appears.
        let qualify = Some(self.config.qualify_domain());
        let mut recipients = Vec::new();
        for arg in &mail.to {
            recipients.push(address::parse_recipient_in(arg, qualify)?);
        }
        if mail.to.is_empty() || mail.extract_recipients {
            recipients.extend(headers.recipients_in(qualify)?);
        }
        let recipients = dedup(recipients);
        if recipients.is_empty() {
            return Err(SendError::NoRecipients);
        }

        let header_from = headers.from_address_in(qualify)?;
        let submitter = mail.submitter.clone().unwrap_or_else(|| Submitter {
            uid: rustix::process::getuid().as_raw(),
            login: login_name(),
        });
        let from = match &mail.from {
            Some(f) => address::parse_sender_in(f, qualify)?,
            None => match &header_from {
                Some(f) => f.clone(),
                None => format!("{}@{}", submitter.login, self.config.qualify_domain()),
            },
        };
        let id = match &mail.id {
            Some(id) if !is_valid_id(id) => return Err(SpoolError::InvalidId(id.clone()).into()),
            Some(id) if self.spool.id_in_use(id)? => {
                return Err(SpoolError::IdInUse(id.clone()).into());
            }
            Some(id) => id.clone(),
            None => self.spool.new_id(),
        };
        self.spool.check_envelope(&id, &from, &recipients)?;
        // A suppressed recipient is refused here; with `action = "drop"` the message is
        // taken and the daemon drops the recipient with a `suppressed` event.
        let policy = &self.config.deliver.suppression;
        if policy.enabled && policy.refuse && !mail.already_accepted {
            for to in &recipients {
                if let Some(s) = self.spool.suppressed(&from, to) {
                    return Err(SendError::Suppressed {
                        recipient: crate::escape(to).into_owned(),
                        reason: s.reason,
                    });
                }
            }
        }

        headers.remove("Bcc");
        let now = mailspool_spool::now();
        // Prepended: the newest trace field comes first (RFC 5321 4.4).
        let from_whom = match &mail.origin {
            Some(o) => o
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || " -_.@+".contains(*c))
                .collect(),
            None => format!("userid {}", submitter.uid),
        };
        headers.prepend(
            "Received",
            &format!(
                "by {} (mailspool, from {from_whom}) id {id}; {}",
                config.hostname,
                rfc5322_date(now)
            ),
        );
        if !headers.contains("Date") {
            headers.push("Date", &rfc5322_date(now));
        }
        if !headers.contains("Message-ID") {
            // Unique per message and unrelated to the spool id (which a caller may choose).
            headers.push(
                "Message-ID",
                &format!("<{}@{}>", mailspool_spool::unique_token(), config.hostname),
            );
        }
        if !headers.contains("From") {
            let addr = if from.is_empty() {
                format!("MAILER-DAEMON@{}", config.hostname)
            } else {
                from.clone()
            };
            let value = match mail.full_name.as_deref().map(str::trim) {
                Some(name) if !name.is_empty() => format!("{} <{addr}>", display_name(name)),
                _ => addr,
            };
            headers.push("From", &value);
        }

        let limit = config.max_message_size;
        let intake = Intake {
            source: mail.source,
            submitter: match &mail.origin {
                Some(o) => o.clone(),
                None => format!("{} (uid {})", submitter.login, submitter.uid),
            },
            message_id: headers.values("Message-ID").next(),
        };
        let header_len = headers.len() as u64 + 1;
        if header_len > limit {
            return Err(IntakeError::TooLarge { limit }.into());
        }
        let mut stage = self.spool.clone().stage(&id)?;
        headers
            .write_to(&mut stage)
            .and_then(|()| stage.write_all(b"\n"))
            .map_err(IntakeError::Write)?;
        if !head.ended {
            BodyCopier::new(mail.dot_ends)
                .copy(&head.body_start, &mut input, &mut stage, limit - header_len)
                // The body's share is what was left; the user set the whole limit.
                .map_err(|e| match e {
                    IntakeError::TooLarge { .. } => IntakeError::TooLarge { limit },
                    e => e,
                })?;
        }
        Ok(Prepared {
            stage,
            from,
            recipients,
            delivery: mail.delivery,
            intake,
            _spool: std::marker::PhantomData,
        })
    }

    /// Commit a prepared message (and deliver it now, in the modes that do).
    pub fn commit_prepared(&self, prepared: Prepared<'_>) -> Result<Sent, SendError> {
        let Prepared {
            stage,
            from,
            recipients,
            delivery,
            intake,
            ..
        } = prepared;
        let committed = stage.commit(&from, &recipients)?;
        self.queued(committed, from, recipients, delivery, &intake)
    }

    /// Commit several prepared messages with shared flushes (see
    /// [`mailspool_spool::commit_batch`]): each durable before its result says so.
    pub fn commit_batch(&self, batch: Vec<Prepared<'_>>) -> Vec<Result<Sent, SendError>> {
        let mut envelopes = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        let mut others = Vec::new();
        for p in batch {
            match p.stage.into_file_stage() {
                Ok(stage) => {
                    envelopes.push((p.from.clone(), p.recipients.clone(), p.delivery, p.intake));
                    items.push((stage, p.from, p.recipients));
                }
                // A back end without shared flushes: one commit each (its own
                // transaction); the results stay in order since a batch is one kind.
                Err(stage) => others.push((stage, p.from, p.recipients, p.delivery, p.intake)),
            }
        }
        if !others.is_empty() {
            return others
                .into_iter()
                .map(|(stage, from, recipients, delivery, intake)| {
                    let committed = stage.commit(&from, &recipients)?;
                    self.queued(committed, from, recipients, delivery, &intake)
                })
                .collect();
        }
        mailspool_spool::commit_batch(items)
            .into_iter()
            .zip(envelopes)
            .map(|(r, (from, recipients, delivery, intake))| {
                self.queued(r?, from, recipients, delivery, &intake)
            })
            .collect()
    }

    /// Queue several messages (each as [`Mailspool::send_mail`] in deferred mode) with
    /// shared flushes: each is prepared in turn, then the prepared ones are committed as
    /// one batch. The results are in the order given; each message is whole or absent.
    pub fn send_many<'a>(
        &self,
        mails: impl IntoIterator<Item = SendMail<'a>>,
    ) -> Vec<Result<Sent, SendError>> {
        let mut results: Vec<Option<Result<Sent, SendError>>> = Vec::new();
        let (mut prepared, mut slots) = (Vec::new(), Vec::new());
        for mail in mails {
            match self.prepare(SendMail {
                delivery: Delivery::Deferred,
                ..mail
            }) {
                Ok(p) => {
                    slots.push(results.len());
                    results.push(None);
                    prepared.push(p);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        for (i, r) in slots.into_iter().zip(self.commit_batch(prepared)) {
            results[i] = Some(r);
        }
        results.into_iter().flatten().collect()
    }

    fn queued(
        &self,
        committed: mailspool_spool::Committed,
        from: String,
        recipients: Vec<String>,
        delivery: Delivery,
        intake: &Intake,
    ) -> Result<Sent, SendError> {
        tracing::info!(event = "queued", id = %committed.id, from = %from, to = ?recipients, size = committed.size, "queued");
        // Not synced on its own: the next durable event (any delivery) carries it, and
        // the message itself is what the commit made durable.
        let events: Vec<mailspool_events::Event> = recipients
            .iter()
            .map(|to| {
                let mut e = mailspool_events::Event::new(
                    mailspool_events::Kind::Accepted,
                    &committed.id,
                    &from,
                    to,
                )
                .with_message_id(intake.message_id.as_deref());
                e.source = Some(intake.source.to_owned());
                e.submitter = Some(intake.submitter.clone());
                e
            })
            .collect();
        let _ = mailspool_spool::store::emit(&*self.spool, &events, false);
        let delivery = match delivery {
            Delivery::Deferred => None,
            mode => Some(
                match self.deliver_now(&committed.nodes, mode == Delivery::Interactive) {
                    Ok(results) => results,
                    // The nodes are committed: the message is accepted and waits for the
                    // daemon, and the caller is told it was not tried.
                    Err(e) => {
                        tracing::warn!(id = %committed.id, error = %crate::escape(&e), "cannot deliver now; the message stays queued");
                        recipients
                            .iter()
                            .map(|to| mailspool_deliver::NodeResult {
                                id: committed.id.clone(),
                                to: to.clone(),
                                outcome: mailspool_deliver::Outcome::Deferred,
                                reply: format!("not tried now: {e}"),
                            })
                            .collect()
                    }
                },
            ),
        };
        Ok(Sent {
            id: committed.id,
            from,
            recipients,
            size: committed.size,
            nodes: committed.nodes,
            delivery,
        })
    }

    /// The sender when neither `-f` nor a From header gives one: the user running us,
    /// at our host name.
    pub fn default_sender(&self) -> String {
        format!("{}@{}", login_name(), self.config.hostname)
    }

    /// The spool.
    pub fn spool(&self) -> &dyn mailspool_spool::Store {
        self.spool.as_ref()
    }

    /// The spool, to share.
    pub fn store(&self) -> &std::sync::Arc<dyn mailspool_spool::Store> {
        &self.spool
    }
}

/// The login name of the user running us: `$LOGNAME`, `$USER`, else `/etc/passwd`.
pub fn login_name() -> String {
    let valid = |s: &str| !s.is_empty() && address::check_address(&format!("{s}@x.org")).is_ok();
    for var in ["LOGNAME", "USER"] {
        if let Ok(v) = std::env::var(var)
            && valid(&v)
        {
            return v;
        }
    }
    let uid = rustix::process::getuid().as_raw();
    mailspool_spool::user_name(uid)
        .filter(|name| valid(name))
        .unwrap_or_else(|| {
            if uid == 0 {
                "root".into()
            } else {
                format!("uid{uid}")
            }
        })
}

/// A display name for a From header: plain if it is only atoms, quoted if ASCII with
/// specials, RFC 2047 base64 if it has non-ASCII characters.
fn display_name(name: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    if !name.is_ascii() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(name.as_bytes());
        return format!("=?utf-8?b?{b64}?=");
    }
    if name.split(' ').all(|w| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
    }) {
        return name;
    }
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_664_346),
            "Thu, 26 Nov 2026 03:39:06 +0000"
        );
        assert_eq!(display_name("Jane Doe"), "Jane Doe");
        assert_eq!(display_name("Doe, Jane \"JD\""), "\"Doe, Jane \\\"JD\\\"\"");
        assert_eq!(display_name("Zoë"), "=?utf-8?b?Wm/Dqw==?=");
    }
}
