//! `mailspool queue list` (and `mailq`, `sendmail -bp`): one line per node, oldest first
//! in each tier.
//!
//! Built for a million nodes in a few seconds and well under 200 MB: the spool is read
//! one directory at a time, each node kept only as its file name in one shared buffer
//! plus its time (about 100 bytes a node instead of a parsed entry's ~400), sorted, then

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::Path;

use mailspool::{Config, Store};
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

/// What formatting a node needs; shared by the formatting threads.
struct Context<'a> {
    spool: &'a dyn Store,
    /// Who may own a node file: the spool directory's owner, or (a spool declared
    /// shared) anyone of its group; a file of anyone else was planted.
    owner: (u32, Option<u32>),
    json: bool,
    side: bool,
    now: u64,
    /// Messages are counted by a 64-bit hash of (id, sender): exact enough for a
    /// count, and 16 bytes a message instead of two strings.
    hasher: std::collections::hash_map::RandomState,
}

/// Nodes formatted by one thread at a time: big enough to amortise the thread, small
/// enough that a few of them in flight cost little memory.
const CHUNK: usize = 16 * 1024;

struct Printer<'a, W: Write> {
    cx: Context<'a>,
    out: W,
    shown: usize,
    /// Names that are not messages: symlinks, FIFOs, other users' files.
    untrusted: usize,
    messages: HashSet<u64>,
}

impl<W: Write> Printer<'_, W> {
    /// Sort one directory's nodes and print them. Most of a big listing's time is the
    /// stat of each node and the formatting, so every core does it, in chunks, and the
    /// chunks are written in order.
    fn flush_batch(&mut self, batch: &mut Batch) -> Result<(), Failure> {
        if batch.nodes.is_empty() {
            return Ok(());
        }
        batch.sort();
        let dir = rustix::fs::open(
            &batch.dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let cx = &self.cx;
        let batch = &*batch;
        for round in batch.nodes.chunks(CHUNK * threads) {
            let done: Vec<(Vec<u8>, Vec<u64>, usize)> = std::thread::scope(|s| {
                let workers: Vec<_> = round
                    .chunks(CHUNK)
                    .map(|chunk| s.spawn(|| cx.format(batch, dir.as_ref(), chunk)))
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("a formatting thread panicked"))
                    .collect()
            });
            for (text, hashes, untrusted) in done {
                self.untrusted += untrusted;
                if self.shown == 0 && !cx.json && !hashes.is_empty() {
                    writeln!(
                        self.out,
                        "{:<26} {:>4} {:<19} {:<8} {:>9}  SENDER -> RECIPIENT",
                        "ID", "TIER", "QUEUED (UTC)", "DUE", "SIZE"
                    )
                    .map_err(write_failed)?;
                }
                self.shown += hashes.len();
                self.messages.extend(hashes);
                self.out.write_all(&text).map_err(write_failed)?;
            }
        }
        Ok(())
    }
}

