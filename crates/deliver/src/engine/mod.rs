//! The delivery engine: find due nodes, lock them, group them by stored message and
//! domain (one SMTP transaction, several RCPT), deliver, then delete, fall back a tier,
//! or bounce.
//!
//! The unit of delivery is the stored message, never the id in the name: ids repeat in
//! Mail::Spool 0.50 spools (one per process and second). Nodes are one message when they
//! are one inode (mailspool links a message once per recipient), or, for separate files
//! (0.50 writes one per recipient), when their id, sender and bytes are all the same.
//! Anything else is its own transaction, with its own sender and body, and its own DSN.
//!
//! Promises: a node is deleted only after the server's 250 for it; a node is changed
//! only under its `.NFSLock` and only if it still exists once locked (so two daemons on
//! one spool deliver it once); a temporary failure moves the node to the next tier with
//! a fresh time and an encoded name; a permanent one, or a temporary one in the last
//! tier, spools a bounce to the sender (never for the null sender) before the node is
//! deleted. Every attempt is recorded as side data, so `queue show` says why a node waits.
//!
//! Concurrency: async tasks; at most `max_deliveries` deliveries at once in all, and at
//! most `per_host_limit` to one host. A task waits for its host's slot first, holding
//! nothing else (no global slot, no lock), so a tarpit uses up only its own host's
//! slots until its timeouts fire; node locks are taken only once a slot is ours.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mailspool_smtp::{Session, TlsConnectors};
use mailspool_spool::{Found, NodeEntry, NodeFile, NodeLock, SpoolError, Store, escape, now};
use std::ops::ControlFlow;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::bounce::Failure;
use crate::config::DeliverConfig;
use crate::dns::Resolve;
use crate::route::route;

mod gate;
mod group;
mod local;
mod plan;
mod policy;
mod record;
mod restart;
mod send;
mod settle;
mod shared;
mod sign;
mod wire;

/// Which nodes a pass looks at.
#[derive(Debug, Clone, Default)]
pub enum Selection {
    /// Nodes whose tier wait is over.
    #[default]
    Due,
    /// Every node, due or not (`queue run --all`, `sendmail -q`).
    All,
    /// These nodes, due or not (`send --now`: the nodes it just committed).
    Nodes(HashSet<PathBuf>),
}

/// How a pass runs.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Which nodes.
    pub selection: Selection,
    /// Scan tier i only with probability 1/priority[i] (the daemon's tick).
    pub use_priority: bool,
    /// Only these tiers (the daemon's wake-up looks at tier 0 only).
    pub tiers: Option<Vec<usize>>,
    /// The caller is told directly (`send --now`, Interactive mode): a permanent
    /// failure is removed without a bounce (the caller has the reply); a temporary one
    /// stays queued for retry like any other, and the caller is told so.
    pub interactive: bool,
    /// Most nodes to plan at once (None: all).
    pub limit: Option<usize>,
}

/// What happened to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by a server; the node is gone.
    Delivered,
    /// Temporary failure; the node moved to the next tier (queued for retry).
    Deferred,
    /// Permanent failure (or out of tiers); bounced (unless interactive or null sender).
    Failed,
    /// Locked by another process (a daemon delivering it), or gone before we could
    /// lock it: still queued, or already handled, by someone else.
    Skipped,
}

/// One node's result, for reports and `send --now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeResult {
    /// Message id.
    pub id: String,
    /// Recipient.
    pub to: String,
    /// What happened.
    pub outcome: Outcome,
    /// The server's reply or our reason.
    pub reply: String,
}

/// A pass's results.
#[derive(Debug, Default)]
pub struct Report {
    /// Per node.
    pub results: Vec<NodeResult>,
}

impl Report {
    /// Nodes with this outcome.
    pub fn count(&self, o: Outcome) -> usize {
        self.results.iter().filter(|r| r.outcome == o).count()
    }
}

/// Most nodes one plan takes; the rest wait for the next chunk, so memory stays
/// bounded however deep the queue is.
pub const PLAN_CHUNK: usize = 20_000;

/// What a plan found.
#[derive(Debug, Default)]
pub struct Plan {
    /// Groups to deliver.
    pub groups: Vec<Group>,
    /// The tiers it looked at (after the priority dice).
    pub tiers: Vec<usize>,
    /// It stopped at its limit: there is more.
    pub truncated: bool,
}

