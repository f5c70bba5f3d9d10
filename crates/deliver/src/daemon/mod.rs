//! `mailspool daemon`: deliver continuously, in the foreground (systemd-friendly).
//!
//! - Own intake wakes it at once: an inotify watch on tier 0 sees every new node made on
//!   this host (by `send`, the listener, or a 0.50 program), and a tier-0 pass starts.
//! - Every `tick` it scans the tiers, tier i with probability 1/priority[i], which is how
//!   several hosts share one spool without a coordinator (inotify does not see other
//!   hosts' writes over NFS; the tick does).
//! - SIGTERM/SIGINT: stop claiming nodes, let deliveries under way finish for up to
//!   `grace`, then exit. SIGHUP: reload the configuration.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::DeliverConfig;

use crate::engine::{Engine, NodeResult, PLAN_CHUNK, PassOptions};

mod backlog;
use backlog::{BACKLOG_NODES, Backlog, DOMAIN_WINDOW};
use std::collections::HashSet;

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Scan interval (dequeue_timeout).
    pub tick: Duration,
    /// How long SIGTERM waits for deliveries under way.
    pub grace: Duration,
}

/// Watch `dir` for new entries; `notify` on each batch. Runs on its own thread.
fn watch(dir: std::path::PathBuf, notify: Arc<Notify>) {
    use rustix::fs::inotify;
    let fd = match inotify::init(inotify::CreateFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; new mail waits for the next tick");
            return;
        }
    };
    if let Err(e) = inotify::add_watch(
        &fd,
        &dir,
        inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
    ) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch tier 0; new mail waits for the next tick");
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rustix::io::read(&fd, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "inotify read failed; falling back to the tick");
                return;
            }
        };
        if new_node_among(&buf[..n]) {
            notify.notify_one();
        }
        // Let events gather: a 10-recipient message is 10 links, and the daemon's own
        // locks are two more events per node; one read per few milliseconds takes
        // them all instead of waking this thread per event.
        std::thread::sleep(GATHER_EVENTS);
    }
}

/// How long the tier-0 watcher lets inotify events gather between reads.
const GATHER_EVENTS: Duration = Duration::from_millis(2);

/// Whether a buffer of inotify events holds a new node (or lost events: an overflowed
/// queue says "look"). Lock files and their temp files (ours, and File::NFSLock's when
/// a 0.50 dequeuer works here too) appear in tier 0, one per delivery: only a new node
/// is news.
fn new_node_among(events: &[u8]) -> bool {
    // struct inotify_event: wd i32, mask u32, cookie u32, len u32, then len bytes of
    // NUL-padded name.
    let word = |at: usize| u32::from_ne_bytes(events[at..at + 4].try_into().unwrap());
    let mut at = 0;
    while at + 16 <= events.len() {
        let mask = word(at + 4);
        let len = word(at + 12) as usize;
        let end = at + 16 + len;
        if end > events.len() {
            break; // the kernel returns whole events only
        }
        if mask & rustix::fs::inotify::ReadFlags::QUEUE_OVERFLOW.bits() != 0 {
            return true;
        }
        let raw = &events[at + 16..end];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        let name = String::from_utf8_lossy(name);
        if !name.is_empty() && !mailspool_spool::name::is_not_a_node(&name) {
            return true;
        }
        at = end;
    }
    false
}

/// Tasks one domain may run at once: a quarter of the slots.
fn per_domain(engine: &Engine) -> usize {
    (engine.task_cap() / 4).max(1)
}

/// Where planning goes on: `limited` when a chunk hit its limit (continued as soon as
/// the backlog runs low), `windowed` when a domain's window was full (continued when
/// half of that domain's planned mail has started).
#[derive(Default)]
struct Continue {
    limited: Option<PassOptions>,
    windowed: Option<(PassOptions, HashSet<String>)>,
}

impl Continue {
    /// The windowed continuation, if one of its domains has room again.
    fn windowed_ready(&mut self, backlog: &Backlog) -> Option<PassOptions> {
        let (_, full) = self.windowed.as_ref()?;
        let room = full
            .iter()
            .any(|d| backlog.domain_nodes(d) < DOMAIN_WINDOW / 2);
        if room && backlog.nodes() < BACKLOG_NODES {
            self.windowed.take().map(|(pass, _)| pass)
        } else {
            None
        }
    }
}

