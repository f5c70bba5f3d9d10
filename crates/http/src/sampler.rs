//! The queue metrics: a count of the spool every `metrics_interval`, on a blocking
//! thread, published as gauges and kept for the dashboard. A scrape reads the last
//! count; it never lists the spool (a million nodes take seconds to walk).

use std::sync::{Arc, RwLock};
use std::time::Instant;

use mailspool_metrics::{DomainLabel, TierLabels, global};

use super::AppState;
use crate::admin::{self, Summary};

/// Domains exported by name (the rest are only in the total): the label set stays
/// small whatever the queue holds.
pub const TOP_DOMAINS: usize = 10;
/// Oldest and most-deferred nodes kept for the dashboard.
pub const TOP_NODES: usize = 10;

/// The last count, shared with the dashboard.
#[derive(Default)]
pub struct Snapshot {
    last: RwLock<Option<Arc<(Summary, u64)>>>,
}

impl Snapshot {
    /// The last count and the unix time it was taken, if one was.
    pub fn get(&self) -> Option<Arc<(Summary, u64)>> {
        self.last.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, s: Summary, at: u64) {
        *self.last.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new((s, at)));
    }
}

/// Count once and publish.
pub fn count(state: &AppState) {
    let started = Instant::now();
    let spool = state.ms.spool();
    let summary = match admin::summary(spool, TOP_NODES, &mut |_| {}, &mut |_| {}) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the spool for metrics");
            return;
        }
    };
    let m = global();
    let now = mailspool_spool::now();
    for t in &summary.tiers {
        for (held, n) in [("false", t.queued), ("true", t.held)] {
            m.queue_nodes
                .get_or_create(&TierLabels {
                    tier: t.tier.to_string(),
                    held,
                })
                .set(n as i64);
        }
    }
    m.oldest_node_age
        .set(summary.oldest.map_or(0, |o| now.saturating_sub(o)) as i64);
    m.domain_nodes.clear();
    for d in summary.domains.iter().take(TOP_DOMAINS) {
        m.domain_nodes
            .get_or_create(&DomainLabel {
                domain: d.domain.clone(),
            })
            .set(d.nodes as i64);
    }
    if let Some(Ok(st)) = spool.cache_dir().map(rustix::fs::statvfs) {
        m.disk_free
            .set(st.f_bavail.saturating_mul(st.f_frsize).min(i64::MAX as u64) as i64);
    }
    if let Some(Ok(q)) = spool.as_files().map(|s| s.quarantined()) {
        m.corrupt_files.set(q.len() as i64);
    }
    m.queue_count_duration.set(started.elapsed().as_secs_f64());
    m.queue_count_time.set(now as i64);
    state.snapshot.set(summary, now);
}

/// Count now and every interval until the runtime ends; sweep old idempotency keys
/// every hour.
pub fn spawn(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut last_sweep: Option<Instant> = None;
        loop {
            let s = state.clone();
            let sweep = last_sweep.is_none_or(|t| t.elapsed().as_secs() >= 3600);
            if sweep {
                last_sweep = Some(Instant::now());
            }
            let started = Instant::now();
            let _ = tokio::task::spawn_blocking(move || {
                count(&s);
                if sweep {
                    s.idempotency.sweep();
                }
            })
            .await;
            // A huge spool takes seconds to count: never spend more than a tenth of
            // the time counting it.
            let pause = state.http.metrics_interval.max(started.elapsed() * 10);
            tokio::time::sleep(pause).await;
        }
    });
}
