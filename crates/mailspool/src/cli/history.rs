//! `mailspool log` (what happened to a message or a recipient, also after delivery)
//! and `mailspool suppress` (the suppression list).

use std::io::{BufRead, Write};

use mailspool::{Config, sysexits};
use mailspool_events::{Event, Kind, Query, Scope, Suppression};
use mailspool_spool::{escape, now};

use super::args::SuppressCommand;
use super::queue::{fmt_time, open};
use super::{CliResult, Failure};

/// Most events `log` prints (the newest are dropped past it, and it says so).
const MAX_EVENTS: usize = 100_000;

fn write_failed(e: std::io::Error) -> Failure {
    Failure::new(sysexits::IOERR, format!("cannot write: {e}"))
}

/// One event as a line for people: time, kind, recipient, then what it says.
fn human(e: &Event) -> String {
    let mut line = format!(
        "{} {:<10} {} <{}>",
        fmt_time(e.time),
        e.kind.as_str(),
        e.message,
        escape(&e.recipient)
    );
    let mut add = |k: &str, v: &str| line.push_str(&format!(" {k}={}", escape(v)));
    for (k, v) in [
        ("source", e.source.as_deref()),
        ("by", e.submitter.as_deref().or(e.by.as_deref())),
        ("mx", e.mx.as_deref()),
        ("tls", e.tls.as_ref().map(|t| t.version.as_str())),
        ("policy", e.tls_policy.as_deref()),
        ("class", e.class.map(|c| c.as_str())),
        ("remote_id", e.remote_id.as_deref()),
    ] {
        if let Some(v) = v {
            add(k, v);
        }
    }
    if let Some(t) = e.next_attempt {
        add("next", &fmt_time(t));
    }
    if let Some(r) = &e.reply {
        line.push_str(&format!(" reply=\"{}\"", escape(r).replace('"', "\\\"")));
    }
    line
}

pub fn log(
    config: &Config,
    key: &str,
    json: bool,
    since: Option<u64>,
    kinds: &[String],
) -> CliResult {
    let kinds = kinds
        .iter()
        .map(|k| {
            Kind::parse(k.trim()).ok_or_else(|| {
                Failure::new(
                    sysexits::USAGE,
                    format!(
                        "no such event type {:?}; use {}",
                        escape(k),
                        Kind::ALL.map(Kind::as_str).join(", ")
                    ),
                )
            })
        })
        .collect::<Result<Vec<Kind>, Failure>>()?;
    let spool = open(config)?;
    let base = Query {
        since: since.map(|age| now().saturating_sub(age)),
        kinds,
        limit: mailspool_events::MAX_PAGE,
        ..Default::default()
    };
    // A Message-ID names the messages that carried it; an event that does not repeat
    // the header (an SMTP intake's `accepted`) is found by the message's id.
    let keys: Vec<String> = match mailspool_events::is_message_id(key) {
        true => {
            let mut ids = Vec::new();
            each_event(
                &*spool,
                Query {
                    key: Some(key.to_owned()),
                    kinds: Vec::new(),
                    ..base.clone()
                },
                &mut |e| {
                    if !ids.contains(&e.message) && ids.len() < 100 {
                        ids.push(e.message.clone());
                    }
                    true
                },
            )?;
            ids
        }
        false => vec![key.to_owned()],
    };
    let mut found = 0usize;
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut failed = None;
    for k in keys {
        let q = Query {
            key: Some(k),
            ..base.clone()
        };
        each_event(&*spool, q, &mut |e| {
            found += 1;
            if found > MAX_EVENTS {
                eprintln!("more than {MAX_EVENTS} events; narrow it with --since or --type");
                return false;
            }
            let line = match json {
                true => e.to_line().trim_end().to_owned(),
                false => human(e),
            };
            if let Err(err) = writeln!(out, "{line}") {
                failed = Some(write_failed(err));
                return false;
            }
            true
        })?;
    }
    if let Some(f) = failed {
        return Err(f);
    }
    if found == 0 {
        if !json {
            eprintln!(
                "no events for {} in {} (kept {} days; [events] enabled = {})",
                escape(key),
                config.spool_location(),
                config.spool.event_retention_days,
                config.spool.events
            );
        }
        return Err(Failure::new(1, ""));
    }
    Ok(())
}

/// Call `f` on every event `q` finds, page by page, until it says stop.
fn each_event(
    spool: &dyn mailspool::Store,
    mut q: Query,
    f: &mut dyn FnMut(&Event) -> bool,
) -> Result<(), Failure> {
    loop {
        let page = spool.read_events(&q)?;
        for e in &page.events {
            if !f(e) {
                return Ok(());
            }
        }
        if !page.more {
            return Ok(());
        }
        q.cursor = page.next;
    }
}

