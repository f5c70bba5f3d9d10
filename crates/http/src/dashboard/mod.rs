//! The web dashboard at `/`: server-rendered HTML, one small script (a confirmation
//! before a change), no build step. The token is entered once on the login form and
//! kept in a session cookie (HttpOnly, SameSite=Strict, Secure under HTTPS); changes
//! are form posts carrying the session's anti-forgery token. A strict
//! Content-Security-Policy allows only our own style sheet and script.

mod history;
mod page;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::auth::{COOKIE, SESSION_LIFETIME, authorize_session, session_cookie};
use super::error::ApiError;
use super::tokens::{Lookup, Scope};
use super::{AppState, read_body};
use crate::admin::{self, Change, ChangeReport, Filter};

const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("app.js");
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/ui/action", post(action))
        .route("/ui/message/{id}", get(message_page))
        .route("/ui/style.css", get(|| async { asset("text/css", STYLE) }))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// An HTML page with the dashboard's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `GET /` query: a search.
#[derive(Debug, Default, Deserialize)]
pub struct HomeQuery {
    q: Option<String>,
}

async fn home(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<HomeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let Ok(caller) = authorize_session(&state, &headers, Scope::Read) else {
        return html(StatusCode::OK, page::login(None));
    };
    let flash = session_cookie(&headers).and_then(|id| state.sessions.take_flash(id));
    let search = q.q.clone().filter(|s| !s.trim().is_empty());
    let (results, history) = match &search {
        Some(text) => {
            let st = state.clone();
            let filter = search_filter(text);
            let key = text.trim().to_owned();
            tokio::task::spawn_blocking(move || {
                let found = search_spool(&st, &filter);
                // A domain is not a history key; an id, Message-ID or address is.
                let events =
                    match !key.starts_with('@') && (key.contains('@') || !key.contains('.')) {
                        true => history::find(st.ms.spool(), &key),
                        false => Vec::new(),
                    };
                (found, events)
            })
            .await
            .unwrap_or_else(|e| (Err(e.to_string()), Vec::new()))
        }
        None => (Ok((Vec::new(), false)), Vec::new()),
    };
    let view = page::View {
        hostname: &state.ms.config().hostname,
        caller: &caller,
        snapshot: state.snapshot.get(),
        hour: mailspool_metrics::global().last_hour(),
        search: search.as_deref(),
        results,
        history,
        done: flash.as_ref().filter(|f| f.0).map(|f| f.1.as_str()),
        error: flash.as_ref().filter(|f| !f.0).map(|f| f.1.as_str()),
    };
    html(StatusCode::OK, page::dashboard(&view))
}

/// `GET /ui/message/{id}`: one message's envelope, headers, each recipient's attempts
/// and the actions on it.
async fn message_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Ok(caller) = authorize_session(&state, &headers, Scope::Read) else {
        return html(StatusCode::OK, page::login(None));
    };
    let flash = session_cookie(&headers).and_then(|s| state.sessions.take_flash(s));
    let st = state.clone();
    let key = id.clone();
    let found = tokio::task::spawn_blocking(move || {
        let spool = st.ms.spool();
        let events = history::find(spool, &key);
        let detail = admin::select(spool, &key, None)
            .map_err(|e| match e {
                admin::SelectError::NotFound(_) => {
                    "Not queued (any more): what happened to it is below, for as long as \
                     the history keeps it."
                        .to_owned()
                }
                e => e.to_string(),
            })
            .and_then(|nodes| admin::detail(spool, &nodes).map_err(|e| e.to_string()));
        (detail, events)
    })
    .await;
    let (detail, events) = found.unwrap_or_else(|e| (Err(e.to_string()), Vec::new()));
    let status = if detail.is_ok() || !events.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let view = page::MessageView {
        hostname: &state.ms.config().hostname,
        caller: &caller,
        detail,
        events,
        id: &id,
        done: flash.as_ref().filter(|f| f.0).map(|f| f.1.as_str()),
        error: flash.as_ref().filter(|f| !f.0).map(|f| f.1.as_str()),
    };
    html(status, page::message(&view))
}

/// What the search box means: an address is a recipient, `@domain` or a
/// bare domain a recipient domain, anything else a message id.
pub fn search_filter(text: &str) -> Filter {
    let t = text.trim();
    if let Some(d) = t.strip_prefix('@') {
        return Filter {
            domain: Some(d.to_owned()),
            ..Default::default()
        };
    }
    if t.contains('@') {
        return Filter {
            recipient: Some(t.to_owned()),
            ..Default::default()
        };
    }
    if t.contains('.') && !t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Filter {
            domain: Some(t.to_owned()),
            ..Default::default()
        };
    }
    Filter {
        id: Some(t.to_owned()),
        ..Default::default()
    }
}