fn collect(report: &mut Report, r: Result<Vec<NodeResult>, tokio::task::JoinError>) {
    match r {
        Ok(results) => report.results.extend(results),
        Err(e) => tracing::error!(error = %e, "delivery task failed"),
    }
}

/// Due nodes with one id, one sender and one recipient domain: candidates for one
/// transaction. Once locked and opened they are split into the stored messages they
/// really are (see the module comment), each its own transaction.
#[derive(Debug)]
pub struct Group {
    nodes: Vec<NodeEntry>,
    domain: String,
}

impl Group {
    /// The recipients' domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The nodes planned.
    pub fn nodes(&self) -> &[NodeEntry] {
        &self.nodes
    }

    /// A group of no nodes, for tests of what schedules groups.
    #[cfg(test)]
    pub(crate) fn empty(domain: &str) -> Group {
        Group {
            nodes: Vec::new(),
            domain: domain.to_owned(),
        }
    }
}

/// The locked nodes of one stored message at one domain, with the message open.
pub(super) struct Claim {
    nodes: Vec<(NodeEntry, NodeLock)>,
    file: NodeFile,
    /// A DKIM signature made for this delivery and not yet kept in the spool (the
    /// claim had all of the message's nodes: kept only if some stay queued).
    unsaved_signature: Mutex<Option<Vec<u8>>>,
}

/// Unparsable names remembered (more: forgotten and said again, memory bounded).
const MAX_WARNED_NAMES: usize = 10_000;

/// An idle connection, with the cluster's connection slot it holds.
type Idle = (Session, Option<shared::SlotGuard>);

/// The engine; share it in an `Arc`.
pub struct Engine {
    spool: Arc<dyn Store>,
    cfg: RwLock<Arc<DeliverConfig>>,
    dns: Arc<dyn Resolve>,
    tls: TlsConnectors,
    global: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Idle connections, each with the cluster's connection slot it holds (when the
    /// store shares limits across hosts).
    pool: Mutex<HashMap<String, Vec<Idle>>>,
    in_flight: Mutex<HashSet<PathBuf>>,
    stopping: AtomicBool,
    /// The daemon's wake-up, to look at tier 0 again soon (a node found mid-commit).
    waker: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// MTA-STS policies, cached.
    mta_sts: Arc<crate::mta_sts::MtaSts>,
    /// The aliases file, parsed when it changes.
    aliases: crate::local::AliasCache,
    /// Tier entries whose names do not parse, already warned about: each is said once
    /// (fsck lists them all), not at every scan.
    warned_names: Mutex<std::collections::HashSet<PathBuf>>,
    /// Each destination's shaping gate.
    destinations: gate::Destinations,
    /// When the daemon is already due to look at tier 0 again (wake-ups coalesce).
    next_look: Mutex<Option<std::time::Instant>>,
    /// EHLO names found from source addresses' PTR records, and until when.
    ehlo_names: Mutex<HashMap<std::net::IpAddr, (String, std::time::Instant)>>,
    /// Deliveries made before this engine's first pass over the queue (a killed
    /// process's last ones), read then.
    delivered_before: std::sync::OnceLock<restart::DeliveredBefore>,
}

/// How one node ends, before we act on it.
enum Verdict {
    Delivered {
        reply: String,
        /// Where it went (none for local mailboxes).
        via: Option<record::Via>,
    },
    Temporary {
        host: String,
        reply: String,
        /// Already in the side data (each host's failure is recorded as it happens).
        recorded: bool,
    },
    Permanent(Failure),
    /// The receiver throttled us: the node waits in its tier while the destination
    /// cools (unless it has waited there long enough; then it is deferred as usual).
    Throttled {
        host: String,
        reply: String,
    },
}

impl Engine {
    /// An engine on `spool`.
    pub fn new(
        spool: Arc<dyn Store>,
        cfg: DeliverConfig,
        dns: Arc<dyn Resolve>,
    ) -> Result<Arc<Engine>, String> {
        let tls = TlsConnectors::new(cfg.tls_ca_file.as_deref())?;
        let mta_sts = Arc::new(crate::mta_sts::MtaSts::new(
            spool.cache_dir().map(|d| d.join("mta-sts")),
            spool.records(),
            cfg.mta_sts_port,
            tls.verified.clone(),
        ));
        Ok(Arc::new(Engine {
            delivered_before: Default::default(),
            mta_sts,
            aliases: Default::default(),
            warned_names: Default::default(),
            spool,
            global: Arc::new(Semaphore::new(cfg.max_deliveries.max(1))),
            cfg: RwLock::new(Arc::new(cfg)),
            dns,
            tls,
            hosts: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            stopping: AtomicBool::new(false),
            waker: Mutex::new(None),
            ehlo_names: Mutex::new(HashMap::new()),
            destinations: gate::Destinations::default(),
            next_look: Mutex::new(None),
        }))
    }

