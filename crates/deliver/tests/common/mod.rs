//! Test harness: an in-process SMTP sink with scriptable replies, an in-process DNS
//! server, and helpers to queue messages. Everything binds 127.0.0.1:0.
#![allow(dead_code)]

pub mod dns_world;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailspool_deliver::{DeliverConfig, Engine, HostPort, NoDns, Resolve};
use mailspool_smtp::{Timeouts, TlsPolicy};
use mailspool_spool::{Spool, SpoolConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    /// The MAIL FROM parameters (SIZE=, BODY=, SMTPUTF8), as sent.
    pub mail_params: String,
    pub to: Vec<String>,
    /// The DATA as stored form: dot-unstuffed, CRLF made LF.
    pub data: Vec<u8>,
    pub tls: bool,
}

/// How the sink behaves. Replies are whole lines without CRLF.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub greeting: Option<String>,
    pub mail: Option<String>,
    /// Reply per recipient address (default 250).
    pub rcpt: HashMap<String, String>,
    /// Replies after the final dot, used in turn (default 250).
    pub data_end: VecDeque<String>,
    /// Close the connection after this many body bytes.
    pub drop_in_data: Option<usize>,
    /// Accept the connection and never say anything.
    pub tarpit: bool,
    pub no_pipelining: bool,
    pub no_smtputf8: bool,
    /// Answer EHLO with 500 so the client falls back to HELO.
    pub no_ehlo: bool,
    /// Send an enormous reply line after EHLO.
    pub oversized_reply: bool,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN and LOGIN for this user and password.
    pub auth: Option<(String, String)>,
    /// Greet a connection beyond this many at once with `421 4.7.28` (and close).
    pub throttle_connections: Option<usize>,
    /// Answer MAIL with `421 4.7.28` (and close) once this many messages were
    /// accepted within the period.
    pub throttle_rate: Option<(usize, Duration)>,
    /// Wait this long before each reply (a distant MX, not CPU-bound).
    pub delay: Option<Duration>,
}

#[derive(Default)]
pub struct SinkState {
    pub received: Mutex<Vec<Received>>,
    pub script: Mutex<Script>,
    pub connections: AtomicUsize,
    /// The address each connection came from.
    pub peers: Mutex<Vec<SocketAddr>>,
    /// The name each EHLO gave.
    pub helos: Mutex<Vec<String>>,
    pub transactions: AtomicUsize,
    /// Sessions open now, and the most that were ever open and not turned away.
    pub open: AtomicUsize,
    pub peak_open: AtomicUsize,
    /// Throttling replies sent.
    pub throttled: AtomicUsize,
    /// When each message was taken (MAIL accepted), for the rate limit.
    pub taken: Mutex<VecDeque<std::time::Instant>>,
    /// When each message was taken, all of them (for the most in any period).
    pub taken_at: Mutex<Vec<std::time::Instant>>,
    /// Connections greeted with 421 for being over `throttle_connections`.
    pub refused_connections: AtomicUsize,
    /// MAILs answered 421 for being over `throttle_rate`.
    pub refused_rate: AtomicUsize,
}

impl SinkState {
    /// The most messages taken within any `period`.
    pub fn most_in(&self, period: Duration) -> usize {
        let mut at = self.taken_at.lock().unwrap().clone();
        at.sort();
        let (mut most, mut first) = (0, 0);
        for last in 0..at.len() {
            while at[last] - at[first] >= period {
                first += 1;
            }
            most = most.max(last + 1 - first);
        }
        most
    }
}

/// Counts a session open while it lives.
struct OpenGuard(Arc<SinkState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<SinkState>,
}

impl Sink {
    pub async fn start(script: Script) -> Sink {
        Sink::start_on("127.0.0.1:0".parse().unwrap(), script)
            .await
            .unwrap()
    }

    /// A sink on `bind` (another loopback address, a port another sink has there).
    pub async fn start_on(bind: SocketAddr, script: Script) -> std::io::Result<Sink> {
        Sink::start_listening(TcpListener::bind(bind).await?, script)
    }

    /// A sink on a listener made elsewhere (in another network namespace).
    pub fn start_listening(listener: TcpListener, script: Script) -> std::io::Result<Sink> {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(SinkState::default());
        *state.script.lock().unwrap() = script;
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = listener.accept().await else {
                    return;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                st.peers.lock().unwrap().push(peer);
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = session(sock, st).await;
                });
            }
        });
        Ok(Sink { addr, state })
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.state.script.lock().unwrap()
    }
}

