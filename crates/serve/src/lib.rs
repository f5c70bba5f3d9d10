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
pub use listener::{Bound, bind, tls_acceptor};
pub use users::Users;

/// Make the allocator give big blocks back to the system when they are freed. glibc
/// raises its mmap threshold to the largest block freed so far, so after one argon2
/// check (19 MiB) every later one is carved from the heap and the memory stays with
/// the process for good (20 AUTH attempts took `serve` to 1.9 GB). A fixed threshold
/// keeps blocks of 1 MiB and more in their own mappings, returned at once when freed.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the runtime starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
