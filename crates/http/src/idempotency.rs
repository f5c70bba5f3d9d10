//! `Idempotency-Key`: a retried POST (the client lost our reply) gets the first
//! result instead of queueing the mail twice. Results are files under the spool
//! (`http-idempotency/`, 0700; outside the tiers, so Mail::Spool 0.50 never sees them),
//! keyed by a hash of the token's name and the key, kept 24 hours, so they survive a
//! restart of the daemon. Requests with one key run one at a time.
//!
//! With a database spool the results are records in the database instead
//! ([`mailspool_spool::shared::SharedRecords`]), so a retry that a load balancer sends
//! to another host is recognised there too, and two hosts given the same key at once
//! run it once: the first claims the key, the other waits for its result.
//!
//! What is kept: the request body's hash (the same key with another body is a client
//! bug, refused with 422) and the reply. Only successes are kept: a failed request
//! queued nothing, and its retry should run again.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use mailspool_spool::shared::SharedRecords;

use super::error::ApiError;
use super::tokens::{hex, sha256};

/// How long a key is remembered.
pub const KEEP_SECONDS: u64 = 24 * 3600;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

#[derive(Serialize, Deserialize)]
struct Stored {
    request: String,
    status: u16,
    response: serde_json::Value,
}

impl Stored {
    /// What a successful request leaves for its retries.
    fn of(request: &str, status: StatusCode, response: &serde_json::Value) -> Stored {
        Stored {
            request: request.to_owned(),
            status: status.as_u16(),
            response: response.clone(),
        }
    }
}

/// The store of one spool.
pub struct Store {
    dir: PathBuf,
    /// The spool's shared records, when it is a database (then `dir` is unused).
    records: Option<Arc<dyn SharedRecords>>,
    inflight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

/// The kind of the shared records that hold results.
const RECORD_KIND: &str = "idempotency";

/// How long another host's request with the same key is waited for.
const WAIT_FOR_OTHER: std::time::Duration = std::time::Duration::from_secs(30);

impl Store {
    /// The store under `spool_dir`.
    pub fn new(spool_dir: &Path) -> Store {
        Store {
            dir: spool_dir.join("http-idempotency"),
            records: None,
            inflight: Mutex::default(),
        }
    }

    /// The store in a database spool's shared records.
    pub fn shared(records: Arc<dyn SharedRecords>) -> Store {
        Store {
            dir: PathBuf::new(),
            records: Some(records),
            inflight: Mutex::default(),
        }
    }

    /// Run `work` once per (caller, key): a repeat with the same body returns the first
    /// successful result (and `true`: replayed).
    pub async fn run<F, Fut>(
        &self,
        caller: &str,
        key: Option<&str>,
        body: &[u8],
        work: F,
    ) -> Result<(StatusCode, serde_json::Value, bool), ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
    {
        let Some(key) = key else {
            let (s, v) = work().await?;
            return Ok((s, v, false));
        };
        if key.is_empty()
            || key.len() > MAX_KEY_LEN
            || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(ApiError::bad_request(
                "bad_idempotency_key",
                format!("Idempotency-Key must be 1-{MAX_KEY_LEN} printable ASCII characters"),
            ));
        }
        let mut id_text = caller.as_bytes().to_vec();
        id_text.push(0);
        id_text.extend_from_slice(key.as_bytes());
        let id = sha256(&id_text);
        let request = hex(&sha256(body));
        let gate = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(id).or_default().clone()
        };
        let result = {
            let _one_at_a_time = gate.lock().await;
            self.run_locked(&id, &request, work).await
        };
        {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if Arc::strong_count(&gate) <= 2 {
                map.remove(&id);
            }
        }
        result
    }

    async fn run_locked<F, Fut>(
        &self,
        id: &[u8; 32],
        request: &str,
        work: F,
    ) -> Result<(StatusCode, serde_json::Value, bool), ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
    {
        if let Some(records) = &self.records {
            return self.run_shared(records, &hex(id), request, work).await;
        }
        let path = self.dir.join(hex(id));
        if let Some(stored) = self.read(&path) {
            return replay(stored, request);
        }
        let (status, response) = work().await?;
        if status.is_success() {
            let stored = Stored::of(request, status, &response);
            if let Err(e) = self.write(&path, &stored) {
                tracing::warn!(error = %e, "cannot keep an Idempotency-Key's result");
            }
        }
        Ok((status, response, false))
    }

    /// `run_locked` on the database's records: the first host to claim the key runs
    /// the request; one that finds it claimed waits for the result (the claim runs out
    /// if its host dies, and the key may be claimed again).
    async fn run_shared<F, Fut>(
        &self,
        records: &Arc<dyn SharedRecords>,
        key: &str,
        request: &str,
        work: F,
    ) -> Result<(StatusCode, serde_json::Value, bool), ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
    {
        let unavailable = |e: mailspool_spool::SpoolError| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "spool_unavailable",
                format!("cannot check the Idempotency-Key: {e}"),
            )
        };
        let started = std::time::Instant::now();
        loop {
            if let Some(bytes) = records.get(RECORD_KIND, key).map_err(unavailable)? {
                let Ok(stored) = serde_json::from_slice::<Stored>(&bytes) else {
                    break;
                };
                return replay(stored, request);
            }
            if records
                .claim(RECORD_KIND, key, WAIT_FOR_OTHER)
                .map_err(unavailable)?
            {
                break;
            }
            if started.elapsed() > WAIT_FOR_OTHER {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still being processed",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let result = work().await;
        match &result {
            Ok((status, response)) if status.is_success() => {
                let stored = Stored::of(request, *status, response);
                let bytes = serde_json::to_vec(&stored).unwrap_or_default();
                let keep = std::time::Duration::from_secs(KEEP_SECONDS);
                if let Err(e) = records.put(RECORD_KIND, key, &bytes, keep) {
                    tracing::warn!(error = %e, "cannot keep an Idempotency-Key's result");
                }
            }
            // Nothing was queued: the key is free for the retry.
            _ => {
                let _ = records.remove(RECORD_KIND, key);
            }
        }
        result.map(|(s, v)| (s, v, false))
    }

    /// A stored result still in force; never through a symlink, never another user's.
    fn read(&self, path: &Path) -> Option<Stored> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        let meta = file.metadata().ok()?;
        let fresh =
            mailspool_spool::now().saturating_sub(meta.mtime().max(0) as u64) < KEEP_SECONDS;
        if !meta.is_file() || meta.uid() != rustix::process::geteuid().as_raw() || !fresh {
            return None;
        }
        serde_json::from_reader(std::io::Read::take(file, 1 << 20)).ok()
    }

    fn write(&self, path: &Path, stored: &Stored) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        let tmp = self
            .dir
            .join(format!(".{}", mailspool_spool::unique_token()));
        let result = (|| {
            let mut f = mailspool_spool::storage::os::create_new(&tmp)?;
            f.write_all(&serde_json::to_vec(stored).unwrap_or_default())?;
            f.sync_data()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Remove results older than a day (the database sweeps its own records) (called by the sampler now and then).
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = mailspool_spool::now();
        for e in entries.flatten() {
            if let Ok(m) = e.path().symlink_metadata()
                && now.saturating_sub(m.mtime().max(0) as u64) >= KEEP_SECONDS
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The first result again, unless the same key came with another body.
fn replay(
    stored: Stored,
    request: &str,
) -> Result<(StatusCode, serde_json::Value, bool), ApiError> {
    if stored.request != request {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request body",
        ));
    }
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    Ok((status, stored.response, true))
}
