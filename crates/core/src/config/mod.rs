//! Configuration: a TOML file with Mail::Spool 0.50's property names, plus ours.
//!
//! ```toml
//! dequeue_dir = "/var/spool/mailspool"    # the spool directory
//! dequeue_periods = [0, 1800, 14400, 28800, 57600, 86400, 172800]
//! dequeue_priority = [1, 3, 9, 25, 50, 100, 200]
//! dequeue_timeout = 20                    # daemon tick, seconds
//! max_dequeue_processes = 20              # deliveries at once
//! max_connection_time = 600               # seconds one delivery may take
//! usage_log = true                        # write usage/raw
//! fsync_directories = "auto"              # auto | always | never (see docs/design.md)
//! max_message_size = 52428800             # bytes
//! hostname = "mail.example.com"           # for Message-ID, default sender; default: this host
//! ```
//!
//! The spool directory is, in order: `--spool`, `$MAILSPOOL_SPOOL`, `dequeue_dir`, then
//! `/var/spool/mailspool` for root or `$XDG_STATE_HOME/mailspool` (default
//! `~/.local/state/mailspool`) for anyone else.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod deliver;
mod events;
mod file;
mod http;
mod serve;

use deliver::deliver_settings;
pub use events::{EventsFile, ReturnPathFile, SuppressionFile, WebhookFile, WebhookSettings};
pub use file::{
    ConfigFile, DestinationFile, DkimFile, ListenFile, OneOrMany, RelayFile, ServeFile,
    ShapingFile, TimeoutsFile,
};
pub use http::{HttpConfig, HttpFile, default_tokens_file};
pub use serve::default_users_file;
use serve::{default_serve, serve_settings};

use mailspool_spool::SpoolConfig;

/// Default size limit of a message: 50 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;
/// Default limit of the header block: 1 MiB.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 1024 * 1024;

/// Everything mailspool needs to run, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[return_path]`: the address and the secret's file (read by `load_return_path`).
    pub return_path: Option<(String, PathBuf)>,
    /// `[[webhook]]`, checked (their secrets are read by `load_secrets`).
    pub webhooks: Vec<WebhookSettings>,
    /// `[events] bounce_rules` as written (read into `deliver.rules`).
    pub bounce_rules: Option<PathBuf>,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool layout and aging.
    pub spool: SpoolConfig,
    /// Daemon tick.
    pub dequeue_timeout: Duration,
    /// Deliveries at once.
    pub max_dequeue_processes: usize,
    /// Message size limit in bytes.
    pub max_message_size: u64,
    /// Free-space reserve of the spool's file system, bytes (0: none).
    pub min_free_space: u64,
    /// Header block limit in bytes.
    pub max_header_size: usize,
    /// Our host name.
    pub hostname: String,
    /// Completes bare names at intake; `None`: the host name.
    pub qualify_domain: Option<String>,
    /// Delivery settings.
    pub deliver: mailspool_deliver::DeliverConfig,
    /// Seconds SIGTERM waits for deliveries under way.
    pub shutdown_grace: Duration,
    /// Listener settings.
    pub serve: mailspool_serve::ServeConfig,
    /// Whether a configuration file was read (not only built-in defaults).
    pub found_file: bool,
    /// The relay's user name and password file; the password is read only by
    /// [`Config::load_secrets`].
    pub relay_secret: Option<(String, PathBuf)>,
    /// `[[dkim]]` as written (key files made absolute against the configuration's
    /// directory); the keys are read by [`Config::load_secrets`].
    pub dkim: Vec<DkimFile>,
    /// The directory of the configuration file read, if one was.
    pub config_dir: Option<PathBuf>,
    /// Log lines as JSON objects instead of text.
    pub log_json: bool,
    /// The HTTP server, when `[http]` is configured.
    pub http: Option<HttpConfig>,
    /// How long a database claim lasts unless renewed.
    pub spool_lease: Duration,
    /// More roots for the database's certificate.
    pub spool_ca_file: Option<PathBuf>,
    /// The database password's file.
    pub spool_password_file: Option<PathBuf>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("configuration {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the line and the key).
        message: String,
    },
    /// Values that do not fit together.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            spool_dir: default_spool_dir().unwrap_or_default(),
            spool: SpoolConfig::default(),
            spool_lease: mailspool_pg::DEFAULT_LEASE,
            spool_ca_file: None,
            spool_password_file: None,
            dequeue_timeout: Duration::from_secs(20),
            max_dequeue_processes: 20,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            min_free_space: 4 * DEFAULT_MAX_MESSAGE_SIZE,
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            hostname: default_hostname(),
            qualify_domain: None,
            deliver: mailspool_deliver::DeliverConfig {
                hostname: default_hostname(),
                ..Default::default()
            },
            shutdown_grace: Duration::from_secs(30),
            serve: default_serve(),
            found_file: false,
            relay_secret: None,
            dkim: Vec::new(),
            config_dir: None,
            bounce_rules: None,
            webhooks: Vec::new(),
            return_path: None,
            log_json: false,
            http: None,
        }
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The system spool, where the package puts it.
pub const SYSTEM_SPOOL: &str = "/var/spool/mailspool";

