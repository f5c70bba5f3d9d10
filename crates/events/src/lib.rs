//! What happened to each message, in one shape every part shares: the intake paths
//! (sendmail, the drop pickup, SMTP, HTTP, the library) say `accepted`, the delivery
//! engine says `delivered`, `deferred`, `bounced`, `expired`, `delayed`, the queue
//! admin says `held`, `released`, `deleted`, and the suppression list says
//! `suppressed`. The spool back ends store them (`mailspool-spool`, `mailspool-pg`);
//! this crate does no I/O of its own beyond reading a rule file.
//!
//! An event's JSON is its stable public shape: the history (`mailspool log`,
//! `GET /v1/events`), the log's JSON lines and the webhooks all carry exactly it.

mod class;
mod query;
pub mod report;
mod suppress;
mod verp;

pub use class::{Class, RuleError, Rules, enhanced_status};
pub use query::{MAX_PAGE, Query, is_address, is_message_id};
pub use suppress::{
    Policy, Scope, Suppression, domain_of, hard_bounce, is_soft_bounce, soft_bounce,
};
pub use verp::ReturnPath;

use serde::{Deserialize, Serialize};

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Taken in and committed to the spool.
    Accepted,
    /// The recipient's server accepted it.
    Delivered,
    /// A temporary failure: it waits for the next try.
    Deferred,
    /// Refused for good: the sender is told (or was, for interactive sends).
    Bounced,
    /// Still undelivered at the end of the schedule: the sender is told.
    Expired,
    /// A "delayed" notice went to the sender.
    Delayed,
    /// Not sent: the recipient is on the suppression list.
    Suppressed,
    /// The recipient complained (a feedback-loop report).
    Complained,
    /// Held by an administrator: nothing delivers it until released.
    Held,
    /// Released from hold.
    Released,
    /// Deleted by an administrator.
    Deleted,
}

impl Kind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [Kind; 11] = [
        Kind::Accepted,
        Kind::Delivered,
        Kind::Deferred,
        Kind::Bounced,
        Kind::Expired,
        Kind::Delayed,
        Kind::Suppressed,
        Kind::Complained,
        Kind::Held,
        Kind::Released,
        Kind::Deleted,
    ];

    /// Its name as JSON and URLs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Accepted => "accepted",
            Kind::Delivered => "delivered",
            Kind::Deferred => "deferred",
            Kind::Bounced => "bounced",
            Kind::Expired => "expired",
            Kind::Delayed => "delayed",
            Kind::Suppressed => "suppressed",
            Kind::Complained => "complained",
            Kind::Held => "held",
            Kind::Released => "released",
            Kind::Deleted => "deleted",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS a delivery used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
}

/// One thing that happened to one recipient of one message (or to the whole message:
/// `accepted` names every recipient in its own event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event (a ULID): a webhook receiver's deduplication key.
    pub event_id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Unix time.
    pub time: u64,
    /// The spool's message id (the node name's id): what `mailspool log` takes.
    pub message: String,
    /// The Message-ID header field as the sender wrote it (never used as a key: a
    /// sender chooses it), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The envelope sender ("" for the null sender).
    pub from: String,
    /// The recipient.
    pub recipient: String,
    /// Where it came in: sendmail, drop, smtp, http, library (`accepted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Who handed it in: a user, an SMTP client's address and login, an API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// The host that answered (an MX host's name, a relay, "local").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx: Option<String>,
    /// Its address and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The TLS the delivery used (none: plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// The TLS policy in force: dane, mta-sts, required, opportunistic, plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_policy: Option<String>,
    /// The reply or error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The queue id the remote server gave in its reply, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<String>,
    /// When the next try is due (`deferred`), unix time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
    /// The tier it waits in (`deferred`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<usize>,
    /// What kind of failure (`deferred`, `bounced`, `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    /// Who did it (`held`, `released`, `deleted`, `suppressed` by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The stored message's inode (`delivered`): what identifies the message while it
    /// is queued, since ids repeat. With the id and the recipient it lets a restarted
    /// daemon know a node it finds was delivered by a process killed before removing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

/// Longest reply an event keeps: a server's multi-line reply is cut here.
pub const MAX_REPLY: usize = 1000;

/// Longest Message-ID kept.
const MAX_MESSAGE_ID: usize = 250;

impl Event {
    /// A new event of `kind` about `recipient` of message `message` from `from`, now.
    pub fn new(kind: Kind, message: &str, from: &str, recipient: &str) -> Event {
        Event {
            event_id: ulid::Ulid::generate().to_string(),
            kind,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            message: message.to_owned(),
            message_id: None,
            from: from.to_owned(),
            recipient: recipient.to_owned(),
            source: None,
            submitter: None,
            mx: None,
            address: None,
            tls: None,
            tls_policy: None,
            reply: None,
            remote_id: None,
            next_attempt: None,
            tier: None,
            class: None,
            by: None,
            node: None,
        }
    }

