//! Side data: what happened to a node, kept outside the tier directories so that
//! Mail::Spool 0.50 never sees it and a spool without it is still valid.
//!
//! `meta/<id>-<encoded to>` holds one JSON object per line, one per delivery attempt. The
//! key does not contain the node's time or tier, so it survives fallbacks and retries.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::name::{NodeName, encode};
use crate::storage::os;
use crate::{Result, Spool, SpoolError};

/// One delivery attempt of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix time of the attempt.
    pub time: u64,
    /// Host tried (name or address), empty when none was reached.
    pub host: String,
    /// The reply or error, e.g. `451 4.3.0 try later`.
    pub reply: String,
    /// Whether this attempt delivered the node.
    #[serde(default)]
    pub delivered: bool,
}

/// Longest side-data file we read: attempts are short, and a node has at most a few
/// hundred of them in four days.
const MAX_SIDE_BYTES: u64 = 1 << 20;

impl Spool {
    fn side_path(&self, node: &NodeName) -> PathBuf {
        self.dir
            .join("meta")
            .join(format!("{}-{}", node.id, encode(node.to.as_bytes())))
    }

    /// Append an attempt to a node's history.
    pub fn record_attempt(&self, node: &NodeName, attempt: &Attempt) -> Result<()> {
        let meta = self.dir.join("meta");
        os::ensure_dir(&meta).map_err(|e| SpoolError::io("create", &meta, e))?;
        let path = self.side_path(node);
        let mut line = serde_json::to_string(attempt).expect("attempt serializes");
        line.push('\n');
        os::append_line(&path, &line).map_err(|e| SpoolError::io("append to", path, e))
    }

    /// A node's attempts, oldest first; none when there is no side data.
    pub fn attempts(&self, node: &NodeName) -> Vec<Attempt> {
        let Ok(file) = std::fs::File::open(self.side_path(node)) else {
            return Vec::new();
        };
        BufReader::new(std::io::Read::take(file, MAX_SIDE_BYTES))
            .lines()
            .map_while(|l| l.ok())
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// The last failed attempt's reply, if the last attempt failed.
    pub fn last_error(&self, node: &NodeName) -> Option<String> {
        self.attempts(node)
            .pop()
            .filter(|a| !a.delivered)
            .map(|a| a.reply)
    }

    /// Forget a node's side data (after delivery or deletion).
    pub fn remove_side_data(&self, node: &NodeName) {
        let _ = std::fs::remove_file(self.side_path(node));
    }

    /// Whether any side data exists at all (saves a lookup per node in big listings).
    pub fn has_side_data(&self) -> bool {
        std::fs::read_dir(self.dir.join("meta")).is_ok_and(|mut d| d.next().is_some())
    }
}
