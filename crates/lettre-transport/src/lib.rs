//! A [lettre](https://lettre.rs) transport that queues into a mailspool spool: lettre
//! builds the message, mailspool commits it durably (one node per recipient) and
//! `mailspool daemon` delivers it, retries it and bounces it, so a program needs no SMTP
//! client, no relay credentials and no connection to a server that may be down.
//!
//! ```no_run
//! use lettre::{Message, Transport};
//! use mailspool_lettre::MailspoolTransport;
//!
//! let email = Message::builder()
//!     .from("App <app@example.com>".parse()?)
//!     .to("ops@example.org".parse()?)
//!     .subject("disk almost full")
//!     .body(String::from("92% on /var"))?;
//! let transport = MailspoolTransport::discover()?; // the spool `mailspool` uses
//! let queued = transport.send(&email)?;
//! println!("queued {} for {:?}", queued.id, queued.recipients);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The envelope is lettre's (`Envelope::from` as the sender, none for the null sender;
//! `Envelope::to` as the recipients, Bcc included), the bytes are lettre's formatted
//! message (without its Bcc header). As lettre pairs `SmtpTransport` with
//! `AsyncSmtpTransport`, [`MailspoolTransport`] implements [`lettre::Transport`] and
//! [`AsyncMailspoolTransport`] implements [`lettre::AsyncTransport`] (tokio), committing on
//! tokio's blocking pool since a commit waits for the disk.

use std::sync::Arc;

use lettre::address::Envelope;
use mailspool::embed::{ErrorKind, OpenError};
use mailspool::{Delivery, Mailspool, MessageSource, SendError, SendMail, Sent};

/// Queues lettre messages into a mailspool spool. Cheap to clone; share it freely.
#[derive(Debug, Clone)]
pub struct MailspoolTransport {
    spool: Arc<Mailspool>,
    delivery: Delivery,
}

/// Why a message was not queued (nothing of it is left in the spool).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mailspool refused or failed: see [`Error::kind`].
    #[error(transparent)]
    Queue(#[from] SendError),
    /// The blocking task that commits was cancelled or panicked (async only).
    #[error("the queueing task failed: {0}")]
    Task(String),
}

impl Error {
    /// What kind of failure this is; [`ErrorKind::is_temporary`] says whether to retry.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Queue(e) => e.kind(),
            Error::Task(_) => ErrorKind::Internal,
        }
    }
}

impl MailspoolTransport {
    /// A transport over a spool opened with the library.
    pub fn new(spool: Mailspool) -> Self {
        Self::shared(Arc::new(spool))
    }

    /// A transport over a spool shared with other code.
    pub fn shared(spool: Arc<Mailspool>) -> Self {
        MailspoolTransport {
            spool,
            delivery: Delivery::Deferred,
        }
    }

    /// The spool the `mailspool` command would use: `$MAILSPOOL_SPOOL`,
    /// `$MAILSPOOL_CONFIG`, the configuration files, else the default.
    pub fn discover() -> Result<Self, OpenError> {
        Ok(Self::new(Mailspool::discover(None, None)?))
    }

    /// How messages are delivered: [`Delivery::Deferred`] (the default: queue and return),
    /// `Interactive` or `Background` (try now; see [`Delivery`]).
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<Mailspool> {
        &self.spool
    }

    fn queue(
        spool: &Mailspool,
        delivery: Delivery,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Sent, Error> {
        let mut mail = SendMail::new(MessageSource::Bytes(email))
            .to(envelope.to().iter().map(|a| a.to_string()));
        // lettre's envelope without a sender is the null sender, not "from the headers".
        mail.from = Some(envelope.from().map(|a| a.to_string()).unwrap_or_default());
        mail.delivery = delivery;
        Ok(spool.send_mail(mail)?)
    }
}

impl lettre::Transport for MailspoolTransport {
    type Ok = Sent;
    type Error = Error;

    fn send_raw(&self, envelope: &Envelope, email: &[u8]) -> Result<Sent, Error> {
        Self::queue(&self.spool, self.delivery, envelope, email)
    }
}

/// The async transport (tokio): the same spool and modes as [`MailspoolTransport`].
#[derive(Debug, Clone)]
pub struct AsyncMailspoolTransport {
    inner: MailspoolTransport,
}

impl AsyncMailspoolTransport {
    /// A transport over a spool opened with the library.
    pub fn new(spool: Mailspool) -> Self {
        MailspoolTransport::new(spool).into()
    }

    /// The spool the `mailspool` command would use (see [`MailspoolTransport::discover`]).
    pub fn discover() -> Result<Self, OpenError> {
        Ok(MailspoolTransport::discover()?.into())
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<Mailspool> {
        &self.inner.spool
    }
}

impl From<MailspoolTransport> for AsyncMailspoolTransport {
    fn from(inner: MailspoolTransport) -> Self {
        AsyncMailspoolTransport { inner }
    }
}

#[async_trait::async_trait]
impl lettre::AsyncTransport for AsyncMailspoolTransport {
    type Ok = Sent;
    type Error = Error;

    async fn send_raw(&self, envelope: &Envelope, email: &[u8]) -> Result<Sent, Error> {
        let (spool, delivery) = (self.inner.spool.clone(), self.inner.delivery);
        let (envelope, email) = (envelope.clone(), email.to_vec());
        tokio::task::spawn_blocking(move || {
            MailspoolTransport::queue(&spool, delivery, &envelope, &email)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}
