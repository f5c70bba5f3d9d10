//! The gate's side of limits held across hosts ([`mailspool_spool::shared`]): a
//! connection slot held by each open connection (pooled ones too), message tokens
//! fetched in batches, and the cooling and window news exchanged about once a second.
//! Nothing here runs when the store keeps no shared limits (a spool directory).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailspool_spool::escape;
use mailspool_spool::shared::{SharedLimits, TOKEN_LIFETIME, shared_bucket};

use crate::shaping::Rate;

/// A connection slot of a destination, held while its connection is open; given back
/// when dropped.
pub(crate) struct SlotGuard {
    limits: Arc<dyn SharedLimits>,
    destination: String,
    slot: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.limits.give_slot(&self.destination, self.slot);
    }
}

/// How often a host tells the cluster its successes and hears of cooling.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// A shared message bucket, as one host sees it: the batch it was last granted.
#[derive(Debug)]
pub(crate) struct SharedBucket {
    fill: f64,
    burst: f64,
    tokens: u32,
    granted_at: Instant,
    /// No token was left at the last fetch: ask again no sooner than this.
    next_fetch: Instant,
    fetching: bool,
}

/// What to do about the message rate now.
pub(crate) enum TokenCheck {
    /// A token is here (and taken by the caller's pass).
    Ready,
    /// Fetch a batch (this caller does; the others wait for it).
    Fetch { want: u32, fill: f64, burst: f64 },
    /// Wait this long, then look again.
    Wait(Duration),
}

impl SharedBucket {
    pub fn new(rate: Rate) -> SharedBucket {
        let (fill, burst) = shared_bucket(rate.count, rate.per);
        let now = Instant::now();
        SharedBucket {
            fill,
            burst,
            tokens: 0,
            granted_at: now,
            next_fetch: now,
            fetching: false,
        }
    }

    /// `demand`: deliveries waiting for a token here, this one included (a host asks
    /// for no more than it can use before the batch is dropped).
    pub fn check(&mut self, now: Instant, demand: usize) -> TokenCheck {
        // A batch not used soon is dropped: a host must not save tokens and spend them
        // in a burst later, on top of the other hosts' share.
        if self.tokens > 0 && now.duration_since(self.granted_at) > TOKEN_LIFETIME {
            self.tokens = 0;
        }
        if self.tokens > 0 {
            return TokenCheck::Ready;
        }
        if self.fetching {
            return TokenCheck::Wait(Duration::from_millis(5));
        }
        if now < self.next_fetch {
            return TokenCheck::Wait(self.next_fetch - now);
        }
        self.fetching = true;
        TokenCheck::Fetch {
            want: (demand as f64).clamp(1.0, self.burst.ceil().max(1.0)) as u32,
            fill: self.fill,
            burst: self.burst,
        }
    }

    pub fn take(&mut self) {
        self.tokens = self.tokens.saturating_sub(1);
    }

    /// The fetch is done: `granted` tokens (0 on an error too: nothing sent unpaid).
    pub fn granted(&mut self, granted: u32) {
        let now = Instant::now();
        self.fetching = false;
        self.tokens = granted;
        self.granted_at = now;
        if granted == 0 {
            self.next_fetch = now + Duration::from_secs_f64(1.0 / self.fill.max(0.001));
        }
    }
}

/// One destination's exchange with the cluster.
#[derive(Debug)]
pub(crate) struct Sharing {
    pub limits: Arc<dyn SharedLimits>,
    key: String,
    cap: usize,
    state: Mutex<SyncState>,
}

#[derive(Debug)]
struct SyncState {
    successes: u32,
    throttled: Option<Duration>,
    last: Option<Instant>,
    busy: bool,
}

impl Sharing {
    pub fn new(limits: Arc<dyn SharedLimits>, key: String, cap: usize) -> Sharing {
        Sharing {
            limits,
            key,
            cap,
            state: Mutex::new(SyncState {
                successes: 0,
                throttled: None,
                last: None,
                busy: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn succeeded(&self) {
        self.lock().successes += 1;
    }

    /// This host was throttled: tell the cluster now (or right after the exchange
    /// under way).
    pub fn throttled(self: &Arc<Self>, period: Duration) {
        let go = {
            let mut s = self.lock();
            s.throttled = Some(period);
            s.last = None;
            !std::mem::replace(&mut s.busy, true)
        };
        if go && let Ok(rt) = tokio::runtime::Handle::try_current() {
            let me = self.clone();
            rt.spawn(async move {
                me.exchange();
            });
        } else if go {
            self.lock().busy = false;
        }
    }

    /// Whether it is time to exchange news (and if so, this caller does it).
    pub fn due(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if s.busy || s.last.is_some_and(|l| now.duration_since(l) < SYNC_EVERY) {
            return false;
        }
        s.busy = true;
        true
    }

    /// Exchange news (blocking: a database round trip). Returns the cooling left.
    pub fn exchange(&self) -> Option<Duration> {
        let (key, cap) = (self.key.as_str(), self.cap);
        let (successes, throttled) = {
            let mut s = self.lock();
            (std::mem::take(&mut s.successes), s.throttled.take())
        };
        let result = self.limits.sync(key, cap as u32, successes, throttled);
        let mut s = self.lock();
        s.busy = false;
        s.last = Some(Instant::now());
        match result {
            Ok(state) => Some(state.cooling).filter(|c| !c.is_zero()),
            Err(e) => {
                // Kept for the next exchange.
                s.successes += successes;
                if s.throttled.is_none() {
                    s.throttled = throttled;
                }
                tracing::warn!(destination = %escape(key), error = %e, "cannot share the destination's state with the other hosts");
                None
            }
        }
    }

    /// Take a connection slot, waiting up to two seconds for one; `None`: the cluster
    /// holds all the destination allows.
    pub async fn slot(&self) -> Result<SlotGuard, String> {
        let (key, cap) = (self.key.as_str(), self.cap);
        for _ in 0..20 {
            match self.limits.take_slot(key, cap as u32) {
                Ok(Some(slot)) => {
                    return Ok(SlotGuard {
                        limits: self.limits.clone(),
                        destination: key.to_owned(),
                        slot,
                    });
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(format!("cannot take a connection slot: {e}")),
            }
        }
        Err(format!(
            "the hosts sharing this spool hold all the connections {} allows now",
            escape(key)
        ))
    }
}
