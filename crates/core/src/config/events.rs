//! `[events]` (the history: kept or not, for how long, the bounce rules) and
//! `[suppression]` (what hard bounces and complaints do).

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// `[events]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsFile {
    /// Keep every event of every message in the spool (true).
    pub enabled: Option<bool>,
    /// Days the history keeps events (30).
    pub retention_days: Option<u64>,
    /// A rule file classifying failures, tried before the built-in rules (reread on
    /// SIGHUP); relative to the configuration file's directory.
    pub bounce_rules: Option<PathBuf>,
}

/// `[suppression]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionFile {
    /// Hard bounces and complaints add entries, and entries keep mail from being sent
    /// (true).
    pub enabled: Option<bool>,
    /// "global" (default): an entry a bounce adds applies to every sender; "domain":
    /// to the bouncing message's sender's domain only.
    pub scope: Option<String>,
    /// "refuse" (default): a suppressed recipient is refused at intake; "drop": the
    /// message is taken and the recipient dropped with a `suppressed` event.
    pub action: Option<String>,
    /// Days after which an entry a bounce added expires (none: never).
    pub expire_days: Option<u64>,
    /// Soft bounces (a full mailbox, an expiry) in a row, with no delivery between,
    /// that suppress a recipient (0, the default: never).
    pub soft_bounces: Option<u32>,
    /// Days over which they are counted (7).
    pub soft_bounce_days: Option<u64>,
}

/// `[return_path]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnPathFile {
    /// `bounces@bounce.example.com`: mail goes out from `bounces+<id>.<sig>@...`, and
    /// `serve` takes the reports that come back to that domain.
    pub address: String,
    /// The signing secret (at least 16 bytes), owned by the daemon's user, mode 0600;
    /// relative to the configuration file's directory.
    pub secret_file: PathBuf,
}

/// `[[webhook]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    /// Names its place in the history (default: from the URL); letters, digits, `.-_`.
    pub name: Option<String>,
    /// `https://...` (or `http://` to a loopback address).
    pub url: String,
    /// The event types it wants (default: all).
    pub events: Option<Vec<String>>,
    /// The signing secret's file: `whsec_<base64>` (Standard Webhooks), owned by the
    /// daemon's user; relative to the configuration file's directory.
    pub secret_file: PathBuf,
    /// Most events in one request when several wait (100; 1: never batch).
    pub max_batch: Option<usize>,
    /// Hours of failures in a row after which it is disabled (72).
    pub give_up_after_hours: Option<u64>,
}

/// A webhook checked, its secret not yet read.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    name: String,
    url: mailspool_deliver::webhook::Target,
    kinds: Vec<mailspool_events::Kind>,
    /// The secret's file.
    pub secret_file: PathBuf,
    max_batch: usize,
    give_up_after: std::time::Duration,
}

