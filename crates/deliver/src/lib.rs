//! mailspool's delivery: the engine that empties the spool.
//!
//! - [`route`]: where a domain's mail goes (routes, relay hosts, MX with hickory).
//! - [`engine`]: due nodes → locks → one SMTP transaction per message and domain →
//!   delete, fall back a tier, or bounce.
//! - [`bounce`]: RFC 3464 DSNs, spooled from the null sender.
//! - [`daemon`]: the foreground loop with inotify wake-ups, ticks and signals.

pub mod bounce;
pub mod config;
pub mod daemon;
pub mod dane;
pub mod dns;
/// DKIM keys and signing: their own crate, re-exported where the engine used them.
pub use mailspool_dkim as dkim;
pub mod dnssec;
pub mod engine;
pub mod local;
pub mod mta_sts;
pub mod route;
pub mod shaping;
pub mod webhook;

pub use config::{DeliverConfig, HostPort};
pub use dns::{HickoryDns, NoDns, Resolve};
pub use engine::{Engine, NodeResult, Outcome, PassOptions, Report, Selection};
