//! `mailspool serve`: an SMTP listener that commits what it receives to the spool with
//! the same durable commit as `send`, and is safe to expose.
//!
//! - [`data`]: DATA/BDAT reading; the smuggling defence (only CRLF.CRLF ends DATA, bare
//!   CR/LF and NUL refuse the message, 1000-byte lines, size limit while reading).
//! - [`session`]: one session (policy, AUTH, STARTTLS, the commit before 250).
//! - [`listener`]: ports, TLS files, connection limits, graceful shutdown.
//! - [`users`]: the AUTH users file (argon2 hashes).

pub mod config;
pub mod data;
pub mod listener;
pub mod session;
pub mod users;

pub use config::{Listen, Mode, Network, ServeConfig};
pub use listener::{Bound, bind};
pub use users::Users;
