//! The configuration file as written: every table and key, before defaults are filled
//! in and values checked (`super::Config::from_file`). Unknown keys are refused.

use std::path::PathBuf;

use serde::Deserialize;

use super::HttpFile;

/// The configuration file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Spool directory.
    pub dequeue_dir: Option<PathBuf>,
    /// Seconds a node waits in each tier.
    pub dequeue_periods: Option<Vec<u64>>,
    /// Scan priority of each tier.
    pub dequeue_priority: Option<Vec<u32>>,
    /// Daemon tick in seconds.
    pub dequeue_timeout: Option<u64>,
    /// Deliveries at once.
    pub max_dequeue_processes: Option<usize>,
    /// Longest delivery, seconds.
    pub max_connection_time: Option<u64>,
    /// Write usage/raw.
    pub usage_log: Option<bool>,
    /// Message size limit in bytes.
    pub max_message_size: Option<u64>,
    /// Bytes kept free on the spool's file system: below it new mail is refused
    /// (SMTP 452 4.3.1, sendmail 75, HTTP 507) while accepted mail still moves and
    /// bounces (default: 4 × max_message_size; 0: no reserve).
    pub min_free_space: Option<u64>,
    /// Our host name.
    pub hostname: Option<String>,
    /// Domain that completes a bare name (`root`, `-f cron`) wherever mail enters
    /// (default: hostname).
    pub qualify_domain: Option<String>,
    /// Domains that are this host: their mail goes through aliases to local mailboxes
    /// (default: hostname, localhost, localhost.localdomain).
    pub local_domains: Option<Vec<String>>,
    /// The aliases file, sendmail's syntax (default /etc/aliases; "" for none).
    pub aliases: Option<PathBuf>,
    /// Send every local user's mail to this address instead of a mailbox (relay-only
    /// hosts, like nullmailer's adminaddr).
    pub admin_address: Option<String>,
    /// Where local mailboxes are (default /var/mail).
    pub mail_spool_directory: Option<PathBuf>,
    /// Relay host(s): `"host:port"` or a list tried in order.
    pub relayhost: Option<OneOrMany>,
    /// Relay settings.
    pub relay: Option<RelayFile>,
    /// TLS to MX hosts: "opportunistic" (default), "required", "none".
    pub tls: Option<String>,
    /// Extra CAs (PEM) trusted for required TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Domain → `host:port` routes.
    pub routes: Option<std::collections::HashMap<String, String>>,
    /// DNS server `ip:port` instead of /etc/resolv.conf.
    pub resolver: Option<String>,
    /// SMTP port of MX hosts (25).
    pub mx_port: Option<u16>,
    /// Connections at once to one host (5).
    pub max_host_connections: Option<usize>,
    /// Seconds after which a mailspool lock from another host that its holder stopped
    /// refreshing is stale (300; holders refresh every 20 s; same-host holders are
    /// checked by pid instead).
    pub stale_lock_timeout: Option<u64>,
    /// Seconds after which a Mail::Spool 0.50 lock from another host is stale: 0.50's
    /// max_connection_time + 2 (21602).
    pub legacy_lock_timeout: Option<u64>,
    /// Seconds SIGTERM waits for deliveries under way (30).
    pub shutdown_grace: Option<u64>,
    /// Source address(es) of outbound SMTP: one IPv4 and/or one IPv6 address.
    pub bind_address: Option<OneOrMany>,
    /// Say EHLO with the source address's (forward-confirmed) PTR name.
    pub ehlo_from_ptr: Option<bool>,
    /// Honour recipient domains' MTA-STS policies (true).
    pub mta_sts: Option<bool>,
    /// Check MX hosts' certificates against their DNSSEC-signed TLSA records (false).
    pub dane: Option<bool>,
    /// DANE: validate DNSSEC here from the trust anchors in this file (DNSKEY or DS
    /// lines) instead of trusting the resolver's AD bit.
    pub dnssec_trust_anchors: Option<PathBuf>,
    /// Seconds in the queue after which the sender is told the message is delayed
    /// (one RFC 3464 "delayed" report; 14400; 0 = never).
    pub delay_warning_time: Option<u64>,
    /// SMTP client timeouts in seconds.
    pub timeouts: Option<TimeoutsFile>,
    /// Listening ports of `mailspool serve`.
    pub listen: Option<Vec<ListenFile>>,
    /// Clients that may relay without AUTH (CIDR).
    pub relay_networks: Option<Vec<String>>,
    /// AUTH users file (`mailspool user add`).
    pub users_file: Option<PathBuf>,
    /// Recipients per transaction.
    pub max_recipients: Option<usize>,
    /// Listener limits.
    pub serve: Option<ServeFile>,
    /// Where mail the listener takes for `<postmaster>` goes (default
    /// postmaster@hostname).
    pub postmaster: Option<String>,
    /// The spool is shared on purpose (several hosts over NFS, the 0.50 multi-host
    /// case): accept a group-writable spool or one another user owns.
    pub shared_spool: Option<bool>,
    /// Whether a commit fsyncs the directory its names go in: "auto" (default: not
    /// where the file system's journal commits them with the file, journaled ext4 and
    /// XFS), "always", or "never" (the administrator vouches for the file system).
    pub fsync_directories: Option<String>,
    /// Log lines: "text" (default) or "json" (one object per event).
    pub log_format: Option<String>,
    /// The HTTP API, metrics and dashboard (off unless present).
    pub http: Option<HttpFile>,
    /// DKIM keys (`[[dkim]]`): outgoing mail is signed with the key of its From domain.
    pub dkim: Option<Vec<DkimFile>>,
    /// The history of every message (`[events]`).
    pub events: Option<super::EventsFile>,
    /// The suppression list (`[suppression]`).
    pub suppression: Option<super::SuppressionFile>,
    /// Where events are POSTed (`[[webhook]]`, several).
    pub webhook: Option<Vec<super::WebhookFile>>,
    /// The signed envelope sender bounces come back to (`[return_path]`).
    pub return_path: Option<super::ReturnPathFile>,
    /// Traffic shaping: per-destination limits and cooling after throttling.
    pub shaping: Option<ShapingFile>,
    /// The spool: a directory (as `dequeue_dir`) or a PostgreSQL URL
    /// (`postgresql://user@host1,host2/db?target_session_attrs=read-write`).
    pub spool: Option<String>,
    /// Seconds a database claim lasts unless renewed (a dead host's nodes wait this
    /// long before another host takes them); 120.
    pub spool_lease: Option<u64>,
    /// A PEM file of CA certificates the database's certificate may chain to, for
    /// `sslmode=require` (besides the web PKI's roots).
    pub spool_ca_file: Option<PathBuf>,
    /// The database password's file (first line), for a `postgresql://` spool whose
    /// URL carries none: owned by the daemon's user, mode 0600.
    pub spool_password_file: Option<PathBuf>,
}