/// `/var/spool/mailspool` for root, and for everyone on a machine where mailspool is
/// installed for all users (the system spool exists); else the user's own
/// `$XDG_STATE_HOME/mailspool` (`~/.local/state/mailspool`). With neither `HOME` nor
/// `XDG_STATE_HOME`, none: never a shared fallback such as `/tmp`, where another user
/// could have made the directory first.
pub fn default_spool_dir() -> Option<PathBuf> {
    if is_root() || Path::new(SYSTEM_SPOOL).is_dir() {
        return Some(PathBuf::from(SYSTEM_SPOOL));
    }
    Some(state_home()?.join("mailspool"))
}

/// The user's `$XDG_STATE_HOME` (else `~/.local/state`), when absolute.
fn state_home() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })
}

/// Whether `dir` is a user's own default spool (not a configured or system one).
pub fn is_personal_default(dir: &Path) -> bool {
    !is_root() && default_spool_dir().is_some_and(|d| d == dir) && dir != Path::new(SYSTEM_SPOOL)
}

/// This machine's fully qualified name, as `hostname -f` finds it without DNS: the
/// kernel's node name if it has a dot, else the first dotted alias of that name in
/// /etc/hosts, else the node name (the configured `hostname` wins over all of these).
impl Config {
    /// The domain that completes a bare name: `qualify_domain`, else the host name.
    pub fn qualify_domain(&self) -> &str {
        self.qualify_domain.as_deref().unwrap_or(&self.hostname)
    }
}

pub fn default_hostname() -> String {
    let name = mailspool_spool::lock::hostname();
    if name.is_empty() {
        return "localhost".to_owned();
    }
    if name.contains('.') {
        return name;
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    fqdn_from_hosts(&name, &hosts).unwrap_or(name)
}

fn fqdn_from_hosts(name: &str, hosts: &str) -> Option<String> {
    hosts.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let names: Vec<&str> = line.split_whitespace().skip(1).collect();
        if !names.contains(&name) {
            return None;
        }
        names
            .iter()
            .find(|n| n.contains('.') && n.split('.').next() == Some(name))
            .map(|n| n.to_string())
    })
}

/// A setting that must be 1 or more: zero would refuse every message or connection.
pub(crate) fn positive<T: PartialOrd + Default + std::fmt::Display>(
    name: &str,
    v: T,
) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError::Invalid(format!(
            "{name} = {v} cannot work: it must be 1 or more"
        )))
    }
}

