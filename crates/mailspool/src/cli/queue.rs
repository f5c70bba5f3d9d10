//! `mailspool queue`: list, show, delete, hold, release, retry, summary.
//!
//! Works on any Mail::Spool 0.50 spool as well as ours: nothing is created by reading,
//! names that do not parse are reported on stderr and skipped, and every change takes
//! the node's `.NFSLock` first.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use mailspool::{Config, Spool, SpoolError, sysexits};
use mailspool_spool::{NodeEntry, escape, lock, time::civil_from_days};

use super::args::{ListArgs, QueueCommand, SelectArgs};
use super::{CliResult, Failure};

pub fn run(config: &Config, command: Option<QueueCommand>) -> CliResult {
    match command.unwrap_or(QueueCommand::List(ListArgs::default())) {
        QueueCommand::List(a) => super::list::list(config, &a),
        QueueCommand::Show(a) => show(config, &a.id, a.to.as_deref()),
        QueueCommand::Delete(a) => change(config, &a, "deleted", |s, n| s.delete(n)),
        QueueCommand::Hold(a) => change(config, &a, "held", |s, n| s.hold(n).map(drop)),
        QueueCommand::Release(a) => change(config, &a, "released", |s, n| s.release(n).map(drop)),
        QueueCommand::Retry(a) => {
            change(config, &a, "made due now", |s, n| s.retry_now(n).map(drop))
        }
        QueueCommand::Summary { json } => summary(config, json),
        QueueCommand::Run { all } => run_queue(config, all),
    }
}

