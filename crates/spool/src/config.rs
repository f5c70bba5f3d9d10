//! Settings that shape a spool directory and how nodes age in it.
//!
//! Defaults are Mail::Spool 0.50's: seven tiers waiting 0 s, 30 min, 4 h, 8 h, 16 h, 24 h
//! and 48 h (about four days in all), scanned with priorities 1, 3, 9, 25, 50, 100, 200
//! on a 20 s tick.

use std::time::Duration;

/// How a spool is laid out and how its nodes age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Seconds a node waits in tier `i` before it is due (`dequeue_periods`).
    pub periods: Vec<u64>,
    /// A tier is scanned on a tick with probability `1 / priority[i]` (`dequeue_priority`).
    pub priorities: Vec<u32>,
    /// Longest time one delivery may take (`max_connection_time`).
    pub max_connection_time: Duration,
    /// One of our locks held on another host and not refreshed for this long has lost
    /// its holder (`stale_lock_timeout`; our holders refresh every 20 s).
    pub stale_lock_after: Duration,
    /// A Mail::Spool 0.50 lock from another host is stale after this long
    /// (`legacy_lock_timeout`: 0.50's max_connection_time, 6 h, + 2 s).
    pub legacy_lock_timeout: Duration,
    /// Log `<time> <bytes> Spool|Sent` to `usage/raw` (`usage_log`).
    pub usage_log: bool,
    /// Leftovers in `tmp/` older than this are removed when the spool is opened for writing.
    pub tmp_max_age: Duration,
    /// The spool is shared on purpose (`shared_spool`: several hosts or users, the 0.50
    /// multi-host case): a group- or world-writable spool, or one owned by another user,
    /// is then accepted (nothing in it is followed or opened blocking either way).
    pub shared: bool,
    /// Keep every event of every message in the spool (`[events] enabled`).
    pub events: bool,
    /// Days the history keeps events (`[events] retention_days`).
    pub event_retention_days: u64,
    /// Whether a commit fsyncs tier 0 after linking (`fsync_directories`: `auto` asks
    /// the file system, see [`crate::durability`]).
    pub fsync_directories: crate::durability::Setting,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            periods: vec![0, 1800, 14_400, 28_800, 57_600, 86_400, 172_800],
            priorities: vec![1, 3, 9, 25, 50, 100, 200],
            max_connection_time: Duration::from_secs(600),
            stale_lock_after: Duration::from_secs(300),
            legacy_lock_timeout: Duration::from_secs(6 * 3600 + 2),
            usage_log: true,
            tmp_max_age: Duration::from_secs(3600),
            shared: false,
            events: true,
            event_retention_days: 30,
            fsync_directories: crate::durability::Setting::Auto,
        }
    }
}

impl SpoolConfig {
    /// Number of tiers (the length of `periods`).
    pub fn tiers(&self) -> usize {
        self.periods.len()
    }

    /// Seconds a node waits in `tier`; tiers past the configured ones use the last period.
    pub fn period(&self, tier: usize) -> u64 {
        self.periods
            .get(tier)
            .or(self.periods.last())
            .copied()
            .unwrap_or(0)
    }

    /// When a lock held by someone else may be broken.
    pub fn lock_policy(&self) -> crate::lock::LockPolicy {
        crate::lock::LockPolicy {
            own_stale: self.stale_lock_after,
            legacy_stale: self.legacy_lock_timeout,
        }
    }

    /// Check the settings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.periods.is_empty() {
            return Err("dequeue_periods must name at least one tier".into());
        }
        if self.periods.len() > 100 {
            return Err("dequeue_periods names more than 100 tiers".into());
        }
        if self.priorities.len() != self.periods.len() {
            return Err(format!(
                "dequeue_priority has {} entries but dequeue_periods has {}",
                self.priorities.len(),
                self.periods.len()
            ));
        }
        if self.stale_lock_after < crate::lock::REFRESH_EVERY * 3 {
            return Err(format!(
                "stale_lock_timeout must be at least {} s: locks are refreshed every {} s",
                (crate::lock::REFRESH_EVERY * 3).as_secs(),
                crate::lock::REFRESH_EVERY.as_secs()
            ));
        }
        if self.priorities.contains(&0) {
            return Err("dequeue_priority entries must be 1 or more".into());
        }
        Ok(())
    }
}