impl Context<'_> {
    /// Format a chunk of nodes: their lines, a hash of each one's message, and how
    /// many names were not messages (left out).
    fn format(
        &self,
        batch: &Batch,
        dir: Option<&rustix::fd::OwnedFd>,
        chunk: &[(u64, u32, u32)],
    ) -> (Vec<u8>, Vec<u64>, usize) {
        let mut text = Vec::with_capacity(chunk.len() * 128);
        let mut hashes = Vec::with_capacity(chunk.len());
        let mut untrusted = 0;
        for node in chunk {
            let file_name = batch.name(node);
            let (Parsed::Node(n) | Parsed::Rescued(n)) = NodeName::parse(file_name) else {
                continue;
            };
            let (size, ino) = match dir.map(|d| node_stat(d, file_name, self.owner)) {
                Some(Stat::Node(size, ino)) => (size, Some(ino)),
                // Moved on (delivered, or to its next tier) since the directory was read:
                // it is listed where it is now, or gone.
                Some(Stat::Gone) => continue,
                Some(Stat::Untrusted) => {
                    untrusted += 1;
                    continue;
                }
                None => (0, None),
            };
            hashes.push(self.hasher.hash_one((&n.id, &n.from)));
            // Writing into a Vec cannot fail.
            let _ = self.line(&mut text, batch, &n, size, ino);
        }
        (text, hashes, untrusted)
    }

    fn line(
        &self,
        out: &mut Vec<u8>,
        batch: &Batch,
        n: &NodeName,
        size: u64,
        ino: Option<u64>,
    ) -> std::io::Result<()> {
        // What other messages of the same name (0.50 reuses ids) left is not this one's.
        let last_error = match (self.side, ino) {
            (false, _) => None,
            (true, Some(ino)) => mailspool_spool::side::last_failure(self.spool.attempts(n), ino),
            (true, None) => self.spool.last_error(n),
        };
        self.write_line(out, (batch.tier, batch.held), n, size, last_error)
    }

    /// One node's line (or JSON object), for a node in `tier` (held or not).
    fn write_line(
        &self,
        out: &mut Vec<u8>,
        (tier, held): (usize, bool),
        n: &NodeName,
        size: u64,
        last_error: Option<String>,
    ) -> std::io::Result<()> {
        let due = n.time.saturating_add(self.spool.config().period(tier));
        if self.json {
            let obj = serde_json::json!({
                "id": n.id,
                "to": n.to,
                "from": n.from,
                "tier": tier,
                "queued_at": n.time,
                "due_at": due,
                "size": size,
                "held": held,
                "last_error": last_error,
            });
            return writeln!(out, "{obj}");
        }
        let due = if held {
            "held".to_owned()
        } else {
            fmt_due(due, self.now)
        };
        writeln!(
            out,
            "{:<26} {:>4} {:<19} {:<8} {:>9}  <{}> -> <{}>",
            n.id,
            tier,
            queued_at(n.time),
            due,
            size,
            escape(&n.from),
            escape(&n.to)
        )?;
        if let Some(e) = last_error {
            writeln!(out, "{:>30}({})", "", escape(&e))?;
        }
        Ok(())
    }
}

/// [`fmt_time`], remembered for the last time seen on this thread: a busy queue has
/// thousands of nodes queued in the same second, and a million-line listing spent a
/// fifth of its time formatting the same dates again.
fn queued_at(unix: u64) -> std::rc::Rc<str> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, std::rc::Rc<str>)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((t, s)) if *t == unix => s.clone(),
            _ => {
                let s: std::rc::Rc<str> = fmt_time(unix).into();
                *last = Some((unix, s.clone()));
                s
            }
        }
    })
}

/// What a node's name holds, looked up relative to its directory and never through a
/// symlink.
enum Stat {
    /// A regular file of the spool's owner: a message of this size, this inode.
    Node(u64, u64),
    /// Nothing any more.
    Gone,
    /// A symlink, a FIFO, another user's file: never a message (the daemon and `fsck`
    /// refuse it too).
    Untrusted,
}

