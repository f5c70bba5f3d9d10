//! What every language binding shares (the C ABI, Python, lettre, Perl): opening the
//! spool the way the command line finds it, a queue listing as plain records, and one
//! list of error kinds with stable names and numbers, so that a C status code, a
//! Python exception class and a Perl error all say the same thing.

use std::ops::ControlFlow;
use std::path::Path;

use mailspool_message::IntakeError;
use mailspool_spool::SpoolError;
use serde::Serialize;

use crate::{Config, ConfigError, Mailspool, Outcome, SendError, Sent};

/// Why a call failed, for callers that branch on it. The numbers are the C ABI's status
/// codes (`MAILSPOOL_E_*`) and never change meaning; new kinds get new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorKind {
    /// A required argument was missing or malformed (a NULL pointer, bad UTF-8, an
    /// unknown delivery mode).
    InvalidArgument = 1,
    /// Neither the arguments nor the headers name a recipient.
    NoRecipients = 2,
    /// An address is malformed or too long for a node name.
    BadAddress = 3,
    /// The message is over `max_message_size` (or its header block over its limit).
    MessageTooLarge = 4,
    /// The message cannot be read as mail (a NUL in a header, an unreadable source).
    BadMessage = 5,
    /// The message file does not exist or cannot be opened.
    NoInput = 6,
    /// The chosen id is malformed.
    InvalidId = 7,
    /// The chosen id is already queued.
    IdInUse = 8,
    /// The disk or the quota is full: try again later.
    SpoolFull = 9,
    /// The spool's database cannot be reached: try again later.
    SpoolUnavailable = 10,
    /// Someone else holds the lock: try again later.
    Locked = 11,
    /// We may not write the spool (another user's, one others may write, or read-only).
    NoPermission = 12,
    /// The configuration or the spool's settings are wrong.
    Config = 13,
    /// Another system error.
    Io = 14,
    /// Interactive delivery: a recipient failed for good (not kept, no bounce); the
    /// others were delivered or stay queued, as the message says.
    NotDelivered = 15,
    /// A bug: the library panicked. The handle is still usable.
    Internal = 16,
}

impl ErrorKind {
    /// Every kind, in number order.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NoRecipients,
        ErrorKind::BadAddress,
        ErrorKind::MessageTooLarge,
        ErrorKind::BadMessage,
        ErrorKind::NoInput,
        ErrorKind::InvalidId,
        ErrorKind::IdInUse,
        ErrorKind::SpoolFull,
        ErrorKind::SpoolUnavailable,
        ErrorKind::Locked,
        ErrorKind::NoPermission,
        ErrorKind::Config,
        ErrorKind::Io,
        ErrorKind::NotDelivered,
        ErrorKind::Internal,
    ];

    /// The name bindings use for it (Python's exception class, Perl's error prefix).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::NoRecipients => "NoRecipients",
            ErrorKind::BadAddress => "BadAddress",
            ErrorKind::MessageTooLarge => "MessageTooLarge",
            ErrorKind::BadMessage => "BadMessage",
            ErrorKind::NoInput => "NoInput",
            ErrorKind::InvalidId => "InvalidId",
            ErrorKind::IdInUse => "IdInUse",
            ErrorKind::SpoolFull => "SpoolFull",
            ErrorKind::SpoolUnavailable => "SpoolUnavailable",
            ErrorKind::Locked => "Locked",
            ErrorKind::NoPermission => "NoPermission",
            ErrorKind::Config => "ConfigError",
            ErrorKind::Io => "IoError",
            ErrorKind::NotDelivered => "NotDelivered",
            ErrorKind::Internal => "InternalError",
        }
    }

    /// Worth trying again later unchanged (sendmail's exit code 75).
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            ErrorKind::SpoolFull | ErrorKind::SpoolUnavailable | ErrorKind::Locked
        )
    }
}

/// The kind of a spool error.
pub fn spool_error_kind(e: &SpoolError) -> ErrorKind {
    match e {
        SpoolError::Io { source, .. } => io_error_kind(source),
        SpoolError::NameTooLong { .. } | SpoolError::Untrusted { .. } => ErrorKind::BadAddress,
        SpoolError::InvalidId(_) => ErrorKind::InvalidId,
        SpoolError::IdInUse(_) => ErrorKind::IdInUse,
        SpoolError::Locked { .. } => ErrorKind::Locked,
        SpoolError::NotFound(_) | SpoolError::Missing(_) => ErrorKind::NoInput,
        // Another user's spool (or one others may write): not ours to use.
        SpoolError::UnsafeSpool { .. } | SpoolError::NotOurs { .. } => ErrorKind::NoPermission,
        SpoolError::Config(_) => ErrorKind::Config,
        SpoolError::Database(_) => ErrorKind::SpoolUnavailable,
        SpoolError::BelowReserve { .. } => ErrorKind::SpoolFull,
    }
}

