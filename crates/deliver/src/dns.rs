//! DNS for delivery: MX and address lookups behind a trait (tests inject their own
//! server through `resolver = "ip:port"`, or their own implementation).
//!
//! The hickory resolver keeps a cache that honours record TTLs (and negative TTLs from
//! the SOA), so a queue of 10,000 messages to one domain costs one MX lookup per TTL.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

/// A boxed future, for the object-safe [`Resolve`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The domain does not exist (NXDOMAIN): permanent.
    NxDomain,
    /// The name exists but has no record of that type.
    NoRecords,
    /// SERVFAIL, timeout, network trouble: try later.
    Temporary(String),
}

/// MX and address lookups.
pub trait Resolve: Send + Sync {
    /// MX records of `domain`: (preference, exchange without the final dot).
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<(u16, String)>, LookupError>>;
    /// A and AAAA addresses of `host`.
    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, LookupError>>;
    /// PTR names of `ip`, without the final dot (default: none).
    fn ptr<'a>(&'a self, ip: IpAddr) -> BoxFuture<'a, Result<Vec<String>, LookupError>> {
        let _ = ip;
        Box::pin(async { Err(LookupError::NoRecords) })
    }
    /// TLSA records of `name` (`_25._tcp.<host>`), validated under DNSSEC; default:
    /// none (DANE does not apply).
    fn tlsa<'a>(&'a self, name: &'a str) -> BoxFuture<'a, crate::dane::TlsaAnswer> {
        let _ = name;
        Box::pin(async { crate::dane::TlsaAnswer::Insecure })
    }
    /// Whether `domain`'s MX records validate under DNSSEC (RFC 7672 applies DANE only
    /// then: an insecure MX host name could be an attacker's); default: no.
    fn mx_secure<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, bool> {
        let _ = domain;
        Box::pin(async { false })
    }
    /// TXT records of `name`, each record's strings joined (as DKIM and MTA-STS read
    /// them); default: none.
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, LookupError>> {
        let _ = name;
        Box::pin(async { Err(LookupError::NoRecords) })
    }
}

/// The hickory resolver: the system's configuration, or one given server.
pub struct HickoryDns {
    resolver: TokioResolver,
    /// The same servers, validating DNSSEC (for TLSA records: DANE).
    validating: TokioResolver,
    /// Until when the resolver's cache holds each name's last answer: a lookup before
    /// then is a cache hit (for the metrics; hickory does not count its hits).
    fresh: std::sync::Mutex<std::collections::HashMap<(String, bool), std::time::Instant>>,
}

/// Names remembered for the cache-hit count (the resolver caches 4096 too).
const FRESH_NAMES: usize = 4096;

impl HickoryDns {
    /// Count a lookup, and a hit when the last answer for it is still cached.
    fn count(&self, name: &str, mx: bool) {
        let m = mailspool_metrics::global();
        m.dns_lookups.inc();
        let fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh
            .get(&(name.to_owned(), mx))
            .is_some_and(|until| *until > std::time::Instant::now())
        {
            m.dns_cache_hits.inc();
        }
    }

    fn remember(&self, name: &str, mx: bool, until: std::time::Instant) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.len() >= FRESH_NAMES {
            let now = std::time::Instant::now();
            fresh.retain(|_, u| *u > now);
            if fresh.len() >= FRESH_NAMES {
                fresh.clear();
            }
        }
        fresh.insert((name.to_owned(), mx), until);
    }
}

