//! Who is asking: a bearer token (`Authorization: Bearer mst_...`), or a dashboard
//! session cookie made from one. Failures are 401 (no, malformed, unknown or expired
//! token) or 403 (a token without the scope), counted by reason, and never say more
//! than that.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::error::ApiError;
use super::tokens::{Lookup, Scope, sha256};

/// Name of the dashboard's session cookie.
pub const COOKIE: &str = "mailspool_session";
/// How long a dashboard session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first (a login flood cannot grow memory).
const MAX_SESSIONS: usize = 4096;

/// A caller that passed authentication.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its scope.
    pub scope: Scope,
    /// The dashboard session's anti-forgery token, when the caller is a session.
    pub csrf: Option<String>,
}

struct Session {
    token_hash: [u8; 32],
    made: Instant,
    csrf: String,
    /// What the last change did (ok, text), shown once by the next page: kept here, not
    /// in the URL, so nobody can put words on the page with a crafted link.
    flash: Option<(bool, String)>,
}

/// Dashboard sessions: a random id in a cookie, mapped to the token's hash.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Sessions {
    /// Start a session for a token already checked; returns the cookie value.
    pub fn start(&self, token: &str) -> String {
        let id = random_token();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.made.elapsed() < SESSION_LIFETIME);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.made).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            sha256(id.as_bytes()),
            Session {
                token_hash: sha256(token.as_bytes()),
                made: Instant::now(),
                csrf: random_token(),
                flash: None,
            },
        );
        id
    }

    /// End a session.
    pub fn end(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&sha256(id.as_bytes()));
    }

    /// Leave a message for the session's next page.
    pub fn set_flash(&self, id: &str, ok: bool, text: String) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(&sha256(id.as_bytes())) {
            s.flash = Some((ok, text));
        }
    }

    /// Take the message left for this page, if any.
    pub fn take_flash(&self, id: &str) -> Option<(bool, String)> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get_mut(&sha256(id.as_bytes()))?.flash.take()
    }

    fn get(&self, id: &str) -> Option<([u8; 32], String)> {
        if id.len() > 64 {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get(&sha256(id.as_bytes()))?;
        (s.made.elapsed() < SESSION_LIFETIME).then(|| (s.token_hash, s.csrf.clone()))
    }
}

/// The session cookie's value, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

fn refuse(reason: &'static str, status: StatusCode, message: &str) -> ApiError {
    mailspool_metrics::global()
        .http_auth_failures
        .get_or_create(&mailspool_metrics::ReasonLabel { reason })
        .inc();
    let code = match status {
        StatusCode::FORBIDDEN => "forbidden",
        _ => "unauthorized",
    };
    ApiError::new(status, code, message)
}

/// Check that an API request may do what needs `need`: a bearer token only. (A
/// dashboard session cookie is not accepted here: the API's POSTs carry no
/// anti-forgery token, so a cookie must never be enough for them.)
pub fn authorize(state: &AppState, headers: &HeaderMap, need: Scope) -> Result<Caller, ApiError> {
    let tokens = state.tokens.current();
    let now = mailspool_spool::now();
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(refuse(
            "missing",
            StatusCode::UNAUTHORIZED,
            "no token: send `Authorization: Bearer <token>` (mailspool token add)",
        ));
    };
    let value = value.to_str().unwrap_or("");
    let Some(presented) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err(refuse(
            "malformed",
            StatusCode::UNAUTHORIZED,
            "Authorization must be `Bearer <token>`",
        ));
    };
    let caller = match tokens.lookup(presented.trim(), now) {
        Lookup::Valid(t) => Caller {
            name: t.name.clone(),
            scope: t.scope,
            csrf: None,
        },
        Lookup::Expired(_) => {
            return Err(refuse(
                "expired",
                StatusCode::UNAUTHORIZED,
                "the token has expired",
            ));
        }
        Lookup::Unknown => {
            return Err(refuse(
                "unknown",
                StatusCode::UNAUTHORIZED,
                "the token is not valid",
            ));
        }
    };
    check_scope(caller, need)
}

/// Check that a dashboard request (its session cookie) may do what needs `need`.
pub fn authorize_session(
    state: &AppState,
    headers: &HeaderMap,
    need: Scope,
) -> Result<Caller, ApiError> {
    let tokens = state.tokens.current();
    let now = mailspool_spool::now();
    let Some((hash, csrf)) = session_cookie(headers).and_then(|id| state.sessions.get(id)) else {
        return Err(refuse("missing", StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let Some(t) = tokens.by_hash(&hash, now) else {
        return Err(refuse(
            "expired",
            StatusCode::UNAUTHORIZED,
            "the session's token was removed or has expired",
        ));
    };
    let caller = Caller {
        name: t.name.clone(),
        scope: t.scope,
        csrf: Some(csrf),
    };
    check_scope(caller, need)
}

fn check_scope(caller: Caller, need: Scope) -> Result<Caller, ApiError> {
    if !caller.scope.allows(need) {
        return Err(refuse(
            "scope",
            StatusCode::FORBIDDEN,
            &format!(
                "the token {:?} has scope {}; this needs {}",
                caller.name,
                caller.scope.as_str(),
                need.as_str()
            ),
        ));
    }
    Ok(caller)
}
