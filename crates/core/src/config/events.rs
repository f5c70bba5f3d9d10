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
}

/// Fill in `[events]` and `[suppression]`.
pub(super) fn events_settings(
    c: &mut Config,
    events: Option<&EventsFile>,
    suppression: Option<&SuppressionFile>,
) -> Result<(), ConfigError> {
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
    Ok(())
}