    /// With this reply (cut to [`MAX_REPLY`] characters), and the remote queue id it
    /// names if it names one.
    pub fn with_reply(mut self, reply: &str) -> Event {
        let reply: String = reply.chars().take(MAX_REPLY).collect();
        if self.kind == Kind::Delivered {
            self.remote_id = remote_queue_id(&reply);
        }
        self.reply = Some(reply);
        self
    }

    /// With the Message-ID header's value, if any (cut, and kept only when printable).
    pub fn with_message_id(mut self, message_id: Option<&str>) -> Event {
        self.message_id = message_id
            .map(str::trim)
            .filter(|m| !m.is_empty() && m.len() <= MAX_MESSAGE_ID)
            .filter(|m| m.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned);
        self
    }

    /// One JSON line, newline included: how the file spool and the log store it.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("an event serializes");
        line.push('\n');
        line
    }

    /// Whether this event is about the recipient or message `key`: a spool id, a
    /// Message-ID (with or without its angle brackets) or an address (any case).
    pub fn concerns(&self, key: &str) -> bool {
        if self.message == key || self.recipient.eq_ignore_ascii_case(key) {
            return true;
        }
        let bare = |s: &str| s.trim_start_matches('<').trim_end_matches('>').to_owned();
        self.message_id
            .as_deref()
            .is_some_and(|m| bare(m) == bare(key))
    }
}

/// The queue id a server's 250 reply to DATA names, for the commonest forms:
/// Postfix `250 2.0.0 Ok: queued as 4ABC123`, Exim `250 OK id=1abc-000DEF-GH`,
/// Gmail/Microsoft `250 2.0.0 OK  1733356800 a1b2c3 - gsmtp` (the token after the time),
/// Sendmail `250 2.0.0 4B4LxYz0123 Message accepted for delivery`.
pub fn remote_queue_id(reply: &str) -> Option<String> {
    let token = |s: &str| {
        let t: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
            .take(100)
            .collect();
        (!t.is_empty()).then_some(t)
    };
    let lower = reply.to_ascii_lowercase();
    for marker in ["queued as ", "id=", "queued as: "] {
        if let Some(at) = lower.find(marker) {
            return token(&reply[at + marker.len()..]);
        }
    }
    let words: Vec<&str> = reply.split_whitespace().collect();
    // "250 2.0.0 OK <time> <id> - gsmtp"
    if words.len() >= 5
        && words[2].eq_ignore_ascii_case("ok")
        && words[3].bytes().all(|b| b.is_ascii_digit())
    {
        return token(words[4]);
    }
    // "250 2.0.0 <id> Message accepted for delivery"
    if words.len() >= 4 && lower.contains("message accepted") && words[3] == "Message" {
        return token(words[2]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_queue_ids_of_common_servers() {
        let cases = [
            ("250 2.0.0 Ok: queued as 4ABC123DEF", Some("4ABC123DEF")),
            ("250 OK id=1tJqZk-000abc-Xy", Some("1tJqZk-000abc-Xy")),
            (
                "250 2.0.0 OK  1733356800 a1b2c3d4e5si123.45 - gsmtp",
                Some("a1b2c3d4e5si123.45"),
            ),
            (
                "250 2.0.0 4B4LxYz0123456 Message accepted for delivery",
                Some("4B4LxYz0123456"),
            ),
            ("250 2.0.0 Ok", None),
            ("250 ok", None),
        ];
        for (reply, want) in cases {
            assert_eq!(remote_queue_id(reply).as_deref(), want, "{reply}");
        }
    }

    #[test]
    fn an_event_is_one_json_line_with_its_stable_names() {
        let e = Event::new(Kind::Delivered, "01ABC", "a@example.com", "b@example.net")
            .with_reply("250 2.0.0 Ok: queued as XYZ\r\n");
        let line = e.to_line();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "delivered");
        assert_eq!(v["message"], "01ABC");
        assert_eq!(v["recipient"], "b@example.net");
        assert_eq!(v["remote_id"], "XYZ");
        assert!(v.get("tls").is_none());
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_message_id_is_matched_with_or_without_brackets_and_never_kept_unprintable() {
        let e = Event::new(Kind::Accepted, "01ABC", "a@x", "B@Example.net")
            .with_message_id(Some(" <m1@x> "));
        assert!(e.concerns("<m1@x>") && e.concerns("m1@x") && e.concerns("01ABC"));
        assert!(e.concerns("b@example.NET"));
        assert!(!e.concerns("m2@x"));
        let bad = Event::new(Kind::Accepted, "01", "", "b@x").with_message_id(Some("<a\u{1b}b>"));
        assert_eq!(bad.message_id, None);
    }
}
