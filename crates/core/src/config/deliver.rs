//! The delivery part of the configuration: relay hosts, routes, TLS, DNS, timeouts.

use std::time::Duration;

use mailspool_deliver::HostPort;
use mailspool_smtp::{Credentials, TlsPolicy};

use super::{Config, ConfigError, ConfigFile, OneOrMany};

fn tls_policy(what: &str, value: &str) -> Result<TlsPolicy, ConfigError> {
    match value {
        "opportunistic" | "may" => Ok(TlsPolicy::Opportunistic),
        "required" | "encrypt" | "verify" => Ok(TlsPolicy::Required),
        "none" => Ok(TlsPolicy::None),
        other => Err(ConfigError::Invalid(format!(
            "{what} = {other:?}: use \"opportunistic\", \"required\" or \"none\""
        ))),
    }
}

/// `host:port`, the port required: a relay's port decides how we speak to it (587
/// submission, 465 implicit TLS, 25 an MTA), so it is never guessed.
fn host_port(what: &str, text: &str) -> Result<HostPort, ConfigError> {
    let hp = HostPort::parse(text, 0).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")));
    match hp {
        Err(_) if !text.contains(':') || text.trim().ends_with(']') => {
            Err(ConfigError::Invalid(format!(
                "{what} = {text:?} has no port: write host:587 (submission), host:465 \
                 (implicit TLS) or host:25 (an MTA)"
            )))
        }
        other => other,
    }
}

/// Read the relay password and the DKIM keys (the daemon, `queue run`, `send --now`:
/// what delivers).
pub(super) fn load_secrets(c: &mut Config) -> Result<(), ConfigError> {
    c.deliver.dkim = c
        .dkim
        .iter()
        .map(|d| {
            let algorithm = d
                .algorithm
                .as_deref()
                .map(mailspool_deliver::dkim::Algorithm::parse)
                .transpose()
                .map_err(|e| ConfigError::Invalid(format!("[[dkim]] {}: {e}", d.domain)))?;
            let mut key = mailspool_deliver::dkim::DkimKey::load(
                &d.domain,
                &d.selector,
                &d.key_file,
                algorithm,
                d.headers.clone(),
            )
            .map_err(|e| ConfigError::Invalid(format!("[[dkim]] {}: {e}", d.domain)))?;
            key.fallback = d.fallback;
            Ok(std::sync::Arc::new(key))
        })
        .collect::<Result<_, ConfigError>>()?;
    let Some((user, pw_file)) = c.relay_secret.clone() else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&pw_file).map_err(|source| ConfigError::Read {
        path: pw_file.clone(),
        source,
    })?;
    c.deliver.relay_auth = Some(Credentials {
        username: user,
        password: text.lines().next().unwrap_or("").to_owned(),
    });
    Ok(())
}

/// `[shaping]` over the built-in provider groups.
fn shaping_settings(c: &mut Config, file: &ConfigFile) -> Result<(), ConfigError> {
    use mailspool_deliver::shaping::{Limits, Rate, Rule};
    let Some(sh) = &file.shaping else {
        return Ok(());
    };
    let d = &mut c.deliver;
    if let Some(s) = sh.cooling_period {
        d.shaping.cooling = Duration::from_secs(s.max(1));
    }
    if let Some(s) = sh.max_cooling_period {
        d.shaping.max_cooling = Duration::from_secs(s.max(1));
    }
    if d.shaping.max_cooling < d.shaping.cooling {
        d.shaping.max_cooling = d.shaping.cooling;
    }
    if let Some(n) = sh.max_messages_per_connection {
        d.max_messages_per_connection = n.max(1);
    }
    let rate = |name: &str, what: &str, text: &Option<String>| {
        text.as_deref().map(Rate::parse).transpose().map_err(|e| {
            ConfigError::Invalid(format!("[[shaping.destination]] {name} {what}: {e}"))
        })
    };
    for f in sh.destination.iter().flatten() {
        let name = f.name.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(ConfigError::Invalid(
                "[[shaping.destination]] needs a name".into(),
            ));
        }
        let builtin = d.shaping.rules.iter().position(|r| r.name == name);
        let base = builtin.map(|i| d.shaping.rules[i].clone()).unwrap_or(Rule {
            name: name.clone(),
            domains: Vec::new(),
            mx: Vec::new(),
            limits: Limits::default(),
        });
        let rule = Rule {
            name: name.clone(),
            domains: f.domains.clone().unwrap_or(base.domains),
            mx: f.mx.clone().unwrap_or(base.mx),
            limits: Limits {
                max_connections: f
                    .max_connections
                    .unwrap_or(base.limits.max_connections)
                    .max(1),
                max_messages_per_connection: f
                    .max_messages_per_connection
                    .unwrap_or(base.limits.max_messages_per_connection)
                    .max(1),
                max_message_rate: rate(&name, "max_message_rate", &f.max_message_rate)?
                    .or(base.limits.max_message_rate),
                connection_rate: rate(&name, "connection_rate", &f.connection_rate)?
                    .or(base.limits.connection_rate),
            },
        };
        if rule.domains.is_empty() && rule.mx.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "[[shaping.destination]] {name}: give domains or mx patterns"
            )));
        }
        match builtin {
            Some(i) => d.shaping.rules[i] = rule,
            // Before the built-ins: a rule naming a domain is meant to win.
            None => d.shaping.rules.insert(0, rule),
        }
    }
    Ok(())
}

