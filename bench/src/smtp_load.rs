//! The SMTP side of `bench/load`: a counting sink (optionally with STARTTLS), a load
//! generator that speaks through the project's own client (optionally STARTTLS), and a
//! self-signed certificate for both ends and for Postfix.
//!
//! `mailspool-bench sink --port-file F --counts F [--tls-cert C --tls-key K]
//! [--max-connections N] [--max-rate M] [--delay-ms D]` writes "transactions recipients connections
//! tls_full tls_resumed throttled" to the counts file every 50 ms; with the limits it
//! answers `421 4.7.28` above N connections at once or M messages a second; with D it
//! answers each message's final dot D ms late (a distant receiver).
//! `mailspool-bench load --port P --sessions N --messages M [--rcpts R] [--per-connection K]
//! [--tls]` sends M 4 KB messages over N parallel sessions, K per connection (default 1,
//! like smtp-source), and prints "seconds connections retries" (retries: connections
//! refused with 421 or never greeted, tried again after 200 ms).
//! `mailspool-bench cert --dir D` writes D/cert.pem and D/key.pem (CN and SAN localhost).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::flag;

static TX: AtomicU64 = AtomicU64::new(0);
static RCPT: AtomicU64 = AtomicU64::new(0);
static CONNS: AtomicU64 = AtomicU64::new(0);
static TLS_FULL: AtomicU64 = AtomicU64::new(0);
static TLS_RESUMED: AtomicU64 = AtomicU64::new(0);
static THROTTLED: AtomicU64 = AtomicU64::new(0);
static OPEN: AtomicU64 = AtomicU64::new(0);

/// How the sink throttles, like the big receivers: `421 4.7.28` above this many
/// connections at once, or above this many messages in the last second.
#[derive(Clone, Copy)]
struct Throttle {
    connections: Option<u64>,
    per_second: Option<usize>,
    /// Wait this long before answering the final dot (a distant receiver).
    delay: Option<Duration>,
}

static TAKEN: std::sync::Mutex<std::collections::VecDeque<Instant>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Whether one more message in this second would exceed `per_second`.
fn over_rate(per_second: usize) -> bool {
    let now = Instant::now();
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    while taken
        .front()
        .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
    {
        taken.pop_front();
    }
    if taken.len() >= per_second {
        return true;
    }
    taken.push_back(now);
    false
}

fn counts_line() -> String {
    format!(
        "{} {} {} {} {} {}\n",
        TX.load(Relaxed),
        RCPT.load(Relaxed),
        CONNS.load(Relaxed),
        TLS_FULL.load(Relaxed),
        TLS_RESUMED.load(Relaxed),
        THROTTLED.load(Relaxed)
    )
}

fn server_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut fs::read(cert).unwrap().as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut fs::read(key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(cfg)
}

