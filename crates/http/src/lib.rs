//! mailspool's HTTP server: injection (`POST /v1/messages`), the admin API (`/v1/queue`...),
//! Prometheus metrics (`/metrics`), a health check (`/healthz`) and the web dashboard
//! (`/`). Off unless `[http]` is configured; served by the daemon, and by `serve`
//! when `serve_listen` is set.
//!
//! Every endpoint but `/healthz` and `/metrics` needs a bearer token of the right scope
//! (the dashboard keeps it in a session cookie). Every input is bounded: headers by
//! hyper's limits and a read timeout, bodies by `max_body_size` and `request_timeout`,
//! connections by `max_connections` and `max_connections_per_ip` (idle ones give way).

mod auth;
mod dashboard;
mod error;
mod history;
mod idempotency;
mod inject;
mod queue;
mod sampler;
mod server;
mod slots;
pub mod tokens;
mod turns;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

// The library's items under the names the modules use (`crate::admin`, ...).
use mailspool::config::HttpConfig;
use mailspool::{Mailspool, Sent, admin, config};

pub use error::ApiError;
pub use server::{Bound, bind};

/// What every handler shares.
pub struct AppState {
    /// The spool, opened for intake and administration.
    pub ms: Arc<Mailspool>,
    /// The `[http]` settings.
    pub http: HttpConfig,
    /// Tokens, re-read when their file changes.
    pub tokens: tokens::TokenCache,
    /// Dashboard sessions.
    pub sessions: auth::Sessions,
    /// Results of requests made with an `Idempotency-Key`.
    pub idempotency: idempotency::Store,
    /// Whether this server speaks HTTPS (cookies are then `Secure`).
    pub tls: bool,
    /// The last count of the spool (metrics and dashboard).
    pub snapshot: sampler::Snapshot,
}

impl AppState {
    /// Set up the shared state (reads the tokens file: an unreadable one is an error
    /// now, not a lock-out later).
    pub fn new(ms: Arc<Mailspool>, http: HttpConfig) -> Result<AppState, String> {
        let tokens = tokens::TokenCache::new(&http.tokens_file).map_err(|e| e.to_string())?;
        // Kept beside a file spool; with a database, in the database, where every
        // host sees them.
        let idempotency = match (
            ms.spool().records(),
            ms.spool().cache_dir().map(std::path::Path::to_path_buf),
        ) {
            (Some(records), _) => idempotency::Store::shared(records),
            (None, Some(dir)) => idempotency::Store::new(&dir),
            (None, None) => {
                return Err("the spool keeps no HTTP idempotency records".into());
            }
        };
        Ok(AppState {
            tls: http.tls.is_some(),
            ms,
            http,
            tokens,
            sessions: auth::Sessions::default(),
            idempotency,
            snapshot: sampler::Snapshot::default(),
        })
    }
}

/// Every route.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/messages", post(inject::one))
        .route("/v1/messages/batch", post(inject::batch))
        .route("/v1/queue", get(queue::list))
        .route("/v1/queue/bulk/{action}", post(queue::bulk_change))
        .route("/v1/queue/{id}", get(queue::show).delete(queue::delete))
        .route("/v1/queue/{id}/{action}", post(queue::change))
        .route("/v1/summary", get(queue::summary))
        .route("/v1/usage", get(queue::usage))
        .route("/v1/events", get(history::list))
        .route("/v1/messages/{id}/events", get(history::of_message))
        .route(
            "/v1/suppressions",
            get(history::suppressions).post(history::add),
        )
        .route(
            "/v1/suppressions/{address}",
            axum::routing::delete(history::remove),
        )
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        mailspool_metrics::global().encode(),
    )
}

/// Read a request body of at most `limit` bytes within `timeout`: a clear 413 or 408,
/// never an unbounded buffer or a connection held open forever.
pub(crate) async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, ApiError> {
    use axum::http::StatusCode;
    use http_body::Body as _;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {limit} bytes (max_body_size)"),
        )
    };
    // A Content-Length over the limit is refused before a byte of the body is read: a
    // client that asked `Expect: 100-continue` gets the 413 instead of the go-ahead and
    // sends nothing. One already sending gets the 413 at once too, while what it sends
    // is read and dropped for a little while (a lingering close, as nginx does), so that
    // it reads the answer instead of a reset.
    if body.size_hint().lower() > limit as u64 {
        let waits = headers
            .get(axum::http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits {
            tokio::spawn(discard(body, limit.saturating_mul(2)));
        }
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request body did not arrive within {}s",
                timeout.as_secs()
            ),
        )),
        Ok(Err(e)) if over_limit(&e) => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(
            "bad_body",
            format!("cannot read the body: {e}"),
        )),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Read and drop at most `most` bytes of a refused body, for at most 10 s.
async fn discard(body: axum::body::Body, most: usize) {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while seen < most {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

/// Whether reading a body failed on its size limit (http-body-util's error, somewhere
/// in axum's chain).
fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        next = err.source();
    }
    false
}
