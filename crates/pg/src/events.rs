//! The history and the suppression list in the database: `mailspool_events` (one row per
//! event, its JSON as the API gives it, indexed by message, Message-ID, recipient and
//! time; the cursor is the row's `seq`) and `mailspool_suppressions`.
//!
//! Suppression lookups run on every recipient at intake, so they are answered from a
//! copy of the table read again at most every [`SUPPRESSION_TTL`]: an entry another
//! host adds applies here within that time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mailspool_events::{Event, Query, Suppression};
use mailspool_spool::events::EventPage;
use mailspool_spool::{Result, SpoolError};

use crate::{PgSpool, db};

/// How old the copy of the suppression list may get.
pub(crate) const SUPPRESSION_TTL: Duration = Duration::from_secs(5);

/// The copy of the suppression list, by (domain, address).
#[derive(Debug, Default)]
pub(crate) struct SuppressionCache {
    read_at: Option<Instant>,
    entries: HashMap<(String, String), Suppression>,
}

fn bare(message_id: &str) -> &str {
    message_id.trim_start_matches('<').trim_end_matches('>')
}

impl PgSpool {
    pub(crate) fn insert_events(&self, events: &[Event], durable: bool) -> Result<()> {
        if events.is_empty() || !self.inner.config.events {
            return Ok(());
        }
        // One column each, for one INSERT ... SELECT FROM unnest(...).
        let times: Vec<i64> = events.iter().map(|e| e.time as i64).collect();
        let kinds: Vec<String> = events.iter().map(|e| e.kind.as_str().to_owned()).collect();
        let messages: Vec<String> = events.iter().map(|e| e.message.clone()).collect();
        let ids: Vec<Option<String>> = events
            .iter()
            .map(|e| e.message_id.as_deref().map(|m| bare(m).to_owned()))
            .collect();
        let rcpts: Vec<String> = events.iter().map(|e| e.recipient.to_lowercase()).collect();
        let json: Vec<String> = events
            .iter()
            .map(|e| e.to_line().trim_end().to_owned())
            .collect();
        self.run(move |inner| async move {
            // A delivery's event must survive what its node's removal survives.
            let mut c = match durable {
                true => inner.pool.get().await,
                false => inner.pool.settling().await,
            }
            .map_err(|e| db("connect", e))?;
            c.execute(
                "INSERT INTO mailspool_events (time, kind, message, message_id, recipient, event)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])",
                &[&times, &kinds, &messages, &ids, &rcpts, &json],
            )
            .await
            .map(|_| ())
            .map_err(|e| db("record events", e))
        })
    }