fn webhook_settings(w: &WebhookFile) -> Result<WebhookSettings, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(format!("[[webhook]] {}: {m}", w.url));
    let url = mailspool_deliver::webhook::Target::parse(&w.url).map_err(bad)?;
    let name = w.name.clone().unwrap_or_else(|| url.default_name());
    if name.is_empty()
        || name.len() > 100
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || name.starts_with('.')
    {
        return Err(bad(format!(
            "name {name:?}: use letters, digits, '.', '-' and '_'"
        )));
    }
    let kinds = w
        .events
        .iter()
        .flatten()
        .map(|k| {
            mailspool_events::Kind::parse(k).ok_or_else(|| {
                bad(format!(
                    "no event type {k:?}; use {}",
                    mailspool_events::Kind::ALL
                        .map(mailspool_events::Kind::as_str)
                        .join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_batch = w.max_batch.unwrap_or(100);
    if !(1..=1000).contains(&max_batch) {
        return Err(bad("max_batch must be 1-1000".into()));
    }
    let hours = w.give_up_after_hours.unwrap_or(72);
    if hours < 24 {
        return Err(bad(
            "give_up_after_hours must be 24 or more (a day of retries at least)".into(),
        ));
    }
    Ok(WebhookSettings {
        name,
        url,
        kinds,
        secret_file: w.secret_file.clone(),
        max_batch,
        give_up_after: std::time::Duration::from_secs(hours * 3600),
    })
}

/// Read the return path's secret (the daemon and `serve`).
pub(super) fn load_return_path(c: &mut Config) -> Result<(), ConfigError> {
    let Some((address, file)) = c.return_path.clone() else {
        return Ok(());
    };
    let secret = std::fs::read(&file).map_err(|source| ConfigError::Read {
        path: file.clone(),
        source,
    })?;
    let secret = secret.trim_ascii();
    let rp = mailspool_events::ReturnPath::new(&address, secret)
        .map_err(|e| ConfigError::Invalid(format!("[return_path] {e}")))?;
    let rp = std::sync::Arc::new(rp);
    c.deliver.return_path = Some(rp.clone());
    c.serve.return_path = Some(rp);
    Ok(())
}

/// Read the webhooks' secrets (what delivers: the daemon).
pub(super) fn load_webhooks(c: &mut Config) -> Result<(), ConfigError> {
    c.deliver.webhooks = c
        .webhooks
        .iter()
        .map(|w| {
            let text =
                std::fs::read_to_string(&w.secret_file).map_err(|source| ConfigError::Read {
                    path: w.secret_file.clone(),
                    source,
                })?;
            let secret = mailspool_deliver::webhook::parse_secret(&text).map_err(|e| {
                ConfigError::Invalid(format!(
                    "[[webhook]] {}: {}: {e}",
                    w.name,
                    w.secret_file.display()
                ))
            })?;
            Ok(std::sync::Arc::new(mailspool_deliver::webhook::Webhook {
                name: w.name.clone(),
                url: w.url.clone(),
                kinds: w.kinds.clone(),
                secret,
                max_batch: w.max_batch,
                give_up_after: w.give_up_after,
            }))
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(())
}

/// Fill in `[events]` and `[suppression]`.
pub(super) fn events_settings(
    c: &mut Config,
    events: Option<&EventsFile>,
    suppression: Option<&SuppressionFile>,
    webhooks: Option<&Vec<WebhookFile>>,
    return_path: Option<&ReturnPathFile>,
) -> Result<(), ConfigError> {
    if let Some(rp) = return_path {
        // Checked now; its secret is read by what signs and takes reports.
        mailspool_events::ReturnPath::new(&rp.address, &[0; 16])
            .map_err(|e| ConfigError::Invalid(format!("[return_path] {e}")))?;
        c.return_path = Some((rp.address.clone(), rp.secret_file.clone()));
    }
    c.webhooks = webhooks
        .into_iter()
        .flatten()
        .map(webhook_settings)
        .collect::<Result<_, _>>()?;
    let mut names: Vec<&str> = c.webhooks.iter().map(|w| w.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ConfigError::Invalid(format!(
            "two [[webhook]] tables are named {:?}: give each its own name",
            w[0]
        )));
    }
    if let Some(e) = events {
        if let Some(on) = e.enabled {
            c.spool.events = on;
        }
        if let Some(days) = e.retention_days {
            if days == 0 {
                return Err(ConfigError::Invalid(
                    "[events] retention_days must be 1 or more (enabled = false keeps none)".into(),
                ));
            }
            c.spool.event_retention_days = days;
        }
        c.bounce_rules = e.bounce_rules.clone();
    }
    if let Some(s) = suppression {
        let p = &mut c.deliver.suppression;
        if let Some(on) = s.enabled {
            p.enabled = on;
        }
        p.per_domain = match s.scope.as_deref() {
            None | Some("global") => false,
            Some("domain") => true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "[suppression] scope = {other:?}: use \"global\" or \"domain\""
                )));
            }
        };
        p.refuse = match s.action.as_deref() {
            None | Some("refuse") => true,
            Some("drop") => false,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "[suppression] action = {other:?}: use \"refuse\" or \"drop\""
                )));
            }
        };
        if s.expire_days == Some(0) {
            return Err(ConfigError::Invalid(
                "[suppression] expire_days must be 1 or more (leave it out: never)".into(),
            ));
        }
        p.expire_days = s.expire_days;
        if let Some(n) = s.soft_bounces {
            p.soft_bounces = n;
        }
        if let Some(d) = s.soft_bounce_days {
            if d == 0 {
                return Err(ConfigError::Invalid(
                    "[suppression] soft_bounce_days must be 1 or more".into(),
                ));
            }
            p.soft_bounce_days = d;
        }
    }
    Ok(())
}

/// Read the bounce rules (`[events] bounce_rules`, resolved against the configuration
/// file's directory) into the delivery settings.
pub(super) fn load_rules(c: &mut Config) -> Result<(), ConfigError> {
    let path = match (&c.bounce_rules, &c.config_dir) {
        (Some(p), Some(dir)) => Some(dir.join(p)),
        (p, _) => p.clone(),
    };
    let rules = mailspool_events::Rules::load(path.as_deref())
        .map_err(|e| ConfigError::Invalid(format!("[events] bounce_rules: {e}")))?;
    c.deliver.rules = std::sync::Arc::new(rules);
    c.serve.rules = c.deliver.rules.clone();
    Ok(())
}
