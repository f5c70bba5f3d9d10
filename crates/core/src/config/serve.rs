//! The listener part of the configuration: ports, relay networks, users, limits.

use std::path::PathBuf;
use std::time::Duration;

use super::{Config, ConfigError, ConfigFile, default_hostname, is_root, positive};

/// Port 25 where we may bind it (root, or the unit's CAP_NET_BIND_SERVICE), else 2525.
pub(super) fn default_serve() -> mailspool_serve::ServeConfig {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let port = if is_root() || may_bind_low_ports(&status) {
        25
    } else {
        2525
    };
    mailspool_serve::ServeConfig {
        hostname: default_hostname(),
        listen: vec![mailspool_serve::Listen {
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            mode: mailspool_serve::Mode::Relay,
            tls_cert: None,
            tls_key: None,
        }],
        users_file: Some(default_users_file()),
        ..Default::default()
    }
}

/// Whether the effective capabilities in `/proc/self/status` (`CapEff:`, hex) hold
/// CAP_NET_BIND_SERVICE (bit 10).
fn may_bind_low_ports(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 10) != 0)
}

/// `/etc/mailspool/users` for root, else `$XDG_CONFIG_HOME/mailspool/users`.
pub fn default_users_file() -> PathBuf {
    if is_root() {
        return PathBuf::from("/etc/mailspool/users");
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("mailspool/users")
}

/// Fill in the listener settings from the file.
pub(super) fn serve_settings(c: &mut Config, file: &ConfigFile) -> Result<(), ConfigError> {
    let s = &mut c.serve;
    s.hostname = c.hostname.clone();
    s.postmaster = match &file.postmaster {
        Some(p) => mailspool_message::address::check_address(p)
            .map_err(|e| ConfigError::Invalid(format!("postmaster: {e}")))?,
        None => format!("postmaster@{}", c.hostname),
    };
    s.max_message_size = c.max_message_size;
    s.min_free_space = c.min_free_space;
    s.qualify_domain = Some(
        c.qualify_domain
            .clone()
            .unwrap_or_else(|| c.hostname.clone()),
    );
    s.shutdown_grace = c.shutdown_grace;
    if let Some(list) = &file.listen {
        s.listen = list
            .iter()
            .map(|l| {
                let mode = mailspool_serve::Mode::parse(l.mode.as_deref().unwrap_or("relay"))
                    .map_err(|e| ConfigError::Invalid(format!("[[listen]] {e}")))?;
                match (&l.tls_cert, &l.tls_key, mode) {
                    (Some(_), Some(_), _) => {}
                    (None, None, mailspool_serve::Mode::Smtps) => {
                        return Err(ConfigError::Invalid(format!(
                            "[[listen]] {}: mode \"smtps\" needs tls_cert and tls_key",
                            l.address
                        )));
                    }
                    (None, None, _) => {}
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "[[listen]] {}: give both tls_cert and tls_key",
                            l.address
                        )));
                    }
                }
                Ok(mailspool_serve::Listen {
                    address: l.address.parse().map_err(|_| {
                        ConfigError::Invalid(format!(
                            "[[listen]] address {:?}: expected ip:port",
                            l.address
                        ))
                    })?,
                    mode,
                    tls_cert: l.tls_cert.clone(),
                    tls_key: l.tls_key.clone(),
                })
            })
            .collect::<Result<_, ConfigError>>()?;
    }
    if let Some(nets) = &file.relay_networks {
        s.relay_networks = nets
            .iter()
            .map(|n| {
                mailspool_serve::Network::parse(n)
                    .map_err(|e| ConfigError::Invalid(format!("relay_networks: {e}")))
            })
            .collect::<Result<_, _>>()?;
    }
    if file.users_file.is_none() && c.spool_dir == std::path::Path::new(super::SYSTEM_SPOOL) {
        // The system spool's listener (the unit runs it as `mailspool`) reads the file
        // root's `mailspool user add` writes.
        s.users_file = Some(PathBuf::from("/etc/mailspool/users"));
    }
    if let Some(f) = &file.users_file {
        s.users_file = Some(f.clone());
    }
    if let Some(n) = file.max_recipients {
        s.max_recipients = positive("max_recipients", n)?;
    }
    if let Some(v) = &file.serve {
        if let Some(x) = v.command_timeout {
            s.command_timeout = Duration::from_secs(positive("serve.command_timeout", x)?);
        }
        if let Some(x) = v.session_timeout {
            s.session_timeout = Duration::from_secs(positive("serve.session_timeout", x)?);
        }
        if let Some(n) = v.max_connections {
            s.max_connections = positive("serve.max_connections", n)?;
        }
        if let Some(n) = v.max_connections_per_ip {
            s.max_connections_per_ip = positive("serve.max_connections_per_ip", n)?;
        }
        if let Some(n) = v.max_auth_failures {
            s.max_auth_failures = positive("serve.max_auth_failures", n)?;
        }
        if let Some(ms) = v.auth_failure_delay_ms {
            s.auth_failure_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = v.greet_pause_ms {
            s.greet_pause = Duration::from_millis(ms);
        }
        if let Some(all) = v.greet_pause_all {
            s.greet_pause_all = all;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cap_net_bind_service_is_read_from_capeff() {
        let status =
            |eff: &str| format!("Name:\tmailspool\nCapInh:\t0000000000000000\nCapEff:\t{eff}\n");
        assert!(super::may_bind_low_ports(&status("0000000000000400")));
        assert!(super::may_bind_low_ports(&status("000001ffffffffff")));
        assert!(!super::may_bind_low_ports(&status("0000000000000000")));
        assert!(!super::may_bind_low_ports("no such line"));
    }
}