/// An address as the list keeps it, or a usage error.
fn checked_address(text: &str) -> Result<String, Failure> {
    mailspool_message::check_address(text.trim().trim_start_matches('<').trim_end_matches('>'))
        .map(|a| a.to_lowercase())
        .map_err(|e| Failure::new(sysexits::DATAERR, format!("{}: {}", escape(text), e.reason)))
}

pub fn suppress(config: &Config, command: SuppressCommand) -> CliResult {
    // Adding to the list of a spool nothing was queued in yet makes the spool.
    let spool = match command {
        SuppressCommand::Add { .. } | SuppressCommand::Import { .. } => {
            mailspool::open_store(config, true)?
        }
        _ => open(config)?,
    };
    let who = match super::privilege::caller() {
        Some(s) => format!("{} (uid {})", s.login, s.uid),
        None => format!("uid {}", rustix::process::getuid().as_raw()),
    };
    match command {
        SuppressCommand::List { json } => {
            let out = std::io::stdout();
            let mut out = out.lock();
            let t = now();
            for s in spool.suppressions()? {
                let line = match json {
                    true => serde_json::to_string(&s).expect("an entry serializes"),
                    false => format!(
                        "{} {} {} {}{}{}",
                        escape(&s.address),
                        if s.domain.is_empty() { "*" } else { &s.domain },
                        escape(&s.reason),
                        fmt_time(s.time),
                        match s.expires {
                            Some(e) if e <= t => format!(" expired {}", fmt_time(e)),
                            Some(e) => format!(" until {}", fmt_time(e)),
                            None => String::new(),
                        },
                        s.detail
                            .as_deref()
                            .map(|d| format!(" \"{}\"", escape(d)))
                            .unwrap_or_default(),
                    ),
                };
                writeln!(out, "{line}").map_err(write_failed)?;
            }
            Ok(())
        }
        SuppressCommand::Add {
            address,
            domain,
            reason,
            expires,
        } => {
            let address = checked_address(&address)?;
            let scope = Scope::parse(domain.as_deref().unwrap_or(""));
            let mut s = Suppression::new(&address, &scope, &reason, now());
            s.expires = expires.map(|e| now().saturating_add(e));
            s.source = Some(who.clone());
            spool.suppress(&s)?;
            record(&*spool, &s, &who);
            println!("suppressed {} ({})", escape(&address), scope_name(&scope));
            Ok(())
        }
        SuppressCommand::Remove { address, domain } => {
            let address = checked_address(&address)?;
            let scope = Scope::parse(domain.as_deref().unwrap_or(""));
            match spool.unsuppress(&address, scope.as_str())? {
                true => {
                    tracing::info!(to = %escape(&address), by = %who, "removed from the suppression list");
                    println!("removed {} ({})", escape(&address), scope_name(&scope));
                    Ok(())
                }
                false => Err(Failure::new(
                    1,
                    format!(
                        "{} is not suppressed ({})",
                        escape(&address),
                        scope_name(&scope)
                    ),
                )),
            }
        }
        SuppressCommand::Import { file, reason } => {
            let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                let f = std::fs::File::open(&file).map_err(|e| {
                    Failure::new(
                        sysexits::NOINPUT,
                        format!("cannot open {}: {e}", file.display()),
                    )
                })?;
                Box::new(std::io::BufReader::new(f))
            };
            let (mut added, mut bad) = (0usize, 0usize);
            for (n, line) in input.lines().enumerate() {
                let line = line.map_err(|e| Failure::new(sysexits::IOERR, e.to_string()))?;
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut fields = line.split(',').map(str::trim);
                let address = fields.next().unwrap_or_default();
                let domain = fields.next().unwrap_or_default();
                let why = fields.next().filter(|r| !r.is_empty()).unwrap_or(&reason);
                match checked_address(address) {
                    Ok(a) => {
                        let mut s = Suppression::new(&a, &Scope::parse(domain), why, now());
                        s.source = Some(format!("import by {who}"));
                        spool.suppress(&s)?;
                        added += 1;
                    }
                    Err(f) => {
                        eprintln!("line {}: {}", n + 1, f.message);
                        bad += 1;
                    }
                }
            }
            println!(
                "imported {added} entries{}",
                if bad > 0 {
                    format!(", {bad} lines refused")
                } else {
                    String::new()
                }
            );
            match bad {
                0 => Ok(()),
                _ => Err(Failure::new(sysexits::DATAERR, "")),
            }
        }
    }
}

fn scope_name(scope: &Scope) -> String {
    match scope {
        Scope::Global => "every sender".into(),
        Scope::Domain(d) => format!("senders at {d}"),
    }
}

/// A `suppressed` event for an entry added by hand (no message: its id is empty).
fn record(spool: &dyn mailspool::Store, s: &Suppression, who: &str) {
    let mut e = Event::new(Kind::Suppressed, "", "", &s.address);
    e.by = Some(who.to_owned());
    e.reply = Some(format!("added to the suppression list: {}", s.reason));
    let _ = mailspool_spool::store::emit(spool, &[e], false);
}
