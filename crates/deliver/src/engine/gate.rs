//! The gate in front of each destination: an adaptive window of deliveries at once
//! (grown on success, halved when the receiver throttles us, as Postfix adapts its
//! destination concurrency), message and connection rates, and a cooling period after
//! throttling during which the destination's mail waits in its tier.
//!
//! A delivery that cannot pass soon is not kept waiting: it is left for a later pass
//! (its nodes unlocked, their tiers unchanged), so a slow or throttled destination
//! never holds the task slots other destinations need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use mailspool_spool::shared::SharedLimits;

use super::shared::{SharedBucket, Sharing, TokenCheck};
use crate::shaping::{Limits, Rate};

/// A token bucket: `count` tokens per `per`, at most `count` saved.
#[derive(Debug)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            tokens: f64::from(rate.count),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_sec = f64::from(self.rate.count) / self.rate.per.as_secs_f64();
        let gained = now.saturating_duration_since(self.last).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + gained).min(f64::from(self.rate.count));
        self.last = now;
    }

    /// How long until a token is there (zero: now).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        let per_sec = f64::from(self.rate.count) / self.rate.per.as_secs_f64();
        Duration::from_secs_f64((1.0 - self.tokens) / per_sec)
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

#[derive(Debug)]
struct State {
    active: usize,
    waiting: usize,
    /// The adaptive window: deliveries allowed at once (at least 1).
    window: f64,
    cooling_until: Option<Instant>,
    /// Throttling replies in a row (each doubles the cooling period).
    strikes: u32,
    /// The window the receiver last accepted before throttling us: above it the window
    /// grows 16 times slower (TCP's slow-start threshold, for connections).
    ceiling: Option<f64>,
    messages: Option<Bucket>,
    /// The message rate held with the other hosts (instead of `messages`).
    shared_messages: Option<SharedBucket>,
    connections: Option<Bucket>,
}

/// Where the message rate stands for one delivery.
enum RateNow {
    Go,
    Wait(Duration),
    /// Fetch a batch of shared tokens: (want, fill, burst).
    Fetch(u32, f64, f64),
}

impl State {
    fn rate_now(&mut self, now: Instant, window_open: bool) -> RateNow {
        if let Some(b) = self.shared_messages.as_mut() {
            // Tokens fetched while the window is full would only run out unused.
            if !window_open {
                return RateNow::Wait(Duration::ZERO);
            }
            return match b.check(now, self.waiting + 1) {
                TokenCheck::Ready => RateNow::Go,
                TokenCheck::Wait(w) => RateNow::Wait(w),
                TokenCheck::Fetch { want, fill, burst } => RateNow::Fetch(want, fill, burst),
            };
        }
        match self
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait(now))
        {
            w if w.is_zero() => RateNow::Go,
            w => RateNow::Wait(w),
        }
    }

    fn take_token(&mut self) {
        if let Some(b) = self.shared_messages.as_mut() {
            b.take();
        } else if let Some(b) = self.messages.as_mut() {
            b.take();
        }
    }
}

/// What `enter` does after looking.
enum Step {
    Sleep(Duration),
    Fetch(u32, f64, f64),
}

/// One destination's gate.
#[derive(Debug)]
pub(crate) struct Destination {
    pub key: String,
    pub limits: Limits,
    state: Mutex<State>,
    freed: Notify,
    /// Connections deliveries are using (receivers count these plus the idle ones).
    in_use: std::sync::atomic::AtomicUsize,
    /// Limits held with the other hosts on the store, when it keeps them.
    pub sharing: Option<Arc<Sharing>>,
}

/// A connection in use by a delivery to a destination.
pub(crate) struct InUse<'a>(&'a Destination);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0
            .in_use
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a delivery does not pass now, and when to look again.
#[derive(Debug)]
pub(crate) struct NotNow {
    pub reason: String,
    pub after: Duration,
}

/// A pass through the gate; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Pass {
    pub dest: Arc<Destination>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.dest.lock().active -= 1;
        self.dest.freed.notify_one();
    }
}

/// A rate wait shorter than this is slept through rather than left for a later pass.
const SHORT_WAIT: Duration = Duration::from_millis(1500);