    /// Replace the settings (SIGHUP). Limits already in force keep their size.
    /// What the webhook senders need: the spool, the resolver, the verified TLS.
    pub fn webhook_parts(
        &self,
    ) -> (
        Vec<Arc<crate::webhook::Webhook>>,
        Arc<dyn Resolve>,
        tokio_rustls::TlsConnector,
    ) {
        (
            self.cfg().webhooks.clone(),
            self.dns.clone(),
            self.tls.verified.clone(),
        )
    }

    pub fn reconfigure(&self, cfg: DeliverConfig) {
        *self.cfg.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
    }

    fn cfg(&self) -> Arc<DeliverConfig> {
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<dyn Store> {
        &self.spool
    }

    /// Most delivery tasks worth having at once: a few per delivery slot.
    pub fn task_cap(&self) -> usize {
        self.cfg().max_deliveries.max(1) * 8
    }

    /// Let the daemon be told to look at tier 0 again (see [`Engine::look_again_soon`]).
    pub fn set_waker(&self, waker: Arc<tokio::sync::Notify>) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
    }

    /// Ask the daemon for another tier-0 pass in a moment.
    fn look_again_soon(&self) {
        self.look_again_in(std::time::Duration::from_millis(2));
    }

    /// Whether a daemon runs this engine (it set its waker), to come back to what is
    /// left for later.
    fn has_daemon(&self) -> bool {
        self.waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn look_again_in(&self, delay: std::time::Duration) {
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = waker {
            // One timer for many: a look already due by then covers this one.
            let at = std::time::Instant::now() + delay;
            {
                let mut next = self.next_look.lock().unwrap_or_else(|e| e.into_inner());
                if next.is_some_and(|n| n > std::time::Instant::now() && n <= at) {
                    return;
                }
                *next = Some(at);
            }
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                w.notify_one();
            });
        }
    }

    /// Stop starting deliveries (SIGTERM); those under way finish.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// One pass: plan (in chunks of `limit` nodes), deliver every group concurrently,
    /// wait for all. Each node is attempted at most once per pass.
    pub async fn run_pass(self: &Arc<Self>, opts: &PassOptions) -> Result<Report, SpoolError> {
        let mut tasks = JoinSet::new();
        let mut report = Report::default();
        // Keyed by inode and recipient: a node keeps its inode when it falls back a tier,
        // and a message's nodes differ by recipient.
        let mut attempted: HashSet<(u64, String)> = HashSet::new();
        let mut opts = opts.clone();
        opts.limit = opts.limit.or(Some(PLAN_CHUNK));
        loop {
            let plan =
                self.plan_except(&opts, &|n| attempted.contains(&(n.ino, n.name.to.clone())))?;
            // The next chunk rolls no dice: the same tiers again.
            opts.tiers = Some(plan.tiers.clone());
            opts.use_priority = false;
            for g in plan.groups {
                attempted.extend(g.nodes.iter().map(|n| (n.ino, n.name.to.clone())));
                // A bounded number of tasks: a queue of 200,000 is not 200,000 futures.
                while tasks.len() >= self.task_cap() {
                    if let Some(r) = tasks.join_next().await {
                        collect(&mut report, r);
                    }
                }
                tasks.spawn(self.clone().deliver_group(g, opts.interactive));
            }
            if !plan.truncated {
                break;
            }
        }
        while let Some(r) = tasks.join_next().await {
            collect(&mut report, r);
        }
        Ok(report)
    }

    /// A planned group that will not be delivered (the daemon is stopping): its nodes
    /// are given back, to other hosts at once.
    pub fn abandon(&self, group: Group) {
        let paths: Vec<PathBuf> = group.nodes.iter().map(|n| n.path.clone()).collect();
        self.spool.release_claims(&paths);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for p in &paths {
            in_flight.remove(p);
        }
    }
}
