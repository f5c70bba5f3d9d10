//! The suppression list's entries: recipients mail is no longer sent to, because they
//! bounced for good or complained, or because an administrator said so. Sending to
//! a dead address again and again is what gets a sender blocked by the big providers.

use serde::{Deserialize, Serialize};

use crate::{Class, Event, Kind};

/// Where an entry applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// To mail from every sender.
    Global,
    /// To mail from senders of this domain (lowercase).
    Domain(String),
}

impl Scope {
    /// The scope of `domain` ("" or "*": global).
    pub fn parse(domain: &str) -> Scope {
        match domain.trim() {
            "" | "*" => Scope::Global,
            d => Scope::Domain(d.to_ascii_lowercase()),
        }
    }

    /// As stored: "" for global.
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Global => "",
            Scope::Domain(d) => d,
        }
    }
}

/// What the suppression list does (`[suppression]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Hard bounces and complaints add entries, and entries keep mail from being sent.
    pub enabled: bool,
    /// Entries added by a bounce apply to the sender's domain only (`scope = "domain"`),
    /// not to every sender (`"global"`, the default).
    pub per_domain: bool,
    /// Refuse a suppressed recipient at intake (SMTP 550, sendmail 65, HTTP per
    /// recipient); false: take the message and drop the recipient with a `suppressed`
    /// event (`action = "drop"`).
    pub refuse: bool,
    /// Entries added by a bounce expire after this many days (none: never).
    pub expire_days: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            per_domain: false,
            refuse: true,
            expire_days: None,
        }
    }
}

/// One suppressed recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// The recipient, lowercased.
    pub address: String,
    /// The sending domain it applies to; "" for every sender.
    #[serde(default)]
    pub domain: String,
    /// Why: a failure class (`invalid_recipient`), `complaint` or `manual`.
    pub reason: String,
    /// When it was added (unix time).
    pub time: u64,
    /// When it stops applying (unix time); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// The event that caused it (its `event_id`), or who added it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The reply that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Suppression {
    /// A new entry for `address` in `scope`.
    pub fn new(address: &str, scope: &Scope, reason: &str, now: u64) -> Suppression {
        Suppression {
            address: address.to_lowercase(),
            domain: scope.as_str().to_owned(),
            reason: reason.to_owned(),
            time: now,
            expires: None,
            source: None,
            detail: None,
        }
    }

    /// Whether it keeps mail from `from` to its address at time `now`.
    pub fn applies(&self, from: &str, now: u64) -> bool {
        self.expires.is_none_or(|t| now < t)
            && (self.domain.is_empty() || domain_of(from).eq_ignore_ascii_case(&self.domain))
    }

    /// The key it is stored under: (scope, address).
    pub fn key(&self) -> (String, String) {
        (self.domain.clone(), self.address.clone())
    }
}

/// The domain of an address ("" when it has none).
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// The suppression a failure event calls for, if any: a permanent refusal saying the
/// recipient does not exist (5.1.1 unknown user, 5.1.10 null MX, ...) or a complaint.
/// `per_domain`: the entry applies to the sender's domain only.
pub fn hard_bounce(event: &Event, policy: &Policy) -> Option<Suppression> {
    if !policy.enabled {
        return None;
    }
    let per_domain = policy.per_domain;
    let reason = match (event.kind, event.class) {
        (Kind::Complained, _) => "complaint",
        (Kind::Bounced, Some(Class::InvalidRecipient))
            if event.reply.as_deref().is_some_and(|r| r.starts_with('5')) =>
        {
            Class::InvalidRecipient.as_str()
        }
        _ => return None,
    };
    if event.recipient.is_empty() {
        return None;
    }
    let scope = match per_domain {
        true if !domain_of(&event.from).is_empty() => {
            Scope::Domain(domain_of(&event.from).to_ascii_lowercase())
        }
        _ => Scope::Global,
    };
    let mut s = Suppression::new(&event.recipient, &scope, reason, event.time);
    s.expires = policy
        .expire_days
        .map(|d| event.time.saturating_add(d.saturating_mul(86_400)));
    s.source = Some(event.event_id.clone());
    s.detail = event.reply.clone();
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hard_bounce_suppresses_and_a_soft_one_does_not() {
        let mut e = Event::new(Kind::Bounced, "01M", "app@shop.example", "Gone@Example.net")
            .with_reply("550 5.1.1 <gone@example.net>: User unknown");
        e.class = Some(Class::InvalidRecipient);
        let global = Policy::default();
        let s = hard_bounce(&e, &global).unwrap();
        assert_eq!(s.expires, None);
        assert_eq!(
            (s.address.as_str(), s.domain.as_str()),
            ("gone@example.net", "")
        );
        assert_eq!(s.reason, "invalid_recipient");
        assert_eq!(s.source.as_deref(), Some(e.event_id.as_str()));
        assert!(s.applies("anyone@else.example", e.time));
        let domain = Policy {
            per_domain: true,
            expire_days: Some(2),
            ..Policy::default()
        };
        let s = hard_bounce(&e, &domain).unwrap();
        assert_eq!(s.expires, Some(e.time + 2 * 86_400));
        let off = Policy {
            enabled: false,
            ..Policy::default()
        };
        assert!(hard_bounce(&e, &off).is_none());
        assert_eq!(s.domain, "shop.example");
        assert!(s.applies("other@SHOP.example", e.time) && !s.applies("x@else.example", e.time));

        let mut full = e.clone();
        full.class = Some(Class::MailboxFull);
        assert!(hard_bounce(&full, &global).is_none());
        let mut temporary = e.clone();
        temporary.reply = Some("450 4.1.1 try later".into());
        assert!(hard_bounce(&temporary, &global).is_none());
        let complaint = Event::new(Kind::Complained, "01M", "a@x", "c@y");
        assert_eq!(
            hard_bounce(&complaint, &global).unwrap().reason,
            "complaint"
        );
    }

    #[test]
    fn an_expired_entry_no_longer_applies() {
        let mut s = Suppression::new("a@x", &Scope::parse("*"), "manual", 10);
        s.expires = Some(20);
        assert!(s.applies("b@y", 19));
        assert!(!s.applies("b@y", 20));
    }
}