impl Destination {
    fn new(key: String, limits: Limits, shared: Option<Arc<dyn SharedLimits>>) -> Destination {
        // Postfix starts a destination at 5 at once and adapts from there.
        let window = limits.max_connections.clamp(1, 5) as f64;
        let shared_rate = shared
            .is_some()
            .then_some(limits.max_message_rate)
            .flatten();
        Destination {
            sharing: shared.map(|l| Arc::new(Sharing::new(l, key.clone(), limits.max_connections))),
            state: Mutex::new(State {
                active: 0,
                waiting: 0,
                window,
                cooling_until: None,
                strikes: 0,
                ceiling: None,
                messages: limits
                    .max_message_rate
                    .filter(|_| shared_rate.is_none())
                    .map(Bucket::new),
                shared_messages: shared_rate.map(SharedBucket::new),
                connections: limits.connection_rate.map(Bucket::new),
            }),
            key,
            limits,
            freed: Notify::new(),
            in_use: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliveries allowed at once now.
    pub fn window(&self) -> usize {
        self.lock().window as usize
    }

    /// Connections in use by deliveries now (idle pooled ones not counted).
    pub fn sessions_in_use(&self) -> usize {
        self.in_use.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Count a connection in use until the guard drops.
    pub fn session_in_use(&self) -> InUse<'_> {
        self.in_use
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InUse(self)
    }

    /// Enter for one message: wait for a place (at most `max_waiting` deliveries wait
    /// here at once; the rest are told to come back), or briefly for a rate token.
    pub async fn enter(self: &Arc<Self>, max_waiting: usize) -> Result<Pass, NotNow> {
        self.exchange_if_due();
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let step = {
                let mut s = self.lock();
                let now = Instant::now();
                if let Some(until) = s.cooling_until {
                    if until > now {
                        return Err(NotNow {
                            reason: format!(
                                "{} throttled us; its mail waits {} s more",
                                self.key,
                                (until - now).as_secs() + 1
                            ),
                            after: until - now,
                        });
                    }
                    s.cooling_until = None;
                }
                let allowed = (s.window as usize).max(1);
                let open = s.active < allowed;
                match s.rate_now(now, open) {
                    RateNow::Fetch(want, fill, burst) => Step::Fetch(want, fill, burst),
                    RateNow::Go if open => {
                        s.active += 1;
                        s.take_token();
                        return Ok(Pass { dest: self.clone() });
                    }
                    rate => {
                        let rate_wait = match rate {
                            RateNow::Wait(w) => w,
                            _ => Duration::ZERO,
                        };
                        if rate_wait > SHORT_WAIT {
                            return Err(NotNow {
                                reason: format!("{}: message rate reached", self.key),
                                after: rate_wait,
                            });
                        }
                        // Waiters beyond the bound are turned away: they would only
                        // hold task slots other destinations could use.
                        if s.waiting >= max_waiting.max(allowed) {
                            return Err(NotNow {
                                reason: format!(
                                    "{}: {} deliveries at once already",
                                    self.key, s.active
                                ),
                                after: Duration::from_secs(1),
                            });
                        }
                        s.waiting += 1;
                        Step::Sleep(rate_wait)
                    }
                }
            };
            match step {
                Step::Fetch(want, fill, burst) => {
                    let granted = self.fetch_tokens(want, fill, burst);
                    if let Some(b) = self.lock().shared_messages.as_mut() {
                        b.granted(granted);
                    }
                    self.freed.notify_waiters();
                }
                Step::Sleep(sleep_for) => {
                    if sleep_for.is_zero() {
                        freed.await;
                    } else {
                        tokio::time::sleep(sleep_for).await;
                    }
                    self.lock().waiting -= 1;
                }
            }
        }
    }

    /// Take a batch of the message rate shared with the other hosts (a database round
    /// trip, waited for off the async threads); none on an error.
    fn fetch_tokens(&self, want: u32, fill: f64, burst: f64) -> u32 {
        let Some(sharing) = &self.sharing else {
            return want;
        };
        sharing
            .limits
            .take_tokens(&self.key, want, fill, burst)
            .unwrap_or_else(|e| {
                tracing::warn!(destination = %mailspool_spool::escape(&self.key), error = %e, "cannot take from the message rate shared with the other hosts");
                0
            })
    }

    /// About once a second, tell the other hosts this one's successes and hear of a
    /// cooling one of them started.
    fn exchange_if_due(self: &Arc<Self>) {
        let Some(sharing) = &self.sharing else {
            return;
        };
        if !sharing.due(Instant::now()) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let Some(sharing) = &me.sharing else { return };
            if let Some(cooling) = sharing.exchange() {
                let until = Instant::now() + cooling;
                let mut s = me.lock();
                if s.cooling_until.is_none_or(|u| u < until) {
                    s.cooling_until = Some(until);
                    tracing::info!(destination = %mailspool_spool::escape(&me.key), cooling = cooling.as_secs(), "another host was throttled; this destination's mail waits here too");
                }
            }
        });
    }

    /// Whether a new connection may be opened now (the connection rate); takes a token.
    pub fn may_connect(&self) -> bool {
        let mut s = self.lock();
        let now = Instant::now();
        let Some(b) = s.connections.as_mut() else {
            return true;
        };
        if !b.wait(now).is_zero() {
            return false;
        }
        b.take();
        true
    }

    /// A delivery went through: widen the window by 1/window (one more at once per
    /// window's worth of successes), up to `max_connections`; above the window the
    /// receiver last throttled us at, 16 times slower (probing, not charging).
    pub fn succeeded(&self) {
        if let Some(sharing) = &self.sharing {
            sharing.succeeded();
        }
        let mut s = self.lock();
        s.strikes = 0;
        let max = self.limits.max_connections.max(1) as f64;
        let step = match s.ceiling {
            Some(c) if s.window >= c => 1.0 / (16.0 * s.window),
            _ => 1.0 / s.window,
        };
        s.window = (s.window + step).min(max);
    }

    /// A connection failed: one fewer at once.
    pub fn connection_failed(&self) {
        let mut s = self.lock();
        s.window = (s.window - 1.0).max(1.0);
    }

    /// The receiver throttled us: halve the window and leave the destination alone for
    /// the cooling period (doubled for each throttling in a row). Refusals of deliveries
    /// that were under way when it started are one throttling, not several: they
    /// neither halve the window again nor lengthen the period. Returns the period left.
    pub fn throttled(&self, cooling: Duration, max_cooling: Duration) -> Duration {
        let mut s = self.lock();
        let now = Instant::now();
        if let Some(until) = s.cooling_until.filter(|u| *u > now) {
            return until - now;
        }
        s.window = (s.window / 2.0).max(1.0);
        s.ceiling = Some(s.window);
        let period = cooling
            .saturating_mul(1u32 << s.strikes.min(16))
            .min(max_cooling);
        s.strikes = s.strikes.saturating_add(1);
        s.cooling_until = Some(now + period);
        self.freed.notify_waiters();
        if let Some(sharing) = &self.sharing {
            sharing.throttled(period);
        }
        period
    }
}

