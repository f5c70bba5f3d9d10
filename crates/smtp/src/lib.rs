//! SMTP sessions for mailspool, on smtp-proto.
//!
//! smtp-proto parses server replies and EHLO responses; writing commands, dot-stuffing
//! and the session logic are ours. TLS is rustls on the `ring` provider only.
//!
//! - [`client::Session`]: one connection to one server: greeting, EHLO (HELO fallback),
//!   STARTTLS or implicit TLS, AUTH PLAIN/LOGIN, then any number of transactions
//!   (MAIL, RCPT…, DATA with PIPELINING when offered, per-recipient replies), RSET
//!   between them for reuse, QUIT. Every read and write has an RFC 5321 timeout.
//! - [`body`]: streams a stored message (LF line ends) as SMTP DATA: CRLF, dot-stuffed,
//!   terminated by `CRLF.CRLF`, in fixed memory.

pub mod body;
pub mod client;
pub mod reply;
pub mod tls;

pub use client::{
    ClientSettings, Credentials, CustomTls, Envelope, Phase, Session, SmtpError, Timeouts,
    TlsPolicy, TxOutcome,
};
pub use reply::Reply;
pub use tls::TlsConnectors;