    pub(crate) fn select_events(&self, q: &Query) -> Result<EventPage> {
        let after: i64 = match q.cursor.as_deref() {
            Some("") | None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| SpoolError::Config(format!("not a history cursor: {c:?}")))?,
        };
        let limit = q.page_size();
        let since = q.since.map(|t| t as i64);
        let kinds: Vec<String> = q.kinds.iter().map(|k| k.as_str().to_owned()).collect();
        let key = q.key.clone();
        let recipient = q.recipient.as_deref().map(str::to_lowercase);
        let (rows, end) = self.run(move |inner| async move {
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            // Where the history ends now: a reader placed at the end (a new webhook)
            // starts after every row already there, not at the first.
            let end: i64 = c
                .query_one("SELECT coalesce(max(seq), 0) FROM mailspool_events", &[])
                .await
                .map_err(|e| db("read events", e))?
                .get(0);
            // Each filter is a sargable OR on its own index; the key is one of a message
            // id, a Message-ID or a recipient.
            c.query(
                "SELECT seq, event FROM mailspool_events
                  WHERE seq > $1
                    AND ($2::bigint IS NULL OR time >= $2)
                    AND (cardinality($3::text[]) = 0 OR kind = ANY($3))
                    AND ($4::text IS NULL OR message = $4 OR recipient = lower($4)
                         OR message_id = btrim($4, '<>'))
                    AND ($5::text IS NULL OR recipient = $5)
                  ORDER BY seq LIMIT $6",
                &[&after, &since, &kinds, &key, &recipient, &(limit as i64)],
            )
            .await
            .map(|rows| (rows, end))
            .map_err(|e| db("read events", e))
        })?;
        let mut page = EventPage::default();
        let mut last = after;
        for row in &rows {
            last = row.get(0);
            let text: &str = row.get(1);
            if let Ok(e) = serde_json::from_str::<Event>(text)
                && q.matches(&e)
            {
                page.events.push(e);
            }
        }
        page.more = rows.len() >= limit;
        // Read to the end: the next page starts after every row there was.
        page.next = Some(if page.more { last } else { last.max(end) }.to_string());
        Ok(page)
    }

    pub(crate) fn prune_events(&self) -> usize {
        let keep = self.inner.config.event_retention_days as i64 * 86_400;
        let oldest = mailspool_spool::now() as i64 - keep;
        self.run(move |inner| async move {
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            c.execute("DELETE FROM mailspool_events WHERE time < $1", &[&oldest])
                .await
                .map_err(|e| db("prune events", e))
        })
        .unwrap_or(0) as usize
    }

    pub(crate) fn cursor(&self, name: &str) -> Option<String> {
        let name = name.to_owned();
        self.run(move |inner| async move {
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            c.query_opt(
                "SELECT cursor FROM mailspool_cursors WHERE name = $1",
                &[&name],
            )
            .await
            .map(|r| r.map(|r| r.get::<_, String>(0)))
            .map_err(|e| db("read a cursor", e))
        })
        .ok()
        .flatten()
    }

    pub(crate) fn set_cursor(&self, name: &str, cursor: &str) -> Result<()> {
        let (name, cursor) = (name.to_owned(), cursor.to_owned());
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "INSERT INTO mailspool_cursors (name, cursor) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET cursor = EXCLUDED.cursor",
                &[&name, &cursor],
            )
            .await
            .map(|_| ())
            .map_err(|e| db("save a cursor", e))
        })
    }

    /// Take or renew a job's lease (a minute).
    pub(crate) fn lease_job(&self, name: &str) -> bool {
        let name = name.to_owned();
        let now = mailspool_spool::now() as i64;
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.query_opt(
                "INSERT INTO mailspool_jobs (name, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
                   WHERE mailspool_jobs.holder = EXCLUDED.holder OR mailspool_jobs.until < $4
                 RETURNING holder",
                &[&name, &inner.me.token, &(now + 60), &now],
            )
            .await
            .map(|r| r.is_some())
            .map_err(|e| db("take a job", e))
        })
        .unwrap_or(false)
    }

    pub(crate) fn all_suppressions(&self) -> Result<Vec<Suppression>> {
        let rows = self.run(move |inner| async move {
            let mut c = inner.pool.settling().await.map_err(|e| db("connect", e))?;
            c.query(
                "SELECT entry FROM mailspool_suppressions ORDER BY address, domain",
                &[],
            )
            .await
            .map_err(|e| db("read the suppression list", e))
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
            .collect())
    }

    pub(crate) fn upsert_suppression(&self, s: &Suppression) -> Result<()> {
        let (address, domain, expires, entry) = (
            s.address.clone(),
            s.domain.clone(),
            s.expires.map(|t| t as i64),
            serde_json::to_string(s).expect("an entry serializes"),
        );
        self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "INSERT INTO mailspool_suppressions (address, domain, expires, entry)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (address, domain) DO UPDATE
                   SET expires = EXCLUDED.expires, entry = EXCLUDED.entry",
                &[&address, &domain, &expires, &entry],
            )
            .await
            .map(|_| ())
            .map_err(|e| db("add to the suppression list", e))
        })?;
        self.cached_suppressions()
            .entries
            .insert(s.key(), s.clone());
        Ok(())
    }

    pub(crate) fn delete_suppression(&self, address: &str, domain: &str) -> Result<bool> {
        let (address, domain) = (address.to_lowercase(), domain.to_ascii_lowercase());
        let key = (domain.clone(), address.clone());
        let n = self.run(move |inner| async move {
            let mut c = inner.pool.get().await.map_err(|e| db("connect", e))?;
            c.execute(
                "DELETE FROM mailspool_suppressions WHERE address = $1 AND domain = $2",
                &[&address, &domain],
            )
            .await
            .map_err(|e| db("remove from the suppression list", e))
        })?;
        self.cached_suppressions().entries.remove(&key);
        Ok(n > 0)
    }

    fn cached_suppressions(&self) -> std::sync::MutexGuard<'_, SuppressionCache> {
        self.suppressions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lookup_suppression(&self, from: &str, to: &str) -> Option<Suppression> {
        let stale = self
            .cached_suppressions()
            .read_at
            .is_none_or(|t| t.elapsed() >= SUPPRESSION_TTL);
        if stale {
            match self.all_suppressions() {
                Ok(all) => {
                    let mut cache = self.cached_suppressions();
                    cache.entries = all.into_iter().map(|s| (s.key(), s)).collect();
                    cache.read_at = Some(Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the suppression list"),
            }
        }
        let to = to.to_lowercase();
        let domain = mailspool_events::domain_of(from).to_ascii_lowercase();
        let now = mailspool_spool::now();
        let cache = self.cached_suppressions();
        [(String::new(), to.clone()), (domain, to)]
            .iter()
            .filter_map(|k| cache.entries.get(k))
            .find(|s| s.applies(from, now))
            .cloned()
    }
}