trait Io: tokio::io::AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn session(sock: TcpStream, st: Arc<SinkState>) -> std::io::Result<()> {
    let script = st.script.lock().unwrap().clone();
    if script.tarpit {
        let mut sock = sock;
        let mut buf = [0u8; 1024];
        while sock.read(&mut buf).await? > 0 {}
        return Ok(());
    }
    let open = st.open.fetch_add(1, Ordering::SeqCst) + 1;
    let _open = OpenGuard(st.clone());
    if script.throttle_connections.is_some_and(|n| open > n) {
        st.throttled.fetch_add(1, Ordering::SeqCst);
        st.refused_connections.fetch_add(1, Ordering::SeqCst);
        let mut sock = sock;
        sock.write_all(b"421 4.7.28 too many connections from your IP, try later\r\n")
            .await?;
        return Ok(());
    }
    st.peak_open.fetch_max(open, Ordering::SeqCst);
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(sock));
    let greeting = script
        .greeting
        .clone()
        .unwrap_or("220 sink.test ESMTP".into());
    io.get_mut()
        .write_all(format!("{greeting}\r\n").as_bytes())
        .await?;
    let mut tls = false;
    let mut from = String::new();
    let mut mail_params = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let script = st.script.lock().unwrap().clone();
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            st.helos
                .lock()
                .unwrap()
                .push(line.get(5..).unwrap_or("").trim().to_owned());
        }
        let reply: String = if upper.starts_with("EHLO") {
            if script.no_ehlo {
                "500 5.5.1 what".into()
            } else if script.oversized_reply {
                format!("250 {}", "x".repeat(10_000))
            } else {
                let mut r = vec![
                    "250-sink.test".to_owned(),
                    "250-8BITMIME".into(),
                    "250-SIZE 50000000".into(),
                    "250-ENHANCEDSTATUSCODES".into(),
                ];
                if !script.no_pipelining {
                    r.push("250-PIPELINING".into());
                }
                if !script.no_smtputf8 {
                    r.push("250-SMTPUTF8".into());
                }
                if script.tls.is_some() && !tls {
                    r.push("250-STARTTLS".into());
                }
                if script.auth.is_some() {
                    r.push("250-AUTH PLAIN LOGIN".into());
                }
                r.push("250 HELP".into());
                r.join("\r\n")
            }
        } else if upper.starts_with("HELO") {
            "250 sink.test".into()
        } else if upper.starts_with("STARTTLS") {
            let Some(cfg) = script.tls.clone() else {
                io.get_mut().write_all(b"454 no TLS\r\n").await?;
                continue;
            };
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            let inner = io.into_inner();
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let stream = acceptor.accept(inner).await?;
            io = BufReader::new(Box::new(stream));
            tls = true;
            continue;
        } else if upper.starts_with("AUTH ") {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            let (user, pass) = script.auth.clone().unwrap_or_default();
            let words: Vec<&str> = line.split_whitespace().collect();
            let ok = if words
                .get(1)
                .is_some_and(|m| m.eq_ignore_ascii_case("PLAIN"))
            {
                let token = b64.decode(words.get(2).unwrap_or(&"")).unwrap_or_default();
                token == format!("\0{user}\0{pass}").as_bytes()
            } else {
                let mut got = Vec::new();
                for prompt in ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"] {
                    io.get_mut()
                        .write_all(format!("{prompt}\r\n").as_bytes())
                        .await?;
                    let mut l = String::new();
                    io.read_line(&mut l).await?;
                    got.push(
                        String::from_utf8(b64.decode(l.trim()).unwrap_or_default())
                            .unwrap_or_default(),
                    );
                }
                got == [user, pass]
            };
            if ok {
                "235 2.7.0 Authentication successful".into()
            } else {
                "535 5.7.8 Authentication failed".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            if let Some((max, period)) = script.throttle_rate {
                let refuse = {
                    let now = std::time::Instant::now();
                    let mut taken = st.taken.lock().unwrap();
                    while taken.front().is_some_and(|t| now - *t > period) {
                        taken.pop_front();
                    }
                    let refuse = taken.len() >= max;
                    if !refuse {
                        taken.push_back(now);
                    }
                    if refuse {
                        st.refused_rate.fetch_add(1, Ordering::SeqCst);
                    }
                    refuse
                };
                if refuse {
                    st.throttled.fetch_add(1, Ordering::SeqCst);
                    io.get_mut()
                        .write_all(b"421 4.7.28 rate limited, try again later\r\n")
                        .await?;
                    return Ok(());
                }
            }
            st.taken_at.lock().unwrap().push(std::time::Instant::now());
            from = extract(&line);
            mail_params = line
                .split_once('>')
                .map_or("", |(_, p)| p.trim())
                .to_owned();
            rcpts.clear();
            script.mail.clone().unwrap_or("250 2.1.0 Ok".into())
        } else if upper.starts_with("RCPT TO:") {
            let to = extract(&line);
            let r = script
                .rcpt
                .get(&to)
                .cloned()
                .unwrap_or("250 2.1.5 Ok".into());
            if r.starts_with('2') {
                rcpts.push(to);
            }
            r
        } else if upper.starts_with("DATA") {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                io.get_mut()
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if io.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(&l);
                    if script.drop_in_data.is_some_and(|n| data.len() >= n) {
                        return Ok(());
                    }
                }
                let reply = st
                    .script
                    .lock()
                    .unwrap()
                    .data_end
                    .pop_front()
                    .unwrap_or("250 2.0.0 queued".into());
                if reply.starts_with('2') {
                    st.received.lock().unwrap().push(Received {
                        from: from.clone(),
                        mail_params: mail_params.clone(),
                        to: rcpts.clone(),
                        data: mailspool_smtp::body::unstuff(&{
                            let mut d = data;
                            d.extend_from_slice(b".\r\n");
                            d
                        }),
                        tls,
                    });
                    st.transactions.fetch_add(1, Ordering::SeqCst);
                }
                rcpts.clear();
                reply
            }
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            "250 2.0.0 Ok".into()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 Ok".into()
        } else if upper.starts_with("QUIT") {
            io.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 unknown command".into()
        };
        if let Some(d) = script.delay {
            tokio::time::sleep(d).await;
        }
        io.get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await?;
    }
}