/// Where we look for a configuration file when none is named: `$MAILSPOOL_CONFIG`, then
/// `$XDG_CONFIG_HOME/mailspool/mailspool.toml` (not for root), then
/// `/etc/mailspool/mailspool.toml`; the first that exists.
pub fn find_config_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MAILSPOOL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if !is_root() {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(base) = base {
            candidates.push(base.join("mailspool/mailspool.toml"));
        }
    }
    candidates.push(PathBuf::from("/etc/mailspool/mailspool.toml"));
    candidates.into_iter().find(|p| p.is_file())
}

impl Config {
    /// Read a configuration file and fill in defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let tokens_given = file.http.as_ref().is_some_and(|h| h.tokens_file.is_some());
        let mut config = Config::from_parts(file)?;
        // API tokens live beside the configuration that enables the API, whoever reads
        // it: root's `token add` and the daemon's user must find the same file.
        if let Some(http) = config.http.as_mut()
            && !tokens_given
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            http.tokens_file = dir.join("tokens");
        }
        config.config_dir = path.parent().map(Path::to_owned);
        if let Some(dir) = &config.config_dir {
            for d in &mut config.dkim {
                d.key_file = dir.join(&d.key_file);
            }
            if let Some(ca) = &mut config.spool_ca_file {
                *ca = dir.join(&ca);
            }
            if let Some(pw) = &mut config.spool_password_file {
                *pw = dir.join(&pw);
            }
            for w in &mut config.webhooks {
                w.secret_file = dir.join(&w.secret_file);
            }
            if let Some((_, file)) = &mut config.return_path {
                *file = dir.join(&file);
            }
        }
        events::load_rules(&mut config)?;
        Ok(config)
    }

    /// Fill in defaults for what the file leaves out.
    pub fn from_parts(file: ConfigFile) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut periods_set = false;
        match (&file.dequeue_dir, &file.spool) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "both dequeue_dir and spool name the spool; keep one".into(),
                ));
            }
            (Some(d), None) => c.spool_dir = d.clone(),
            (None, Some(s)) => c.spool_dir = PathBuf::from(s),
            (None, None) => {}
        }
        if let Some(secs) = file.spool_lease {
            if !(5..=86_400).contains(&secs) {
                return Err(ConfigError::Invalid(format!(
                    "spool_lease = {secs}: give 5 to 86400 seconds"
                )));
            }
            c.spool_lease = Duration::from_secs(secs);
        }
        c.spool_ca_file = file.spool_ca_file.clone();
        c.spool_password_file = file.spool_password_file.clone();
        if let Some(p) = &file.dequeue_periods {
            c.spool.periods = p.clone();
            periods_set = true;
        }
        match &file.dequeue_priority {
            Some(p) => c.spool.priorities = p.clone(),
            // Fewer or more tiers without priorities: scan the new ones like the last.
            None if periods_set => {
                let defaults = SpoolConfig::default().priorities;
                c.spool.priorities = (0..c.spool.periods.len())
                    .map(|i| *defaults.get(i).or(defaults.last()).unwrap_or(&1))
                    .collect();
            }
            None => {}
        }
        if let Some(t) = file.dequeue_timeout {
            if t == 0 {
                return Err(ConfigError::Invalid(
                    "dequeue_timeout must be 1 or more".into(),
                ));
            }
            c.dequeue_timeout = Duration::from_secs(t);
        }
        if let Some(n) = file.max_dequeue_processes {
            if n == 0 {
                return Err(ConfigError::Invalid(
                    "max_dequeue_processes must be 1 or more".into(),
                ));
            }
            c.max_dequeue_processes = n;
        }
        if let Some(t) = file.max_connection_time {
            c.spool.max_connection_time = Duration::from_secs(t);
        }
        if let Some(u) = file.usage_log {
            c.spool.usage_log = u;
        }
        if let Some(shared) = file.shared_spool {
            c.spool.shared = shared;
        }
        if let Some(f) = &file.fsync_directories {
            c.spool.fsync_directories =
                mailspool_spool::durability::Setting::parse(f).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "fsync_directories = {f:?}: expected \"auto\", \"always\" or \"never\""
                    ))
                })?;
        }
        if let Some(m) = file.max_message_size {
            c.max_message_size = positive("max_message_size", m)?;
        }
        c.min_free_space = file
            .min_free_space
            .unwrap_or(c.max_message_size.saturating_mul(4));
        if let Some(t) = file.max_connection_time {
            positive("max_connection_time", t)?;
        }
        if let Some(h) = file.hostname.clone() {
            if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '@') {
                return Err(ConfigError::Invalid(format!(
                    "hostname {h:?} is not a host name"
                )));
            }
            c.hostname = h;
        }
        if let Some(q) = &file.qualify_domain {
            let q = q.trim().trim_end_matches('.').to_ascii_lowercase();
            mailspool_message::address::check_address(&format!("x@{q}")).map_err(|_| {
                ConfigError::Invalid(format!("qualify_domain {q:?} is not a domain"))
            })?;
            c.qualify_domain = Some(q);
        }
        deliver_settings(&mut c, &file)?;
        serve_settings(&mut c, &file)?;
        events::events_settings(
            &mut c,
            file.events.as_ref(),
            file.suppression.as_ref(),
            file.webhook.as_ref(),
            file.return_path.as_ref(),
        )?;
        c.serve.rules = c.deliver.rules.clone();
        c.serve.suppression = c.deliver.suppression.clone();
        c.serve.refuse_suppressed = c.deliver.suppression.enabled && c.deliver.suppression.refuse;
        c.log_json = match file.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "log_format {other:?}: expected \"text\" or \"json\""
                )));
            }
        };
        c.http = http::http_settings(&file, c.max_message_size)?;
        c.spool.validate().map_err(ConfigError::Invalid)?;
        Ok(c)
    }

    /// Read the secrets that delivery needs (the relay password). Only what delivers
    /// calls this: `sendmail`, `mailq` and `send` never read a secret.
    pub fn load_secrets(&mut self) -> Result<(), ConfigError> {
        events::load_webhooks(self)?;
        events::load_return_path(self)?;
        deliver::load_secrets(self)
    }

    /// Read the return path's secret (`serve` takes the reports that come back to it).
    pub fn load_return_path(&mut self) -> Result<(), ConfigError> {
        events::load_return_path(self)
    }

    /// The spool's database URL, when the spool is a database rather than a directory.
    pub fn spool_url(&self) -> Option<&str> {
        self.spool_dir.to_str().filter(|s| mailspool_pg::is_url(s))
    }

    /// Where the spool is, for messages (a URL without its password).
    pub fn spool_location(&self) -> String {
        match self.spool_url() {
            Some(url) => mailspool_pg::redact(url),
            None => self.spool_dir.display().to_string(),
        }
    }

    /// Load: the named file, or the first default file found, or built-in defaults; then
    /// `$MAILSPOOL_SPOOL` and `spool` (from `--spool`) override the spool directory.
    pub fn load(file: Option<&Path>, spool: Option<&Path>) -> Result<Config, ConfigError> {
        let found = file.map(Path::to_path_buf).or_else(find_config_file);
        let mut config = match &found {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(dir) = std::env::var_os("MAILSPOOL_SPOOL").filter(|d| !d.is_empty()) {
            config.spool_dir = PathBuf::from(dir);
        }
        if let Some(dir) = spool {
            config.spool_dir = dir.to_owned();
        }
        if config.spool_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "no spool directory: neither HOME nor XDG_STATE_HOME is set, and no \
                 configuration names one. Give --spool DIR, set $MAILSPOOL_SPOOL, or set \
                 dequeue_dir in /etc/mailspool/mailspool.toml (mailspool never falls back \
                 to a shared directory such as /tmp)"
                    .into(),
            ));
        }
        config.found_file = found.is_some();
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
