//! Listener settings.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// What a listening port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Port 25 style: relay for `relay_networks` and authenticated clients.
    Relay,
    /// Port 587: AUTH required (offered after STARTTLS).
    Submission,
    /// Port 465: TLS from the first byte, AUTH required.
    Smtps,
}

impl Mode {
    /// Parse "relay", "submission", "smtps".
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "relay" | "smtp" => Ok(Mode::Relay),
            "submission" => Ok(Mode::Submission),
            "smtps" | "submissions" => Ok(Mode::Smtps),
            other => Err(format!(
                "mode {other:?}: use \"relay\", \"submission\" or \"smtps\""
            )),
        }
    }
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Address to bind.
    pub address: SocketAddr,
    /// What it is for.
    pub mode: Mode,
    /// PEM certificate chain, for STARTTLS / smtps.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
}

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parse `10.0.0.0/8`, `::1`, `192.0.2.7`.
    pub fn parse(s: &str) -> Result<Network, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Everything the listener needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Our name in the greeting and Received.
    pub hostname: String,
    /// Ports.
    pub listen: Vec<Listen>,
    /// Clients that may relay without AUTH (default 127.0.0.0/8 and ::1).
    pub relay_networks: Vec<Network>,
    /// Users file for AUTH.
    pub users_file: Option<PathBuf>,
    /// Message size limit.
    pub max_message_size: u64,
    /// Bytes kept free on the spool's file system: below them MAIL gets 452 4.3.1.
    pub min_free_space: u64,
    /// For trusted clients (relay networks, authenticated users, `sendmail -bs`): the
    /// domain that completes a bare name (`RCPT TO:<root>`); `None`: refused.
    pub qualify_domain: Option<String>,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Refuse recipients on the suppression list at RCPT (`[suppression] action =
    /// "refuse"` and the list enabled).
    pub refuse_suppressed: bool,
    /// The return path: reports (bounces, complaints) to its domain are taken from
    /// anyone, for messages it signed, and recorded as events.
    pub return_path: Option<std::sync::Arc<mailspool_events::ReturnPath>>,
    /// Failure classes, for the bounces that come back.
    pub rules: std::sync::Arc<mailspool_events::Rules>,
    /// What a hard bounce that comes back does to the suppression list.
    pub suppression: mailspool_events::Policy,
    /// Each command (and each data read) must arrive within this (RFC 5321: 5 minutes).
    pub command_timeout: Duration,
    /// A whole session ends after this.
    pub session_timeout: Duration,
    /// Connections at once, in all.
    pub max_connections: usize,
    /// Connections at once from one client address (IPv6: one /64) outside
    /// `relay_networks`.
    pub max_connections_per_ip: usize,
    /// AUTH failures before the connection is closed.
    pub max_auth_failures: u32,
    /// Pause after a failed AUTH.
    pub auth_failure_delay: Duration,
    /// Pause before the greeting for clients outside `relay_networks`; one that talks
    /// during it is dropped.
    pub greet_pause: Duration,
    /// Apply the pause to every client (tests).
    pub greet_pause_all: bool,
    /// SIGTERM waits this long for sessions.
    pub shutdown_grace: Duration,
    /// Where mail to `<postmaster>` (no domain, any case) goes.
    pub postmaster: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            hostname: "localhost".into(),
            listen: Vec::new(),
            relay_networks: vec![
                Network::parse("127.0.0.0/8").expect("valid"),
                Network::parse("::1").expect("valid"),
            ],
            users_file: None,
            max_message_size: 50 * 1024 * 1024,
            min_free_space: 4 * 50 * 1024 * 1024,
            qualify_domain: None,
            max_recipients: 1000,
            refuse_suppressed: true,
            return_path: None,
            rules: Default::default(),
            suppression: Default::default(),
            command_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(3600),
            max_connections: 1000,
            // Postfix's smtpd_client_connection_count_limit.
            max_connections_per_ip: 50,
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
            greet_pause: Duration::from_millis(300),
            greet_pause_all: false,
            shutdown_grace: Duration::from_secs(30),
            postmaster: "postmaster@localhost".into(),
        }
    }
}

impl ServeConfig {
    /// Whether `ip` may relay without AUTH.
    pub fn trusted(&self, ip: IpAddr) -> bool {
        self.relay_networks.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n = Network::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.9.9".parse().unwrap()));
        let c = ServeConfig::default();
        assert!(c.trusted("127.0.0.5".parse().unwrap()));
        assert!(c.trusted("::1".parse().unwrap()));
        assert!(!c.trusted("192.0.2.1".parse().unwrap()));
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Network::parse("10.0.0.0/33").is_err());
    }
}