fn classify(e: NetError) -> LookupError {
    if e.is_nx_domain() {
        LookupError::NxDomain
    } else if e.is_no_records_found() {
        LookupError::NoRecords
    } else {
        LookupError::Temporary(e.to_string())
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

impl HickoryDns {
    /// Use `server` (udp and tcp) if given, else /etc/resolv.conf. DNSSEC is validated
    /// from the root's trust anchors.
    pub fn new(server: Option<SocketAddr>) -> Result<HickoryDns, String> {
        HickoryDns::with_trust_anchors(server, None)
    }

    /// As [`HickoryDns::new`], validating DNSSEC from `anchors` (tests, private roots).
    pub fn with_trust_anchors(
        server: Option<SocketAddr>,
        anchors: Option<std::sync::Arc<hickory_resolver::proto::dnssec::TrustAnchors>>,
    ) -> Result<HickoryDns, String> {
        let builder = |validate: bool| -> Result<TokioResolver, String> {
            let provider = TokioRuntimeProvider::default();
            let mut builder = match server {
                Some(addr) => {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(vec![ns]),
                        provider,
                    )
                }
                None => TokioResolver::builder(provider).map_err(|e| e.to_string())?,
            };
            let opts: &mut ResolverOpts = builder.options_mut();
            opts.timeout = Duration::from_secs(5);
            opts.attempts = 2;
            opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            opts.cache_size = 4096;
            opts.validate = validate;
            if validate && let Some(a) = &anchors {
                builder = builder.with_trust_anchor(a.clone());
            }
            builder.build().map_err(|e| e.to_string())
        };
        Ok(HickoryDns {
            resolver: builder(false)?,
            validating: builder(true)?,
            fresh: Default::default(),
        })
    }
}

impl Resolve for HickoryDns {
    fn mx_secure<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, bool> {
        use hickory_resolver::proto::dnssec::Proof;
        Box::pin(async move {
            match self.validating.mx_lookup(fqdn(domain)).await {
                Ok(lookup) => {
                    let mut mx = lookup
                        .answers()
                        .iter()
                        .filter(|r| matches!(r.data, RData::MX(_)))
                        .peekable();
                    mx.peek().is_some() && mx.all(|r| r.proof == Proof::Secure)
                }
                Err(_) => false,
            }
        })
    }

    fn tlsa<'a>(&'a self, name: &'a str) -> BoxFuture<'a, crate::dane::TlsaAnswer> {
        use crate::dane::{Tlsa, TlsaAnswer};
        use hickory_resolver::proto::dnssec::Proof;
        use hickory_resolver::proto::rr::RecordType;
        Box::pin(async move {
            let lookup = match self.validating.lookup(fqdn(name), RecordType::TLSA).await {
                Ok(l) => l,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    return TlsaAnswer::Insecure;
                }
                Err(e) => return TlsaAnswer::Bogus(e.to_string()),
            };
            let mut records = Vec::new();
            let mut proofs = Vec::new();
            for r in lookup.answers() {
                if let RData::TLSA(t) = &r.data {
                    proofs.push(r.proof);
                    records.push(Tlsa {
                        usage: u8::from(t.cert_usage),
                        selector: u8::from(t.selector),
                        matching: u8::from(t.matching),
                        data: t.cert_data.clone(),
                    });
                }
            }
            if records.is_empty() {
                TlsaAnswer::Insecure
            } else if proofs.iter().all(|p| *p == Proof::Secure) {
                TlsaAnswer::Secure(records)
            } else if proofs.contains(&Proof::Bogus) {
                TlsaAnswer::Bogus("the TLSA records' signatures do not validate".into())
            } else {
                TlsaAnswer::Insecure
            }
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, LookupError>> {
        Box::pin(async move {
            let lookup = self
                .resolver
                .txt_lookup(fqdn(name))
                .await
                .map_err(classify)?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect())
        })
    }

    fn ptr<'a>(&'a self, ip: IpAddr) -> BoxFuture<'a, Result<Vec<String>, LookupError>> {
        Box::pin(async move {
            let lookup = self.resolver.reverse_lookup(ip).await.map_err(classify)?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_owned()),
                    _ => None,
                })
                .filter(|n| !n.is_empty())
                .collect())
        })
    }

    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<(u16, String)>, LookupError>> {
        Box::pin(async move {
            self.count(domain, true);
            let lookup = self
                .resolver
                .mx_lookup(fqdn(domain))
                .await
                .map_err(classify)?;
            self.remember(domain, true, lookup.valid_until());
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => {
                        let name = mx.exchange.to_ascii();
                        let name = name.trim_end_matches('.');
                        Some((
                            mx.preference,
                            if name.is_empty() {
                                ".".into()
                            } else {
                                name.to_owned()
                            },
                        ))
                    }
                    _ => None,
                })
                .collect())
        })
    }

    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, LookupError>> {
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![ip]);
            }
            self.count(host, false);
            let lookup = self
                .resolver
                .lookup_ip(fqdn(host))
                .await
                .map_err(classify)?;
            self.remember(host, false, lookup.valid_until());
            let ips: Vec<IpAddr> = lookup.iter().collect();
            if ips.is_empty() {
                return Err(LookupError::NoRecords);
            }
            Ok(ips)
        })
    }
}

/// Used by tests that only route with `[routes]`: every lookup fails temporarily.
pub struct NoDns;

impl Resolve for NoDns {
    fn mx<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<(u16, String)>, LookupError>> {
        Box::pin(async { Err(LookupError::Temporary("DNS disabled".into())) })
    }
    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, LookupError>> {
        Box::pin(async move {
            host.parse::<IpAddr>()
                .map(|ip| vec![ip])
                .map_err(|_| LookupError::Temporary("DNS disabled".into()))
        })
    }
}
