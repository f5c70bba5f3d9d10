//! Whether a DNS answer is proven by DNSSEC, for DANE (RFC 7672 §2.1).
//!
//! Two trust models, as Postfix and Exim have them:
//! - **The resolver's word** (default): the configured `resolver` (else the system's
//!   name servers) must validate, and is asked with AD and DO set (RFC 6840 §5.7); an
//!   answer with AD is secure, an unsigned one without AD insecure, and SERVFAIL
//!   (what a validating resolver answers for bogus data) or no answer a lookup error.
//!   A signed answer without AD is insecure only if the resolver validates (it sets
//!   AD on the signed root); from one that does not, it is indeterminate. The path to
//!   the resolver must be trusted: normally it runs on this host, on loopback.
//! - **Validated here** (`dnssec_trust_anchors = "FILE"`): hickory validates every
//!   answer from the anchors in that file (DNSKEY or DS lines), for hosts whose
//!   resolver does not validate. Names under no anchor are insecure.
//!
//! Every failure is a [`Dnssec::Bogus`]: DANE fails closed on it (the mail waits).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS};
use hickory_resolver::proto::dnssec::{Algorithm, DigestType, Proof, TrustAnchors};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What DNSSEC says of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dnssec {
    /// Validated from a trust anchor.
    Secure,
    /// Provably unsigned (or under no trust anchor): DANE does not apply.
    Insecure,
    /// Bogus, indeterminate, or no answer at all: DANE cannot decide, so mail waits.
    Bogus(String),
}

/// An answer and its status; `records` holds the RRset of the type asked for (empty
/// for a name or type that does not exist).
#[derive(Debug, Clone)]
pub struct Proven {
    /// What DNSSEC says.
    pub status: Dnssec,
    /// The records.
    pub records: Vec<RData>,
}

impl Proven {
    /// An answer DNSSEC says nothing about.
    pub fn insecure() -> Proven {
        Proven {
            status: Dnssec::Insecure,
            records: Vec::new(),
        }
    }

    fn bogus(why: String) -> Proven {
        Proven {
            status: Dnssec::Bogus(why),
            records: Vec::new(),
        }
    }
}

/// Time for one server to answer one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest UDP answer asked for (the DNS flag day's size) and read.
const UDP_PAYLOAD: u16 = 1232;

/// Asks the resolver with AD and DO set and reads its AD bit.
#[derive(Debug)]
pub struct StubResolver {
    servers: Vec<SocketAddr>,
    /// Whether the resolver validates (AD on the signed root), and until when that
    /// answer is kept.
    validates: std::sync::Mutex<Option<(Option<bool>, std::time::Instant)>>,
}

/// How long the resolver's "do you validate?" answer is kept.
const PROBE_FOR: Duration = Duration::from_secs(600);

/// One answer from a server: its code, its AD bit, the records of the type asked for.
#[derive(Debug)]
pub struct StubAnswer {
    /// The server.
    pub server: SocketAddr,
    /// Its response code.
    pub rcode: ResponseCode,
    /// Authenticated Data: the server validated the answer.
    pub ad: bool,
    /// Whether the answer carried RRSIG records (the data is signed, and the server
    /// passes DNSSEC records along).
    pub signed: bool,
    /// The records of the type asked for.
    pub records: Vec<RData>,
}

