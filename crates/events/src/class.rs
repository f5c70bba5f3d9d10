//! What kind of failure a reply is: from the rule file's texts first (the big
//! providers say "reputation" in words, not in codes), then the enhanced status code
//! (RFC 3463), then the reply code. The rules are data (`rules/bounce-rules.toml`,
//! built in; `[events] bounce_rules` adds a file of the same form, read again on
//! SIGHUP), in the spirit of KumoMTA's bounce classifier.

use serde::{Deserialize, Serialize};

/// A failure's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// No such user, no such domain, a domain that takes no mail (null MX).
    InvalidRecipient,
    /// The mailbox is full or over quota.
    MailboxFull,
    /// Refused by the receiver's policy or spam filter (content, SPF, DMARC).
    PolicyBlock,
    /// Refused because of the sending IP's or domain's reputation (a blocklist).
    ReputationBlock,
    /// The destination could not be found in the DNS.
    DnsFailure,
    /// TLS could not be set up as the policy requires.
    TlsFailure,
    /// Too many messages or connections: slow down.
    RateLimit,
    /// The message is too large for the receiver.
    TooLarge,
    /// Anything else.
    Other,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 9] = [
        Class::InvalidRecipient,
        Class::MailboxFull,
        Class::PolicyBlock,
        Class::ReputationBlock,
        Class::DnsFailure,
        Class::TlsFailure,
        Class::RateLimit,
        Class::TooLarge,
        Class::Other,
    ];

    /// Its name as JSON, rule files and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::InvalidRecipient => "invalid_recipient",
            Class::MailboxFull => "mailbox_full",
            Class::PolicyBlock => "policy_block",
            Class::ReputationBlock => "reputation_block",
            Class::DnsFailure => "dns_failure",
            Class::TlsFailure => "tls_failure",
            Class::RateLimit => "rate_limit",
            Class::TooLarge => "too_large",
            Class::Other => "other",
        }
    }

    fn parse(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The class an enhanced status code (`5.1.1`) gives, if it says one.
    pub fn of_status(status: &str) -> Option<Class> {
        let mut parts = status.split('.');
        let (Some(_), Some(subject), Some(detail), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(match (subject, detail) {
            ("1", "1" | "2" | "3" | "6" | "10") | ("2", "1") => Class::InvalidRecipient,
            ("2", "2") => Class::MailboxFull,
            ("2", "3") | ("3", "4") => Class::TooLarge,
            ("4", "3" | "4") => Class::DnsFailure,
            ("7", "5" | "10" | "11") => Class::TlsFailure,
            ("7", "1" | "23" | "24" | "25" | "26" | "27") => Class::PolicyBlock,
            ("7", "28") => Class::RateLimit,
            ("4", "5") | ("2", "4") => Class::RateLimit,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The built-in rules.
const BUILT_IN: &str = include_str!("../rules/bounce-rules.toml");

/// Longest rule file read.
const MAX_RULES_BYTES: u64 = 4 << 20;

/// Reply texts that name a class, matched without regard to case.
#[derive(Debug, Clone)]
pub struct Rules {
    /// (lowercased text, class), in file order: the first match wins.
    texts: Vec<(String, Class)>,
}

/// A rule file that cannot be used.
#[derive(Debug)]
pub struct RuleError(pub String);

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    class: String,
    contains: Vec<String>,
    /// Who says it (for the reader only).
    #[serde(default)]
    #[allow(dead_code)]
    provider: Option<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::parse(BUILT_IN, "built-in rules").expect("the built-in rules parse")
    }
}

impl Rules {
    /// Rules from TOML text (`[[rule]] class = "...", contains = ["...", ...]`).
    pub fn parse(text: &str, origin: &str) -> Result<Rules, RuleError> {
        let file: RuleFile =
            toml::from_str(text).map_err(|e| RuleError(format!("{origin}: {e}")))?;
        let mut texts = Vec::new();
        for r in file.rule {
            let class = Class::parse(&r.class).ok_or_else(|| {
                RuleError(format!(
                    "{origin}: unknown class {:?} (known: {})",
                    r.class,
                    Class::ALL.map(Class::as_str).join(", ")
                ))
            })?;
            for t in r.contains {
                if t.trim().is_empty() {
                    return Err(RuleError(format!(
                        "{origin}: an empty text matches everything"
                    )));
                }
                texts.push((t.to_lowercase(), class));
            }
        }
        Ok(Rules { texts })
    }

    /// The built-in rules, then those of `file` (checked first: a site's own rules win).
    pub fn load(file: Option<&std::path::Path>) -> Result<Rules, RuleError> {
        let mut rules = Rules::default();
        if let Some(path) = file {
            use std::io::Read;
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_RULES_BYTES).read_to_string(&mut text))
                .map_err(|e| RuleError(format!("cannot read {}: {e}", path.display())))?;
            let mut own = Rules::parse(&text, &path.display().to_string())?;
            own.texts.append(&mut rules.texts);
            rules = own;
        }
        Ok(rules)
    }

    /// How many texts the rules hold.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The class of a failure's reply (or error text) with its enhanced status, if the
    /// caller already has it (else it is read from the reply).
    pub fn classify(&self, reply: &str, status: Option<&str>) -> Class {
        let lower = reply.to_lowercase();
        if let Some((_, class)) = self.texts.iter().find(|(t, _)| lower.contains(t.as_str())) {
            return *class;
        }
        let status = status.map(str::to_owned).or_else(|| enhanced_status(reply));
        if let Some(class) = status.as_deref().and_then(Class::of_status) {
            return class;
        }
        match reply.get(..3) {
            Some("552") => Class::MailboxFull,
            Some("550" | "551" | "553") if lower.contains("user") => Class::InvalidRecipient,
            Some("421" | "450" | "451") if lower.contains("too many") => Class::RateLimit,
            _ => Class::Other,
        }
    }
}

/// The enhanced status code of a reply (`550 5.1.1 ...` gives 5.1.1).
pub fn enhanced_status(reply: &str) -> Option<String> {
    let word = reply.split_whitespace().nth(1)?;
    let parts: Vec<&str> = word.split('.').collect();
    (parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| word.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_from_codes_and_provider_texts() {
        let r = Rules::default();
        let cases = [
            (
                "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown",
                Class::InvalidRecipient,
            ),
            (
                "556 5.1.10 Recipient address has null MX",
                Class::InvalidRecipient,
            ),
            ("552 5.2.2 Mailbox full", Class::MailboxFull),
            (
                "452 4.2.2 The email account that you tried to reach is over quota",
                Class::MailboxFull,
            ),
            (
                "552 5.3.4 Message size exceeds fixed limit",
                Class::TooLarge,
            ),
            (
                "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus",
                Class::ReputationBlock,
            ),
            (
                "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address",
                Class::ReputationBlock,
            ),
            (
                "550 5.7.26 This mail has been blocked because the sender is unauthenticated",
                Class::PolicyBlock,
            ),
            (
                "421 4.7.0 Too many concurrent SMTP connections from this IP",
                Class::RateLimit,
            ),
            ("450 4.7.1 Rate limited, try again later", Class::RateLimit),
            (
                "cannot resolve example.invalid: no such domain",
                Class::DnsFailure,
            ),
            (
                "451 4.7.5 MTA-STS policy requires TLS: certificate not valid",
                Class::TlsFailure,
            ),
            ("554 5.0.0 something odd", Class::Other),
        ];
        for (reply, want) in cases {
            assert_eq!(r.classify(reply, None), want, "{reply}");
        }
    }

    #[test]
    fn a_sites_rules_come_first_and_bad_files_say_why() {
        let own = "[[rule]]\nclass = \"policy_block\"\ncontains = [\"User unknown\"]\n";
        let dir = std::env::temp_dir().join(format!("rules-{}", std::process::id()));
        std::fs::write(&dir, own).unwrap();
        let r = Rules::load(Some(&dir)).unwrap();
        assert_eq!(
            r.classify("550 5.1.1 User unknown", None),
            Class::PolicyBlock
        );
        assert!(r.len() > Rules::default().len());
        std::fs::write(&dir, "[[rule]]\nclass = \"nope\"\ncontains = [\"x\"]\n").unwrap();
        let e = Rules::load(Some(&dir)).unwrap_err().to_string();
        assert!(e.contains("unknown class \"nope\""), "{e}");
        std::fs::write(&dir, "[[rule]]\nclass = \"other\"\ncontains = [\" \"]\n").unwrap();
        assert!(Rules::load(Some(&dir)).is_err());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn enhanced_status_is_read_only_where_it_is_one() {
        assert_eq!(enhanced_status("550 5.1.1 no").as_deref(), Some("5.1.1"));
        assert_eq!(enhanced_status("550-5.7.26 multi").as_deref(), None);
        assert_eq!(enhanced_status("250 ok"), None);
        assert_eq!(enhanced_status("451 4.4.0x y"), None);
    }
}
