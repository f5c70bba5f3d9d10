//! Limits held across the hosts on this database ([`mailspool_spool::shared`]):
//! connection slots as leases, a message-rate bucket taken from in batches, and the
//! shared cooling period and adaptive window, in `mailspool_destinations` and
//! `mailspool_slots`; and records every host sees the same, in `mailspool_records`
//! (migration 3).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailspool_spool::shared::{SharedLimits, SharedRecords, SharedState};
use mailspool_spool::{Result, SpoolError};

use crate::{Inner, db};

/// How long a connection slot is held without renewal: a SIGKILLed host's slots are
/// free again this long after its last renewal (every third of it).
pub const SLOT_LEASE: Duration = Duration::from_secs(15);

/// A destination starts at this many connections at once across the cluster (as one
/// host's gate does); its cap, whoever asks, is applied on top (`LEAST`): the row may be
/// made by a rate's first take, which knows no cap.
const START_WINDOW: f64 = 5.0;

/// Most destinations remembered as having their rows made (see `PgShared::ready`).
const READY_MEMO: usize = 10_000;

/// How long "this destination's rows exist" is believed before they are made again.
/// Far below [`IDLE_DESTINATION`]: a row the sweep removed was unused for longer than any
/// process remembers it, so whoever uses it next makes it again.
const READY_FOR: Duration = Duration::from_secs(3600);

/// A destination nobody has taken a slot or a token of for this long is removed by the
/// sweep (it starts again at the starting window when next used).
pub(crate) const IDLE_DESTINATION: &str = "1 day";

/// The shared limits of one process: its slots are leased under its claim token.
pub(crate) struct PgShared {
    inner: Arc<Inner>,
    rt: tokio::runtime::Handle,
    /// Slots this process holds, renewed together.
    held: Arc<Mutex<HashSet<(String, u32)>>>,
    /// Destinations whose rows (and slots up to this cap) were made, and when.
    ready: Mutex<HashMap<(String, u32), Instant>>,
}

impl std::fmt::Debug for PgShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgShared")
            .field("holder", &self.inner.me.token)
            .finish()
    }
}

impl PgShared {
    pub(crate) fn start(inner: Arc<Inner>, rt: tokio::runtime::Handle) -> Arc<PgShared> {
        let shared = Arc::new(PgShared {
            inner,
            rt,
            held: Arc::default(),
            ready: Mutex::default(),
        });
        let weak = Arc::downgrade(&shared);
        shared.rt.spawn(async move {
            loop {
                tokio::time::sleep(SLOT_LEASE / 3).await;
                let Some(me) = weak.upgrade() else { return };
                if me.held().is_empty() {
                    continue;
                }
                if let Err(e) = me.renew().await {
                    tracing::warn!(error = %e, "cannot renew the connection slots on the spool database");
                }
            }
        });
        shared
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<(String, u32)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn holder(&self) -> String {
        let me = &self.inner.me;
        format!("{} {} {}", me.host, me.pid, me.token)
    }

    /// Run `f` on the database runtime and wait (off the async threads).
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        let wait = || {
            rx.recv()
                .unwrap_or_else(|_| Err(SpoolError::Database("the spool is closing".into())))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// Renew the slots this process holds now, and only those: one it gave back while
    /// the database could not be told (a failover) keeps this holder's name there, and
    /// renewing by name would keep it taken for ever; unrenewed, it runs out.
    async fn renew(&self) -> Result<u64> {
        let (destinations, slots): (Vec<String>, Vec<i32>) = self
            .held()
            .iter()
            .map(|(d, n)| (d.clone(), *n as i32))
            .unzip();
        let mut c = self.inner.pool.get().await.map_err(|e| db("connect", e))?;
        c.execute(
            "UPDATE mailspool_slots s SET expires = now() + make_interval(secs => $2)
               FROM unnest($3::text[], $4::int[]) AS h(destination, slot)
              WHERE s.holder = $1 AND s.destination = h.destination AND s.slot = h.slot",
            &[
                &self.holder(),
                &SLOT_LEASE.as_secs_f64(),
                &destinations,
                &slots,
            ],
        )
        .await
        .map_err(|e| db("renew connection slots", e))
    }

    /// Make the destination's row and its slots up to `cap` (once per process).
    async fn ensure(inner: &Inner, destination: &str, cap: u32) -> Result<()> {
        let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
        c.execute(
            "INSERT INTO mailspool_destinations (destination, conn_window) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&destination, &START_WINDOW],
        )
        .await
        .map_err(|e| db("add a destination", e))?;
        c.execute(
            "INSERT INTO mailspool_slots (destination, slot)
             SELECT $1, g FROM generate_series(0, $2 - 1) g ON CONFLICT DO NOTHING",
            &[&destination, &(cap as i32)],
        )
        .await
        .map_err(|e| db("add connection slots", e))?;
        Ok(())
    }

    fn ready(&self, destination: &str, cap: u32) -> Result<()> {
        let key = (destination.to_owned(), cap);
        if self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|at| at.elapsed() < READY_FOR)
        {
            return Ok(());
        }
        let inner = self.inner.clone();
        let d = destination.to_owned();
        self.call(async move { Self::ensure(&inner, &d, cap).await })?;
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        // A memo, not a registry: making a row again is harmless, so a daemon that has
        // met more destinations than this forgets them rather than growing for ever.
        if ready.len() >= READY_MEMO {
            ready.clear();
        }
        ready.insert(key, Instant::now());
        Ok(())
    }

    /// Run `op` once the destination's rows exist; `op` says `None` when they do not
    /// (the sweep removed them after this process last made them): they are made
    /// again and `op` runs once more.
    fn on_rows<T>(
        &self,
        destination: &str,
        cap: u32,
        op: impl Fn() -> Result<Option<T>>,
    ) -> Result<T> {
        self.ready(destination, cap)?;
        if let Some(done) = op()? {
            return Ok(done);
        }
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(destination.to_owned(), cap));
        self.ready(destination, cap)?;
        op()?.ok_or_else(|| {
            SpoolError::Database(format!(
                "the shared limits of {} vanished as they were made",
                mailspool_spool::escape(destination)
            ))
        })
    }
}