fn node_stat(dir: &rustix::fd::OwnedFd, file_name: &str, (uid, gid): (u32, Option<u32>)) -> Stat {
    match rustix::fs::statat(dir, file_name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode)
                == rustix::fs::FileType::RegularFile
                && (st.st_uid == uid || gid == Some(st.st_gid)) =>
        {
            Stat::Node(st.st_size as u64, st.st_ino)
        }
        Ok(_) => Stat::Untrusted,
        Err(_) => Stat::Gone,
    }
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
    if spool.as_files().is_none() {
        return list_rows(spool.as_ref(), args);
    }
    let (filter, now) = (filter(args), mailspool_spool::now());
    let owner = spool.as_files().map_or((0, None), |s| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(s.dir()).map_or((0, None), |m| {
            (m.uid(), config.spool.shared.then_some(m.gid()))
        })
    });
    let stdout = std::io::stdout();
    let mut printer = Printer {
        cx: Context {
            spool: spool.as_ref(),
            owner,
            json: args.json,
            side: spool.has_side_data(),
            now: mailspool_spool::now(),
            hasher: Default::default(),
        },
        out: BufWriter::with_capacity(256 * 1024, stdout.lock()),
        shown: 0,
        untrusted: 0,
        messages: HashSet::new(),
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
        if !filter.matches(&n, now) {
            return ControlFlow::Continue(());
        }
        if n.rescued {
            warn_rescued(&n);
        }
        if (n.tier, n.held) != (batch.tier, batch.held) || batch.nodes.is_empty() {
            if let Err(e) = printer.flush_batch(&mut batch) {
                failed = Some(e);
                return ControlFlow::Break(());
            }
            batch.names.clear();
            batch.nodes.clear();
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
    let untrusted = printer.untrusted;
    let out = &mut printer.out;
    if untrusted > 0 {
        eprintln!(
            "mailspool: {untrusted} name{} in the tiers {} not a message (a symlink, a FIFO or \
             another user's file), left out and never delivered: `mailspool fsck --repair` \
             sets {} aside",
            if untrusted == 1 { "" } else { "s" },
            if untrusted == 1 { "is" } else { "are" },
            if untrusted == 1 { "it" } else { "them" },
        );
    }
    if !args.json {
        footer(out, shown, messages)?;
        // What was set aside is not queued, but must not go unseen either.
        let quarantined = spool
            .as_files()
            .and_then(|s| s.quarantined().ok())
            .map_or(0, |q| q.len());
        if quarantined > 0 {
            writeln!(
                out,
                "-- and {quarantined} file{} in corrupt/, never delivered: `mailspool fsck` lists {}",
                if quarantined == 1 { "" } else { "s" },
                if quarantined == 1 { "it" } else { "them" }
            )
            .map_err(write_failed)?;
        }
    }
    out.flush().map_err(write_failed)
}

/// A listing from a back end that is not a directory (a database): one streamed query
/// gives each node with its size and last failure, in tier order.
fn list_rows(spool: &dyn Store, args: &ListArgs) -> CliResult {
    let (filter, now) = (filter(args), mailspool_spool::now());
    let cx = Context {
        spool,
        owner: (0, None),
        json: args.json,
        side: true,
        now: mailspool_spool::now(),
        hasher: Default::default(),
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    // Message rows, counted once at the end: a sort of 8-byte keys is several times
    // cheaper than a hash insert per node (a million of them).
    let (mut shown, mut messages) = (0usize, Vec::new());
    let mut line = Vec::with_capacity(256);
    let mut failed = None;
    spool.visit_listing(&mut |l| {
        let n = &l.node;
        if !filter.matches(n, now) {
            return ControlFlow::Continue(());
        }
        line.clear();
        if shown == 0 && !cx.json {
            let _ = writeln!(
                line,
                "{:<26} {:>4} {:<19} {:<8} {:>9}  SENDER -> RECIPIENT",
                "ID", "TIER", "QUEUED (UTC)", "DUE", "SIZE"
            );
        }
        let _ = cx.write_line(&mut line, (n.tier, n.held), &n.name, l.size, l.last_error);
        shown += 1;
        messages.push(n.ino);
        if let Err(e) = out.write_all(&line) {
            failed = Some(write_failed(e));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if !args.json {
        messages.sort_unstable();
        messages.dedup();
        footer(&mut out, shown, messages.len())?;
    }
    out.flush().map_err(write_failed)
}

/// What the options select (the API's filter: one meaning everywhere).
fn filter(args: &ListArgs) -> mailspool::admin::Filter {
    mailspool::admin::Filter {
        tier: args.tier,
        domain: args.domain.clone(),
        sender: args.sender.clone(),
        recipient: args.to.clone(),
        older_than: args.older_than,
        held: args.held.then_some(true),
        id: None,
    }
}

/// The listing's last line: how many nodes of how many messages, or that there are none.
fn footer(out: &mut impl Write, shown: usize, messages: usize) -> Result<(), Failure> {
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
    r.map_err(write_failed)
}