fn extract(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_owned()
}

/// A self-signed server certificate for `name`, and its SubjectPublicKeyInfo (what
/// a DANE-EE `3 1 x` record hashes).
pub fn self_signed(name: &str) -> (Arc<rustls::ServerConfig>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der)
    .unwrap();
    (Arc::new(cfg), spki)
}

/// A self-signed certificate for `name` and a server config using it; also the PEM of
/// the certificate, for clients that must trust it.
pub fn tls_server(name: &str) -> (Arc<rustls::ServerConfig>, String) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    (Arc::new(cfg), pem)
}

/// A test certificate authority: its PEM (for `tls_ca_file`), and server configs for
/// names it signs.
pub struct TestCa {
    pub pem: String,
    /// The CA certificate (DER).
    pub der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mailspool test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `name` signed by this CA, and its private key.
    fn issue(
        &self,
        name: &str,
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            cert.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// A certificate for `name` (a DNS name or an IP address) signed by this CA, and
    /// its key, both PEM (for servers configured by files: PostgreSQL).
    pub fn issue_pem(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate for `name` signed by this CA, with its key, for SNI resolvers.
    pub fn certified_key(&self, name: &str) -> Arc<rustls::sign::CertifiedKey> {
        let (cert, der) = self.issue(name);
        let signing = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signing))
    }

    /// A server config presenting a certificate for `name` and this CA's certificate
    /// after it (a chain, as DANE-TA servers send).
    pub fn server_with_chain(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let (cert, der) = self.issue(name);
        let chain = vec![cert, self.der.clone().into()];
        Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, der)
            .unwrap(),
        )
    }

    /// A server config with a certificate for `name` signed by this CA.
    pub fn server(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let (cert, der) = self.issue(name);
        Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], der)
            .unwrap(),
        )
    }
}

/// What a test DNS name answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Mx(Vec<(u16, String)>),
    A(Vec<std::net::Ipv4Addr>),
    /// PTR names, keyed by the reverse name (`2.0.0.127.in-addr.arpa`).
    Ptr(Vec<String>),
    /// TXT records, each given as its character strings.
    Txt(Vec<Vec<String>>),
    NxDomain,
    ServFail,
}

