//! What a session is configured with, and what it reports: settings, phases, errors,
//! envelopes and per-recipient outcomes.

use std::io;
use std::time::Duration;

use crate::reply::Reply;

/// Client timeouts (RFC 5321 §4.5.3.2 minimums by default).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Greeting (220).
    pub greeting: Duration,
    /// EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT replies.
    pub command: Duration,
    /// DATA's 354.
    pub data_init: Duration,
    /// Each write of the message body.
    pub data_block: Duration,
    /// The reply after the final dot.
    pub data_end: Duration,
    /// The whole session.
    pub max_session: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
            max_session: Duration::from_secs(600),
        }
    }
}

/// When to use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never.
    None,
    /// STARTTLS when offered, without certificate checks; plain text otherwise.
    Opportunistic,
    /// STARTTLS required, certificate and host name checked.
    Required,
    /// TLS from the first byte (port 465), certificate and host name checked.
    Implicit,
    /// TLS from the first byte, without certificate checks.
    ImplicitUnverified,
}

/// AUTH credentials.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// How to talk to one server.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// AUTH credentials (only ever sent under TLS).
    pub auth: Option<Credentials>,
    /// Source addresses to connect from: the first of the peer's family is used (none
    /// of it: the kernel chooses).
    pub bind: Vec<std::net::IpAddr>,
    /// Checks the certificate instead of the built-in configurations: DANE's TLSA
    /// records (TLS required), or MTA-STS testing's report-only check.
    pub verifier: Option<CustomTls>,
}

/// A TLS client configuration with its own certificate check.
#[derive(Clone)]
pub struct CustomTls(pub tokio_rustls::TlsConnector);

impl std::fmt::Debug for CustomTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomTls")
    }
}

/// The phase of a session an error or reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect.
    Connect,
    /// Waiting for 220.
    Greeting,
    /// EHLO / HELO.
    Ehlo,
    /// STARTTLS and the handshake.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA, waiting for 354.
    Data,
    /// Sending the message.
    Body,
    /// Waiting for the reply to the final dot.
    DataEnd,
    /// RSET.
    Rset,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::StartTls => "STARTTLS",
            Phase::Auth => "AUTH",
            Phase::Mail => "MAIL FROM",
            Phase::Rcpt => "RCPT TO",
            Phase::Data => "DATA",
            Phase::Body => "message body",
            Phase::DataEnd => "end of data",
            Phase::Rset => "RSET",
        };
        f.write_str(s)
    }
}

/// Why a session or transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// A network error.
    #[error("{phase}: {source}")]
    Io {
        /// Where.
        phase: Phase,
        /// What.
        source: io::Error,
    },
    /// The server did not answer in time.
    #[error("{0}: timed out")]
    Timeout(Phase),
    /// The server closed the connection.
    #[error("{0}: connection closed by the server")]
    Closed(Phase),
    /// The server broke the protocol.
    #[error("{phase}: protocol error: {what}")]
    Protocol {
        /// Where.
        phase: Phase,
        /// What.
        what: String,
    },
    /// The server refused.
    #[error("{phase}: {reply}")]
    Rejected {
        /// Where.
        phase: Phase,
        /// Its reply.
        reply: Reply,
    },
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// TLS is required but the server does not offer STARTTLS.
    #[error("TLS is required but the server does not offer STARTTLS")]
    TlsUnavailable,
    /// The message needs SMTPUTF8 and the server does not offer it.
    #[error("5.6.7 the message has non-ASCII addresses and the server does not support SMTPUTF8")]
    NeedsSmtpUtf8,
    /// The message is larger than the server's SIZE.
    #[error("5.3.4 message of {size} bytes exceeds the server's limit of {limit}")]
    TooLarge {
        /// Our size.
        size: u64,
        /// The server's.
        limit: u64,
    },
    /// Reading the message to send failed.
    #[error("reading the message: {0}")]
    Source(io::Error),
}

impl SmtpError {
    /// A failure that will not go away by retrying this message: 5xx to MAIL or DATA,
    /// SMTPUTF8 or SIZE impossible. Greeting and EHLO refusals are host problems, tried
    /// on the next host and then retried later, as Postfix does.
    pub fn is_permanent(&self) -> bool {
        match self {
            SmtpError::Rejected { phase, reply } => {
                reply.is_permanent()
                    && matches!(
                        phase,
                        Phase::Mail | Phase::Data | Phase::DataEnd | Phase::Rcpt
                    )
            }
            SmtpError::NeedsSmtpUtf8 | SmtpError::TooLarge { .. } => true,
            _ => false,
        }
    }

    /// Whether another host could do better (connection-level trouble, not a verdict on
    /// the message).
    pub fn is_host_level(&self) -> bool {
        !self.is_permanent()
    }

    /// The phase the error happened in, when it belongs to one.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            SmtpError::Io { phase, .. }
            | SmtpError::Closed(phase)
            | SmtpError::Timeout(phase)
            | SmtpError::Protocol { phase, .. }
            | SmtpError::Rejected { phase, .. } => Some(*phase),
            _ => None,
        }
    }

    /// The server's reply, if the error is one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SmtpError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// RFC 3463 status for a DSN.
    pub fn status(&self) -> String {
        match self {
            SmtpError::Rejected { reply, .. } => reply.status(),
            SmtpError::NeedsSmtpUtf8 => "5.6.7".into(),
            SmtpError::TooLarge { .. } => "5.3.4".into(),
            SmtpError::TlsUnavailable | SmtpError::Tls(_) => "4.7.5".into(),
            SmtpError::Timeout(_) => "4.4.2".into(),
            _ => "4.4.1".into(),
        }
    }
}

/// The envelope of one transaction.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Sender ("" = null sender).
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Message size in bytes as sent, CRLF line ends (for SIZE=; see `WireSize`).
    pub size: u64,
    /// The message has 8-bit bytes (BODY=8BITMIME when offered).
    pub eight_bit: bool,
    /// The header holds raw UTF-8 (RFC 6532): SMTPUTF8 is asked for when offered.
    pub utf8_headers: bool,
}

impl Envelope {
    /// The envelope needs SMTPUTF8 (non-ASCII addresses).
    pub fn needs_smtputf8(&self) -> bool {
        !self.from.is_ascii() || self.to.iter().any(|t| !t.is_ascii())
    }
}

/// Per-recipient result of one transaction.
#[derive(Debug, Clone)]
pub struct TxOutcome {
    /// The reply to each RCPT, in envelope order.
    pub rcpt: Vec<Reply>,
    /// The reply after the final dot; `None` when no recipient was accepted.
    pub data: Option<Reply>,
}

impl TxOutcome {
    /// The final result for recipient `i`: its RCPT reply if refused, else the data reply.
    pub fn result(&self, i: usize) -> &Reply {
        let r = &self.rcpt[i];
        match (&self.data, r.is_positive()) {
            (Some(d), true) => d,
            _ => r,
        }
    }
}
