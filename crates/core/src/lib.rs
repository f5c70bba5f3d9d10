//! mailspool: a mail spooler and sender, the successor of Perl's Mail::Spool 0.50.
//!
//! Embed it to hand off mail in a fraction of a millisecond, durably:
//!
//! ```no_run
//! use mailspool_core::{Config, Mailspool, MessageSource, SendMail};
//!
//! let spool = Mailspool::open(Config::default())?;
//! let msg = b"From: app@example.com\nTo: ops@example.org\nSubject: hi\n\nhello\n";
//! let sent = spool.send_mail(SendMail::new(MessageSource::Bytes(msg)))?;
//! println!("queued {} for {:?}", sent.id, sent.recipients);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Parts: `mailspool_spool` (the on-disk format), `mailspool_message` (intake parsing),
//! and here the configuration, `send_mail` with its delivery modes, and queue
//! administration. The HTTP server is `mailspool-http` and the command line the
//! `mailspool` package: nothing here depends on an HTTP server or on clap, so the
//! bindings that embed this crate carry neither.

pub mod admin;
pub mod config;
mod delivery;
pub mod embed;
pub mod pickup;
pub mod send;
pub mod sysexits;

use std::sync::Arc;

pub use config::{Config, ConfigError, HttpConfig};
pub use embed::{ErrorKind, OpenError, QueueEntry};
pub use mailspool_deliver::{NodeResult, Outcome, Report};
pub use mailspool_spool::{Spool, SpoolConfig, SpoolError, Store, escape};
pub use send::{Delivery, MessageSource, Prepared, SendError, SendMail, Sent, Submitter};

/// Open the back end `config.spool_dir` names: a database URL, or a directory
/// (`create`: made if missing, as intake does; else opened as it is, creating nothing).
pub fn open_store(config: &Config, create: bool) -> Result<Arc<dyn Store>, SpoolError> {
    if let Some(url) = config.spool_url() {
        let options = mailspool_pg::PgOptions {
            lease: config.spool_lease,
            // Deliveries at once, plus intake and the listener's commits.
            max_connections: config.deliver.max_deliveries.clamp(4, 64) + 4,
            host: Some(config.hostname.clone()),
            ca_file: config.spool_ca_file.clone(),
            password_file: config.spool_password_file.clone(),
        };
        return Ok(Arc::new(mailspool_pg::PgSpool::open(
            url,
            config.spool.clone(),
            options,
        )?));
    }
    Ok(Arc::new(if create {
        Spool::create(&config.spool_dir, config.spool.clone())?
    } else {
        Spool::open(&config.spool_dir, config.spool.clone())?
    }))
}

/// [`open_store`] for a long-running service (`daemon`, `serve`): while the database
/// cannot be reached, wait and try again (1 s, doubling to 30 s, each failure logged), as
/// the service does when the database goes away later; a system-manager start before
/// the database's is then not a failed unit. Any other error is returned at once.
pub fn open_store_waiting(config: &Config, create: bool) -> Result<Arc<dyn Store>, SpoolError> {
    let mut pause = std::time::Duration::from_secs(1);
    let mut tries = 0u32;
    loop {
        match open_store(config, create) {
            Err(SpoolError::Database(e)) => {
                tries += 1;
                tracing::warn!(error = %escape(&e), attempt = tries, retry_in_secs = pause.as_secs(), "the spool's database cannot be reached; waiting for it");
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
            Ok(store) => {
                if tries > 0 {
                    tracing::info!(attempts = tries + 1, "the spool's database is reachable");
                }
                return Ok(store);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A spool opened for intake, with its configuration.
#[derive(Debug)]
pub struct Mailspool {
    config: Config,
    spool: Arc<dyn Store>,
}

impl Mailspool {
    /// Open the spool of `config` for writing: a directory (created if needed) or, for
    /// `spool = "postgresql://..."`, a database (see `mailspool db migrate`).
    pub fn open(config: Config) -> Result<Mailspool, SpoolError> {
        let spool = open_store(&config, true)?;
        Ok(Mailspool { config, spool })
    }

    /// [`Mailspool::open`] for a service: waits for the database (see
    /// [`open_store_waiting`]).
    pub fn open_waiting(config: Config) -> Result<Mailspool, SpoolError> {
        let spool = open_store_waiting(&config, true)?;
        Ok(Mailspool { config, spool })
    }

    /// Wrap a spool that is already open (e.g. with a fault-injecting storage layer).
    pub fn with_spool(config: Config, spool: Spool) -> Mailspool {
        Mailspool {
            config,
            spool: Arc::new(spool),
        }
    }

    /// Wrap any back end that is already open.
    pub fn with_store(config: Config, spool: Arc<dyn Store>) -> Mailspool {
        Mailspool { config, spool }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }
}
