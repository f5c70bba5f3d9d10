//! The resolver's word: one query with AD and DO set, its AD bit read.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Dnssec, Proven};

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
