//! `[http]`: the HTTP API, metrics and dashboard. Off unless the section is present;
//! loopback-only unless TLS is configured.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, ConfigFile, positive};

/// `[http]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// `ip:port` the daemon serves on (default 127.0.0.1:8025).
    pub listen: Option<String>,
    /// `ip:port` `mailspool serve` serves on when it runs (default: none, so the two
    /// never fight over one port; set it to scrape the listener's own metrics).
    pub serve_listen: Option<String>,
    /// Hashed API tokens (`mailspool token add`); default: `tokens` beside the
    /// configuration file.
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Largest request body in bytes (default: max_message_size plus a third, for the
    /// base64 of a JSON attachment).
    pub max_body_size: Option<u64>,
    /// Seconds a request may take, body included (60).
    pub request_timeout: Option<u64>,
    /// Connections at once (256). When all are taken, a new one closes the connection
    /// idle the longest.
    pub max_connections: Option<usize>,
    /// Connections at once from one client address (64; local clients share 127.0.0.1).
    pub max_connections_per_ip: Option<usize>,
    /// Seconds between counts of the spool for the queue metrics (15).
    pub metrics_interval: Option<u64>,
}

/// The HTTP server's settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where the daemon listens.
    pub listen: SocketAddr,
    /// Where `serve` listens, if anywhere.
    pub serve_listen: Option<SocketAddr>,
    /// Hashed tokens.
    pub tokens_file: PathBuf,
    /// Certificate and key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest request body.
    pub max_body_size: usize,
    /// Longest request.
    pub request_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address.
    pub max_connections_per_ip: usize,
    /// How often the queue metrics are refreshed.
    pub metrics_interval: Duration,
}

/// Where tokens are kept when no configuration file says: `/etc/mailspool/tokens` for
/// root, else `$XDG_CONFIG_HOME/mailspool/tokens`. With a configuration file, the
/// default is `tokens` beside it (see `Config::from_file`).
pub fn default_tokens_file() -> PathBuf {
    super::default_users_file().with_file_name("tokens")
}

fn address(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::Invalid(format!("[http] {key} {text:?}: expected ip:port")))
}

/// Read `[http]`: `None` when the section is absent (the API is off).
pub(super) fn http_settings(
    file: &ConfigFile,
    max_message_size: u64,
) -> Result<Option<HttpConfig>, ConfigError> {
    let Some(h) = &file.http else {
        return Ok(None);
    };
    let listen = address("listen", h.listen.as_deref().unwrap_or("127.0.0.1:8025"))?;
    let serve_listen = h
        .serve_listen
        .as_deref()
        .map(|a| address("serve_listen", a))
        .transpose()?;
    let tls = match (&h.tls_cert, &h.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Invalid(
                "[http]: give both tls_cert and tls_key".into(),
            ));
        }
    };
    // Tokens are bearer secrets: off loopback they travel only inside TLS.
    for a in std::iter::once(listen).chain(serve_listen) {
        if !a.ip().is_loopback() && tls.is_none() {
            return Err(ConfigError::Invalid(format!(
                "[http] {a} is not a loopback address: API tokens would cross the network \
                 in clear; set tls_cert and tls_key, or listen on 127.0.0.1"
            )));
        }
    }
    let default_body = max_message_size.saturating_add(max_message_size / 3) + 64 * 1024;
    let max_body_size = positive(
        "http.max_body_size",
        h.max_body_size.unwrap_or(default_body),
    )?;
    Ok(Some(HttpConfig {
        listen,
        serve_listen,
        tokens_file: h.tokens_file.clone().unwrap_or_else(default_tokens_file),
        tls,
        max_body_size: usize::try_from(max_body_size).unwrap_or(usize::MAX),
        request_timeout: Duration::from_secs(positive(
            "http.request_timeout",
            h.request_timeout.unwrap_or(60),
        )?),
        max_connections: positive("http.max_connections", h.max_connections.unwrap_or(256))?,
        max_connections_per_ip: positive(
            "http.max_connections_per_ip",
            h.max_connections_per_ip.unwrap_or(64),
        )?,
        metrics_interval: Duration::from_secs(positive(
            "http.metrics_interval",
            h.metrics_interval.unwrap_or(15),
        )?),
    }))
}
