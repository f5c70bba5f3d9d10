//! Where mail for a domain goes: a `[routes]` entry, else the relay hosts (failover in
//! order), else the domain's MX hosts (preference order, random among equals; implicit
//! MX when there is none). Null MX (RFC 7505) and NXDOMAIN are permanent (5.1.10 /
//! 5.1.2); SERVFAIL and timeouts are temporary. Every address of every host is a target.

use std::net::{IpAddr, SocketAddr};

use mailspool_smtp::{Credentials, TlsPolicy};
use rand::seq::SliceRandom;

use crate::config::{DeliverConfig, HostPort};
use crate::dns::{LookupError, Resolve};

/// One server to try.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its host name (TLS server name, logs, Remote-MTA).
    pub host: String,
    /// Its addresses; empty until resolved.
    pub addrs: Vec<SocketAddr>,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// AUTH credentials.
    pub auth: Option<Credentials>,
    /// Found through the domain's MX records (MTA-STS and DANE apply only then).
    pub mx: bool,
    /// The TLS policy this delivery follows, for logs and metrics: `dane`, `mta-sts`,
    /// `required` (configured), or `opportunistic` (`plaintext` when it gets no TLS).
    pub policy: &'static str,
    /// Why that policy: logged with every attempt.
    pub why: String,
    /// DANE: the certificate is checked against the host's TLSA records instead.
    pub verifier: Option<mailspool_smtp::CustomTls>,
}

/// Addresses in the order RFC 8305 tries them: IPv6 first, then the families
/// alternating, each family's own order kept.
pub fn happy_order(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = ips.into_iter().partition(IpAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// The policy name of a configured TLS setting.
pub fn configured_policy(tls: TlsPolicy) -> &'static str {
    match tls {
        TlsPolicy::Required | TlsPolicy::Implicit => "required",
        TlsPolicy::None => "plaintext",
        _ => "opportunistic",
    }
}

/// Why a domain has no usable target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// Permanent (bounce) or temporary (retry later).
    pub permanent: bool,
    /// RFC 3463 status.
    pub status: &'static str,
    /// Explanation.
    pub text: String,
}

impl RouteError {
    pub(crate) fn temporary(status: &'static str, text: String) -> Self {
        RouteError {
            permanent: false,
            status,
            text,
        }
    }
    fn permanent(status: &'static str, text: String) -> Self {
        RouteError {
            permanent: true,
            status,
            text,
        }
    }
}

/// The targets for `domain`, in the order to try them.
pub async fn route(
    domain: &str,
    cfg: &DeliverConfig,
    dns: &dyn Resolve,
) -> Result<Vec<Target>, RouteError> {
    let domain = domain.to_ascii_lowercase();
    if let Some(hp) = cfg.routes.get(&domain) {
        return resolve_fixed(std::slice::from_ref(hp), cfg.mx_tls, None, dns).await;
    }
    if !cfg.relayhosts.is_empty() {
        return resolve_fixed(&cfg.relayhosts, cfg.relay_tls, cfg.relay_auth.clone(), dns).await;
    }
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip: IpAddr = lit
            .trim_start_matches("ipv6:")
            .parse()
            .map_err(|_| RouteError::permanent("5.1.2", format!("bad address literal [{lit}]")))?;
        return Ok(vec![Target {
            host: ip.to_string(),
            addrs: vec![SocketAddr::new(ip, cfg.mx_port)],
            tls: cfg.mx_tls,
            auth: None,
            mx: false,
            policy: configured_policy(cfg.mx_tls),
            why: "an address literal: the configured tls".into(),
            verifier: None,
        }]);
    }
    mx_targets(&domain, cfg, dns).await
}

/// Relay hosts and routes: each host:port resolved, in the given order. Port 465 means
/// implicit TLS.
async fn resolve_fixed(
    hosts: &[HostPort],
    tls: TlsPolicy,
    auth: Option<Credentials>,
    dns: &dyn Resolve,
) -> Result<Vec<Target>, RouteError> {
    let mut out = Vec::new();
    let mut last = String::new();
    for hp in hosts {
        let tls = match (hp.port, tls) {
            (465, TlsPolicy::Required) => TlsPolicy::Implicit,
            (465, _) => TlsPolicy::ImplicitUnverified,
            (_, t) => t,
        };
        match dns.ips(&hp.host).await {
            Ok(ips) => out.push(Target {
                host: hp.host.clone(),
                addrs: happy_order(ips)
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, hp.port))
                    .collect(),
                tls,
                auth: auth.clone(),
                mx: false,
                policy: configured_policy(tls),
                why: "a relay or route: its configured tls".into(),
                verifier: None,
            }),
            Err(e) => last = format!("{}: {e:?}", hp.host),
        }
    }
    if out.is_empty() {
        return Err(RouteError::temporary(
            "4.4.3",
            format!("cannot resolve {last}"),
        ));
    }
    Ok(out)
}

async fn mx_targets(
    domain: &str,
    cfg: &DeliverConfig,
    dns: &dyn Resolve,
) -> Result<Vec<Target>, RouteError> {
    let mut mx = match dns.mx(domain).await {
        Ok(list) => list,
        Err(LookupError::NoRecords) => Vec::new(),
        Err(LookupError::NxDomain) => {
            return Err(RouteError::permanent(
                "5.1.2",
                format!("domain {domain} does not exist (NXDOMAIN)"),
            ));
        }
        Err(LookupError::Temporary(e)) => {
            return Err(RouteError::temporary(
                "4.4.3",
                format!("MX lookup for {domain} failed: {e}"),
            ));
        }
    };
    if mx.iter().any(|(_, host)| host == "." || host.is_empty()) {
        return Err(RouteError::permanent(
            "5.1.10",
            format!("domain {domain} accepts no mail (null MX, RFC 7505)"),
        ));
    }
    let implicit = mx.is_empty();
    if implicit {
        // Implicit MX (RFC 5321 §5.1): the domain's own addresses.
        mx.push((0, domain.to_owned()));
    }
    // Preference order; random among equal preferences to spread the load.
    mx.shuffle(&mut rand::rng());
    mx.sort_by_key(|(pref, _)| *pref);
    let mut out = Vec::new();
    let mut temporary = None;
    for (_, host) in mx {
        match dns.ips(&host).await {
            Ok(ips) => out.push(Target {
                addrs: happy_order(ips)
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, cfg.mx_port))
                    .collect(),
                host,
                tls: cfg.mx_tls,
                auth: None,
                mx: true,
                policy: configured_policy(cfg.mx_tls),
                why: "the configured tls (no DANE or MTA-STS policy applies)".into(),
                verifier: None,
            }),
            Err(LookupError::Temporary(e)) => temporary = Some(format!("{host}: {e}")),
            Err(_) => {}
        }
    }
    if out.is_empty() {
        // A domain without MX and without addresses has no mail server at all; MX hosts
        // that do not resolve may be a passing misconfiguration: retry.
        return Err(match temporary {
            None if implicit => {
                RouteError::permanent("5.1.2", format!("{domain} has no MX and no address"))
            }
            Some(e) => RouteError::temporary(
                "4.4.3",
                format!("cannot resolve the mail servers of {domain}: {e}"),
            ),
            None => RouteError::temporary(
                "4.4.3",
                format!("no mail server of {domain} has an address"),
            ),
        });
    }
    Ok(out)
}
