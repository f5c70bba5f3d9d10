//! `mailspool db migrate` (the PostgreSQL spool's schema) and `mailspool migrate`
//! (moving queued mail between back ends, both ways, resumably).

use std::ops::ControlFlow;
use std::sync::Arc;

use mailspool::{Config, Store, sysexits};
use mailspool_spool::{Found, NodeEntry, Placement};

use super::{CliResult, Failure};

/// Nodes read from the source at a time: memory stays bounded on a million-node spool.
const BATCH: usize = 20_000;

/// `mailspool db migrate [--url URL]`.
pub fn migrate_schema(config: &Config, url: Option<&str>) -> CliResult {
    let url = match url.or(config.spool_url()) {
        Some(u) => u.to_owned(),
        None => {
            return Err(Failure::new(
                sysexits::USAGE,
                format!(
                    "the spool is the directory {}, not a database: give --url \
                     postgresql://... or set spool = \"postgresql://...\"",
                    config.spool_dir.display()
                ),
            ));
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(sysexits::OSERR, e.to_string()))?;
    let applied = rt.block_on(mailspool_pg::migrate(&url, config.spool_ca_file.as_deref()))?;
    let at = mailspool_pg::SCHEMA_VERSION;
    if applied.is_empty() {
        println!(
            "{}: schema already at version {at}",
            mailspool_pg::redact(&url)
        );
    } else {
        println!(
            "{}: applied schema version{} {}; now at {at}",
            mailspool_pg::redact(&url),
            if applied.len() == 1 { "" } else { "s" },
            applied
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Root works on the directory sides as their owner (a spool directory is read and
/// written only by the user it belongs to): the source's, else the destination's if it
/// exists. Two directories of different owners cannot both be ours: refused, saying so.
fn act_as_directory_owner(from: &str, to: &str) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    let owner = |side: &str| -> Option<(u32, u32)> {
        if mailspool_pg::is_url(side) {
            return None;
        }
        std::fs::metadata(side).ok().map(|m| (m.uid(), m.gid()))
    };
    let (src, dst) = (owner(from), owner(to));
    if let (Some(a), Some(b)) = (src, dst)
        && a.0 != b.0
    {
        return Err(Failure::new(
            sysexits::USAGE,
            format!(
                "{from} belongs to uid {} and {to} to uid {}: a spool is used by its owner                  only, so chown one to the other's owner first",
                a.0, b.0
            ),
        ));
    }
    match src.or(dst) {
        Some((0, _)) | None => Ok(()),
        Some((uid, gid)) => super::privilege::become_user(uid, gid),
    }
}

/// Open one side of a migration: a directory or a database URL.
fn open_side(config: &Config, spool: &str, create: bool) -> Result<Arc<dyn Store>, Failure> {
    let mut c = config.clone();
    c.spool_dir = spool.into();
    Ok(mailspool::open_store(&c, create)?)
}

/// `mailspool migrate --from A --to B`: every node of A moved to B, keeping its tier,
/// time and hold; each message's bytes copied once. Each node is locked in A, added
/// to B (B skips what an interrupted run already added: a database by the node's
/// origin, a directory by the node's name), then removed from A: run it again after an
/// interruption and each node ends up in B exactly once.
pub fn migrate(config: &Config, from: &str, to: &str) -> CliResult {
    if from == to {
        return Err(Failure::new(
            sysexits::USAGE,
            "--from and --to are the same spool",
        ));
    }
    if rustix::process::geteuid().is_root() {
        act_as_directory_owner(from, to)?;
    }
    // A database to fill gets its tables first (versioned: nothing changes if it has
    // them), as `db migrate` would.
    if mailspool_pg::is_url(to) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new(sysexits::OSERR, e.to_string()))?;
        let applied = rt.block_on(mailspool_pg::migrate(to, config.spool_ca_file.as_deref()))?;
        if !applied.is_empty() {
            eprintln!(
                "mailspool: {}: created the spool's tables (schema version {})",
                mailspool_pg::redact(to),
                mailspool_pg::SCHEMA_VERSION
            );
        }
    }
    let src = open_side(config, from, false)?;
    let dst = open_side(config, to, true)?;
    let (mut moved, mut skipped, mut busy) = (0usize, 0usize, 0usize);
    let started = std::time::Instant::now();
    // Nodes that could not be moved this run stay in A; they are not read again.
    let mut left: std::collections::HashSet<std::path::PathBuf> = Default::default();
    loop {
        let mut batch: Vec<NodeEntry> = Vec::new();
        src.visit_all(&mut |f| {
            if let Found::Node(n) = f
                && !left.contains(&n.path)
            {
                batch.push(n);
            }
            if batch.len() >= BATCH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if batch.is_empty() {
            break;
        }
        for message in src.group_messages(batch) {
            match move_message(src.as_ref(), dst.as_ref(), &message) {
                Ok((m, s)) => {
                    moved += m;
                    skipped += s;
                }
                Err(e) => {
                    busy += message.len();
                    eprintln!(
                        "mailspool: message {} not moved: {e}",
                        mailspool::escape(&message[0].name.id)
                    );
                    left.extend(message.iter().map(|n| n.path.clone()));
                }
            }
        }
        eprintln!(
            "mailspool: {} nodes moved ({skipped} already there), {busy} left, {:.0} s",
            moved + skipped,
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "moved {} nodes from {} to {} ({skipped} had been moved by an earlier run); {busy} left in place",
        moved + skipped,
        src.location(),
        dst.location()
    );
    if busy > 0 {
        return Err(Failure::new(
            sysexits::TEMPFAIL,
            format!("{busy} nodes were locked or unreadable; run it again to move them"),
        ));
    }
    Ok(())
}

/// Move one stored message's nodes; returns (added to B, found already in B).
fn move_message(
    src: &dyn Store,
    dst: &dyn Store,
    nodes: &[NodeEntry],
) -> Result<(usize, usize), mailspool::SpoolError> {
    let mut locks = Vec::with_capacity(nodes.len());
    for n in nodes {
        locks.push(src.lock_node(n)?);
    }
    let file = src.open_node(&nodes[0])?;
    let placements: Vec<(Placement, String)> = nodes
        .iter()
        .map(|n| {
            (
                Placement {
                    tier: n.tier,
                    time: n.name.time,
                    held: n.held,
                    to: n.name.to.clone(),
                },
                format!("{}:{}", src.location(), n.path.display()),
            )
        })
        .collect();
    let added = dst.import(
        &nodes[0].name.id,
        &nodes[0].name.from,
        &file.file,
        &placements,
    )?;
    for n in nodes {
        src.delete_locked(n)?;
    }
    drop(locks);
    Ok((added, nodes.len() - added))
}
