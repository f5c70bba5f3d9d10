//! Webhooks: every event of the history, POSTed as JSON and signed per the Standard
//! Webhooks specification (`webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64 HMAC-SHA256>`).
//!
//! The outbox is the history itself: each webhook keeps a cursor into it, saved in the
//! spool only once the receiver answered 2xx, so every event is delivered at least once,
//! in the history's order (and so in order per message), across restarts and SIGKILLs.
//! One process in a cluster sends for each webhook (a job lease in the spool).
//!
//! A fast receiver gets one event per request; when events wait (the receiver is slow
//! or was down), up to `max_batch` go in one request, as `{"type": "message.batch",
//! "data": {"events": [...]}}`. A failure is retried with a doubling pause (1 s to
//! 10 min); after `give_up_after` of failures in a row the webhook is disabled (logged
//! and `mailspool_webhook_disabled{webhook}` = 1) until the configuration is reloaded.
//! Outbound rules are MTA-STS fetching's: the verified TLS roots (web PKI and
//! `tls_ca_file`), no redirects, a bounded reply, time limits; plain `http://` only to a
//! loopback address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use mailspool_events::{Event, Kind, Query};
use mailspool_spool::{Store, escape};

use crate::dns::Resolve;

/// Longest reply body read (and thrown away).
const MAX_REPLY: usize = 64 * 1024;

/// Time limits: connecting (and TLS), and the whole request.
const CONNECT: Duration = Duration::from_secs(10);
const REQUEST: Duration = Duration::from_secs(30);

/// Pause between polls of the history when nothing is waiting.
const IDLE: Duration = Duration::from_millis(500);

/// One `[[webhook]]`.
#[derive(Clone)]
pub struct Webhook {
    /// Its name: keys its cursor and its lease (default: from its URL).
    pub name: String,
    /// Where it goes.
    pub url: Target,
    /// The kinds it wants (empty: all).
    pub kinds: Vec<Kind>,
    /// The signing key (the secret file's `whsec_<base64>`, decoded).
    pub secret: Vec<u8>,
    /// Most events in one request.
    pub max_batch: usize,
    /// Failures in a row for this long disable it.
    pub give_up_after: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &self.url.to_string())
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

/// A webhook's URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// https (else http, loopback only).
    pub https: bool,
    /// Host name or address literal (no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
    }
}

impl Target {
    /// Parse `https://host[:port]/path` (or `http://` to a loopback address).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{url:?}: a webhook URL starts with https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: credentials in the URL are not sent; sign with secret_file"
            ));
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, p) = r
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed ["))?;
            (h.to_owned(), p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            None if https => 443,
            None => 80,
        };
        if host.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("{url:?}: not a URL"));
        }
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !https && !loopback {
            return Err(format!(
                "{url:?}: events leave this host only over https:// (http:// only to a loopback address)"
            ));
        }
        Ok(Target {
            https,
            host,
            port,
            path: path.to_owned(),
        })
    }

    /// A name for cursors and leases, when the configuration gives none.
    pub fn default_name(&self) -> String {
        format!("{}{}", self.host, self.path)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect()
    }
}

/// The signing key of a secret: `whsec_<base64>` (the prefix optional).
pub fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let b64 = text.strip_prefix("whsec_").unwrap_or(text);
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the webhook secret is not whsec_<base64> (make one: echo whsec_$(head -c 32 /dev/urandom | base64))".to_owned())?;
    if key.len() < 16 {
        return Err("the webhook secret is shorter than 16 bytes".into());
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(format!("{id}.{timestamp}.").as_bytes());
    ctx.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    )
}

/// `2026-12-04T23:55:18Z`.
fn iso_time(unix: u64) -> String {
    mailspool_spool::time::utc_time(unix).replacen(' ', "T", 1) + "Z"
}

/// One request's `webhook-id` and body for `events` (one, or a batch).
pub fn payload(events: &[Event]) -> (String, Vec<u8>) {
    let body = match events {
        [one] => serde_json::json!({
            "type": format!("message.{}", one.kind),
            "timestamp": iso_time(one.time),
            "data": one,
        }),
        many => serde_json::json!({
            "type": "message.batch",
            "timestamp": iso_time(many.last().map_or(0, |e| e.time)),
            "data": { "events": many },
        }),
    };
    let id = match events {
        [one] => one.event_id.clone(),
        // The same batch is the same message on every retry (receivers dedupe by it).
        many => format!(
            "batch_{}_{}",
            many.first().map_or("", |e| e.event_id.as_str()),
            many.len()
        ),
    };
    (id, serde_json::to_vec(&body).expect("events serialize"))
}