impl StubResolver {
    /// `server`, else the name servers of /etc/resolv.conf.
    pub fn new(server: Option<SocketAddr>) -> Result<StubResolver, String> {
        let servers = match server {
            Some(s) => vec![s],
            None => {
                let (config, _) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| format!("reading /etc/resolv.conf: {e}"))?;
                config
                    .name_servers
                    .iter()
                    .map(|ns| {
                        let port = ns.connections.first().map_or(53, |c| c.port);
                        SocketAddr::new(ns.ip, port)
                    })
                    .collect()
            }
        };
        if servers.is_empty() {
            return Err("no name server configured".into());
        }
        Ok(StubResolver {
            servers,
            validates: std::sync::Mutex::new(None),
        })
    }

    /// Whether the resolver validates DNSSEC: it sets AD on the root's SOA (signed
    /// whatever the trust anchor). `None`: it did not answer. Asked again every ten
    /// minutes; a resolver that does not validate is logged each time.
    pub async fn validates(&self) -> Option<bool> {
        if let Some((v, until)) = *self.validates.lock().unwrap_or_else(|e| e.into_inner())
            && until > std::time::Instant::now()
        {
            return v;
        }
        let v = match self.query(".", RecordType::SOA).await {
            Ok(a) if a.rcode == ResponseCode::NoError => Some(a.ad),
            _ => None,
        };
        if v != Some(true) {
            let servers: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
            tracing::warn!(resolver = %servers.join(","), answered = v.is_some(), "DANE: the resolver does not vouch for the signed root (no AD): signed domains' mail waits; use a validating resolver or dnssec_trust_anchors (mailspool doctor)");
        }
        *self.validates.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((v, std::time::Instant::now() + PROBE_FOR));
        v
    }

    /// The servers asked, in order.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Ask each server in turn until one answers.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Result<StubAnswer, String> {
        let name = Name::from_ascii(name).map_err(|e| format!("{name:?}: {e}"))?;
        let mut name = name;
        name.set_fqdn(true);
        let mut last = String::new();
        for &server in &self.servers {
            match exchange(server, &name, rtype).await {
                Ok(m) => {
                    return Ok(StubAnswer {
                        server,
                        rcode: m.metadata.response_code,
                        ad: m.metadata.authentic_data,
                        signed: m
                            .answers
                            .iter()
                            .chain(&m.authorities)
                            .any(|r| r.record_type() == RecordType::RRSIG),
                        records: m
                            .answers
                            .into_iter()
                            .filter(|r| r.record_type() == rtype)
                            .map(|r| r.data)
                            .collect(),
                    });
                }
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        Err(last)
    }

    /// The resolver's word on `name`'s `rtype` records.
    pub async fn proven(&self, name: &str, rtype: RecordType) -> Proven {
        match self.query(name, rtype).await {
            Ok(a) => match a.rcode {
                ResponseCode::NoError | ResponseCode::NXDomain => {
                    let status = if a.ad {
                        Dnssec::Secure
                    } else if !a.signed || self.validates().await == Some(true) {
                        // Unsigned, or signed outside the validator's chain of trust.
                        Dnssec::Insecure
                    } else {
                        // Signed data a resolver passed on without validating it could
                        // be anyone's: indeterminate (RFC 7672 §2.1.1).
                        Dnssec::Bogus(format!(
                            "{name} {rtype} is signed but the resolver {} does not validate DNSSEC (no AD), so nothing vouches for it",
                            a.server
                        ))
                    };
                    Proven {
                        status,
                        records: a.records,
                    }
                }
                code => Proven::bogus(format!(
                    "the resolver {} answered {code} for {name} {rtype} (a validating resolver's answer to data that does not validate)",
                    a.server
                )),
            },
            Err(e) => Proven::bogus(format!("no answer for {name} {rtype}: {e}")),
        }
    }
}

/// One query to one server: UDP, then TCP when the answer is truncated. Only an answer
/// from that server, with our id and our question, is taken.
async fn exchange(server: SocketAddr, name: &Name, rtype: RecordType) -> Result<Message, String> {
    let id: u16 = rand::random();
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.metadata.authentic_data = true;
    q.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    edns.set_max_payload(UDP_PAYLOAD);
    q.set_edns(edns);
    let wire = q.to_vec().map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(QUERY_TIMEOUT, async {
        let local: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("address")
        } else {
            "[::]:0".parse().expect("address")
        };
        let udp = tokio::net::UdpSocket::bind(local).await?;
        // A connected socket takes datagrams from the server only.
        udp.connect(server).await?;
        udp.send(&wire).await?;
        let mut buf = vec![0u8; usize::from(UDP_PAYLOAD).max(4096)];
        loop {
            let n = udp.recv(&mut buf).await?;
            let Ok(m) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if answers(&m, id, name, rtype) {
                return Ok::<Message, std::io::Error>(m);
            }
        }
    })
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    tokio::time::timeout(QUERY_TIMEOUT, async {
        let mut tcp = tokio::net::TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        framed.extend_from_slice(&wire);
        tcp.write_all(&framed).await?;
        let len = tcp.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut buf).await?;
        let m = Message::from_vec(&buf).map_err(std::io::Error::other)?;
        if answers(&m, id, name, rtype) {
            Ok(m)
        } else {
            Err(std::io::Error::other("the answer is not for our question"))
        }
    })
    .await
    .map_err(|_| "timed out over TCP".to_owned())?
    .map_err(|e| e.to_string())
}

