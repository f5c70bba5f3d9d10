//! The history and the suppression list over HTTP:
//! `GET /v1/messages/{id}/events`, `GET /v1/events?since=&type=&recipient=&cursor=&limit=`,
//! `GET/POST /v1/suppressions`, `DELETE /v1/suppressions/{address}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use mailspool_events::{Event, Kind, Scope as Applies, Suppression};
use serde::Deserialize;

use super::auth::authorize;
use super::error::ApiError;
use super::queue::blocking;
use super::tokens::Scope;
use super::{AppState, read_body};

/// `GET /v1/events` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    since: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
    recipient: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn page_json(page: mailspool_spool::events::EventPage) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "events": page.events, "next": page.next, "more": page.more }))
}

fn kinds(text: Option<&str>) -> Result<Vec<Kind>, ApiError> {
    text.unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
        .map(|k| {
            Kind::parse(k)
                .ok_or_else(|| ApiError::bad_request("bad_type", format!("no event type {k:?}")))
        })
        .collect()
}

/// `GET /v1/events`: every event, oldest first, a page at a time (`next` is the cursor
/// of the next page; none at the end).
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let query = mailspool_events::Query {
        since: q.since,
        kinds: kinds(q.kind.as_deref())?,
        recipient: q.recipient,
        cursor: q.cursor,
        limit: q.limit.unwrap_or(100),
        ..Default::default()
    };
    blocking(move || Ok(page_json(state.ms.spool().read_events(&query)?))).await
}

/// `GET /v1/messages/{id}/events`: a message's events (by its id, or a Message-ID).
pub async fn of_message(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    if mailspool_events::is_address(&id) {
        return Err(ApiError::bad_request(
            "bad_id",
            "a message id or Message-ID; for a recipient use /v1/events?recipient=",
        ));
    }
    let query = mailspool_events::Query {
        key: Some(id.clone()),
        since: q.since,
        kinds: kinds(q.kind.as_deref())?,
        cursor: q.cursor,
        limit: q.limit.unwrap_or(1000),
        ..Default::default()
    };
    blocking(move || {
        let page = state.ms.spool().read_events(&query)?;
        if page.events.is_empty() && query.cursor.is_none() {
            return Err(ApiError::not_found(format!(
                "no events for {}",
                mailspool_spool::escape(&id)
            )));
        }
        Ok(page_json(page))
    })
    .await
}

/// `GET /v1/suppressions`.
pub async fn suppressions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    blocking(move || {
        let all = state.ms.spool().suppressions()?;
        Ok(Json(serde_json::json!({ "suppressions": all })))
    })
    .await
}

/// `POST /v1/suppressions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    address: String,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// Seconds from now.
    #[serde(default)]
    expires_in: Option<u64>,
}

/// `POST /v1/suppressions`: add (or replace) an entry.
pub async fn add(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Suppression>), ApiError> {
    let caller = authorize(&state, &headers, Scope::Admin)?;
    let bytes = read_body(&headers, body, 16 * 1024, state.http.request_timeout).await?;
    let b: AddBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("not a suppression: {e}")))?;
    let address = mailspool_message::check_address(&b.address)
        .map_err(|e| ApiError::bad_request("bad_address", e.reason))?;
    let now = mailspool_spool::now();
    let mut s = Suppression::new(
        &address,
        &Applies::parse(b.domain.as_deref().unwrap_or("")),
        b.reason.as_deref().unwrap_or("manual"),
        now,
    );
    s.expires = b.expires_in.map(|t| now.saturating_add(t));
    s.source = Some(format!("HTTP API token {}", caller.name));
    blocking(move || {
        let spool = state.ms.spool();
        spool.suppress(&s)?;
        let mut e = Event::new(Kind::Suppressed, "", "", &s.address);
        e.by = s.source.clone();
        e.reply = Some(format!("added to the suppression list: {}", s.reason));
        let _ = mailspool_spool::store::emit(spool, &[e], false);
        Ok((StatusCode::CREATED, Json(s)))
    })
    .await
}

/// `DELETE /v1/suppressions/{address}?domain=`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    domain: Option<String>,
}

/// `DELETE /v1/suppressions/{address}`.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(address): Path<String>,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let caller = authorize(&state, &headers, Scope::Admin)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let domain = Applies::parse(q.domain.as_deref().unwrap_or(""));
    blocking(move || match state.ms.spool().unsuppress(&address, domain.as_str())? {
        true => {
            tracing::info!(to = %mailspool_spool::escape(&address), by = %caller.name, "API: removed from the suppression list");
            Ok(StatusCode::NO_CONTENT)
        }
        false => Err(ApiError::not_found("not on the suppression list")),
    })
    .await
}