impl SharedLimits for PgShared {
    fn take_slot(&self, destination: &str, cap: u32) -> Result<Option<u32>> {
        let slot = self.on_rows(destination, cap, || {
            let inner = self.inner.clone();
            let (d, holder) = (destination.to_owned(), self.holder());
            self.call(async move {
                let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                // A free slot (never held, given back, or its holder's lease ran out) below
                // the cap and the shared window; SKIP LOCKED: two hosts never get one slot.
                // The second column says whether the destination's row exists at all.
                let row = c
                    .query_one(
                        "WITH t AS (UPDATE mailspool_slots s
                        SET holder = $3, expires = now() + make_interval(secs => $4)
                      WHERE (s.destination, s.slot) = (
                            SELECT f.destination, f.slot FROM mailspool_slots f
                             WHERE f.destination = $1
                               AND f.slot < LEAST($2, (SELECT ceil(conn_window)::int
                                                         FROM mailspool_destinations
                                                        WHERE destination = $1))
                               AND (f.holder IS NULL OR f.expires < now())
                             ORDER BY f.slot LIMIT 1
                             FOR UPDATE SKIP LOCKED)
                  RETURNING s.slot)
                     SELECT (SELECT slot FROM t),
                            EXISTS (SELECT 1 FROM mailspool_destinations WHERE destination = $1)",
                        &[&d, &(cap as i32), &holder, &SLOT_LEASE.as_secs_f64()],
                    )
                    .await
                    .map_err(|e| db("take a connection slot", e))?;
                let slot: Option<i32> = row.get(0);
                Ok(row.get::<_, bool>(1).then_some(slot.map(|n| n as u32)))
            })
        })?;
        if let Some(n) = slot {
            let fresh = self.held().insert((destination.to_owned(), n));
            tracing::debug!(destination = %mailspool_spool::escape(destination), slot = n, fresh, "connection slot taken");
        }
        Ok(slot)
    }

    fn give_slot(&self, destination: &str, slot: u32) {
        let was = self.held().remove(&(destination.to_owned(), slot));
        tracing::debug!(destination = %mailspool_spool::escape(destination), slot, was, "connection slot given back");
        let inner = self.inner.clone();
        let (d, holder) = (destination.to_owned(), self.holder());
        // Not waited for: if it fails, the lease runs out instead.
        self.rt.spawn(async move {
            let given = async {
                let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                c.execute(
                    // A free slot's `expires` says when it was last used (the sweep).
                    "UPDATE mailspool_slots SET holder = NULL, expires = now()
                      WHERE destination = $1 AND slot = $2 AND holder = $3",
                    &[&d, &(slot as i32), &holder],
                )
                .await
                .map_err(|e| db("give a connection slot back", e))
            };
            if let Err(e) = given.await {
                tracing::debug!(error = %e, "slot not given back; its lease runs out");
            }
        });
    }

    fn take_tokens(&self, destination: &str, want: u32, per_sec: f64, burst: f64) -> Result<u32> {
        self.on_rows(destination, 1, || {
        let inner = self.inner.clone();
        let d = destination.to_owned();
        self.call(async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            // The bucket fills from its last take to the wall clock; a statement that
            // waited for the row's lock may read a clock older than that take: it adds
            // nothing then, and leaves the newer time in place (no interval counted twice).
            let row = c
                .query_opt(
                    "WITH t AS (SELECT clock_timestamp() AS at),
                          b AS (SELECT d.destination, t.at, d.tokens_at,
                                       LEAST($4::float8, d.tokens + GREATEST(0,
                                           EXTRACT(EPOCH FROM t.at - d.tokens_at)::float8) * $3::float8)
                                         AS have
                                  FROM mailspool_destinations d, t
                                 WHERE d.destination = $1 FOR UPDATE OF d),
                          g AS (SELECT *, GREATEST(0, LEAST($2::float8, floor(have))) AS granted FROM b)
                   UPDATE mailspool_destinations m
                      SET tokens = g.have - g.granted, tokens_at = GREATEST(g.tokens_at, g.at)
                     FROM g WHERE m.destination = g.destination
                RETURNING g.granted",
                    &[&d, &f64::from(want), &per_sec, &burst],
                )
                .await
                .map_err(|e| db("take message tokens", e))?;
            Ok(row.map(|r| r.get::<_, f64>(0) as u32))
        })
        })
    }

    fn sync(
        &self,
        destination: &str,
        cap: u32,
        successes: u32,
        throttled: Option<Duration>,
    ) -> Result<SharedState> {
        self.on_rows(destination, cap, || {
            let inner = self.inner.clone();
            let d = destination.to_owned();
            let cooling = throttled.map(|p| p.as_secs_f64());
            self.call(async move {
                let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
                // Growth as one host's gate grows: +1/window per success. A throttling
                // halves it and starts the cooling, once per period: the refusals of the
                // deliveries under way when it began (on any host) are the same one.
                let row = c
                    .query_opt(
                        "UPDATE mailspool_destinations SET
                        conn_window = CASE
                            WHEN $4::float8 IS NOT NULL
                                 AND (cooling_until IS NULL OR cooling_until <= now())
                            THEN GREATEST(1, LEAST($2::float8, conn_window) / 2)
                            ELSE LEAST($2::float8, conn_window + $3::float8 / conn_window) END,
                        cooling_until = CASE
                            WHEN $4::float8 IS NOT NULL
                                 AND (cooling_until IS NULL OR cooling_until <= now())
                            THEN now() + make_interval(secs => $4::float8)
                            ELSE cooling_until END
                      WHERE destination = $1
                  RETURNING conn_window,
                            GREATEST(0, EXTRACT(EPOCH FROM cooling_until - now()))::float8",
                        &[&d, &f64::from(cap.max(1)), &f64::from(successes), &cooling],
                    )
                    .await
                    .map_err(|e| db("share a destination's state", e))?;
                Ok(row.map(|row| {
                    let cooling: Option<f64> = row.get(1);
                    SharedState {
                        window: row.get(0),
                        cooling: Duration::from_secs_f64(cooling.unwrap_or(0.0)),
                    }
                }))
            })
        })
    }
}

