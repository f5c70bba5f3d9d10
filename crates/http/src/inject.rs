//! `POST /v1/messages` and `POST /v1/messages/batch`: mail over HTTP, committed
//! exactly as `mailspool send` commits it (the same `send_mail`) before the 202.
//!
//! Raw: `Content-Type: message/rfc822`, envelope in `?from=&to=` (repeatable) or the
//! `Mailspool-From` / `Mailspool-To` headers, else from the message's headers.
//! JSON: `{from, to[], cc[], bcc[], subject, text, html, headers{}, attachments[]}`,
//! built into MIME with mail-builder (Bcc only in the envelope), or `{raw, from, to[]}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;

use super::auth::{Caller, authorize};
use super::error::ApiError;
use super::tokens::Scope;
use super::turns::PREPARING;
use super::{AppState, read_body};
use mailspool::{MessageSource, SendError, SendMail};

/// Most messages one batch request may carry.
pub const MAX_BATCH: usize = 1000;

/// A message as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonMessage {
    /// Sender: `addr` or `Name <addr>`; the envelope sender unless `envelope_from`.
    pub from: Option<String>,
    /// Envelope sender, when not the From address (`""` is the null sender).
    pub envelope_from: Option<String>,
    /// To recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Cc recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Bcc recipients (envelope only).
    #[serde(default)]
    pub bcc: Vec<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Plain text body.
    pub text: Option<String>,
    /// HTML body.
    pub html: Option<String>,
    /// Extra headers (names and values checked: no line breaks, no structural headers).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// A whole RFC 5322 message instead of the parts above.
    pub raw: Option<String>,
}

/// An attachment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// File name.
    pub name: String,
    /// MIME type (default application/octet-stream).
    pub content_type: Option<String>,
    /// The bytes, base64.
    pub content_base64: String,
}

/// Headers a JSON message sets through its own fields, never through `headers`.
const STRUCTURAL: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
    "received",
];

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

fn address(text: &str) -> Result<mail_builder::headers::address::Address<'static>, ApiError> {
    let addr = mailspool_message::address::parse_recipient(text)
        .map_err(|e| bad("bad_address", e.to_string()))?;
    let t = text.trim();
    let name = t
        .rfind('<')
        .map(|i| t[..i].trim().trim_matches('"').to_owned())
        .filter(|n| !n.is_empty());
    Ok(mail_builder::headers::address::Address::new_address(
        name, addr,
    ))
}

fn address_list(
    list: &[String],
) -> Result<mail_builder::headers::address::Address<'static>, ApiError> {
    Ok(mail_builder::headers::address::Address::new_list(
        list.iter().map(|a| address(a)).collect::<Result<_, _>>()?,
    ))
}