/// What a webhook's sender needs from its daemon.
pub struct Sender {
    pub hook: Webhook,
    pub spool: Arc<dyn Store>,
    pub dns: Arc<dyn Resolve>,
    pub tls: tokio_rustls::TlsConnector,
}

fn metric(name: &str, result: &'static str) {
    mailspool_metrics::global().webhook(name, result);
}

impl Sender {
    fn job(&self) -> String {
        format!("webhook.{}", self.hook.name)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> T + Send + 'static,
    ) -> T {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || f(&*spool))
            .await
            .expect("spool task")
    }

    /// The cursor at the end of the history now (a new webhook starts there: it is sent
    /// what happens from now on, not 30 days of history); "" (the beginning) when there
    /// is no history yet.
    async fn end_of_history(&self) -> Option<String> {
        self.blocking(|spool| {
            let mut q = Query {
                since: Some(mailspool_spool::now()),
                limit: mailspool_events::MAX_PAGE,
                ..Default::default()
            };
            loop {
                let page = spool.read_events(&q).ok()?;
                if !page.more {
                    return Some(page.next.unwrap_or_default());
                }
                q.cursor = page.next;
            }
        })
        .await
    }

    /// Send until stopped (the task is aborted) or disabled.
    pub async fn run(self) {
        let name = self.hook.name.clone();
        tracing::info!(webhook = %name, url = %self.hook.url, "webhook sender started");
        let mut cursor: Option<String> = None;
        let mut holding = false;
        // None: never checked (an Instant an hour back would not exist on a host up for
        // less than that: the monotonic clock starts at boot).
        let mut lease_checked: Option<Instant> = None;
        loop {
            // One sender per webhook in a cluster: the others wait for its lease.
            if lease_checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                let job = self.job();
                let held = self.blocking(move |s| s.take_job(&job)).await;
                lease_checked = Some(Instant::now());
                if held != holding {
                    tracing::info!(webhook = %name, sending = held, "webhook lease {}", if held { "taken" } else { "held elsewhere" });
                    holding = held;
                    cursor = None;
                }
            }
            if !holding {
                tokio::time::sleep(Duration::from_secs(10)).await;
                continue;
            }
            if cursor.is_none() {
                let job = self.job();
                cursor = match self.blocking(move |s| s.load_cursor(&job)).await {
                    Some(c) => Some(c),
                    None => {
                        let end = self.end_of_history().await;
                        if let Some(c) = end.clone() {
                            let job = self.job();
                            let _ = self.blocking(move |s| s.save_cursor(&job, &c)).await;
                        }
                        end
                    }
                };
            }
            let q = Query {
                cursor: cursor.clone(),
                kinds: self.hook.kinds.clone(),
                limit: self.hook.max_batch.max(1),
                ..Default::default()
            };
            let page = match self.blocking(move |s| s.read_events(&q)).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(webhook = %name, error = %e, "cannot read the history");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            if !page.events.is_empty() && !self.deliver(&page.events).await {
                return;
            }
            if page.next.is_some() && page.next != cursor {
                let (job, next) = (self.job(), page.next.clone().unwrap_or_default());
                if let Err(e) = self.blocking(move |s| s.save_cursor(&job, &next)).await {
                    tracing::warn!(webhook = %name, error = %e, "cannot save the webhook's place; events may be sent again");
                }
                cursor = page.next;
            }
            if !page.more {
                tokio::time::sleep(IDLE).await;
            }
        }
    }

    /// Deliver one request's events, retrying until it is taken; false: disabled.
    async fn deliver(&self, events: &[Event]) -> bool {
        let name = &self.hook.name;
        let (id, body) = payload(events);
        let started = Instant::now();
        let mut pause = Duration::from_secs(1);
        loop {
            match tokio::time::timeout(REQUEST, self.post(&id, &body)).await {
                Ok(Ok(())) => {
                    metric(name, "delivered");
                    tracing::debug!(webhook = %name, id = %id, events = events.len(), "webhook delivered");
                    return true;
                }
                Ok(Err(e)) => {
                    metric(name, "failed");
                    tracing::warn!(webhook = %name, id = %id, error = %escape(&e), retry_in = ?pause, "webhook delivery failed");
                }
                Err(_) => {
                    metric(name, "failed");
                    tracing::warn!(webhook = %name, id = %id, retry_in = ?pause, "webhook delivery timed out");
                }
            }
            if started.elapsed() >= self.hook.give_up_after {
                mailspool_metrics::global().webhook_disabled(name, true);
                tracing::error!(webhook = %name, url = %self.hook.url, failing_for = ?started.elapsed(), "webhook disabled after failing this long; its events wait in the history (fix the receiver and reload: SIGHUP)");
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(600));
        }
    }

    async fn post(&self, id: &str, body: &[u8]) -> Result<(), String> {
        let t = &self.hook.url;
        let ips: Vec<std::net::IpAddr> = match t.host.parse() {
            Ok(ip) => vec![ip],
            Err(_) if t.host == "localhost" => vec![std::net::Ipv4Addr::LOCALHOST.into()],
            Err(_) => self
                .dns
                .ips(&t.host)
                .await
                .map_err(|e| format!("{}: {e:?}", t.host))?,
        };
        let mut last = format!("{}: no address", t.host);
        for ip in ips {
            let tcp =
                match tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect((ip, t.port)))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        last = format!("{} [{ip}]: {e}", t.host);
                        continue;
                    }
                    Err(_) => {
                        last = format!("{} [{ip}]: connect timed out", t.host);
                        continue;
                    }
                };
            let timestamp = mailspool_spool::now();
            let req = hyper::Request::post(&t.path)
                .header(hyper::header::HOST, &t.host)
                .header(hyper::header::USER_AGENT, "mailspool")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    sign(&self.hook.secret, id, timestamp, body),
                )
                .body(Full::new(Bytes::copy_from_slice(body)))
                .map_err(|e| e.to_string())?;
            let status = if t.https {
                let name = mailspool_smtp::TlsConnectors::server_name(&t.host)
                    .ok_or_else(|| format!("{}: not a host name", t.host))?;
                let tls = tokio::time::timeout(CONNECT, self.tls.connect(name, tcp))
                    .await
                    .map_err(|_| format!("{}: TLS timed out", t.host))?
                    .map_err(|e| format!("{}: TLS: {e}", t.host))?;
                exchange(tls, req).await?
            } else {
                exchange(tcp, req).await?
            };
            // No redirects (a receiver that moved is fixed in the configuration).
            return match status {
                s if s.is_success() => Ok(()),
                s => Err(format!("{}: HTTP {s}", t.host)),
            };
        }
        Err(last)
    }
}