fn io_error_kind(e: &std::io::Error) -> ErrorKind {
    if mailspool_spool::is_full(e) {
        ErrorKind::SpoolFull
    } else if mailspool_spool::is_unwritable(e) {
        ErrorKind::NoPermission
    } else {
        ErrorKind::Io
    }
}

impl SendError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SendError::NoRecipients => ErrorKind::NoRecipients,
            SendError::NoInput { .. } => ErrorKind::NoInput,
            SendError::Intake(IntakeError::Address(_)) | SendError::Suppressed { .. } => {
                ErrorKind::BadAddress
            }
            SendError::Intake(
                IntakeError::TooLarge { .. } | IntakeError::HeaderTooLarge { .. },
            ) => ErrorKind::MessageTooLarge,
            SendError::Intake(
                IntakeError::Read(_) | IntakeError::NulInHeader { .. } | IntakeError::NulInBody,
            ) => ErrorKind::BadMessage,
            SendError::Intake(IntakeError::Write(e)) => io_error_kind(e),
            SendError::Spool(e) => spool_error_kind(e),
        }
    }
}

/// After an interactive delivery: the recipients that failed for good (each one's reply,
/// escaped), with what happened to the others, and sendmail's exit code for it (69);
/// `None` when none failed. A failed recipient is not kept and not bounced (the caller
/// is told here); a deferred one stays queued for retry and a skipped one is being
/// delivered by another process, so neither is a failure to report: retrying the call
/// would send the delivered and the queued recipients a second copy.
pub fn not_delivered(sent: &Sent) -> Option<(String, u8)> {
    let results = sent.delivery.as_deref().unwrap_or_default();
    if !results.iter().any(|r| r.outcome == Outcome::Failed) {
        return None;
    }
    let each: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "<{}>: {}: {}",
                crate::escape(&r.to),
                outcome_text(r.outcome),
                crate::escape(&r.reply)
            )
        })
        .collect();
    Some((
        format!(
            "message {} not delivered to every recipient: {}",
            sent.id,
            each.join("; ")
        ),
        crate::sysexits::UNAVAILABLE,
    ))
}

/// What an immediate attempt's outcome means for the caller, in words.
pub fn outcome_text(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Deferred => "queued for retry",
        Outcome::Failed => "failed (not kept, no bounce)",
        Outcome::Skipped => "queued (another process is delivering it)",
    }
}

/// Why a spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The spool refused to open.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl OpenError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpenError::Config(_) => ErrorKind::Config,
            OpenError::Spool(e) => spool_error_kind(e),
        }
    }
}

/// One queued node, as bindings list it (one per recipient).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueEntry {
    /// The message id (shared by the nodes of one message).
    pub id: String,
    /// The node's key (its file name in a directory spool); `queue show` takes it.
    pub node: String,
    /// The recipient.
    pub to: String,
    /// The envelope sender ("" is the null sender).
    pub from: String,
    /// The tier (0 = new; for a held node, the tier it returns to).
    pub tier: usize,
    /// Unix time the node entered its tier.
    pub queued_at: u64,
    /// Unix time it is next due.
    pub due_at: u64,
    /// The message's size in bytes.
    pub size: u64,
    /// Held: never delivered until released.
    pub held: bool,
    /// The last failed attempt's reply.
    pub last_error: Option<String>,
}

impl Mailspool {
    /// Open the spool the way the command line finds it: `config` (a file) when given,
    /// else `$MAILSPOOL_CONFIG` or the first configuration file found, else the
    /// defaults; then `spool` (a directory or a database URL), else `$MAILSPOOL_SPOOL`,
    /// overrides where the spool is.
    pub fn discover(config: Option<&Path>, spool: Option<&Path>) -> Result<Mailspool, OpenError> {
        let config = Config::load(config, spool)?;
        Ok(Mailspool::open(config)?)
    }

    /// Visit every queued node: every tier, then the held ones.
    pub fn visit_queue(
        &self,
        f: &mut dyn FnMut(QueueEntry) -> ControlFlow<()>,
    ) -> Result<(), SpoolError> {
        let periods = &self.config.spool;
        self.spool.visit_listing(&mut |l| {
            let n = l.node;
            f(QueueEntry {
                due_at: n.name.time.saturating_add(periods.period(n.tier)),
                id: n.name.id,
                node: n.file_name,
                to: n.name.to,
                from: n.name.from,
                tier: n.tier,
                queued_at: n.name.time,
                size: l.size,
                held: n.held,
                last_error: l.last_error,
            })
        })
    }

    /// Every queued node (see [`Mailspool::visit_queue`] to stream a long queue).
    pub fn queue(&self) -> Result<Vec<QueueEntry>, SpoolError> {
        let mut out = Vec::new();
        self.visit_queue(&mut |e| {
            out.push(e);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }
}