/// An SMTP sink that accepts everything and counts transactions, recipients,
/// connections and TLS handshakes (full and resumed), one thread per connection.
/// Postfix's smtp-sink counts neither transactions nor handshakes.
pub(crate) fn sink() {
    let port_file = PathBuf::from(flag("--port-file").expect("--port-file"));
    let counts = PathBuf::from(flag("--counts").expect("--counts"));
    let tls = flag("--tls-cert").map(|c| server_config(&c, &flag("--tls-key").expect("--tls-key")));
    let throttle = Throttle {
        connections: flag("--max-connections").map(|n| n.parse().expect("--max-connections N")),
        per_second: flag("--max-rate").map(|n| n.parse().expect("--max-rate N (per second)")),
        delay: flag("--delay-ms").map(|n| Duration::from_millis(n.parse().expect("--delay-ms N"))),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    fs::write(
        &port_file,
        listener.local_addr().unwrap().port().to_string(),
    )
    .unwrap();
    std::thread::spawn(move || {
        loop {
            // Replaced whole (rename), so that a reader never sees it half written.
            let tmp = counts.with_extension("tmp");
            if fs::write(&tmp, counts_line()).is_ok() {
                let _ = fs::rename(&tmp, &counts);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    for stream in listener.incoming().flatten() {
        let tls = tls.clone();
        std::thread::spawn(move || {
            CONNS.fetch_add(1, Relaxed);
            let open = OPEN.fetch_add(1, Relaxed) + 1;
            struct Close;
            impl Drop for Close {
                fn drop(&mut self) {
                    OPEN.fetch_sub(1, Relaxed);
                }
            }
            let _close = Close;
            // Replies go out at once: with Nagle's algorithm a pipelined client's
            // delayed ACK would add 40 ms to every transaction.
            let _ = stream.set_nodelay(true);
            if throttle.connections.is_some_and(|n| open > n) {
                THROTTLED.fetch_add(1, Relaxed);
                let _ = (&stream).write_all(b"421 4.7.28 too many connections, try later\r\n");
                return;
            }
            let _ = (&stream).write_all(b"220 sink.test ESMTP\r\n");
            let upgrade = sink_session(&mut BufReader::new(&stream), tls.is_some(), throttle);
            let (Some(Upgrade), Some(cfg)) = (upgrade, tls) else {
                return;
            };
            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(conn, stream);
            while tls.conn.is_handshaking() {
                if tls.conn.complete_io(&mut tls.sock).is_err() {
                    return;
                }
            }
            match tls.conn.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => TLS_RESUMED.fetch_add(1, Relaxed),
                _ => TLS_FULL.fetch_add(1, Relaxed),
            };
            sink_session(&mut BufReader::new(tls), false, throttle);
        });
    }
}

#[derive(PartialEq)]
struct Upgrade;

/// Serve SMTP until QUIT or EOF; `Some(Upgrade)` after a `220` to STARTTLS.
fn sink_session<S: Read + Write>(
    input: &mut BufReader<S>,
    offer_tls: bool,
    throttle: Throttle,
) -> Option<Upgrade> {
    let mut line = String::new();
    let mut pending = Vec::new();
    loop {
        line.clear();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let cmd = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match cmd.as_str() {
            "EHLO" if offer_tls => {
                b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SIZE 100000000\r\n"
            }
            "EHLO" => b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n",
            "STAR" if offer_tls => {
                pending.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                let _ = input.get_mut().write_all(&pending);
                let _ = input.get_mut().flush();
                return Some(Upgrade);
            }
            "MAIL" if throttle.per_second.is_some_and(over_rate) => {
                THROTTLED.fetch_add(1, Relaxed);
                pending.extend_from_slice(b"421 4.7.28 rate limited, try again later\r\n");
                let _ = input.get_mut().write_all(&pending);
                let _ = input.get_mut().flush();
                return None;
            }
            "MAIL" => {
                TX.fetch_add(1, Relaxed);
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" => {
                RCPT.fetch_add(1, Relaxed);
                b"250 2.1.5 Ok\r\n"
            }
            "DATA" => {
                pending.extend_from_slice(b"354 go\r\n");
                let _ = input.get_mut().write_all(&pending);
                pending.clear();
                let _ = input.get_mut().flush();
                loop {
                    line.clear();
                    if input.read_line(&mut line).unwrap_or(0) == 0 {
                        return None;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                if let Some(d) = throttle.delay {
                    std::thread::sleep(d);
                }
                b"250 2.0.0 Ok: queued\r\n"
            }
            "QUIT" => {
                pending.extend_from_slice(b"221 2.0.0 Bye\r\n");
                let _ = input.get_mut().write_all(&pending);
                let _ = input.get_mut().flush();
                return None;
            }
            _ => b"250 2.0.0 Ok\r\n",
        };
        pending.extend_from_slice(reply);
        // Pipelined commands get their replies in one write, as a real server sends them.
        if input.buffer().is_empty() {
            let out = input.get_mut();
            if out.write_all(&pending).is_err() || out.flush().is_err() {
                return None;
            }
            pending.clear();
        }
    }
}

pub(crate) fn cert() {
    let dir = PathBuf::from(flag("--dir").expect("--dir"));
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

pub(crate) fn load() {
    let port: u16 = flag("--port").expect("--port").parse().unwrap();
    let sessions: usize = flag("--sessions").map_or(20, |s| s.parse().unwrap());
    let messages: usize = flag("--messages").map_or(1000, |s| s.parse().unwrap());
    let rcpts: usize = flag("--rcpts").map_or(1, |s| s.parse().unwrap());
    let per_conn: usize = flag("--per-connection").map_or(1, |s| s.parse().unwrap());
    let tls = std::env::args().any(|a| a == "--tls");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (secs, conns, retries) =
        rt.block_on(run_load(port, sessions, messages, rcpts, per_conn, tls));
    println!("{secs:.3} {conns} {retries}");
}

async fn run_load(
    port: u16,
    sessions: usize,
    messages: usize,
    rcpts: usize,
    per_conn: usize,
    tls: bool,
) -> (f64, u64, u64) {
    use mailspool_smtp::client::{ClientSettings, Envelope, Timeouts, TlsPolicy};
    let mut text =
        String::from("From: load@example.com\r\nTo: rcpt@example.test\r\nSubject: load\r\n\r\n");
    while text.len() < 4096 {
        text.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    text.push_str(".\r\n");
    let data = Arc::new(text.into_bytes());
    let settings = ClientSettings {
        helo_name: "load.example.com".into(),
        // A greeting later than 10 s on loopback is a connection the server never
        // accepted: retried (see connect_retrying).
        timeouts: Timeouts {
            greeting: Duration::from_secs(10),
            ..Timeouts::default()
        },
        tls: if tls {
            TlsPolicy::Opportunistic
        } else {
            TlsPolicy::None
        },
        auth: None,
        bind: Vec::new(),
        verifier: None,
    };
    // One set of connectors for every connection: rustls's client session cache is in
    // it, so later handshakes can resume.
    let connectors = Arc::new(mailspool_smtp::TlsConnectors::new(None).unwrap());
    let next = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (data, settings, connectors, next, conns, retries) = (
            data.clone(),
            settings.clone(),
            connectors.clone(),
            next.clone(),
            conns.clone(),
            retries.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let mut i = next.fetch_add(1, Relaxed) as usize;
            while i < messages {
                let mut s = connect_retrying(addr, &settings, &connectors, &retries).await;
                conns.fetch_add(1, Relaxed);
                for sent in 0..per_conn {
                    if sent > 0 {
                        i = next.fetch_add(1, Relaxed) as usize;
                        if i >= messages {
                            break;
                        }
                    }
                    let env = Envelope {
                        from: "load@example.com".into(),
                        to: (0..rcpts)
                            .map(|r| format!("rcpt{i}.{r}@example.test"))
                            .collect(),
                        size: data.len() as u64,
                        eight_bit: false,
                        utf8_headers: false,
                    };
                    let out = s.send_encoded(&env, &data).await.expect("send");
                    assert!(
                        out.data.as_ref().is_some_and(|r| r.code == 250),
                        "not accepted: {:?}",
                        out.data
                    );
                    s.reset_before_next();
                }
                s.quit().await;
                i = next.fetch_add(1, Relaxed) as usize;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        start.elapsed().as_secs_f64(),
        conns.load(Relaxed),
        retries.load(Relaxed),
    )
}

/// Connect as a real client would: a 421 greeting (too many connections) or a greeting
/// that never comes (the server's accept queue overflowed) is retried after a pause.
async fn connect_retrying(
    addr: std::net::SocketAddr,
    settings: &mailspool_smtp::client::ClientSettings,
    connectors: &mailspool_smtp::TlsConnectors,
    retries: &AtomicU64,
) -> mailspool_smtp::client::Session {
    use mailspool_smtp::client::{Phase, Session, SmtpError};
    loop {
        match Session::connect(addr, "localhost", settings, connectors).await {
            Ok(s) => return s,
            Err(SmtpError::Rejected {
                phase: Phase::Greeting,
                ..
            })
            | Err(SmtpError::Timeout(Phase::Greeting)) => {
                retries.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connect: {e:?}"),
        }
    }
}