/// Open the spool for reading. A spool that does not exist is an error, not an empty
/// queue: the usual cause is the wrong spool (another user's default, a typo).
pub(super) fn open(config: &Config) -> Result<Spool, Failure> {
    match Spool::open(&config.spool_dir, config.spool.clone()) {
        Ok(s) => Ok(s),
        Err(e @ SpoolError::Missing(_)) => Err(Failure::new(
            sysexits::NOINPUT,
            format!(
                "{e}: nothing was ever queued there (is it the right spool? see --spool, \
                 $MAILSPOOL_SPOOL, dequeue_dir)"
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn warn_unparsable(path: &std::path::Path) {
    eprintln!(
        "warning: {} is not a node name Mail::Spool can read; skipped",
        escape(&path.display().to_string())
    );
}

pub(super) fn warn_rescued(n: &NodeEntry) {
    eprintln!(
        "warning: {} was written by Mail::Spool 0.50's fallback with a raw '-'; read as to <{}> from <{}>",
        escape(&n.path.display().to_string()),
        escape(&n.name.to),
        escape(&n.name.from)
    );
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn fmt_time(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    let s = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

pub(super) fn write_failed(e: std::io::Error) -> Failure {
    Failure::new(sysexits::IOERR, format!("cannot write the listing: {e}"))
}

/// The nodes a selector names: a node's file name (that node), or a message id (its
/// nodes; with `to`, only that recipient's). An id that several messages share (0.50
/// reused ids) selects nothing: the messages are listed and the caller must be exact.
fn select(spool: &Spool, key: &str, to: Option<&str>) -> Result<Vec<NodeEntry>, Failure> {
    let mut nodes = spool.find(key)?;
    let by_name = nodes.iter().any(|n| n.file_name == key);
    if by_name {
        nodes.retain(|n| n.file_name == key);
    }
    if let Some(to) = to {
        let want = mailspool_message::address::dedup_key(to.trim_matches(['<', '>']));
        nodes.retain(|n| mailspool_message::address::dedup_key(&n.name.to) == want);
        if nodes.is_empty() {
            return Err(Failure::new(
                sysexits::NOINPUT,
                format!("no queued node of {key:?} is for <{}>", escape(to)),
            ));
        }
    }
    let messages = spool.group_messages(nodes.clone());
    if messages.len() > 1 {
        let mut text = format!(
            "{} messages share the id {key:?} (Mail::Spool 0.50 reused ids); nothing was done.\n\
             Name one: add --to ADDR, or give a node's file name:",
            messages.len()
        );
        for (i, m) in messages.iter().enumerate() {
            for n in m {
                text.push_str(&format!(
                    "\n  message {}: {}  <{}> -> <{}>",
                    i + 1,
                    escape(&n.file_name),
                    escape(&n.name.from),
                    escape(&n.name.to)
                ));
            }
        }
        return Err(Failure::new(sysexits::USAGE, text));
    }
    Ok(nodes)
}

fn show(config: &Config, id: &str, to: Option<&str>) -> CliResult {
    let spool = open(config)?;
    let nodes = select(&spool, id, to)?;
    let now = mailspool_spool::now();
    let policy = spool.config().lock_policy();
    for n in &nodes {
        let due = spool.due_at(n);
        println!("node:      {}", escape(&n.path.display().to_string()));
        println!("id:        {}", n.name.id);
        println!("from:      <{}>", escape(&n.name.from));
        println!("to:        <{}>", escape(&n.name.to));
        println!("tier:      {}", n.tier);
        println!("queued at: {} UTC ({})", fmt_time(n.name.time), n.name.time);
        println!(
            "due at:    {} UTC ({}, {})",
            fmt_time(due),
            due,
            super::list::fmt_due(due, now)
        );
        println!(
            "size:      {} bytes",
            std::fs::symlink_metadata(&n.path).map_or(0, |m| m.len())
        );
        println!("held:      {}", if n.held { "yes" } else { "no" });
        match lock::holder(&n.path, &policy) {
            Some(h) => println!("lock:      held by {h}"),
            None => println!("lock:      none"),
        }
        if n.rescued {
            println!("name:      written by Mail::Spool 0.50's fallback with a raw '-'");
        }
        let attempts = spool.attempts(&n.name);
        for a in &attempts {
            println!(
                "attempt:   {} UTC {} {}",
                fmt_time(a.time),
                if a.host.is_empty() { "-" } else { &a.host },
                a.reply
            );
        }
        match spool.last_error(&n.name) {
            Some(e) => println!("last error: {e}"),
            None if attempts.is_empty() => println!("attempts:  none yet"),
            None => {}
        }
        println!();
    }
    if let Some(first) = nodes.first() {
        println!("headers:");
        print_headers(&spool, first)?;
    }
    Ok(())
}

/// Print the header block of a node (at most 64 KiB of it), opened as a node must be:
/// a symlink or a FIFO planted in a tier is refused, never followed or waited on.
fn print_headers(spool: &Spool, n: &NodeEntry) -> CliResult {
    use std::io::{BufRead, BufReader, Read};
    let file = spool.open_node(n)?.file;
    let mut reader = BufReader::new(file.take(64 * 1024));
    let mut line = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 || line == b"\n" || line == b"\r\n"
        {
            break;
        }
        // Control characters other than the line end are shown escaped.
        let text = String::from_utf8_lossy(&line);
        let _ = out.write_all(b"  ");
        let _ = out.write_all(escape(text.trim_end_matches(['\r', '\n'])).as_bytes());
        let _ = out.write_all(b"\n");
    }
    Ok(())
}

/// Apply `op` to the nodes each selector names (see [`select`]); report per selector;
/// the worst failure sets the exit code (a locked node is 75: try again; an unknown id
/// is 66; an id shared by several messages is 64 and changes nothing).
fn change(
    config: &Config,
    args: &SelectArgs,
    verb: &str,
    op: impl Fn(&Spool, &NodeEntry) -> Result<(), SpoolError>,
) -> CliResult {
    let spool = open(config)?;
    let mut code = 0u8;
    for id in &args.ids {
        let nodes = match select(&spool, id, args.to.as_deref()) {
            Ok(n) => n,
            Err(f) => {
                eprintln!("{}", f.message);
                code = code.max(f.code);
                continue;
            }
        };
        let mut done = 0;
        for n in &nodes {
            match op(&spool, n) {
                Ok(()) => {
                    done += 1;
                    tracing::info!(id = %n.name.id, to = %escape(&n.name.to), "{verb}");
                }
                Err(e) => {
                    eprintln!("{}: <{}>: {e}", n.name.id, escape(&n.name.to));
                    code = code.max(mailspool::send::spool_exit_code(&e));
                }
            }
        }
        println!(
            "{id}: {verb} {done} of {} node{}",
            nodes.len(),
            if nodes.len() == 1 { "" } else { "s" }
        );
    }
    if code == 0 {
        Ok(())
    } else {
        Err(Failure::new(code, ""))
    }
}

fn summary(config: &Config, json: bool) -> CliResult {
    let spool = open(config)?;
    // Walked, not collected: counts are all it keeps (a million nodes in a few MB).
    let mut tiers: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut domains: BTreeMap<String, usize> = BTreeMap::new();
    let hasher = std::collections::hash_map::RandomState::new();
    let mut messages = HashSet::new();
    let (mut nodes, mut held, mut unparsable) = (0usize, 0usize, 0usize);
    spool.visit_all(&mut |found| {
        match found {
            mailspool_spool::Found::Node(n) => {
                if n.rescued {
                    warn_rescued(&n);
                }
                nodes += 1;
                let t = tiers.entry(n.tier).or_default();
                if n.held {
                    t.1 += 1;
                    held += 1;
                } else {
                    t.0 += 1;
                }
                *domains.entry(n.domain()).or_default() += 1;
                messages.insert(std::hash::BuildHasher::hash_one(
                    &hasher,
                    (&n.name.id, &n.name.from),
                ));
            }
            mailspool_spool::Found::Unparsable(p) => {
                warn_unparsable(&p);
                unparsable += 1;
            }
        }
        std::ops::ControlFlow::Continue(())
    })?;
    let mut by_domain: Vec<_> = domains.into_iter().collect();
    by_domain.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if json {
        let obj = serde_json::json!({
            "nodes": nodes,
            "messages": messages.len(),
            "held": held,
            "unparsable": unparsable,
            "tiers": tiers.iter().map(|(t, (q, h))| serde_json::json!({"tier": t, "queued": q, "held": h})).collect::<Vec<_>>(),
            "domains": by_domain.iter().map(|(d, c)| serde_json::json!({"domain": d, "nodes": c})).collect::<Vec<_>>(),
        });
        println!("{obj}");
        return Ok(());
    }
    println!(
        "{} node{} of {} message{} in {}",
        nodes,
        if nodes == 1 { "" } else { "s" },
        messages.len(),
        if messages.len() == 1 { "" } else { "s" },
        spool.dir().display()
    );
    if unparsable > 0 {
        println!("{unparsable} file(s) with names that do not parse (see warnings)");
    }
    println!(
        "\n{:>4} {:>8} {:>6} {:>10}",
        "TIER", "QUEUED", "HELD", "WAIT"
    );
    for tier in 0..spool.config().tiers() {
        let (q, h) = tiers.get(&tier).copied().unwrap_or_default();
        println!(
            "{tier:>4} {q:>8} {h:>6} {:>9}s",
            spool.config().period(tier)
        );
    }
    if !by_domain.is_empty() {
        println!("\n{:>8}  DOMAIN", "NODES");
        for (d, c) in &by_domain {
            println!("{c:>8}  {d}");
        }
    }
    Ok(())
}

/// `queue run [--all]`: one delivery pass, a line per node, a summary.
pub fn run_queue(config: &Config, all: bool) -> CliResult {
    let ms = mailspool::Mailspool::open(config.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(sysexits::SOFTWARE, e.to_string()))?;
    let report = rt
        .block_on(ms.run_queue(all))
        .map_err(|e| Failure::new(sysexits::TEMPFAIL, e))?;
    use mailspool::Outcome;
    for r in &report.results {
        println!("{} <{}>: {:?}: {}", r.id, r.to, r.outcome, r.reply);
    }
    println!(
        "delivered {}, deferred {}, failed {}, skipped {}",
        report.count(Outcome::Delivered),
        report.count(Outcome::Deferred),
        report.count(Outcome::Failed),
        report.count(Outcome::Skipped)
    );
    Ok(())
}