impl JsonMessage {
    /// The message bytes and its envelope (sender, recipients).
    fn build(&self, hostname: &str) -> Result<Job, ApiError> {
        let mut recipients: Vec<String> = Vec::new();
        recipients.extend(self.to.iter().chain(&self.cc).chain(&self.bcc).cloned());
        let envelope_from = match (&self.envelope_from, &self.from) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(f)) => Some(
                mailspool_message::address::parse_recipient(f)
                    .map_err(|e| bad("bad_address", e.to_string()))?,
            ),
            (None, None) => None,
        };
        if let Some(raw) = &self.raw {
            let parts = self.subject.is_some()
                || self.text.is_some()
                || self.html.is_some()
                || !self.headers.is_empty()
                || !self.attachments.is_empty()
                || !self.cc.is_empty()
                || !self.bcc.is_empty();
            if parts {
                return Err(bad(
                    "bad_message",
                    "`raw` is a whole message: give only from, envelope_from and to with it",
                ));
            }
            return Job::raw(raw.clone().into_bytes(), envelope_from, recipients);
        }
        let from = self
            .from
            .as_deref()
            .ok_or_else(|| bad("bad_message", "`from` is required"))?;
        if recipients.is_empty() {
            return Err(bad("no_recipients", "give at least one of to, cc, bcc"));
        }
        if self.text.is_none() && self.html.is_none() && self.attachments.is_empty() {
            return Err(bad("bad_message", "give text, html or attachments"));
        }
        let mut b = mail_builder::MessageBuilder::new().from(address(from)?);
        // A Message-ID or Date the caller gives replaces ours (mail-builder adds its own
        // unless it sees exactly these spellings): one of each, never two.
        let given = |want: &str| self.headers.keys().any(|k| k.eq_ignore_ascii_case(want));
        if !given("message-id") {
            b = b.message_id(format!("{}@{hostname}", mailspool_spool::unique_token()));
        }
        if !self.to.is_empty() {
            b = b.to(address_list(&self.to)?);
        }
        if !self.cc.is_empty() {
            b = b.cc(address_list(&self.cc)?);
        }
        if let Some(s) = &self.subject {
            if s.chars().any(|c| c == '\r' || c == '\n') {
                return Err(bad("bad_header", "the subject holds a line break"));
            }
            b = b.subject(s.clone());
        }
        for (name, value) in &self.headers {
            let name_ok = !name.is_empty()
                && name.len() <= 76
                && name.bytes().all(|c| c.is_ascii_graphic() && c != b':');
            if !name_ok {
                return Err(bad(
                    "bad_header",
                    format!("header name {name:?} is not valid"),
                ));
            }
            if STRUCTURAL.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(bad(
                    "bad_header",
                    format!("{name} is set by its own field, not through headers"),
                ));
            }
            if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') || value.len() > 998 {
                return Err(bad(
                    "bad_header",
                    format!("the value of {name} holds a line break or is too long"),
                ));
            }
            b = if name.eq_ignore_ascii_case("message-id") {
                b.message_id(
                    value
                        .trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_owned(),
                )
            } else if name.eq_ignore_ascii_case("date") {
                b.header("Date", mail_builder::headers::raw::Raw::new(value.clone()))
            } else {
                b.header(
                    name.clone(),
                    mail_builder::headers::raw::Raw::new(value.clone()),
                )
            };
        }
        if let Some(t) = &self.text {
            b = b.text_body(t.clone());
        }
        if let Some(h) = &self.html {
            b = b.html_body(h.clone());
        }
        for a in &self.attachments {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(a.content_base64.as_bytes())
                .map_err(|e| bad("bad_attachment", format!("{}: not base64: {e}", a.name)))?;
            let ct = a
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into());
            let ct_ok = ct.contains('/') && ct.bytes().all(|c| c.is_ascii_graphic());
            if !ct_ok || a.name.chars().any(char::is_control) {
                return Err(bad(
                    "bad_attachment",
                    format!("{:?}: bad name or content type", a.name),
                ));
            }
            b = b.attachment(ct, a.name.clone(), bytes);
        }
        let bytes = b
            .write_to_vec()
            .map_err(|e| ApiError::internal(format!("cannot build the message: {e}")))?;
        Ok(Job {
            bytes,
            from: envelope_from,
            to: recipients,
        })
    }
}

/// One message to commit.
struct Job {
    bytes: Vec<u8>,
    from: Option<String>,
    to: Vec<String>,
}

impl Job {
    /// A whole message as the caller wrote it: LF or CRLF line ends, but no bare CR,
    /// which `serve` refuses too (one rule for every network intake).
    fn raw(bytes: Vec<u8>, from: Option<String>, to: Vec<String>) -> Result<Job, ApiError> {
        if mailspool_message::has_bare_cr(&bytes) {
            return Err(bad(
                "bad_message",
                "bare CR in the message: only CRLF or LF may end a line (the SMTP listener \
                 refuses it too)",
            ));
        }
        Ok(Job { bytes, from, to })
    }

    /// What `send_mail` is given: the envelope, and the token that submitted it (named
    /// in the Received line, not the daemon's uid).
    fn mail(&self, token: &str) -> SendMail<'_> {
        let mut mail = SendMail::new(MessageSource::Bytes(&self.bytes)).to(self.to.clone());
        mail.from = self.from.clone();
        mail.origin = Some(format!("HTTP API token {token}"));
        mail.source = "http";
        mail
    }
}