fn answers(m: &Message, id: u16, name: &Name, rtype: RecordType) -> bool {
    m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && m.queries[0].query_type() == rtype
        && m.queries[0].name().eq_case(name)
}

/// The trust anchors of `dnssec_trust_anchors`: DNSKEY lines are anchors as they
/// stand; DS lines name the key of their zone, fetched when first needed.
#[derive(Debug, Clone, Default)]
pub struct AnchorFile {
    /// DNSKEY lines, for hickory's parser.
    dnskeys: String,
    /// DS records by owner.
    ds: Vec<(Name, DS)>,
    /// Every owner: names under none of them are insecure.
    owners: Vec<Name>,
}

impl AnchorFile {
    /// Read `path`: zone-file lines `owner [ttl] [IN] DNSKEY|DS ...`; `;` comments.
    pub fn load(path: &Path) -> Result<AnchorFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        AnchorFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse the file's text.
    pub fn parse(text: &str) -> Result<AnchorFile, String> {
        let mut out = AnchorFile::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split(';').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = |t: &str| words.iter().position(|w| w.eq_ignore_ascii_case(t));
            let owner = Name::from_ascii(words[0])
                .map_err(|e| format!("line {}: owner {:?}: {e}", n + 1, words[0]))?;
            let mut owner = owner;
            owner.set_fqdn(true);
            if let Some(i) = at("DNSKEY") {
                // dnssec-keygen splits the key's base64 into words: one word here.
                let f = &words[i + 1..];
                if f.len() < 4 {
                    return Err(format!(
                        "line {}: DNSKEY needs flags, protocol, algorithm, key",
                        n + 1
                    ));
                }
                out.dnskeys.push_str(&format!(
                    "{} DNSKEY {} {} {} {}\n",
                    words[..i].join(" "),
                    f[0],
                    f[1],
                    f[2],
                    f[3..].concat()
                ));
            } else if let Some(i) = at("DS") {
                let f = &words[i + 1..];
                if f.len() < 4 {
                    return Err(format!(
                        "line {}: DS needs tag, algorithm, digest type, digest",
                        n + 1
                    ));
                }
                let bad = |what: &str| format!("line {}: bad DS {what}", n + 1);
                let tag: u16 = f[0].parse().map_err(|_| bad("key tag"))?;
                let alg: u8 = f[1].parse().map_err(|_| bad("algorithm"))?;
                let kind: u8 = f[2].parse().map_err(|_| bad("digest type"))?;
                let digest = hex(&f[3..].concat()).ok_or_else(|| bad("digest"))?;
                let kind = DigestType::from(kind);
                if !kind.is_supported() {
                    return Err(bad("digest type"));
                }
                out.ds.push((
                    owner.clone(),
                    DS::new(tag, Algorithm::from_u8(alg), kind, digest),
                ));
            } else {
                return Err(format!("line {}: expected a DNSKEY or DS record", n + 1));
            }
            if !out.owners.contains(&owner) {
                out.owners.push(owner);
            }
        }
        if out.owners.is_empty() {
            return Err("no trust anchor in the file".into());
        }
        // Fail now, not at the first delivery, on a key hickory cannot read.
        if !out.dnskeys.is_empty() {
            out.dnskeys
                .parse::<TrustAnchors>()
                .map_err(|e| format!("DNSKEY: {e}"))?;
        }
        Ok(out)
    }

    /// Whether an anchor covers `name`.
    pub fn covers(&self, name: &Name) -> bool {
        self.owners.iter().any(|o| o.zone_of(name))
    }

    /// The anchors as hickory takes them: the DNSKEY lines, and each DS line's key
    /// (asked of `stub`, kept only if it matches the DS).
    async fn resolve(&self, stub: &StubResolver) -> Result<TrustAnchors, String> {
        let mut anchors = if self.dnskeys.is_empty() {
            TrustAnchors::empty()
        } else {
            self.dnskeys
                .parse::<TrustAnchors>()
                .map_err(|e| e.to_string())?
        };
        for (owner, ds) in &self.ds {
            let answer = stub
                .query(&owner.to_ascii(), RecordType::DNSKEY)
                .await
                .map_err(|e| format!("the DNSKEY of trust anchor {owner}: {e}"))?;
            let mut found = false;
            for r in &answer.records {
                if let RData::DNSSEC(DNSSECRData::DNSKEY(key)) = r
                    && ds.covers(owner, key).unwrap_or(false)
                {
                    let key: &DNSKEY = key;
                    anchors.insert_with_name(key.public_key(), owner.clone().into());
                    found = true;
                }
            }
            if !found {
                return Err(format!(
                    "no DNSKEY of {owner} matches its DS (key tag {}) in the trust anchor file",
                    ds.key_tag()
                ));
            }
        }
        Ok(anchors)
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Validation here, from an anchor file; the validating resolver is made at first use
/// (a DS anchor's key is fetched then) and made again after a failure.
pub struct LocalValidator {
    anchors: AnchorFile,
    stub: StubResolver,
    server: Option<SocketAddr>,
    resolver: tokio::sync::Mutex<Option<Arc<TokioResolver>>>,
}

impl LocalValidator {
    /// Validate from `anchors`, asking `server` (else the system's name servers).
    pub fn new(anchors: AnchorFile, server: Option<SocketAddr>) -> Result<LocalValidator, String> {
        Ok(LocalValidator {
            stub: StubResolver::new(server)?,
            anchors,
            server,
            resolver: tokio::sync::Mutex::new(None),
        })
    }

    async fn resolver(&self) -> Result<Arc<TokioResolver>, String> {
        let mut slot = self.resolver.lock().await;
        if let Some(r) = &*slot {
            return Ok(r.clone());
        }
        let anchors = Arc::new(self.anchors.resolve(&self.stub).await?);
        let r = Arc::new(crate::dns::build_resolver(self.server, Some(anchors))?);
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Validate `name`'s `rtype` records.
    pub async fn proven(&self, name: &str, rtype: RecordType) -> Proven {
        let Ok(mut fq) = Name::from_ascii(name) else {
            return Proven::bogus(format!("{name:?} is not a domain name"));
        };
        fq.set_fqdn(true);
        if !self.anchors.covers(&fq) {
            return Proven::insecure();
        }
        let resolver = match self.resolver().await {
            Ok(r) => r,
            Err(e) => return Proven::bogus(format!("trust anchors: {e}")),
        };
        match resolver.lookup(fq, rtype).await {
            Ok(lookup) => {
                let mut proofs = Vec::new();
                let mut records = Vec::new();
                for r in lookup.answers() {
                    if r.record_type() == rtype {
                        proofs.push(r.proof);
                        records.push(r.data.clone());
                    }
                }
                let status = if proofs.is_empty() || proofs.iter().all(|p| *p == Proof::Secure) {
                    Dnssec::Secure
                } else if proofs.iter().all(|p| *p == Proof::Insecure) {
                    Dnssec::Insecure
                } else if proofs.contains(&Proof::Bogus) {
                    Dnssec::Bogus(format!(
                        "the {rtype} records of {name} do not validate (bogus)"
                    ))
                } else {
                    Dnssec::Bogus(format!(
                        "the {rtype} records of {name} cannot be validated (indeterminate)"
                    ))
                };
                Proven { status, records }
            }
            // No such records (a denial hickory checked): nothing for DANE to use.
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Proven::insecure(),
            Err(e) => Proven::bogus(format!("{name} {rtype}: {e}")),
        }
    }
}

/// One finding of [`readiness`]: fine, or a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Works as it should.
    Ok(String),
    /// Worth knowing; nothing to fix.
    Warn(String),
    /// The configuration asks for something that cannot work: what, and how to fix it.
    Fix(String, String),
}

/// Whether DNS answers through the configured resolver, and whether DANE can work:
/// the resolver sets AD on a signed name (the root, or the first trust anchor's
/// zone), or the anchors validate it here.
pub async fn readiness(cfg: &crate::DeliverConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let stub = match StubResolver::new(cfg.resolver) {
        Ok(s) => s,
        Err(e) => {
            return vec![Finding::Warn(format!(
                "DNS: {e}: MX delivery will wait and retry"
            ))];
        }
    };
    let servers = stub
        .servers()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let anchors = match &cfg.dnssec_trust_anchors {
        Some(path) => match AnchorFile::load(path) {
            Ok(a) => Some(a),
            Err(e) => {
                out.push(Finding::Fix(
                    format!("dnssec_trust_anchors: {e}"),
                    "give a file of DNSKEY or DS lines (zone-file syntax)".into(),
                ));
                return out;
            }
        },
        None => None,
    };
    // A name that must be signed: the root, or the zone the first anchor is for.
    let probe = anchors
        .as_ref()
        .and_then(|a| a.owners.first())
        .map_or_else(|| ".".to_owned(), Name::to_ascii);
    let answer = match stub.query(&probe, RecordType::SOA).await {
        Ok(a) if matches!(a.rcode, ResponseCode::NoError) => a,
        Ok(a) => {
            out.push(Finding::Warn(format!(
                "DNS: {servers} answered {} for {probe} SOA: MX delivery will wait and retry",
                a.rcode
            )));
            return out;
        }
        Err(e) => {
            out.push(Finding::Warn(format!(
                "DNS does not answer ({e}): MX delivery will wait and retry"
            )));
            return out;
        }
    };
    out.push(Finding::Ok(format!("DNS answers ({servers})")));
    if !cfg.dane {
        out.push(Finding::Ok(
            "DANE is off (dane = false): MX hosts get MTA-STS or the configured tls".into(),
        ));
        return out;
    }
    if let Some(anchors) = anchors {
        let here = match LocalValidator::new(anchors, cfg.resolver) {
            Ok(v) => v.proven(&probe, RecordType::SOA).await.status,
            Err(e) => Dnssec::Bogus(e),
        };
        out.push(match here {
            Dnssec::Secure => Finding::Ok(format!(
                "DANE ready: {probe} validates here from dnssec_trust_anchors"
            )),
            other => Finding::Fix(
                format!(
                    "DANE: {probe} does not validate from dnssec_trust_anchors ({other:?}): mail to DNSSEC-signed domains will wait"
                ),
                "check the anchors against the zone's current keys (dig DNSKEY) and that the resolver passes DNSSEC records".into(),
            ),
        });
        return out;
    }
    out.push(if answer.ad {
        Finding::Ok(format!(
            "DANE ready: the resolver {servers} validates DNSSEC (AD on {probe})"
        ))
    } else {
        let what = if answer.signed {
            "passes DNSSEC records but does not validate them"
        } else {
            "does not validate DNSSEC (and strips its records)"
        };
        Finding::Fix(
            format!("DANE: the resolver {servers} {what}: no AD on {probe}, so DANE never applies"),
            "run a validating resolver on this host (apt install unbound) and set resolver = \"127.0.0.1:53\", or set dnssec_trust_anchors".into(),
        )
    });
    if stub.servers().iter().any(|s| !s.ip().is_loopback()) {
        out.push(Finding::Warn(format!(
            "DANE trusts the AD bit of {servers}, which is not on loopback: anyone on the path could set it; run the validating resolver on this host"
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_files_take_dnskey_and_ds_lines() {
        let f = AnchorFile::parse(
            "; a private root\n\
             .\t3600 IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n\
             example. IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n",
        )
        .unwrap();
        assert_eq!(f.ds.len(), 1);
        assert_eq!(f.ds[0].1.key_tag(), 20326);
        assert!(
            f.covers(&Name::from_ascii("mx.example.org.").unwrap()),
            "the root covers all"
        );
        let only = AnchorFile::parse("example. IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n").unwrap();
        assert!(only.covers(&Name::from_ascii("mx.example.").unwrap()));
        assert!(!only.covers(&Name::from_ascii("mx.example.org.").unwrap()));
        assert!(AnchorFile::parse("; nothing\n").is_err());
        assert!(AnchorFile::parse("example. IN A 127.0.0.1\n").is_err());
        assert!(AnchorFile::parse(". IN DS 1 8 2 XYZ\n").is_err());
    }
}