/// Every destination seen, by key.
#[derive(Debug, Default)]
pub(crate) struct Destinations {
    map: Mutex<HashMap<String, Arc<Destination>>>,
}

/// Destinations remembered at most; idle ones are forgotten beyond it.
const MAX_DESTINATIONS: usize = 10_000;

impl Destinations {
    /// The gate of `key`, made with `limits` the first time (and again when the
    /// configuration changed them).
    pub fn get(
        &self,
        key: &str,
        limits: &Limits,
        shared: Option<Arc<dyn SharedLimits>>,
    ) -> Arc<Destination> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(key)
            && d.limits == *limits
        {
            return d.clone();
        }
        if map.len() >= MAX_DESTINATIONS {
            map.retain(|_, d| {
                let s = d.lock();
                s.active > 0 || s.waiting > 0 || s.cooling_until.is_some()
            });
        }
        let d = Arc::new(Destination::new(key.to_owned(), limits.clone(), shared));
        map.insert(key.to_owned(), d.clone());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits {
            max_connections: max,
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn the_window_grows_on_success_and_halves_on_throttling() {
        let d = Arc::new(Destination::new("d".into(), limits(20), None));
        assert_eq!(d.window(), 5);
        for _ in 0..40 {
            d.succeeded();
        }
        assert!(d.window() > 5 && d.window() <= 20, "{}", d.window());
        let before = d.window();
        let ms = Duration::from_millis;
        let cooled = d.throttled(ms(60), ms(900));
        assert_eq!(cooled, ms(60));
        assert_eq!(d.window(), before / 2);
        // More refusals of the same burst: one throttling.
        assert!(d.throttled(ms(60), ms(900)) <= ms(60));
        assert_eq!(d.window(), before / 2, "not halved again");
        let e = d.enter(usize::MAX).await.unwrap_err();
        assert!(e.reason.contains("throttled"), "{}", e.reason);
        // Once it has cooled, throttling again (no success between) doubles the period.
        tokio::time::sleep(ms(70)).await;
        assert_eq!(d.throttled(ms(60), ms(900)), ms(120), "doubles in a row");
        tokio::time::sleep(ms(130)).await;
        for _ in 0..10 {
            d.throttled(ms(1), ms(1));
            tokio::time::sleep(ms(2)).await;
        }
        assert_eq!(d.window(), 1, "never below one");
        // Above the window it was throttled at, it grows 16 times slower.
        for _ in 0..4 {
            d.succeeded();
        }
        assert_eq!(d.window(), 1, "4 successes: still probing at one");
        for _ in 0..24 {
            d.succeeded();
        }
        assert_eq!(d.window(), 2, "about 24 successes to reach two");
    }

    #[tokio::test]
    async fn places_are_limited_and_excess_waiters_are_turned_away() {
        let d = Arc::new(Destination::new("d".into(), limits(2), None));
        let a = d.enter(2).await.unwrap();
        let _b = d.enter(2).await.unwrap();
        // One may wait (the window's worth), the next is told to come back.
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.enter(2).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let d3 = d.clone();
        let waiter2 = tokio::spawn(async move { d3.enter(2).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let turned = d.enter(2).await.unwrap_err();
        assert!(turned.reason.contains("at once"), "{}", turned.reason);
        drop(a);
        waiter.await.unwrap().unwrap();
        // waiter2 was the second waiter for a window of two: it got a place too.
        waiter2.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_message_rate_is_kept() {
        let d = Arc::new(Destination::new(
            "d".into(),
            Limits {
                max_message_rate: Some(Rate::parse("2/min").unwrap()),
                ..limits(5)
            },
            None,
        ));
        drop(d.enter(2).await.unwrap());
        drop(d.enter(2).await.unwrap());
        let e = d.enter(2).await.unwrap_err();
        assert!(e.reason.contains("rate"), "{}", e.reason);
        assert!(e.after > Duration::from_secs(20), "{:?}", e.after);
    }
}
