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
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::dnssec::{AnchorFile, LocalValidator, Proven, StubResolver};

/// The source of DNSSEC status.
enum DnssecSource {
    /// The resolver's AD bit.
    Resolver(StubResolver),
    /// Validation here.
    Local(LocalValidator),
}

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
    /// `name`'s `rtype` records and what DNSSEC says of them, for DANE; default:
    /// insecure (DANE does not apply).
    fn dnssec<'a>(
        &'a self,
        name: &'a str,
        rtype: RecordType,
    ) -> BoxFuture<'a, crate::dnssec::Proven> {
        let _ = (name, rtype);
        Box::pin(async { crate::dnssec::Proven::insecure() })
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
    /// Where DANE's DNSSEC status comes from: the resolver's AD bit, or validation
    /// here; `Err`: neither could be set up (every DANE lookup is then a failure).
    dnssec: Result<DnssecSource, String>,
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
    /// Use `server` (udp and tcp) if given, else /etc/resolv.conf; DANE trusts that
    /// resolver's DNSSEC validation (its AD bit).
    pub fn new(server: Option<SocketAddr>) -> Result<HickoryDns, String> {
        Ok(HickoryDns {
            resolver: build_resolver(server, None)?,
            dnssec: StubResolver::new(server).map(DnssecSource::Resolver),
            fresh: Default::default(),
        })
    }

    /// The resolver `cfg` asks for: `resolver` (else the system's), DNSSEC from its AD
    /// bit, or validated here from `dnssec_trust_anchors`.
    pub fn for_config(cfg: &crate::DeliverConfig) -> Result<HickoryDns, String> {
        match &cfg.dnssec_trust_anchors {
            Some(path) => HickoryDns::with_trust_anchors(cfg.resolver, AnchorFile::load(path)?),
            None => HickoryDns::new(cfg.resolver),
        }
    }

    /// Where DANE's DNSSEC status comes from, for the log and `doctor`.
    pub fn dnssec_source(&self) -> String {
        match &self.dnssec {
            Ok(DnssecSource::Resolver(stub)) => format!(
                "the AD bit of the validating resolver {}",
                stub.servers()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok(DnssecSource::Local(_)) => "validation here from dnssec_trust_anchors".into(),
            Err(e) => format!("nothing ({e}): DANE mail waits"),
        }
    }

    /// As [`HickoryDns::new`], validating DNSSEC here from `anchors` instead.
    pub fn with_trust_anchors(
        server: Option<SocketAddr>,
        anchors: AnchorFile,
    ) -> Result<HickoryDns, String> {
        Ok(HickoryDns {
            resolver: build_resolver(server, None)?,
            dnssec: LocalValidator::new(anchors, server).map(DnssecSource::Local),
            fresh: Default::default(),
        })
    }
}

/// A hickory resolver asking `server` (else /etc/resolv.conf's), validating DNSSEC
/// from `anchors` when given.
pub(crate) fn build_resolver(
    server: Option<SocketAddr>,
    anchors: Option<std::sync::Arc<hickory_resolver::proto::dnssec::TrustAnchors>>,
) -> Result<TokioResolver, String> {
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
    opts.validate = anchors.is_some();
    if let Some(a) = anchors {
        builder = builder.with_trust_anchor(a);
    }
    builder.build().map_err(|e| e.to_string())
}

impl Resolve for HickoryDns {
    fn dnssec<'a>(&'a self, name: &'a str, rtype: RecordType) -> BoxFuture<'a, Proven> {
        Box::pin(async move {
            match &self.dnssec {
                Ok(DnssecSource::Resolver(stub)) => stub.proven(name, rtype).await,
                Ok(DnssecSource::Local(v)) => v.proven(name, rtype).await,
                Err(e) => Proven {
                    status: crate::dnssec::Dnssec::Bogus(format!("DNSSEC lookups: {e}")),
                    records: Vec::new(),
                },
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