/// Commit one message through `send_mail` on the blocking pool.
async fn commit(
    state: &Arc<AppState>,
    job: Job,
    token: &str,
) -> Result<serde_json::Value, ApiError> {
    let ms = state.ms.clone();
    let token = token.to_owned();
    let sent = tokio::task::spawn_blocking(move || {
        let mail = job.mail(&token);
        // Staged in turn (see PREPARING), committed with everyone: the fsyncs are
        // where concurrent requests gain by overlapping.
        let turn = PREPARING.enter();
        let prepared = ms.prepare(mail);
        drop(turn);
        ms.commit_prepared(prepared?)
    })
    .await
    .map_err(|e| ApiError::internal(format!("commit task failed: {e}")))?
    .map_err(send_error)?;
    mailspool_metrics::global().accepted("http");
    Ok(sent_json(&sent))
}

fn sent_json(sent: &crate::Sent) -> serde_json::Value {
    serde_json::json!({
        "id": sent.id,
        "from": sent.from,
        "recipients": sent.recipients,
        "size": sent.size,
        "nodes": sent.nodes.iter().filter_map(|p| p.file_name()?.to_str()).collect::<Vec<_>>(),
    })
}

fn send_error(e: SendError) -> ApiError {
    use mailspool_message::IntakeError;
    match e {
        SendError::NoRecipients => bad("no_recipients", e.to_string()),
        SendError::Intake(IntakeError::TooLarge { .. }) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        SendError::Intake(IntakeError::Address(_)) => bad("bad_address", e.to_string()),
        SendError::Intake(IntakeError::Write(ref io)) if mailspool_spool::is_full(io) => {
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "spool_full",
                e.to_string(),
            )
        }
        SendError::Intake(IntakeError::Read(_) | IntakeError::Write(_)) => {
            ApiError::internal(e.to_string())
        }
        SendError::Intake(_) => bad("bad_message", e.to_string()),
        SendError::Spool(s) => s.into(),
        // The message names the suppressed recipient (and how to remove it).
        SendError::Suppressed { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "suppressed",
            e.to_string(),
        ),
        SendError::NoInput { .. } => ApiError::internal(e.to_string()),
    }
}

/// The envelope of a raw message: query parameters, else `Mailspool-From` /
/// `Mailspool-To` headers.
fn raw_envelope(
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Option<String>, Vec<String>), ApiError> {
    let mut from = None;
    let mut to = Vec::new();
    if let Some(q) = query {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|e| bad("bad_query", format!("the query string does not parse: {e}")))?;
        for (k, v) in pairs {
            match k.as_str() {
                "from" => from = Some(v),
                "to" => to.push(v),
                other => {
                    return Err(bad("bad_query", format!("unknown parameter {other:?}")));
                }
            }
        }
    }
    if from.is_none()
        && let Some(v) = headers.get("mailspool-from")
    {
        from = Some(header_text(v)?);
    }
    if to.is_empty() {
        for v in headers.get_all("mailspool-to") {
            to.extend(
                header_text(v)?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
    }
    Ok((from, to))
}

fn header_text(v: &axum::http::HeaderValue) -> Result<String, ApiError> {
    v.to_str()
        .map(str::to_owned)
        .map_err(|_| bad("bad_header", "an envelope header is not ASCII"))
}

fn is_json(headers: &HeaderMap) -> Option<bool> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = ct.split(';').next()?.trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(true),
        "message/rfc822" => Some(false),
        _ => None,
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| bad("bad_idempotency_key", "Idempotency-Key must be ASCII"))
        })
        .transpose()
}

fn reply(status: StatusCode, body: serde_json::Value, replayed: bool) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if replayed {
        r.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    r
}

