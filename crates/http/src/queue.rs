//! The admin API: `GET /v1/queue` (filters, cursor pages), `GET|DELETE /v1/queue/{id}`,
//! `POST /v1/queue/{id}/hold|release|retry|delete`, `POST /v1/queue/bulk/{action}`
//! with a filter, `GET /v1/summary`, `GET /v1/usage?days=N`. Each is the same
//! operation `mailspool queue` runs (crate::admin), on the blocking pool.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::auth::authorize;
use super::error::ApiError;
use super::tokens::Scope;
use super::{AppState, read_body};
use crate::admin::{self, Change, ChangeReport, Filter};
use mailspool_spool::{Cursor, NodeEntry};

/// Largest page.
pub const MAX_PAGE: usize = 1000;
/// Directory entries one page reads at most (a filter that matches little returns a
/// short page with a cursor instead of reading a million names in one request).
pub const MAX_SCAN: usize = 20_000;

/// Run spool work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("task failed: {e}")))?
}

/// `GET /v1/queue` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tier: Option<usize>,
    domain: Option<String>,
    sender: Option<String>,
    recipient: Option<String>,
    older_than: Option<u64>,
    held: Option<bool>,
    id: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl ListQuery {
    fn filter(&self) -> Filter {
        Filter {
            tier: self.tier,
            domain: self.domain.clone(),
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            older_than: self.older_than,
            held: self.held,
            id: self.id.clone(),
        }
    }
}

/// A node as the API lists it. `side`: whether the spool has side data at all (asked
/// once per listing, not once per node: without it there is no last error to open).
pub fn node_json(
    spool: &dyn mailspool_spool::Store,
    n: &NodeEntry,
    size: Option<u64>,
    side: bool,
) -> serde_json::Value {
    serde_json::json!({
        "id": n.name.id,
        "node": n.file_name,
        "to": n.name.to,
        "from": n.name.from,
        "tier": n.tier,
        "held": n.held,
        "queued_at": n.name.time,
        "due_at": spool.due_at(n),
        "size": size,
        "last_error": if side {
            mailspool_spool::side::last_failure(spool.attempts(&n.name), n.ino)
        } else {
            None
        },
    })
}

/// One page of the queue (also used by the dashboard).
pub fn page(
    spool: &dyn mailspool_spool::Store,
    filter: &Filter,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<serde_json::Value>, Option<String>, usize), ApiError> {
    let start = match cursor {
        None | Some("") => Cursor::default(),
        Some(c) => Cursor::parse(c)
            .ok_or_else(|| ApiError::bad_request("bad_cursor", "cursor is not one we gave"))?,
    };
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be 1-{MAX_PAGE}"),
        ));
    }
    let now = mailspool_spool::now();
    let side = spool.has_side_data();
    let page = spool.page(start, limit, MAX_SCAN, &mut |n| filter.matches(n, now))?;
    let nodes = page
        .nodes
        .iter()
        .map(|n| {
            let (size, _) = spool.node_state(n);
            node_json(spool, n, size, side)
        })
        .collect();
    Ok((nodes, page.next.map(|c| c.to_string()), page.scanned))
}

/// `GET /v1/queue`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    blocking(move || {
        let (nodes, next, scanned) = page(
            state.ms.spool(),
            &q.filter(),
            q.cursor.as_deref(),
            q.limit.unwrap_or(100),
        )?;
        Ok(Json(serde_json::json!({
            "nodes": nodes,
            "next_cursor": next,
            "scanned": scanned,
        })))
    })
    .await
}

/// `?to=ADDR` narrowing a message to one recipient.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToQuery {
    to: Option<String>,
}

/// `GET /v1/queue/{id}`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ToQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<admin::MessageDetail>, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    blocking(move || {
        let spool = state.ms.spool();
        let nodes = admin::select(spool, &id, q.to.as_deref())?;
        Ok(Json(admin::detail(spool, &nodes)?))
    })
    .await
}