impl SharedRecords for PgShared {
    fn get(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let inner = self.inner.clone();
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.call(async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            let row = c
                .query_opt(
                    "SELECT value FROM mailspool_records
                      WHERE kind = $1 AND key = $2 AND expires > now() AND value IS NOT NULL",
                    &[&kind, &key],
                )
                .await
                .map_err(|e| db("read a shared record", e))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn put(&self, kind: &str, key: &str, value: &[u8], keep: Duration) -> Result<()> {
        let inner = self.inner.clone();
        let (kind, key, value) = (kind.to_owned(), key.to_owned(), value.to_vec());
        self.call(async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "INSERT INTO mailspool_records (kind, key, value, expires)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4))
                 ON CONFLICT (kind, key)
                 DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires",
                &[&kind, &key, &value, &keep.as_secs_f64()],
            )
            .await
            .map_err(|e| db("keep a shared record", e))?;
            Ok(())
        })
    }

    fn claim(&self, kind: &str, key: &str, hold: Duration) -> Result<bool> {
        let inner = self.inner.clone();
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.call(async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            // Made here, or taken over from one that expired (its claimer died).
            let row = c
                .query_opt(
                    "INSERT INTO mailspool_records (kind, key, value, expires)
                     VALUES ($1, $2, NULL, now() + make_interval(secs => $3))
                     ON CONFLICT (kind, key) DO UPDATE
                        SET value = NULL, expires = EXCLUDED.expires
                      WHERE mailspool_records.expires <= now()
                     RETURNING 1",
                    &[&kind, &key, &hold.as_secs_f64()],
                )
                .await
                .map_err(|e| db("claim a shared record", e))?;
            Ok(row.is_some())
        })
    }

    fn remove(&self, kind: &str, key: &str) -> Result<()> {
        let inner = self.inner.clone();
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.call(async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "DELETE FROM mailspool_records WHERE kind = $1 AND key = $2",
                &[&kind, &key],
            )
            .await
            .map_err(|e| db("remove a shared record", e))?;
            Ok(())
        })
    }
}