async fn exchange<S>(io: S, req: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let result = match resp {
        Ok(resp) => {
            let status = resp.status();
            let _ = Limited::new(resp.into_body(), MAX_REPLY).collect().await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    conn.abort();
    result
}

/// The senders of the configured webhooks, restarted on a reload.
#[derive(Default)]
pub struct Senders {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Senders {
    /// Stop the running senders and start one per webhook.
    pub fn restart(
        &mut self,
        hooks: &[Arc<Webhook>],
        spool: &Arc<dyn Store>,
        dns: &Arc<dyn Resolve>,
        tls: &tokio_rustls::TlsConnector,
    ) {
        self.stop();
        for h in hooks {
            mailspool_metrics::global().webhook_disabled(&h.name, false);
            let sender = Sender {
                hook: (**h).clone(),
                spool: spool.clone(),
                dns: dns.clone(),
                tls: tls.clone(),
            };
            self.tasks.push(tokio::spawn(sender.run()));
        }
    }

    /// Stop them (an event being sent is sent again by the next start).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http() {
        let t = Target::parse("https://hooks.example.com/mail/events?x=1").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.com", 443, "/mail/events?x=1")
        );
        assert_eq!(t.default_name(), "hooks.example.com_mail_events_x_1");
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.port, t.path.as_str()), (8080, "/"));
        assert!(Target::parse("http://[::1]:9/h").is_ok());
        assert!(Target::parse("http://hooks.example.com/").is_err());
        assert!(Target::parse("https://u:p@hooks.example.com/").is_err());
        assert!(Target::parse("ftp://x/").is_err());
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The specification's test vector.
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(parse_secret("whsec_c2hvcnQ=").is_err());
        assert!(parse_secret("not base64!").is_err());
    }

    #[test]
    fn one_event_or_a_batch_with_a_stable_id() {
        let a = Event::new(Kind::Delivered, "M1", "a@x", "b@y");
        let b = Event::new(Kind::Bounced, "M1", "a@x", "c@y");
        let (id, body) = payload(std::slice::from_ref(&a));
        assert_eq!(id, a.event_id);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "message.delivered");
        assert_eq!(v["data"]["recipient"], "b@y");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        let (id2, body) = payload(&[a.clone(), b]);
        assert_eq!(id2, format!("batch_{}_2", a.event_id));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"]["events"].as_array().unwrap().len(), 2);
    }
}
