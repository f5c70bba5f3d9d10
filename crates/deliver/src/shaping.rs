//! Traffic shaping settings: which destination a delivery belongs to (a provider group
//! such as all of Google's MX hosts, a recipient domain, or else its MX host) and the
//! limits it is held to. The engine's gate (`engine::gate`) applies them.

use std::time::Duration;

/// A rate: `count` per `per` (`100/min`, `10/s`, `5000/h`, `20/30s`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// How many.
    pub count: u32,
    /// In how long.
    pub per: Duration,
}

impl Rate {
    /// Parse `N/unit` with unit `s`, `min`, `h`, or `Ns`/`Nmin`/`Nh`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("rate {text:?}: expected N/s, N/min or N/h (e.g. \"100/min\")");
        let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let unit = unit.trim();
        let split = unit
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(unit.len());
        let (mult, name) = unit.split_at(split);
        let mult: u64 = if mult.is_empty() {
            1
        } else {
            mult.parse().map_err(|_| bad())?
        };
        let secs = match name {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(bad()),
        };
        if count == 0 || mult == 0 {
            return Err(bad());
        }
        Ok(Rate {
            count,
            per: Duration::from_secs(secs * mult),
        })
    }
}

/// What one destination is held to.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Connections (deliveries) at once; the adaptive window never grows past it.
    pub max_connections: usize,
    /// Transactions on one connection before it is closed.
    pub max_messages_per_connection: u32,
    /// Messages (transactions) per period.
    pub max_message_rate: Option<Rate>,
    /// New connections per period.
    pub connection_rate: Option<Rate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 5,
            max_messages_per_connection: 100,
            max_message_rate: None,
            connection_rate: None,
        }
    }
}

/// A named destination: recipient domains and/or MX host patterns (`*.google.com`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name (`google`), used in logs and as its key.
    pub name: String,
    /// Recipient domains (`example.com`, `*.example.com`).
    pub domains: Vec<String>,
    /// MX host patterns.
    pub mx: Vec<String>,
    /// Its limits.
    pub limits: Limits,
}

/// The shaping settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    /// Named destinations, the built-in provider groups included.
    pub rules: Vec<Rule>,
    /// How long a destination that throttled us is left alone, the first time; it
    /// doubles each time in a row, up to `max_cooling`.
    pub cooling: Duration,
    /// The longest cooling period.
    pub max_cooling: Duration,
}

impl Default for Shaping {
    fn default() -> Self {
        Shaping {
            rules: builtin_rules(),
            cooling: Duration::from_secs(60),
            max_cooling: Duration::from_secs(900),
        }
    }
}

/// The largest receivers' MX names, grouped: their limits apply to all the provider's
/// hosts together, as the provider counts them. Limits are what they accept from a
/// sender with no reputation; the adaptive window finds the rest.
pub fn builtin_rules() -> Vec<Rule> {
    let rule = |name: &str, mx: &[&str], max_connections| Rule {
        name: name.into(),
        domains: Vec::new(),
        mx: mx.iter().map(|s| s.to_string()).collect(),
        limits: Limits {
            max_connections,
            ..Limits::default()
        },
    };
    vec![
        rule("google", &["*.google.com", "*.googlemail.com"], 10),
        rule(
            "microsoft",
            &["*.protection.outlook.com", "*.outlook.com"],
            10,
        ),
        rule("yahoo", &["*.yahoodns.net"], 5),
        rule("apple", &["*.icloud.com"], 5),
    ]
}

/// `*.example.com` matches names under it; anything else matches itself. Names are
/// compared without case and without a final dot.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .strip_suffix(parent)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => name == pattern,
    }
}

impl Shaping {
    /// The destination of a delivery to `domain` through `mx_host` (the first target):
    /// (key, limits). A rule naming the domain comes first, then one matching the MX
    /// host; otherwise the host itself (`host_key`: its name and port), with `default`.
    pub fn destination(
        &self,
        domain: &str,
        mx_host: &str,
        host_key: &str,
        default: &Limits,
    ) -> (String, Limits) {
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.domains.iter().any(|p| pattern_matches(p, domain)))
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| r.mx.iter().any(|p| pattern_matches(p, mx_host)))
            })
        {
            return (r.name.clone(), r.limits.clone());
        }
        (host_key.to_ascii_lowercase(), default.clone())
    }
}

/// Whether a reply says the receiver is limiting us (too fast, too many connections,
/// too much volume) rather than refusing this message: a 421 (the server closes the
/// session), or a 4xx with 4.7.28 or words receivers use for it. Greylisting is not.
pub fn is_throttling(reply: &str) -> bool {
    let text = reply.trim_start();
    if !text.starts_with('4') {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    // Greylisting asks for a later retry, not a slower sender; a recipient limit asks
    // for smaller transactions.
    if ["greylist", "graylist", "too many recipients"]
        .iter()
        .any(|w| lower.contains(w))
    {
        return false;
    }
    text.starts_with("421")
        || lower.contains("4.7.28")
        || [
            "rate limit",
            "rate-limit",
            "ratelimit",
            "too many",
            "throttl",
            "unexpected volume",
            "too fast",
            "exceeded",
            "try again later, closing",
        ]
        .iter()
        .any(|w| lower.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = Rate::parse("100/min").unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(60)));
        assert_eq!(Rate::parse("10/s").unwrap().per, Duration::from_secs(1));
        assert_eq!(Rate::parse("20/30s").unwrap().per, Duration::from_secs(30));
        assert_eq!(
            Rate::parse("5000/h").unwrap().per,
            Duration::from_secs(3600)
        );
        for bad in ["", "100", "0/min", "x/min", "10/fortnight", "10/0s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn destinations() {
        let s = Shaping::default();
        let d = Limits::default();
        assert_eq!(
            s.destination("gmail.com", "gmail-smtp-in.l.google.com", "", &d)
                .0,
            "google"
        );
        assert_eq!(
            s.destination("corp.example", "ASPMX.L.GOOGLE.COM.", "", &d)
                .0,
            "google",
            "Google Workspace domains share Google's limits"
        );
        assert_eq!(
            s.destination(
                "hotmail.com",
                "hotmail-com.olc.protection.outlook.com",
                "",
                &d
            )
            .0,
            "microsoft"
        );
        assert_eq!(
            s.destination("x.test", "mx.x.test", "mx.x.test:25", &d).0,
            "mx.x.test:25"
        );
        assert!(!pattern_matches("*.google.com", "google.com"));
        assert!(!pattern_matches("*.google.com", "evilgoogle.com"));
        assert!(pattern_matches("example.com", "EXAMPLE.com."));
    }

    #[test]
    fn throttling_replies() {
        for t in [
            "421 4.7.28 Our system has detected an unusual rate of unsolicited mail",
            "421 4.7.0 Try again later, closing connection.",
            "450 4.7.0 rate limited",
            "451 4.7.1 Too many messages from your IP",
            "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume",
        ] {
            assert!(is_throttling(t), "{t}");
        }
        for t in [
            "451 4.7.1 greylisted, try later",
            "450 4.2.0 Recipient address rejected: Greylisted",
            "452 4.2.2 mailbox full",
            "452 4.5.3 Too many recipients",
            "550 5.7.1 rate limit (permanent refusals are not throttling)",
            "250 ok",
        ] {
            assert!(!is_throttling(t), "{t}");
        }
    }
}
