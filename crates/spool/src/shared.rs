//! Limits held across the hosts that share one store. One host's gate keeps its own
//! window and buckets; when several hosts deliver from one database, a destination's
//! cap must hold for their sum, or N hosts open N × `max_connections` and send N × the
//! rate, which is how a sender gets throttled and then blocked by the big providers.
//!
//! What is shared, and what it costs:
//! - **connection slots**: a destination's connections are numbered slots, each a lease
//!   with an expiry. A host takes one (a round trip) before it opens a connection and
//!   gives it back when the connection closes; its leases are renewed together, so a
//!   SIGKILLed host's slots come back when their lease runs out. Only slots below the
//!   shared adaptive window are given out.
//! - **message rate**: a shared token bucket, taken from in small batches (a round trip
//!   per batch, not per message); a batch not used soon is dropped, never saved, so a
//!   host cannot bank tokens and spend them in a burst later.
//! - **cooling and the adaptive window**: a throttling reply one host saw cools the
//!   destination for all and halves the shared window; successes grow it.
//!
//! A file spool has none of this ([`crate::Store::shared_limits`] is `None`): hosts
//! sharing a directory over NFS keep per-host limits, as 0.50 did.

use std::time::Duration;

use crate::Result;

/// A destination's shared state, as the store last said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedState {
    /// Connections the cluster may have open to it now (the adaptive window).
    pub window: f64,
    /// How long it cools still (zero: it does not).
    pub cooling: Duration,
}

/// What a host's gate asks of the store so that limits hold for all hosts together.
/// The calls block on the store (a database round trip): call them off the async
/// threads.
pub trait SharedLimits: Send + Sync + std::fmt::Debug {
    /// Take a connection slot of `destination`, which allows `cap` at once. `None`: the
    /// cluster holds all it may have now (the cap, or the shared window below it).
    fn take_slot(&self, destination: &str, cap: u32) -> Result<Option<u32>>;
    /// Give a slot back (its connection is closed). Does not wait.
    fn give_slot(&self, destination: &str, slot: u32);
    /// Take up to `want` tokens of the destination's message bucket, which fills at
    /// `per_sec` and holds at most `burst`; returns how many were granted.
    fn take_tokens(&self, destination: &str, want: u32, per_sec: f64, burst: f64) -> Result<u32>;
    /// Say what this host saw since the last call (`successes` deliveries; a
    /// throttling reply, with the cooling period it asks for) and learn the shared
    /// state. A throttling halves the shared window once per cooling period.
    fn sync(
        &self,
        destination: &str,
        cap: u32,
        successes: u32,
        throttled: Option<Duration>,
    ) -> Result<SharedState>;
}

/// Small records every host of a store sees the same, each kept until it expires:
/// MTA-STS policies (one fetch serves the cluster) and HTTP idempotency results (a
/// retried request may land on another host). A spool directory has none
/// ([`crate::Store::records`] is `None`): those stay in files beside it.
pub trait SharedRecords: Send + Sync + std::fmt::Debug {
    /// The value of (`kind`, `key`), unless absent, expired or claimed without one yet.
    fn get(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// Set the value, kept for `keep`.
    fn put(&self, kind: &str, key: &str, value: &[u8], keep: Duration) -> Result<()>;
    /// Make an empty record for `hold` unless a live one exists: true when this caller
    /// made it (and so does the work the record stands for).
    fn claim(&self, kind: &str, key: &str, hold: Duration) -> Result<bool>;
    /// Remove it (the work failed: the next caller may claim it).
    fn remove(&self, kind: &str, key: &str) -> Result<()>;
}

/// How a rate held across hosts is turned into a bucket: what is sent in any one period
/// must stay at or under the rate, although a host uses a batch up to
/// [`TOKEN_LIFETIME`] after it was granted and the receiver counts a message up to
/// [`RECEIVER_JITTER`] later than another. So the bucket holds a small burst and fills
/// at what is left: burst + fill × (period + lifetime + jitter) ≤ rate. For 100/s that
/// is a burst of 2.5 and a fill of 90.7/s; for 600/min, 1 and 9.97/s.
pub fn shared_bucket(count: u32, per: Duration) -> (f64, f64) {
    let period = per.as_secs_f64().max(0.001);
    let per_sec = f64::from(count) / period;
    let burst = (per_sec * TOKEN_LIFETIME.as_secs_f64()).max(1.0);
    let slack = (TOKEN_LIFETIME + RECEIVER_JITTER).as_secs_f64();
    let fits = (f64::from(count) - burst) / (period + slack);
    // One per period cannot be held to one in every window by any bucket (the token
    // saved and the one refilled): it is held to most of it on average.
    let fill = if fits > 0.0 { fits } else { per_sec * 0.85 };
    (fill, burst)
}

/// How long a granted batch of tokens may be used before it is dropped.
pub const TOKEN_LIFETIME: Duration = Duration::from_millis(25);

/// How much later than another a receiver may count a message sent with a token
/// granted at the same time (scheduling, the network): kept as a margin.
pub const RECEIVER_JITTER: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_bucket_never_lets_a_period_pass_the_rate() {
        for (count, per) in [(100, 1), (600, 60), (10, 1), (5000, 3600), (2, 1)] {
            let per = Duration::from_secs(per);
            let (fill, burst) = shared_bucket(count, per);
            // The worst a period can see: the burst, and the fill over the period plus
            // a batch's lifetime and the receiver's jitter.
            let slack = (TOKEN_LIFETIME + RECEIVER_JITTER).as_secs_f64();
            let worst = burst + fill * (per.as_secs_f64() + slack);
            assert!(worst <= f64::from(count) + 1e-9, "{count}/{per:?}: {worst}");
            if count >= 10 {
                // And it still flows at 80 % of the rate or more.
                let share = fill * per.as_secs_f64() / f64::from(count);
                assert!(share >= 0.8, "{count}/{per:?}: {share}");
            }
        }
    }
}
