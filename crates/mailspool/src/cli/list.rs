//! `mailspool queue list` (and `mailq`, `sendmail -bp`): one line per node, oldest first
//! in each tier.
//!
//! Built for a million nodes in a few seconds and well under 200 MB: the spool is read
//! one directory at a time, each node kept only as its file name in one shared buffer
//! plus its time (about 100 bytes a node instead of a parsed entry's ~400), sorted, then
//! parsed again as it is printed. A `--domain` or `--tier` filter drops a node before
//! anything is kept or any file is looked at: the name is the index.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::Path;

use mailspool::{Config, Spool};
use mailspool_spool::{Found, NodeEntry, NodeName, Parsed, escape};

use super::args::ListArgs;
use super::queue::{fmt_time, open, warn_rescued, warn_unparsable, write_failed};
use super::{CliResult, Failure};

/// The nodes of one directory, compactly.
#[derive(Default)]
struct Batch {
    tier: usize,
    held: bool,
    dir: std::path::PathBuf,
    names: String,
    /// (queued at, offset of the name in `names`, its length)
    nodes: Vec<(u64, u32, u32)>,
}

impl Batch {
    fn push(&mut self, n: &NodeEntry) {
        let start = self.names.len() as u32;
        self.names.push_str(&n.file_name);
        self.nodes
            .push((n.name.time, start, n.file_name.len() as u32));
    }

    fn name(&self, &(_, start, len): &(u64, u32, u32)) -> &str {
        &self.names[start as usize..(start + len) as usize]
    }

    fn sort(&mut self) {
        let mut nodes = std::mem::take(&mut self.nodes);
        nodes.sort_unstable_by(|a, b| (a.0, self.name(a)).cmp(&(b.0, self.name(b))));
        self.nodes = nodes;
    }
}

struct Printer<'a, W: Write> {
    spool: &'a Spool,
    args: &'a ListArgs,
    out: W,
    side: bool,
    now: u64,
    shown: usize,
    /// Messages counted by a 64-bit hash of (id, sender): exact enough for a count,
    /// and 16 bytes a message instead of two strings.
    messages: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl<W: Write> Printer<'_, W> {
    fn flush_batch(&mut self, batch: &mut Batch) -> Result<(), Failure> {
        batch.sort();
        for node in &batch.nodes {
            let file_name = batch.name(node);
            let (Parsed::Node(name) | Parsed::Rescued(name)) = NodeName::parse(file_name) else {
                continue;
            };
            self.print(batch, file_name, &name)?;
        }
        batch.names.clear();
        batch.nodes.clear();
        Ok(())
    }

    fn print(&mut self, batch: &Batch, file_name: &str, n: &NodeName) -> Result<(), Failure> {
        self.shown += 1;
        let mut h = self.hasher.build_hasher();
        (&n.id, &n.from).hash(&mut h);
        self.messages.insert(h.finish());
        let last_error = if self.side {
            self.spool.last_error(n)
        } else {
            None
        };
        let size = node_size(&batch.dir, file_name);
        let due = n.time.saturating_add(self.spool.config().period(batch.tier));
        let r = if self.args.json {
            let obj = serde_json::json!({
                "id": n.id,
                "to": n.to,
                "from": n.from,
                "tier": batch.tier,
                "queued_at": n.time,
                "due_at": due,
                "size": size,
                "held": batch.held,
                "last_error": last_error,
            });
            writeln!(self.out, "{obj}")
        } else {
            if self.shown == 1 {
                let _ = writeln!(
                    self.out,
                    "{:<26} {:>4} {:<19} {:<8} {:>9}  SENDER -> RECIPIENT",
                    "ID", "TIER", "QUEUED (UTC)", "DUE", "SIZE"
                );
            }
            let due = if batch.held {
                "held".to_owned()
            } else {
                fmt_due(due, self.now)
            };
            let r = writeln!(
                self.out,
                "{:<26} {:>4} {:<19} {:<8} {:>9}  <{}> -> <{}>",
                n.id,
                batch.tier,
                fmt_time(n.time),
                due,
                size,
                escape(&n.from),
                escape(&n.to)
            );
            match last_error {
                Some(e) if r.is_ok() => writeln!(self.out, "{:>30}({e})", ""),
                _ => r,
            }
        };
        r.map_err(write_failed)
    }
}

/// The node's size, without following a symlink and without a path built per node
/// beyond the join (a million stats are most of a big listing's time).
fn node_size(dir: &Path, file_name: &str) -> u64 {
    std::fs::symlink_metadata(dir.join(file_name)).map_or(0, |m| m.len())
}

pub(super) fn fmt_due(due: u64, now: u64) -> String {
    if due <= now {
        return "now".to_owned();
    }
    match due - now {
        left @ 0..=59 => format!("in {left}s"),
        left @ 60..=3599 => format!("in {}m", left / 60),
        left => format!("in {}h{:02}m", left / 3600, left / 60 % 60),
    }
}

pub fn list(config: &Config, args: &ListArgs) -> CliResult {
    let spool = open(config)?;
    let domain = args.domain.as_deref().map(str::to_ascii_lowercase);
    let stdout = std::io::stdout();
    let mut printer = Printer {
        spool: &spool,
        args,
        out: BufWriter::with_capacity(256 * 1024, stdout.lock()),
        side: spool.has_side_data(),
        now: mailspool_spool::now(),
        shown: 0,
        messages: HashSet::new(),
        hasher: Default::default(),
    };
    let mut batch = Batch::default();
    let mut failed = None;
    spool.visit_all(&mut |found| {
        let n = match found {
            Found::Node(n) => n,
            Found::Unparsable(p) => {
                warn_unparsable(&p);
                return ControlFlow::Continue(());
            }
        };
        if args.tier.is_some_and(|t| t != n.tier) {
            return ControlFlow::Continue(());
        }
        if let Some(d) = &domain {
            let at = n.name.to.rsplit_once('@').map_or("", |(_, d)| d);
            if !at.eq_ignore_ascii_case(d) {
                return ControlFlow::Continue(());
            }
        }
        if n.rescued {
            warn_rescued(&n);
        }
        if (n.tier, n.held) != (batch.tier, batch.held) || batch.nodes.is_empty() {
            if let Err(e) = printer.flush_batch(&mut batch) {
                failed = Some(e);
                return ControlFlow::Break(());
            }
            batch.tier = n.tier;
            batch.held = n.held;
            batch.dir = n.path.parent().map(Path::to_path_buf).unwrap_or_default();
        }
        batch.push(&n);
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    printer.flush_batch(&mut batch)?;
    let (shown, messages) = (printer.shown, printer.messages.len());
    let out = &mut printer.out;
    if !args.json {
        let r = if shown == 0 {
            writeln!(out, "Mail queue is empty")
        } else {
            writeln!(
                out,
                "-- {shown} node{} of {messages} message{}",
                if shown == 1 { "" } else { "s" },
                if messages == 1 { "" } else { "s" }
            )
        };
        r.map_err(write_failed)?;
    }
    out.flush().map_err(write_failed)
}
