//! Everything about the nodes of one message: envelope, times, lock, attempts, headers.

use std::io::{BufRead, BufReader, Read};

use mailspool_spool::side::Attempt;
use mailspool_spool::{NodeEntry, SpoolError, Store, escape};
use serde::Serialize;

/// One node of a message.
#[derive(Debug, Serialize)]
pub struct NodeDetail {
    /// The node's file name (selects exactly this node).
    pub node: String,
    /// Recipient.
    pub to: String,
    /// Tier (for a held node: the tier it returns to).
    pub tier: usize,
    /// Held: never delivered until released.
    pub held: bool,
    /// Unix time it entered its tier.
    pub queued_at: u64,
    /// Unix time it becomes due.
    pub due_at: u64,
    /// Bytes stored.
    pub size: u64,
    /// Who holds its lock, if anyone (`host pid`).
    pub lock: Option<String>,
    /// Written by Mail::Spool 0.50's fallback with a raw '-'.
    pub rescued: bool,
    /// Delivery attempts, oldest first.
    pub attempts: Vec<Attempt>,
    /// The last attempt's reply, if it failed.
    pub last_error: Option<String>,
}

/// A message: its envelope and nodes.
#[derive(Debug, Serialize)]
pub struct MessageDetail {
    /// Message id.
    pub id: String,
    /// Envelope sender (empty: the null sender).
    pub from: String,
    /// One per recipient still queued.
    pub nodes: Vec<NodeDetail>,
    /// The header block, one (unfolded-as-stored) line each, control characters escaped.
    pub headers: Vec<String>,
}

/// Describe the nodes of one message (as [`super::select`] returned them).
pub fn detail(spool: &dyn Store, nodes: &[NodeEntry]) -> Result<MessageDetail, SpoolError> {
    let first = nodes
        .first()
        .ok_or_else(|| SpoolError::NotFound(String::new()))?;
    let details = nodes
        .iter()
        .map(|n| {
            let (size, lock) = spool.node_state(n);
            NodeDetail {
                node: n.file_name.clone(),
                to: n.name.to.clone(),
                tier: n.tier,
                held: n.held,
                queued_at: n.name.time,
                due_at: spool.due_at(n),
                size: size.unwrap_or(0),
                lock,
                rescued: n.rescued,
                attempts: mailspool_spool::side::attempts_of(spool.attempts(&n.name), n.ino),
                last_error: mailspool_spool::side::last_failure(spool.attempts(&n.name), n.ino),
            }
        })
        .collect();
    Ok(MessageDetail {
        id: first.name.id.clone(),
        from: first.name.from.clone(),
        nodes: details,
        headers: header_block(spool, first)?,
    })
}

/// The header block of a node (at most 64 KiB of it), opened as a node must be: a
/// symlink or a FIFO planted in a tier is refused, never followed or waited on.
pub fn header_block(spool: &dyn Store, n: &NodeEntry) -> Result<Vec<String>, SpoolError> {
    let file = spool.open_node(n)?.file;
    let mut reader = BufReader::new(file.take(64 * 1024));
    let mut line = Vec::new();
    let mut lines = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 || line == b"\n" || line == b"\r\n"
        {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        lines.push(escape(text.trim_end_matches(['\r', '\n'])).into_owned());
    }
    Ok(lines)
}
