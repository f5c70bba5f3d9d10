//! Why `send_mail` refused a message, and the sysexits.h code each reason is.

use std::io;
use std::path::PathBuf;

use mailspool_message::{IntakeError, address};
use mailspool_spool::SpoolError;

use crate::sysexits;

/// Why a message was not queued. Nothing of it is left in the spool.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Neither the arguments nor the headers name a recipient.
    #[error("no recipients: give addresses as arguments or in To/Cc/Bcc headers")]
    NoRecipients,
    /// The message file does not exist or cannot be opened.
    #[error("cannot open {}: {source}", path.display())]
    NoInput {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The message or an address is refused.
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// The spool refused or failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A recipient is on the suppression list (`[suppression] action = "refuse"`).
    #[error(
        "{recipient}: suppressed ({reason}); remove it with `mailspool suppress remove {recipient}`"
    )]
    Suppressed {
        /// The recipient.
        recipient: String,
        /// Why it is suppressed.
        reason: String,
    },
}

impl From<address::AddressError> for SendError {
    fn from(e: address::AddressError) -> Self {
        SendError::Intake(IntakeError::Address(e))
    }
}

impl SendError {
    /// A failure of this machine, not of the message: a full or failing disk, a spool
    /// away or locked, an engine that could not start. Trying again later may work.
    pub fn is_temporary(&self) -> bool {
        match self {
            SendError::Intake(IntakeError::Read(_) | IntakeError::Write(_)) => true,
            SendError::Spool(e) => {
                e.is_full()
                    || matches!(
                        e,
                        SpoolError::Io { .. } | SpoolError::Database(_) | SpoolError::Locked { .. }
                    )
            }
            _ => false,
        }
    }

    /// The sysexits.h code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendError::NoRecipients => sysexits::USAGE,
            SendError::NoInput { source, .. }
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                sysexits::NOPERM
            }
            SendError::NoInput { .. } => sysexits::NOINPUT,
            SendError::Intake(IntakeError::Read(_)) => sysexits::IOERR,
            SendError::Intake(IntakeError::Write(e)) => io_exit_code(e),
            SendError::Intake(_) | SendError::Suppressed { .. } => sysexits::DATAERR,
            SendError::Spool(e) => spool_exit_code(e),
        }
    }
}

/// The sysexits.h code for a failed write: a full disk is temporary (75), an unwritable
/// spool cannot be created in (73), anything else is an I/O error (74).
pub fn io_exit_code(e: &io::Error) -> u8 {
    if mailspool_spool::is_full(e) {
        sysexits::TEMPFAIL
    } else if mailspool_spool::is_unwritable(e) {
        sysexits::CANTCREAT
    } else {
        sysexits::IOERR
    }
}

/// The sysexits.h code for a spool error.
pub fn spool_exit_code(e: &SpoolError) -> u8 {
    match e {
        SpoolError::NameTooLong { .. } | SpoolError::InvalidId(_) | SpoolError::IdInUse(_) => {
            sysexits::DATAERR
        }
        SpoolError::Untrusted { .. } => sysexits::DATAERR,
        SpoolError::Locked { .. } => sysexits::TEMPFAIL,
        SpoolError::NotFound(_) | SpoolError::Missing(_) => sysexits::NOINPUT,
        SpoolError::Config(_) | SpoolError::UnsafeSpool { .. } => sysexits::CONFIG,
        SpoolError::NotOurs { .. } => sysexits::NOPERM,
        SpoolError::Io { source, .. } => io_exit_code(source),
        SpoolError::Database(_) | SpoolError::BelowReserve { .. } => sysexits::TEMPFAIL,
    }
}