/// `[shaping]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingFile {
    /// Seconds a destination that throttled us is left alone, the first time (60);
    /// doubled each time in a row.
    pub cooling_period: Option<u64>,
    /// The longest cooling period, seconds (900).
    pub max_cooling_period: Option<u64>,
    /// Transactions per connection for destinations without a rule (100).
    pub max_messages_per_connection: Option<u32>,
    /// Named destinations; a name of a built-in group (google, microsoft, yahoo,
    /// apple) changes that group.
    pub destination: Option<Vec<DestinationFile>>,
}

/// `[[shaping.destination]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFile {
    /// Its name, for logs (and to change a built-in group).
    pub name: String,
    /// Recipient domains (`example.com`, `*.example.com`).
    pub domains: Option<Vec<String>>,
    /// MX host patterns (`*.google.com`).
    pub mx: Option<Vec<String>>,
    /// Connections at once (the adaptive window's ceiling).
    pub max_connections: Option<usize>,
    /// Transactions per connection.
    pub max_messages_per_connection: Option<u32>,
    /// Messages per period: `100/min`, `10/s`, `5000/h`.
    pub max_message_rate: Option<String>,
    /// New connections per period.
    pub connection_rate: Option<String>,
}

/// `[[dkim]]`: one signing key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DkimFile {
    /// Signing domain (`d=`): mail whose From is this domain or under it.
    pub domain: String,
    /// Selector (`s=`): the key's record is `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key (`mailspool dkim keygen` writes one).
    pub key_file: PathBuf,
    /// "ed25519" or "rsa2048"; checked against the key when given.
    pub algorithm: Option<String>,
    /// Header names to sign (default: From twice, Subject, Date, To, Cc, Message-ID,
    /// and the rest of `mailspool_deliver::dkim::DEFAULT_HEADERS`).
    pub headers: Option<Vec<String>>,
    /// Sign mail from domains with no key of their own with this one.
    #[serde(default)]
    pub fallback: bool,
}

/// `[[listen]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// `ip:port`.
    pub address: String,
    /// "relay" (default), "submission", "smtps".
    pub mode: Option<String>,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
}

/// `[serve]`: listener limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// Seconds a command may take to arrive (300).
    pub command_timeout: Option<u64>,
    /// Seconds a session may last (3600).
    pub session_timeout: Option<u64>,
    /// Connections at once (1000).
    pub max_connections: Option<usize>,
    /// Connections at once per client address outside relay_networks (50).
    pub max_connections_per_ip: Option<usize>,
    /// AUTH failures before disconnecting (3).
    pub max_auth_failures: Option<u32>,
    /// Milliseconds of pause after a failed AUTH (1000).
    pub auth_failure_delay_ms: Option<u64>,
    /// Milliseconds of pause before the greeting for untrusted clients (300).
    pub greet_pause_ms: Option<u64>,
    /// Pause for every client, trusted or not.
    pub greet_pause_all: Option<bool>,
}

/// `relayhost = "a"` or `relayhost = ["a", "b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One host.
    One(String),
    /// Hosts in failover order.
    Many(Vec<String>),
}

/// `[relay]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// "opportunistic" (default), "required" (default when a password is set), "none".
    pub tls: Option<String>,
    /// AUTH user.
    pub username: Option<String>,
    /// File holding the AUTH password (first line).
    pub password_file: Option<PathBuf>,
}

/// `[timeouts]`, seconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// TCP connect.
    pub connect: Option<u64>,
    /// Greeting.
    pub greeting: Option<u64>,
    /// Command replies.
    pub command: Option<u64>,
    /// DATA's 354.
    pub data_init: Option<u64>,
    /// Each body write.
    pub data_block: Option<u64>,
    /// Reply to the final dot.
    pub data_end: Option<u64>,
}