/// Most results a search shows.
const SEARCH_LIMIT: usize = 200;

/// The nodes a search matches (the whole spool is walked, stopping at
/// [`SEARCH_LIMIT`]): their JSON, and whether there were more.
fn search_spool(
    state: &AppState,
    filter: &Filter,
) -> Result<(Vec<serde_json::Value>, bool), String> {
    let spool = state.ms.spool();
    let (found, more) =
        admin::matching(spool, filter, Some(SEARCH_LIMIT)).map_err(|e| e.to_string())?;
    let side = spool.has_side_data();
    let nodes = found
        .iter()
        .map(|n| super::queue::node_json(spool, n, None, side))
        .collect();
    Ok((nodes, more))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Ok(bytes) = read_body(&headers, body, 4096, state.http.request_timeout).await else {
        return html(
            StatusCode::BAD_REQUEST,
            page::login(Some("The form could not be read.")),
        );
    };
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&bytes) else {
        return html(
            StatusCode::BAD_REQUEST,
            page::login(Some("The form could not be read.")),
        );
    };
    let token = form.token.trim();
    let tokens = state.tokens.current();
    let refusal = match tokens.lookup(token, mailspool_spool::now()) {
        Lookup::Valid(t) if t.scope.allows(Scope::Read) => None,
        Lookup::Valid(_) => {
            Some("This token may only inject mail; the dashboard needs a read or admin token.")
        }
        Lookup::Expired(_) => Some("This token has expired."),
        Lookup::Unknown => Some("This token is not valid."),
    };
    if let Some(why) = refusal {
        mailspool_metrics::global()
            .http_auth_failures
            .get_or_create(&mailspool_metrics::ReasonLabel {
                reason: "dashboard_login",
            })
            .inc();
        return html(StatusCode::UNAUTHORIZED, page::login(Some(why)));
    }
    let id = state.sessions.start(token);
    let mut r = redirect("/");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        if state.tls { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.sessions.end(id);
    }
    let mut r = redirect("/");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "mailspool_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    action: String,
    id: String,
    to: Option<String>,
    q: Option<String>,
    /// `message`: back to the message's page rather than the dashboard.
    back: Option<String>,
}

async fn action(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let caller = match authorize_session(&state, &headers, Scope::Admin) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let bytes = match read_body(&headers, body, 8192, state.http.request_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<ActionForm>(&bytes) else {
        return ApiError::bad_request("bad_form", "the form could not be read").into_response();
    };
    let expected = caller.csrf.as_deref().unwrap_or_default();
    if !same_secret(form.csrf.as_bytes(), expected.as_bytes()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the form is stale; reload the page",
        )
        .into_response();
    }
    let Some(change) = Change::parse(&form.action) else {
        return ApiError::bad_request("bad_action", "no such action").into_response();
    };
    let st = state.clone();
    let (id, to) = (form.id.clone(), form.to.clone().filter(|t| !t.is_empty()));
    let by = format!("dashboard, token {}", caller.name);
    let outcome = tokio::task::spawn_blocking(move || {
        let spool = st.ms.spool();
        let nodes = admin::select(spool, &id, to.as_deref()).map_err(|e| e.to_string())?;
        Ok::<ChangeReport, String>(ChangeReport::apply(spool, change, &nodes, &by))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    tracing::info!(by = %caller.name, id = %mailspool_spool::escape(&form.id), "dashboard: {}", change.past_tense());
    let (ok, text) = match outcome {
        Ok(r) if r.failed.is_empty() => (
            true,
            format!(
                "{}: {} {} of {} node(s)",
                form.id,
                change.past_tense(),
                r.changed,
                r.matched
            ),
        ),
        Ok(r) => (
            false,
            format!(
                "{}: {} {} of {} node(s); {}",
                form.id,
                change.past_tense(),
                r.changed,
                r.matched,
                r.failed
                    .iter()
                    .map(|f| f.error.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        Err(e) => (false, e),
    };
    if let Some(id) = session_cookie(&headers) {
        state.sessions.set_flash(id, ok, text);
    }
    // Back to the page the form was on (its search kept).
    if form.back.as_deref() == Some("message") {
        return redirect(&format!("/ui/message/{}", page::percent(&form.id)));
    }
    match form.q.as_ref().filter(|q| !q.is_empty()) {
        Some(q) => redirect(&format!(
            "/?{}",
            serde_urlencoded::to_string([("q", q)]).unwrap_or_default()
        )),
        None => redirect("/"),
    }
}

/// Compare secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