/// Fill in the delivery settings from the file.
pub(super) fn deliver_settings(c: &mut Config, file: &ConfigFile) -> Result<(), ConfigError> {
    shaping_settings(c, file)?;
    c.dkim = file.dkim.clone().unwrap_or_default();
    for d in &c.dkim {
        if let Some(a) = &d.algorithm {
            mailspool_deliver::dkim::Algorithm::parse(a)
                .map_err(|e| ConfigError::Invalid(format!("[[dkim]] {}: {e}", d.domain)))?;
        }
    }
    if c.dkim.iter().filter(|d| d.fallback).count() > 1 {
        return Err(ConfigError::Invalid(
            "[[dkim]]: at most one key can be the fallback".into(),
        ));
    }
    let relay = file.relay.clone().unwrap_or_default();
    if let (Some(user), Some(pw_file)) = (&relay.username, &relay.password_file) {
        c.relay_secret = Some((user.clone(), pw_file.clone()));
    }
    local_settings(c, file)?;
    let d = &mut c.deliver;
    d.hostname = c.hostname.clone();
    d.max_deliveries = c.max_dequeue_processes;
    d.timeouts.max_session = c.spool.max_connection_time;
    if let Some(hosts) = &file.relayhost {
        let list = match hosts {
            OneOrMany::One(h) => vec![h.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        d.relayhosts = list
            .iter()
            .map(|h| host_port("relayhost", h))
            .collect::<Result<_, _>>()?;
    }
    // The secret itself is read only by what delivers (see `Config::load_secrets`):
    // sendmail, mailq and send never open it.
    if relay.username.is_some() != relay.password_file.is_some() {
        return Err(ConfigError::Invalid(
            "[relay] needs both username and password_file".into(),
        ));
    }
    d.relay_tls = match &relay.tls {
        Some(t) => tls_policy("[relay] tls", t)?,
        None if relay.username.is_some() => TlsPolicy::Required,
        None => TlsPolicy::Opportunistic,
    };
    if let Some(t) = &file.tls {
        d.mx_tls = tls_policy("tls", t)?;
    }
    d.tls_ca_file = file.tls_ca_file.clone();
    if let Some(routes) = &file.routes {
        for (domain, target) in routes {
            d.routes.insert(
                domain.to_ascii_lowercase(),
                host_port(&format!("routes.{domain:?}"), target)?,
            );
        }
    }
    if let Some(r) = &file.resolver {
        let addr = r
            .parse::<std::net::SocketAddr>()
            .or_else(|_| {
                r.parse::<std::net::IpAddr>()
                    .map(|ip| std::net::SocketAddr::new(ip, 53))
            })
            .map_err(|_| ConfigError::Invalid(format!("resolver = {r:?}: expected ip:port")))?;
        d.resolver = Some(addr);
    }
    if let Some(p) = file.mx_port {
        d.mx_port = p;
    }
    if let Some(n) = file.max_host_connections {
        d.per_host_limit = super::positive("max_host_connections", n)?;
    }
    if let Some(t) = &file.timeouts {
        let set = |name: &str, v: Option<u64>, slot: &mut Duration| {
            if let Some(s) = v {
                *slot = Duration::from_secs(super::positive(&format!("timeouts.{name}"), s)?);
            }
            Ok::<(), ConfigError>(())
        };
        set("connect", t.connect, &mut d.timeouts.connect)?;
        set("greeting", t.greeting, &mut d.timeouts.greeting)?;
        set("command", t.command, &mut d.timeouts.command)?;
        set("data_init", t.data_init, &mut d.timeouts.data_init)?;
        set("data_block", t.data_block, &mut d.timeouts.data_block)?;
        set("data_end", t.data_end, &mut d.timeouts.data_end)?;
    }
    if let Some(s) = file.stale_lock_timeout {
        c.spool.stale_lock_after = Duration::from_secs(s);
    }
    if let Some(s) = file.legacy_lock_timeout {
        c.spool.legacy_lock_timeout = Duration::from_secs(s);
    }
    if let Some(b) = &file.bind_address {
        let list: Vec<String> = match b {
            OneOrMany::One(a) => vec![a.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        c.deliver.bind_addresses = list
            .iter()
            .map(|a| {
                a.parse::<std::net::IpAddr>().map_err(|_| {
                    ConfigError::Invalid(format!("bind_address {a:?}: expected an IP address"))
                })
            })
            .collect::<Result<_, _>>()?;
        let v4 = c
            .deliver
            .bind_addresses
            .iter()
            .filter(|a| a.is_ipv4())
            .count();
        if v4 > 1 || c.deliver.bind_addresses.len() - v4 > 1 {
            return Err(ConfigError::Invalid(
                "bind_address: at most one IPv4 and one IPv6 address".into(),
            ));
        }
    }
    if let Some(m) = file.mta_sts {
        c.deliver.mta_sts = m;
    }
    if let Some(d) = file.dane {
        c.deliver.dane = d;
    }
    if let Some(path) = &file.dnssec_trust_anchors {
        // Read now: a file that cannot be used is a configuration error, not mail
        // that waits for no reason at every delivery.
        mailspool_deliver::dnssec::AnchorFile::load(path)
            .map_err(|e| ConfigError::Invalid(format!("dnssec_trust_anchors: {e}")))?;
        c.deliver.dnssec_trust_anchors = Some(path.clone());
    }
    if let Some(p) = file.ehlo_from_ptr {
        if p && c.deliver.bind_addresses.is_empty() {
            return Err(ConfigError::Invalid(
                "ehlo_from_ptr needs bind_address (the address whose PTR names us)".into(),
            ));
        }
        c.deliver.ehlo_from_ptr = p;
    }
    if let Some(s) = file.delay_warning_time {
        c.deliver.delay_warning_time = (s > 0).then(|| Duration::from_secs(s));
    }
    if let Some(s) = file.shutdown_grace {
        c.shutdown_grace = Duration::from_secs(s);
    }
    Ok(())
}

/// Mail for this host: its domains, the aliases file, the admin address, the mailboxes.
fn local_settings(c: &mut Config, file: &ConfigFile) -> Result<(), ConfigError> {
    let qualify = c.qualify_domain().to_owned();
    let mut domains: Vec<String> = match &file.local_domains {
        Some(list) => list
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect(),
        None => {
            let mut d = vec![
                c.hostname.to_ascii_lowercase(),
                "localhost".to_owned(),
                "localhost.localdomain".to_owned(),
            ];
            if !d.contains(&qualify) {
                d.push(qualify.clone());
            }
            d
        }
    };
    domains.dedup();
    let local = &mut c.deliver.local;
    local.domains = domains;
    local.aliases = match &file.aliases {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p.clone()),
        None => Some(std::path::PathBuf::from("/etc/aliases")),
    };
    if let Some(a) = &file.admin_address {
        let a = mailspool_message::address::check_address(a)
            .map_err(|e| ConfigError::Invalid(format!("admin_address: {e}")))?;
        let domain = a.rsplit_once('@').map_or("", |(_, d)| d);
        if local.is_local(domain) {
            return Err(ConfigError::Invalid(format!(
                "admin_address {a} is on a local domain: it would come back here (give an address elsewhere)"
            )));
        }
        local.admin_address = Some(a);
    }
    if let Some(dir) = &file.mail_spool_directory {
        c.deliver.mail_spool_directory = dir.clone();
    }
    Ok(())
}
