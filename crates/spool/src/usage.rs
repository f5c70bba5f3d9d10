//! The usage log, `usage/raw`: one `"<unix time> <bytes> Spool|Sent"` line per node
//! spooled (its stored size) and per node sent (the bytes put on the wire), exactly as
//! Mail::Spool 0.50 counts, so accounting scripts written for 0.50 keep working on a
//! spool both write. Only when `usage_log` is on and `usage/` exists.
//!
//! Lines are appended with one `write` on an `O_APPEND` descriptor, so concurrent writers
//! (processes and hosts) never interleave inside a line on a local filesystem.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};

use crate::{Result, Spool, SpoolError, now};

/// Totals for one day (UTC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayUsage {
    /// Messages spooled.
    pub spooled: u64,
    /// Bytes spooled.
    pub spooled_bytes: u64,
    /// Messages sent.
    pub sent: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
}

impl Spool {
    /// Append a usage line, if the usage log is on. A failure is logged, never fatal: the
    /// message is already safe, and the log is statistics.
    pub fn log_usage(&self, bytes: u64, kind: &str) {
        self.log_usage_nodes(bytes, kind, 1);
    }

    /// Append `nodes` identical usage lines in one write (a message's nodes).
    pub fn log_usage_nodes(&self, bytes: u64, kind: &str, nodes: usize) {
        if !self.usage || nodes == 0 {
            return;
        }
        let path = self.dir.join("usage").join("raw");
        let line = format!("{} {} {}\n", now(), bytes, kind).repeat(nodes);
        if let Err(e) = crate::storage::os::append_line(&path, &line) {
            tracing::warn!(path = %path.display(), error = %e, "cannot append to the usage log");
        }
    }

    /// Totals per day (days since the epoch, UTC) for the last `days` days, from
    /// `usage/raw`. Lines that do not parse are skipped.
    pub fn usage(&self, days: u64) -> Result<BTreeMap<u64, DayUsage>> {
        let path = self.dir.join("usage").join("raw");
        let mut out = BTreeMap::new();
        let file = match crate::storage::os::open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(SpoolError::io("read", path, e)),
        };
        let today = now() / 86_400;
        let first = today.saturating_sub(days.saturating_sub(1));
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| SpoolError::io("read", &path, e))?;
            let mut words = line.split_whitespace();
            let (Some(time), Some(bytes), Some(kind)) = (
                words.next().and_then(|w| w.parse::<u64>().ok()),
                words.next().and_then(|w| w.parse::<u64>().ok()),
                words.next(),
            ) else {
                continue;
            };
            let day = time / 86_400;
            if day < first {
                continue;
            }
            let entry: &mut DayUsage = out.entry(day).or_default();
            match kind {
                "Spool" => {
                    entry.spooled += 1;
                    entry.spooled_bytes += bytes;
                }
                "Sent" => {
                    entry.sent += 1;
                    entry.sent_bytes += bytes;
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