fn parse_change(action: &str) -> Result<Change, ApiError> {
    Change::parse(action).ok_or_else(|| {
        ApiError::not_found(format!(
            "no action {:?}: hold, release, retry or delete",
            mailspool_spool::escape(action)
        ))
    })
}

/// The status of a change: 200 when every node was changed, 409 when some were locked
/// (try again), with the report either way.
fn change_reply(report: ChangeReport) -> (StatusCode, Json<ChangeReport>) {
    let status = if report.failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (status, Json(report))
}

async fn change_one(
    state: Arc<AppState>,
    headers: HeaderMap,
    id: String,
    to: Option<String>,
    change: Change,
) -> Result<(StatusCode, Json<ChangeReport>), ApiError> {
    let caller = authorize(&state, &headers, Scope::Admin)?;
    blocking(move || {
        let spool = state.ms.spool();
        let nodes = admin::select(spool, &id, to.as_deref())?;
        let by = format!("HTTP API token {}", caller.name);
        let report = ChangeReport::apply(spool, change, &nodes, &by);
        tracing::info!(by = %caller.name, id = %mailspool_spool::escape(&id), changed = report.changed, "API: {}", change.past_tense());
        Ok(change_reply(report))
    })
    .await
}

/// `POST /v1/queue/{id}/{action}`.
pub async fn change(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    query: Result<Query<ToQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<ChangeReport>), ApiError> {
    let change = parse_change(&action)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    change_one(state, headers, id, q.to, change).await
}

/// `DELETE /v1/queue/{id}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ToQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<ChangeReport>), ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    change_one(state, headers, id, q.to, Change::Delete).await
}

/// `POST /v1/queue/bulk/{action}` with a JSON filter (at least one field: an empty
/// filter would touch every node, and that is `"older_than": 0` said on purpose).
pub async fn bulk_change(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(action): Path<String>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<ChangeReport>), ApiError> {
    let change = parse_change(&action)?;
    let caller = authorize(&state, &headers, Scope::Admin)?;
    let bytes = read_body(&headers, body, 64 * 1024, state.http.request_timeout).await?;
    let filter: Filter = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not a filter: {e}")))?;
    if filter.is_empty() {
        return Err(ApiError::bad_request(
            "empty_filter",
            "a bulk change needs a filter; to mean every node, say {\"older_than\": 0}",
        ));
    }
    blocking(move || {
        let by = format!("HTTP API token {}", caller.name);
        let report = admin::change_matching(state.ms.spool(), change, &filter, &by)?;
        tracing::info!(by = %caller.name, filter = ?filter, matched = report.matched, changed = report.changed, "API bulk: {}", change.past_tense());
        Ok(change_reply(report))
    })
    .await
}

/// `GET /v1/summary`.
pub async fn summary(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<admin::Summary>, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    blocking(move || {
        Ok(Json(admin::summary(
            state.ms.spool(),
            0,
            &mut |_| {},
            &mut |_| {},
        )?))
    })
    .await
}

/// `GET /v1/usage?days=N` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    days: Option<u64>,
}

/// `GET /v1/usage`.
pub async fn usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let days = q.days.unwrap_or(7);
    if !(1..=3660).contains(&days) {
        return Err(ApiError::bad_request("bad_days", "days must be 1-3660"));
    }
    blocking(move || {
        let table = state.ms.spool().usage(days)?;
        let rows: Vec<_> = table
            .iter()
            .map(|(day, u)| {
                let (y, m, d) = mailspool_spool::time::civil_from_days(*day as i64);
                serde_json::json!({
                    "date": format!("{y:04}-{m:02}-{d:02}"),
                    "spooled": u.spooled, "spooled_bytes": u.spooled_bytes,
                    "sent": u.sent, "sent_bytes": u.sent_bytes,
                })
            })
            .collect();
        Ok(Json(serde_json::json!({"days": rows})))
    })
    .await
}
