//! Connection slots for the HTTP server: at most `max_connections` at once and
//! `max_connections_per_ip` per client address, and idle connections give way. A client
//! that opens many keep-alive connections and sends nothing (or sends headers slowly)
//! would otherwise hold every slot for the header timeout, renewable forever, and lock
//! out the API, `/metrics` and `/healthz`; here a new connection that finds no slot free
//! closes the connection idle the longest (one not inside a request), so only requests
//! actually being served can fill the server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a new connection waits for an evicted one to go.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// One connection's state, as the slot table sees it.
#[derive(Debug)]
pub struct Conn {
    /// Inside a request (our service is working on one).
    busy: AtomicBool,
    /// When it last became idle (ms since the table's start).
    idle_since: AtomicU64,
    /// Told to close after its current request (or at once when idle).
    pub close: Notify,
    ip: IpAddr,
}

impl Conn {
    /// A request begins.
    pub fn enter(&self) {
        self.busy.store(true, Ordering::Relaxed);
    }
    /// A request ended.
    pub fn leave(&self, table: &Slots) {
        self.idle_since.store(table.now_ms(), Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
    }
}

/// The table of open connections.
#[derive(Debug)]
pub struct Slots {
    total: Arc<Semaphore>,
    per_ip: usize,
    start: Instant,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    next: AtomicU64,
}

/// A connection's hold on its slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    table: Arc<Slots>,
    key: u64,
    /// The connection's state.
    pub conn: Arc<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        let mut by_ip = self.table.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&self.conn.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.conn.ip);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// This address holds `max_connections_per_ip` already.
    PerIp,
    /// Every slot is inside a request.
    Full,
}

impl Slots {
    /// A table for `total` connections, `per_ip` per client address.
    pub fn new(total: usize, per_ip: usize) -> Arc<Slots> {
        Arc::new(Slots {
            total: Arc::new(Semaphore::new(total)),
            per_ip: per_ip.max(1),
            start: Instant::now(),
            open: Mutex::new(HashMap::new()),
            by_ip: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A slot for a connection from `ip`: refused above the per-address cap; when the
    /// server is full, the connection idle the longest is closed to make room.
    pub async fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = by_ip.entry(ip).or_default();
            if *n >= self.per_ip {
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        let permit = match self.total.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if self.evict_idlest() => {
                tokio::time::timeout(EVICTION_WAIT, self.total.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            self.release_ip(ip);
            return Err(Refused::Full);
        };
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            busy: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
            ip,
        });
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, conn.clone());
        Ok(Slot {
            table: self.clone(),
            key,
            conn,
            _permit: permit,
        })
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&ip);
            }
        }
    }

    /// Tell the connection idle the longest to close; false when every one is busy.
    fn evict_idlest(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let idlest = open
            .values()
            .filter(|c| !c.busy.load(Ordering::Relaxed))
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        match idlest {
            Some(c) => {
                tracing::info!(peer = %c.ip, "HTTP server full: closing the connection idle the longest");
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_ip_cap_and_idle_eviction() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.take(a).await.unwrap();
        let a2 = slots.take(a).await.unwrap();
        assert_eq!(slots.take(a).await.unwrap_err(), Refused::PerIp);
        let b1 = slots.take(b).await.unwrap();
        // Full: the three are busy, so nothing gives way.
        for s in [&a1, &a2, &b1] {
            s.conn.enter();
        }
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(slots.take(c).await.unwrap_err(), Refused::Full);
        // a2 goes idle: told to close, and once it does the newcomer gets its slot.
        a2.conn.leave(&slots);
        let conn = a2.conn.clone();
        let closer = tokio::spawn(async move {
            conn.close.notified().await;
            drop(a2);
        });
        let c1 = slots.take(c).await.unwrap();
        closer.await.unwrap();
        drop((a1, b1, c1));
        assert!(slots.by_ip.lock().unwrap().is_empty());
        assert!(slots.open.lock().unwrap().is_empty());
    }
}