async fn prologue(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(Caller, axum::body::Bytes), ApiError> {
    let caller = authorize(state, headers, Scope::Inject)?;
    let bytes = read_body(
        headers,
        body,
        state.http.max_body_size,
        state.http.request_timeout,
    )
    .await?;
    Ok((caller, bytes))
}

/// `POST /v1/messages`.
pub async fn one(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (caller, bytes) = prologue(&state, &headers, body).await?;
    let job = match is_json(&headers) {
        Some(true) => {
            let m: JsonMessage = serde_json::from_slice(&bytes)
                .map_err(|e| bad("bad_json", format!("the body is not a message: {e}")))?;
            m.build(&state.ms.config().hostname)?
        }
        Some(false) => {
            let (from, to) = raw_envelope(uri.query(), &headers)?;
            Job::raw(bytes.to_vec(), from, to)?
        }
        None => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json or message/rfc822",
            ));
        }
    };
    let key = idempotency_key(&headers)?;
    let (status, value, replayed) = state
        .idempotency
        .run(&caller.name, key.as_deref(), &bytes, || async {
            Ok((
                StatusCode::ACCEPTED,
                commit(&state, job, &caller.name).await?,
            ))
        })
        .await?;
    Ok(reply(status, value, replayed))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    messages: Vec<JsonMessage>,
}

/// `POST /v1/messages/batch`: `{"messages": [...]}`, up to [`MAX_BATCH`]; one result
/// per message, in order: `{"status": 202, "id": ...}` or `{"status": 4xx, "error": ...}`.
pub async fn batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (caller, bytes) = prologue(&state, &headers, body).await?;
    if is_json(&headers) != Some(true) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a batch is application/json: {\"messages\": [...]}",
        ));
    }
    let batch: Batch = serde_json::from_slice(&bytes)
        .map_err(|e| bad("bad_json", format!("the body is not a batch: {e}")))?;
    if batch.messages.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} messages; at most {MAX_BATCH} per batch",
                batch.messages.len()
            ),
        ));
    }
    let key = idempotency_key(&headers)?;
    let (status, value, replayed) = state
        .idempotency
        .run(&caller.name, key.as_deref(), &bytes, || {
            run_batch(state.clone(), batch, caller.name.clone())
        })
        .await?;
    Ok(reply(status, value, replayed))
}

async fn run_batch(
    state: Arc<AppState>,
    batch: Batch,
    token: String,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let st = state.clone();
    let results = tokio::task::spawn_blocking(move || commit_all(&st, batch.messages, &token))
        .await
        .map_err(|e| ApiError::internal(format!("commit task failed: {e}")))?;
    let accepted = results.iter().filter(|r| r["status"] == 202).count();
    Ok((
        StatusCode::OK,
        serde_json::json!({"accepted": accepted, "rejected": results.len() - accepted, "results": results}),
    ))
}

/// Build and stage every message, then commit them together: one flush of the file
/// system for all their data and one fsync of tier 0 for all their names, instead of
/// an fsync or two each (what makes a batch cheaper than as many single requests).
fn commit_all(state: &AppState, messages: Vec<JsonMessage>, token: &str) -> Vec<serde_json::Value> {
    let error_value = |e: ApiError| serde_json::json!({"status": e.status.as_u16(), "error": {"code": e.code, "message": e.message}});
    let ms = &state.ms;
    let hostname = ms.config().hostname.clone();
    let mut results = vec![serde_json::Value::Null; messages.len()];
    let mut staged = Vec::new();
    let mut slots = Vec::new();
    let _turn = PREPARING.enter();
    for (i, m) in messages.iter().enumerate() {
        let prepared = m
            .build(&hostname)
            .and_then(|job| ms.prepare(job.mail(token)).map_err(send_error));
        match prepared {
            Ok(p) => {
                staged.push(p);
                slots.push(i);
            }
            Err(e) => results[i] = error_value(e),
        }
    }
    drop(_turn);
    for (i, r) in slots.into_iter().zip(ms.commit_batch(staged)) {
        results[i] = match r {
            Ok(sent) => {
                mailspool_metrics::global().accepted("http");
                let mut v = sent_json(&sent);
                v["status"] = 202.into();
                v
            }
            Err(e) => error_value(send_error(e)),
        };
    }
    results
}