/// Plan a pass (off the async threads) into the backlog, at most one chunk and each
/// domain up to its window; note in `more` how to continue.
async fn plan_into(
    engine: &Arc<Engine>,
    mut pass: PassOptions,
    backlog: &mut Backlog,
    more: &mut Continue,
) {
    pass.limit = Some(PLAN_CHUNK);
    let planner = engine.clone();
    let p = pass.clone();
    let window = backlog.window();
    let planned = tokio::task::spawn_blocking(move || {
        let window = std::cell::RefCell::new(window);
        let plan = planner.plan_except(&p, &|n| window.borrow_mut().leaves(n));
        let full = window.into_inner().into_full();
        // A scan of a deep queue parses every name and keeps a window of them: what it
        // let go is given back, or its scans leave the heap at their peak. (Not after
        // every small plan: a wake-up per commit would pay a heap walk each.)
        if plan.as_ref().is_ok_and(|p| p.truncated) || !full.is_empty() {
            mailspool_spool::return_free_memory();
        }
        plan.map(|plan| (plan, full))
    })
    .await;
    match planned {
        Ok(Ok((plan, full))) => {
            pass.tiers = Some(plan.tiers.clone());
            pass.use_priority = false;
            if plan.truncated {
                more.limited = Some(pass.clone());
            }
            if !full.is_empty() {
                more.windowed = Some((pass, full));
            }
            let planned: usize = plan.groups.iter().map(|g| g.nodes().len()).sum();
            backlog.extend(plan.groups);
            tracing::debug!(
                planned,
                backlog = backlog.nodes(),
                truncated = plan.truncated,
                windowed = more.windowed.is_some(),
                "planned"
            );
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot scan the spool"),
        Err(e) => tracing::error!(error = %e, "scan task failed"),
    }
}

/// Start backlog groups while there is room.
fn fill(engine: &Arc<Engine>, tasks: &mut JoinSet<Vec<NodeResult>>, backlog: &mut Backlog) {
    let limit = per_domain(engine);
    while tasks.len() < engine.task_cap() {
        let Some((g, running)) = backlog.next(limit) else {
            break;
        };
        let engine = engine.clone();
        tasks.spawn(async move {
            let _running = running;
            engine.deliver_group(g, false).await
        });
    }
}

/// Run until SIGTERM/SIGINT. `reload` is called on SIGHUP and returns the new settings
/// (or `None` to keep the old ones, after logging why).
pub async fn run(
    engine: Arc<Engine>,
    opts: DaemonOptions,
    mut reload: impl FnMut() -> Option<DeliverConfig>,
) -> std::io::Result<()> {
    let wake = Arc::new(Notify::new());
    engine.set_waker(wake.clone());
    // A file spool's tier 0 is watched (inotify) for other writers' commits; a
    // database tells its listeners of every host's commits (LISTEN/NOTIFY).
    if let Some(files) = engine.spool().as_files() {
        let dir = files.tier_dir(0);
        let wake = wake.clone();
        std::thread::Builder::new()
            .name("tier0-watch".into())
            .spawn(move || watch(dir, wake))?;
    } else {
        let wake = wake.clone();
        engine.spool().watch(Arc::new(move || wake.notify_one()));
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Locks and lock temp files that killed processes left for nodes now gone: swept at
    // start and then about once a minute; side data of nodes another dequeuer delivered:
    // pruned at start and about once an hour.
    let sweep = |engine: &Arc<Engine>, prune: bool| {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let spool = engine.spool();
            if let Some(files) = spool.as_files() {
                let policy = spool.config().lock_policy();
                let removed: usize = (0..spool.config().tiers())
                    .map(|t| mailspool_spool::lock::sweep(&files.tier_dir(t), &policy))
                    .sum();
                if removed > 0 {
                    tracing::info!(removed, "removed orphan lock files");
                }
            }
            if prune {
                // A message lives the sum of the tier periods: a day after that its
                // "delayed" marker and its kept signature have nothing left to guard;
                // side data of nodes another dequeuer (0.50) delivered goes too.
                let life: u64 = (0..spool.config().tiers())
                    .map(|t| spool.config().period(t))
                    .sum();
                match spool.sweep(Duration::from_secs(life + 86_400)) {
                    0 => {}
                    n => tracing::info!(removed = n, "pruned side data of nodes gone elsewhere"),
                }
            }
        });
    };
    sweep(&engine, true);
    // Events to webhooks: a sender per `[[webhook]]`, restarted on a reload.
    let mut webhooks = crate::webhook::Senders::default();
    let start_webhooks = |senders: &mut crate::webhook::Senders| {
        let (hooks, dns, tls) = engine.webhook_parts();
        senders.restart(&hooks, engine.spool(), &dns, &tls);
    };
    start_webhooks(&mut webhooks);
    let sweep_every = (Duration::from_secs(60).as_secs() / opts.tick.as_secs().max(1)).max(1);
    let mut ticks = 0u64;
    let mut tick = tokio::time::interval(opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deliveries = JoinSet::new();
    // Planned groups wait here; at most `task_cap` run as tasks at once.
    let mut backlog = Backlog::default();
    tracing::info!(spool = %engine.spool().location(), tick = ?opts.tick, "daemon started");
    if let Some(files) = engine.spool().as_files() {
        // How commits here (the pickup's, the bounces') make their names durable.
        tracing::info!(durability = %files.durability(), "spool file system");
    }
    // A plan that stopped at its chunk limit is continued as soon as the backlog is
    // empty; one that left a domain's mail for later, when that domain has room.
    let mut more = Continue::default();
    loop {
        let limited = (!backlog.has_startable(per_domain(&engine))
            && backlog.nodes() < BACKLOG_NODES
            && deliveries.len() < engine.task_cap() / 2)
            .then(|| more.limited.take())
            .flatten();
        if let Some(pass) = limited.or_else(|| more.windowed_ready(&backlog)) {
            plan_into(&engine, pass, &mut backlog, &mut more).await;
            fill(&engine, &mut deliveries, &mut backlog);
            continue;
        }
        let pass = tokio::select! {
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(sweep_every) {
                    sweep(&engine, ticks.is_multiple_of(sweep_every * 60));
                }
                PassOptions { use_priority: true, ..Default::default() }
            }
            _ = wake.notified() => {
                // Let a burst of new nodes land: one scan for all of them.
                tokio::time::sleep(Duration::from_millis(5)).await;
                PassOptions { tiers: Some(vec![0]), ..Default::default() }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Some(cfg) = reload() {
                    engine.reconfigure(cfg);
                    start_webhooks(&mut webhooks);
                    tracing::info!("configuration reloaded");
                }
                continue;
            }
            Some(done) = deliveries.join_next(), if !deliveries.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "delivery task failed");
                }
                fill(&engine, &mut deliveries, &mut backlog);
                if deliveries.is_empty() && backlog.is_empty() {
                    engine.close_idle().await;
                    mailspool_spool::return_free_memory();
                }
                continue;
            }
        };
        // With work still waiting to start, a new scan would find nothing new to start:
        // skip it. What it would have found is planned when the backlog is done. (Work
        // that waits only for its domain's turn does not stop a scan: other domains'
        // mail must not wait behind it.)
        if backlog.has_startable(per_domain(&engine)) || backlog.nodes() >= BACKLOG_NODES {
            if more.limited.is_none() {
                more.limited = Some(PassOptions {
                    limit: Some(PLAN_CHUNK),
                    ..Default::default()
                });
            }
            continue;
        }
        plan_into(&engine, pass, &mut backlog, &mut more).await;
        fill(&engine, &mut deliveries, &mut backlog);
    }
    tracing::info!(in_flight = deliveries.len(), grace = ?opts.grace, "stopping: no new deliveries");
    engine.stop();
    for group in backlog.drain() {
        engine.abandon(group);
    }
    let drained = tokio::time::timeout(opts.grace, async {
        while deliveries.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = deliveries.len(),
            "grace period over; abandoning deliveries (their nodes stay queued)"
        );
        deliveries.abort_all();
        while deliveries.join_next().await.is_some() {}
    }
    engine.close_idle().await;
    engine.spool().flush();
    tracing::info!("daemon stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::new_node_among;

    /// One inotify event as the kernel writes it (name NUL-padded to 16 bytes).
    fn event(mask: u32, name: &str) -> Vec<u8> {
        let padded = if name.is_empty() {
            0
        } else {
            (name.len() / 16 + 1) * 16
        };
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&(padded as u32).to_ne_bytes());
        v.extend_from_slice(name.as_bytes());
        v.resize(16 + padded, 0);
        v
    }

    #[test]
    fn only_a_new_node_or_lost_events_are_news() {
        const CREATE: u32 = 0x100;
        let locks = [
            event(CREATE, "1-id-a@b-c@d.NFSLock"),
            event(CREATE, ".lk.12.3.4"),
            event(CREATE, "1-id-a@b-c@d.tmp.12.345.678"),
        ]
        .concat();
        assert!(!new_node_among(&locks), "lock traffic is not news");
        let with_node = [locks.clone(), event(CREATE, "1-id-a@b-c@d")].concat();
        assert!(new_node_among(&with_node), "a node after three lock events");
        let overflow = event(rustix::fs::inotify::ReadFlags::QUEUE_OVERFLOW.bits(), "");
        assert!(new_node_among(&overflow), "lost events: look");
        assert!(!new_node_among(&[]));
        assert!(
            !new_node_among(&with_node[..20]),
            "a torn buffer reads safely"
        );
    }
}
