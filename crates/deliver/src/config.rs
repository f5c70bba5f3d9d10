//! What the delivery engine needs to know, filled in by the `mailspool` configuration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use mailspool_smtp::{Credentials, Timeouts, TlsPolicy};

/// A host and port (`host`, `host:port`, `[host]:port`, `[::1]:25`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Parse `host[:port]`; brackets (Postfix style, or around IPv6) are removed.
    pub fn parse(text: &str, default_port: u16) -> Result<HostPort, String> {
        let t = text.trim();
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: missing ']'"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{text:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{text:?}: junk after ']'")),
            };
            (h.to_owned(), port)
        } else if t.matches(':').count() == 1 {
            let (h, p) = t.split_once(':').expect("one colon");
            (
                h.to_owned(),
                p.parse().map_err(|_| format!("{text:?}: bad port"))?,
            )
        } else {
            (t.to_owned(), default_port)
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{text:?}: expected host:port"));
        }
        Ok(HostPort { host, port })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The delivery engine's settings.
#[derive(Debug, Clone)]
pub struct DeliverConfig {
    /// Our name: EHLO, Reporting-MTA, MAILER-DAEMON@.
    pub hostname: String,
    /// Relay hosts, tried in order (failover); empty: deliver to MX hosts.
    pub relayhosts: Vec<HostPort>,
    /// TLS to the relay.
    pub relay_tls: TlsPolicy,
    /// AUTH to the relay.
    pub relay_auth: Option<Credentials>,
    /// Per-domain routes (lower-case domain → host:port), before relay and MX.
    pub routes: HashMap<String, HostPort>,
    /// TLS to MX hosts and routes.
    pub mx_tls: TlsPolicy,
    /// Extra CAs (PEM) trusted for `required` TLS.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// DNS server to ask instead of the system's.
    pub resolver: Option<SocketAddr>,
    /// SMTP port of MX hosts.
    pub mx_port: u16,
    /// Client timeouts.
    pub timeouts: Timeouts,
    /// Deliveries at once (max_dequeue_processes).
    pub max_deliveries: usize,
    /// Connections at once to one host.
    pub per_host_limit: usize,
    /// Largest part of the original message quoted in a bounce.
    pub bounce_max_headers: usize,
    /// After this long in the queue a message's sender gets one "delayed" DSN (RFC
    /// 3464 `Action: delayed`); `None`: never.
    pub delay_warning_time: Option<std::time::Duration>,
    /// Source addresses for outbound connections (one per family at most is used).
    pub bind_addresses: Vec<std::net::IpAddr>,
    /// Say EHLO with the PTR name of the source address (when it resolves back to
    /// that address), as receivers that check forward-confirmed reverse DNS expect.
    pub ehlo_from_ptr: bool,
    /// Traffic shaping: destinations, their limits, cooling after throttling.
    pub shaping: crate::shaping::Shaping,
    /// Transactions on one connection before it is closed (destinations without a
    /// rule of their own).
    pub max_messages_per_connection: u32,
    /// Honour MTA-STS policies of recipient domains (MX delivery only).
    pub mta_sts: bool,
    /// Apply DANE (RFC 7672): MX hosts with DNSSEC-validated TLSA records get TLS
    /// checked against them, and mail waits when DNSSEC cannot vouch for an answer.
    /// Off unless set: it needs a validating resolver (or `dnssec_trust_anchors`).
    pub dane: bool,
    /// DANE's DNSSEC validated here from these trust anchors (DNSKEY or DS lines);
    /// `None`: the resolver's AD bit is trusted (it must validate).
    pub dnssec_trust_anchors: Option<std::path::PathBuf>,
    /// Port of the MTA-STS policy servers (443; tests use their own).
    pub mta_sts_port: u16,
    /// Mail for this host: its domains, aliases, and where local users' mail goes.
    pub local: crate::local::LocalConfig,
    /// Local users' mailboxes (mbox files named after each user, Debian's `/var/mail`).
    pub mail_spool_directory: std::path::PathBuf,
    /// DKIM keys (`[[dkim]]`); none: mail goes unsigned.
    pub dkim: Vec<std::sync::Arc<crate::dkim::DkimKey>>,
    /// Failure classification (`[events] bounce_rules` after the built-in rules).
    pub rules: std::sync::Arc<mailspool_events::Rules>,
    /// What hard bounces do to the suppression list (`[suppression]`).
    pub suppression: mailspool_events::Policy,
    /// Where events are POSTed (`[[webhook]]`; the daemon sends).
    pub webhooks: Vec<std::sync::Arc<crate::webhook::Webhook>>,
    /// The envelope sender of outgoing mail, signed per message (`[return_path]`).
    pub return_path: Option<std::sync::Arc<mailspool_events::ReturnPath>>,
}

impl Default for DeliverConfig {
    fn default() -> Self {
        DeliverConfig {
            hostname: "localhost".into(),
            relayhosts: Vec::new(),
            relay_tls: TlsPolicy::Opportunistic,
            relay_auth: None,
            routes: HashMap::new(),
            mx_tls: TlsPolicy::Opportunistic,
            tls_ca_file: None,
            resolver: None,
            mx_port: 25,
            timeouts: Timeouts::default(),
            max_deliveries: 20,
            per_host_limit: 5,
            bounce_max_headers: 64 * 1024,
            delay_warning_time: Some(std::time::Duration::from_secs(4 * 3600)),
            bind_addresses: Vec::new(),
            ehlo_from_ptr: false,
            dkim: Vec::new(),
            mta_sts: true,
            dane: false,
            dnssec_trust_anchors: None,
            local: crate::local::LocalConfig::default(),
            mail_spool_directory: std::path::PathBuf::from("/var/mail"),
            mta_sts_port: 443,
            shaping: crate::shaping::Shaping::default(),
            max_messages_per_connection: 100,
            rules: Default::default(),
            suppression: Default::default(),
            webhooks: Vec::new(),
            return_path: None,
        }
    }
}

impl DeliverConfig {
    /// Limits of a destination no rule names: the per-host settings.
    pub fn default_limits(&self) -> crate::shaping::Limits {
        crate::shaping::Limits {
            max_connections: self.per_host_limit.max(1),
            max_messages_per_connection: self.max_messages_per_connection.max(1),
            ..Default::default()
        }
    }

    /// The whole-session cap (max_connection_time).
    pub fn set_max_connection_time(&mut self, d: Duration) {
        self.timeouts.max_session = d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        let p = |s| HostPort::parse(s, 25).unwrap();
        assert_eq!(
            p("mx.example.org"),
            HostPort {
                host: "mx.example.org".into(),
                port: 25
            }
        );
        assert_eq!(p("relay:587").port, 587);
        assert_eq!(p("[relay.example]:465").host, "relay.example");
        assert_eq!(
            p("[::1]:2525"),
            HostPort {
                host: "::1".into(),
                port: 2525
            }
        );
        assert_eq!(p("::1").host, "::1");
        assert!(HostPort::parse("host:x", 25).is_err());
        assert!(HostPort::parse("", 25).is_err());
        assert_eq!(p("[::1]:2525").to_string(), "[::1]:2525");
    }
}