/// An in-process DNS server on 127.0.0.1:0 (UDP) answering from a table keyed by
/// (lower-case name without the final dot, "MX" | "A" | "AAAA").
pub async fn dns_server(table: HashMap<(String, String), Answer>) -> SocketAddr {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::rdata::{A, MX, PTR, TXT};
    use hickory_proto::rr::{Name, RData, Record};
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(query) = q.queries.first().cloned() else {
                continue;
            };
            let name = query
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let kind = query.query_type().to_string();
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_query(query.clone());
            match table.get(&(name.clone(), kind.clone())) {
                Some(Answer::Mx(list)) => {
                    for (pref, host) in list {
                        let ex =
                            Name::from_ascii(format!("{host}.")).unwrap_or_else(|_| Name::root());
                        r.add_answer(Record::from_rdata(
                            query.name().clone(),
                            300,
                            RData::MX(MX::new(*pref, ex)),
                        ));
                    }
                }
                Some(Answer::A(ips)) => {
                    for ip in ips {
                        r.add_answer(Record::from_rdata(
                            query.name().clone(),
                            300,
                            RData::A(A(*ip)),
                        ));
                    }
                }
                Some(Answer::Ptr(names)) => {
                    for n in names {
                        if let Ok(name) = Name::from_ascii(format!("{n}.")) {
                            r.add_answer(Record::from_rdata(
                                query.name().clone(),
                                300,
                                RData::PTR(PTR(name)),
                            ));
                        }
                    }
                }
                Some(Answer::Txt(records)) => {
                    for strings in records {
                        r.add_answer(Record::from_rdata(
                            query.name().clone(),
                            300,
                            RData::TXT(TXT::new(strings.clone())),
                        ));
                    }
                }
                Some(Answer::NxDomain) => r.metadata.response_code = ResponseCode::NXDomain,
                Some(Answer::ServFail) => r.metadata.response_code = ResponseCode::ServFail,
                None => {
                    // The name exists (some other type) but has no such record.
                    let any = table.keys().any(|(n, _)| *n == name);
                    if !any {
                        r.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
            }
            if let Ok(bytes) = r.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

/// Short timeouts so that failure tests run in seconds.
pub fn quick_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        greeting: Duration::from_secs(2),
        command: Duration::from_secs(2),
        data_init: Duration::from_secs(2),
        data_block: Duration::from_secs(2),
        data_end: Duration::from_secs(2),
        max_session: Duration::from_secs(10),
    }
}

/// A spool in a temp dir, with the default tiers.
pub fn spool(dir: &std::path::Path) -> Arc<Spool> {
    Arc::new(Spool::create(dir, SpoolConfig::default()).unwrap())
}

/// Delivery settings routing each domain to `sink`.
pub fn config(routes: &[(&str, SocketAddr)]) -> DeliverConfig {
    DeliverConfig {
        hostname: "mailspool.test".into(),
        routes: routes
            .iter()
            .map(|(d, a)| {
                (
                    d.to_string(),
                    HostPort {
                        host: a.ip().to_string(),
                        port: a.port(),
                    },
                )
            })
            .collect(),
        mx_tls: TlsPolicy::None,
        timeouts: quick_timeouts(),
        ..DeliverConfig::default()
    }
}

pub fn engine(spool: Arc<Spool>, cfg: DeliverConfig) -> Arc<Engine> {
    let dns: Arc<dyn Resolve> = Arc::new(NoDns);
    Engine::new(spool, cfg, dns).unwrap()
}

/// Queue a message straight into the spool; returns its id.
pub fn queue(spool: &Spool, from: &str, to: &[&str], message: &str) -> String {
    use std::io::Write;
    let id = spool.new_id();
    let mut s = spool.stage(&id).unwrap();
    s.write_all(message.as_bytes()).unwrap();
    let to: Vec<String> = to.iter().map(|t| t.to_string()).collect();
    s.commit(from, &to).unwrap();
    id
}

/// (tier, recipient) of every queued node.
pub fn queued(spool: &Spool) -> Vec<(usize, String)> {
    let mut v: Vec<_> = spool
        .scan()
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| (n.tier, n.name.to))
        .collect();
    v.sort();
    v
}

/// An HTTPS server on `bind` answering `GET /.well-known/mta-sts.txt` with the policy of the
/// Host asked for; each host's certificate from `ca`.
pub async fn policy_server(
    bind: &str,
    ca: &TestCa,
    policies: HashMap<String, String>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    // One certificate per name, chosen by SNI.
    let mut resolver = rustls::server::ResolvesServerCertUsingSni::new();
    for host in policies.keys() {
        resolver
            .add(host, (*ca.certified_key(host)).clone())
            .unwrap();
    }
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let policies = policies.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                let host = text
                    .lines()
                    .find_map(|l| l.strip_prefix("host:"))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                let resp = match policies.get(&host) {
                    Some(p) if text.starts_with("get /.well-known/mta-sts.txt ") => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{p}",
                        p.len()
                    ),
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .into(),
                };
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Log lines as the daemon writes them, kept for assertions (install with
/// `tracing_subscriber::fmt().with_writer(move || logs.clone())`).
#[derive(Clone, Default)]
pub struct Logs(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The `delivered` event a daemon writes for node `n` (its id, recipient and stored
/// message's inode) after the receiver's 250 and before it removes the node.
pub fn delivered_event(n: &mailspool_spool::NodeEntry) -> mailspool_events::Event {
    let mut e = mailspool_events::Event::new(
        mailspool_events::Kind::Delivered,
        &n.name.id,
        &n.name.from,
        &n.name.to,
    )
    .with_reply("250 ok");
    e.node = Some(n.ino);
    e
}

/// Lock `node` as a dead host's mailspool leaves it: its lock, unrefreshed for 10
/// minutes (stale after 5).
pub fn plant_dead_hosts_lock(node: &std::path::Path) {
    let lock = format!("{}.NFSLock", node.display());
    std::fs::write(&lock, "gone.test 4242 1700000000 1 mailspool\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(600))
        .unwrap();
}
