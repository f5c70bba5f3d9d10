//! `mailspool queue`: list, show, delete, hold, release, retry, summary.
//!
//! Works on any Mail::Spool 0.50 spool as well as ours: nothing is created by reading,
//! names that do not parse are reported on stderr and skipped, and every change takes
//! the node's `.NFSLock` first.

use mailspool::admin::{self, Change, ChangeReport};
use mailspool::{Config, SpoolError, Store, sysexits};
use mailspool_spool::{NodeEntry, escape};

use super::args::{ListArgs, QueueCommand, SelectArgs};
use super::{CliResult, Failure};

pub fn run(config: &Config, command: Option<QueueCommand>) -> CliResult {
    match command.unwrap_or(QueueCommand::List(ListArgs::default())) {
        QueueCommand::List(a) => super::list::list(config, &a),
        QueueCommand::Show(a) => show(config, &a.id, a.to.as_deref()),
        QueueCommand::Delete(a) => change(config, &a, Change::Delete),
        QueueCommand::Hold(a) => change(config, &a, Change::Hold),
        QueueCommand::Release(a) => change(config, &a, Change::Release),
        QueueCommand::Retry(a) => change(config, &a, Change::Retry),
        QueueCommand::Summary { json } => summary(config, json),
        QueueCommand::Run { all } => run_queue(config, all),
    }
}

/// Open the spool for reading. A spool that does not exist is an error, not an empty
/// queue: the usual cause is the wrong spool (another user's default, a typo).
pub(super) fn open(config: &Config) -> Result<std::sync::Arc<dyn Store>, Failure> {
    match mailspool::open_store(config, false) {
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
    mailspool_spool::time::utc_time(unix)
}

pub(super) fn write_failed(e: std::io::Error) -> Failure {
    Failure::new(sysexits::IOERR, format!("cannot write the listing: {e}"))
}

/// The nodes a selector names (see [`mailspool::admin::select`]), as a CLI failure:
/// an unknown id is 66; an id several messages share is 64, listing them.
fn select(
    spool: &dyn mailspool_spool::Store,
    key: &str,
    to: Option<&str>,
) -> Result<Vec<NodeEntry>, Failure> {
    use mailspool::admin::SelectError;
    match admin::select(spool, key, to) {
        Ok(nodes) => Ok(nodes),
        Err(SelectError::Spool(e)) => Err(e.into()),
        Err(e @ (SelectError::NotFound(_) | SelectError::NoSuchRecipient { .. })) => {
            Err(Failure::new(sysexits::NOINPUT, e.to_string()))
        }
        Err(SelectError::Ambiguous { messages, .. }) => {
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
            Err(Failure::new(sysexits::USAGE, text))
        }
    }
}

fn show(config: &Config, id: &str, to: Option<&str>) -> CliResult {
    let spool = open(config)?;
    let nodes = select(spool.as_ref(), id, to)?;
    let now = mailspool_spool::now();
    let detail = admin::detail(spool.as_ref(), &nodes)?;
    for (n, d) in nodes.iter().zip(&detail.nodes) {
        println!("node:      {}", escape(&n.path.display().to_string()));
        println!("id:        {}", n.name.id);
        println!("from:      <{}>", escape(&n.name.from));
        println!("to:        <{}>", escape(&n.name.to));
        println!("tier:      {}", n.tier);
        println!("queued at: {} UTC ({})", fmt_time(n.name.time), n.name.time);
        println!(
            "due at:    {} UTC ({}, {})",
            fmt_time(d.due_at),
            d.due_at,
            super::list::fmt_due(d.due_at, now)
        );
        println!("size:      {} bytes", d.size);
        println!("held:      {}", if n.held { "yes" } else { "no" });
        match &d.lock {
            Some(h) => println!("lock:      held by {h}"),
            None => println!("lock:      none"),
        }
        if n.rescued {
            println!("name:      written by Mail::Spool 0.50's fallback with a raw '-'");
        }
        for a in &d.attempts {
            println!(
                "attempt:   {} UTC {} {}",
                fmt_time(a.time),
                if a.host.is_empty() { "-" } else { &a.host },
                escape(&a.reply)
            );
        }
        match &d.last_error {
            Some(e) => println!("last error: {}", escape(e)),
            None if d.attempts.is_empty() => println!("attempts:  none yet"),
            None => {}
        }
        println!();
    }
    if !detail.headers.is_empty() {
        println!("headers:");
        for h in &detail.headers {
            println!("  {h}");
        }
    }
    Ok(())
}

/// Apply `change` to the nodes each selector names; report per selector; the worst
/// failure sets the exit code (a locked node is 75: try again; an unknown id is 66; an
/// id shared by several messages is 64 and changes nothing).
fn change(config: &Config, args: &SelectArgs, change: Change) -> CliResult {
    let spool = open(config)?;
    let mut code = 0u8;
    let by = match super::privilege::caller() {
        Some(who) => format!("{} (uid {})", who.login, who.uid),
        None => format!("uid {}", rustix::process::getuid().as_raw()),
    };
    for id in &args.ids {
        let nodes = match select(spool.as_ref(), id, args.to.as_deref()) {
            Ok(n) => n,
            Err(f) => {
                eprintln!("{}", f.message);
                code = code.max(f.code);
                continue;
            }
        };
        let report = ChangeReport::apply(spool.as_ref(), change, &nodes, &by);
        for f in &report.failed {
            eprintln!("{}: <{}>: {}", f.id, escape(&f.to), f.error);
            code = code.max(f.code);
        }
        println!(
            "{id}: {} {} of {} node{}",
            change.past_tense(),
            report.changed,
            report.matched,
            if report.matched == 1 { "" } else { "s" }
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
    let s = admin::summary(spool.as_ref(), 0, &mut |p| warn_unparsable(p), &mut |n| {
        warn_rescued(n)
    })?;
    if json {
        let obj = serde_json::json!({
            "nodes": s.nodes,
            "messages": s.messages,
            "held": s.held,
            "unparsable": s.unparsable,
            "tiers": s.tiers.iter().filter(|t| t.queued + t.held > 0).map(|t| serde_json::json!({"tier": t.tier, "queued": t.queued, "held": t.held})).collect::<Vec<_>>(),
            "domains": s.domains,
        });
        println!("{obj}");
        return Ok(());
    }
    println!(
        "{} node{} of {} message{} in {}",
        s.nodes,
        if s.nodes == 1 { "" } else { "s" },
        s.messages,
        if s.messages == 1 { "" } else { "s" },
        spool.location()
    );
    if s.unparsable > 0 {
        println!(
            "{} file(s) with names that do not parse (see warnings)",
            s.unparsable
        );
    }
    println!(
        "\n{:>4} {:>8} {:>6} {:>10}",
        "TIER", "QUEUED", "HELD", "WAIT"
    );
    for t in &s.tiers {
        println!("{:>4} {:>8} {:>6} {:>9}s", t.tier, t.queued, t.held, t.wait);
    }
    if !s.domains.is_empty() {
        println!("\n{:>8}  DOMAIN", "NODES");
        for d in &s.domains {
            println!("{:>8}  {}", d.nodes, escape(&d.domain));
        }
    }
    Ok(())
}

/// `queue run [--all]`: one delivery pass, a line per node, a summary.
pub fn run_queue(config: &Config, all: bool) -> CliResult {
    // A relay password or DKIM key that cannot be read is the configuration's fault.
    config.clone().load_secrets()?;
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
