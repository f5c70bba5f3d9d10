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
    /// Soft bounces (a full mailbox, an expiry, ...) in a row, with no delivery between,
    /// that suppress a recipient (0: never).
    pub soft_bounces: u32,
    /// Over how many days they are counted.
    pub soft_bounce_days: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            per_domain: false,
            refuse: true,
            expire_days: None,
            soft_bounces: 0,
            soft_bounce_days: 7,
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
pub fn hard_bounce(event: &Event, policy: &Policy) -> Option<Suppression> {
    if !policy.enabled {
        return None;
    }
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
    Some(entry_for(event, policy, reason))
}

/// The entry `event` makes under `policy`: its recipient, in the sender's domain or
/// for everyone, expiring as configured, tied to the event.
fn entry_for(event: &Event, policy: &Policy, reason: &str) -> Suppression {
    let scope = match policy.per_domain && !domain_of(&event.from).is_empty() {
        true => Scope::Domain(domain_of(&event.from).to_ascii_lowercase()),
        false => Scope::Global,
    };
    let mut s = Suppression::new(&event.recipient, &scope, reason, event.time);
    s.expires = policy
        .expire_days
        .map(|d| event.time.saturating_add(d.saturating_mul(86_400)));
    s.source = Some(event.event_id.clone());
    s.detail = event.reply.clone();
    s
}

/// Whether `event` is a soft bounce: a failure that ends a message's tries without
/// saying the recipient does not exist (a full mailbox, an expiry, a block).
pub fn is_soft_bounce(event: &Event) -> bool {
    matches!(event.kind, Kind::Bounced | Kind::Expired)
        && hard_bounce(event, &Policy::default()).is_none()
}

/// The suppression that `policy`'s soft-bounce rule calls for after `event`, given the
/// recipient's `history` (its events of the last `soft_bounce_days`, oldest first, this
/// one included): `soft_bounces` soft bounces with no delivery after the first of them.
pub fn soft_bounce(event: &Event, policy: &Policy, history: &[Event]) -> Option<Suppression> {
    if !policy.enabled || policy.soft_bounces == 0 || !is_soft_bounce(event) {
        return None;
    }
    let since = event
        .time
        .saturating_sub(policy.soft_bounce_days.saturating_mul(86_400));
    let mut in_a_row = 0u32;
    for e in history
        .iter()
        .filter(|e| e.time >= since && e.recipient.eq_ignore_ascii_case(&event.recipient))
    {
        match e.kind {
            Kind::Delivered => in_a_row = 0,
            _ if is_soft_bounce(e) => in_a_row += 1,
            _ => {}
        }
    }
    if in_a_row < policy.soft_bounces {
        return None;
    }
    let reason = format!(
        "{} soft bounces in a row ({})",
        in_a_row,
        event.class.map_or("other", |c| c.as_str())
    );
    Some(entry_for(event, policy, &reason))
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
    fn soft_bounces_suppress_only_in_a_row_within_the_window() {
        let policy = Policy {
            soft_bounces: 3,
            soft_bounce_days: 7,
            ..Policy::default()
        };
        let ev = |kind, t: u64| {
            let mut e = Event::new(kind, "M", "a@shop.example", "full@example.net")
                .with_reply("552 5.2.2 Mailbox full");
            e.class = Some(Class::MailboxFull);
            e.time = t;
            e
        };
        let day = 86_400;
        let h = vec![
            ev(Kind::Bounced, 10 * day),
            ev(Kind::Expired, 11 * day),
            ev(Kind::Bounced, 12 * day),
        ];
        let s = soft_bounce(&h[2], &policy, &h).unwrap();
        assert_eq!(s.reason, "3 soft bounces in a row (mailbox_full)");
        // A delivery between them starts the count again.
        let mut broken = h.clone();
        broken.insert(1, ev(Kind::Delivered, 10 * day + 5));
        assert!(soft_bounce(&broken[3], &policy, &broken).is_none());
        // Older than the window: not counted.
        let old = vec![
            ev(Kind::Bounced, 0),
            ev(Kind::Bounced, 11 * day),
            ev(Kind::Bounced, 12 * day),
        ];
        assert!(soft_bounce(&old[2], &policy, &old).is_none());
        // Off by default; a hard bounce is not a soft one.
        assert!(soft_bounce(&h[2], &Policy::default(), &h).is_none());
        let mut hard = ev(Kind::Bounced, 12 * day).with_reply("550 5.1.1 unknown");
        hard.class = Some(Class::InvalidRecipient);
        assert!(!is_soft_bounce(&hard));
    }

    #[test]
    fn an_expired_entry_no_longer_applies() {
        let mut s = Suppression::new("a@x", &Scope::parse("*"), "manual", 10);
        s.expires = Some(20);
        assert!(s.applies("b@y", 19));
        assert!(!s.applies("b@y", 20));
    }
}
