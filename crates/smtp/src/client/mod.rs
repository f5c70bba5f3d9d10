//! One SMTP client session: connect, greeting, EHLO (HELO fallback), STARTTLS or implicit
//! TLS, AUTH, transactions with per-recipient replies, RSET for reuse, QUIT.
//!
//! Every read and write is bounded by the RFC 5321 §4.5.3.2 timeout of its phase, and
//! the whole session by `max_session` (Mail::Spool's max_connection_time), so a server
//! that accepts and then goes silent costs only its own slot until its timers fire.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8,
    EXT_START_TLS, EhloResponse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::DataEncoder;
use crate::reply::{LineResult, Reply, ReplyLines};
use crate::tls::TlsConnectors;

mod open;
mod stream;
mod types;

use stream::Stream;
pub use types::{
    ClientSettings, Credentials, CustomTls, Envelope, Phase, SmtpError, Timeouts, TlsPolicy,
    TxOutcome,
};

/// The body of a transaction: a stored message to encode on the way, or DATA encoded
/// already.
enum Data<'a, R> {
    Stored(&'a mut R),
    Encoded(&'a [u8]),
}

/// An open session with one server.
pub struct Session {
    stream: Stream,
    rbuf: Vec<u8>,
    caps: EhloResponse<String>,
    esmtp: bool,
    settings: ClientSettings,
    deadline: Instant,
    /// The server's host name (for TLS and logs).
    pub host: String,
    /// The address connected to.
    pub peer: SocketAddr,
    /// Whether the session is encrypted.
    pub tls: bool,
    /// Transactions completed on this session.
    pub transactions: u32,
    /// Send RSET ahead of the next transaction (pipelined with it when possible).
    reset_pending: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session({} [{}], tls={})",
            self.host, self.peer, self.tls
        )
    }
}

/// A TCP connection to `peer`, from the configured source address of its family.
async fn connect_tcp(peer: SocketAddr, settings: &ClientSettings) -> Result<TcpStream, SmtpError> {
    let source = settings
        .bind
        .iter()
        .find(|ip| ip.is_ipv4() == peer.is_ipv4())
        .copied();
    let connect = async move {
        match source {
            None => TcpStream::connect(peer).await,
            Some(ip) => {
                let socket = if peer.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(peer).await
            }
        }
    };
    tokio::time::timeout(settings.timeouts.connect, connect)
        .await
        .map_err(|_| SmtpError::Timeout(Phase::Connect))?
        .map_err(|source| SmtpError::Io {
            phase: Phase::Connect,
            source,
        })
}

/// Race connections to `peers` in order, starting each `stagger` after the one before
/// (or at once when it failed); the first made wins, the others are dropped. The last
/// error when none connects.
async fn connect_first(
    peers: &[SocketAddr],
    settings: &ClientSettings,
    stagger: Duration,
) -> Result<(TcpStream, SocketAddr), SmtpError> {
    let mut attempts = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut last = SmtpError::Io {
        phase: Phase::Connect,
        source: std::io::Error::other("no address to connect to"),
    };
    loop {
        if attempts.is_empty() {
            let Some(&peer) = peers.get(next) else {
                return Err(last);
            };
            next += 1;
            let settings = settings.clone();
            attempts.spawn(async move { (connect_tcp(peer, &settings).await, peer) });
        }
        let more = next < peers.len();
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok((Ok(tcp), peer))) => return Ok((tcp, peer)),
                Some(Ok((Err(e), _))) => last = e,
                Some(Err(e)) => last = SmtpError::Io { phase: Phase::Connect, source: std::io::Error::other(e) },
                None => {}
            },
            _ = tokio::time::sleep(stagger), if more => {
                let peer = peers[next];
                next += 1;
                let settings = settings.clone();
                attempts.spawn(async move { (connect_tcp(peer, &settings).await, peer) });
            }
        }
    }
}

impl Session {
    /// The TLS version and cipher suite in use (`TLSv1_3`, `TLS13_AES_256_GCM_SHA384`),
    /// none on a plaintext session.
    pub fn tls_info(&self) -> Option<(String, String)> {
        let Stream::Tls(s) = &self.stream else {
            return None;
        };
        let conn = s.get_ref().1;
        Some((
            format!("{:?}", conn.protocol_version()?),
            format!("{:?}", conn.negotiated_cipher_suite()?.suite()),
        ))
    }

    /// The server's SIZE limit, if it announced one.
    pub fn max_size(&self) -> Option<u64> {
        (self.caps.capabilities & EXT_SIZE != 0 && self.caps.size > 0)
            .then_some(self.caps.size as u64)
    }

    /// Whether the server offered PIPELINING.
    pub fn pipelining(&self) -> bool {
        self.caps.capabilities & EXT_PIPELINING != 0
    }

    /// Whether the session should not be reused: its time cap passed, or it has
    /// carried many transactions already (servers limit those too).
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline || self.transactions >= 100
    }

    /// One transaction: MAIL, RCPT for each recipient, and DATA with `body` (stored
    /// form, LF line ends) if any recipient was accepted.
    pub async fn send<R: AsyncRead + Unpin>(
        &mut self,
        env: &Envelope,
        body: &mut R,
    ) -> Result<TxOutcome, SmtpError> {
        self.transact(env, Data::Stored(body)).await
    }

    /// [`Session::send`] with the DATA already encoded ([`crate::body::DataEncoder`]:
    /// CRLF, dot-stuffed, ending with `.CRLF`): a message sent to several hosts or
    /// retried is encoded once.
    pub async fn send_encoded(
        &mut self,
        env: &Envelope,
        data: &[u8],
    ) -> Result<TxOutcome, SmtpError> {
        debug_assert!(data.ends_with(b".\r\n"));
        self.transact(env, Data::<tokio::io::Empty>::Encoded(data))
            .await
    }

    async fn transact<R: AsyncRead + Unpin>(
        &mut self,
        env: &Envelope,
        body: Data<'_, R>,
    ) -> Result<TxOutcome, SmtpError> {
        // Each transaction gets the whole budget: the cap bounds how long one delivery
        // holds its node locks, whatever the connection did before.
        self.deadline = Instant::now() + self.settings.timeouts.max_session;
        let caps = self.caps.capabilities;
        if env.needs_smtputf8() && caps & EXT_SMTP_UTF8 == 0 {
            return Err(SmtpError::NeedsSmtpUtf8);
        }
        if let Some(limit) = self.max_size()
            && env.size > limit
        {
            return Err(SmtpError::TooLarge {
                size: env.size,
                limit,
            });
        }
        // Whatever the caller hands us, no address may end or add a command line.
        for addr in std::iter::once(&env.from).chain(&env.to) {
            if addr.chars().any(|c| c.is_control() || c == '<' || c == '>') {
                return Err(SmtpError::Protocol {
                    phase: Phase::Mail,
                    what: format!(
                        "refusing to send the address {:?}: it holds a control character or an angle bracket",
                        addr.escape_debug().to_string()
                    ),
                });
            }
        }
        let mut mail = format!("MAIL FROM:<{}>", env.from);
        if self.esmtp {
            if caps & EXT_SIZE != 0 {
                mail.push_str(&format!(" SIZE={}", env.size));
            }
            if env.eight_bit && caps & EXT_8BIT_MIME != 0 {
                mail.push_str(" BODY=8BITMIME");
            }
            // Required for a UTF-8 envelope (refused above when not offered); asked for
            // too when only the header is UTF-8 and the server offers it (RFC 6531).
            if env.needs_smtputf8() || (env.utf8_headers && caps & EXT_SMTP_UTF8 != 0) {
                mail.push_str(" SMTPUTF8");
            }
        }
        mail.push_str("\r\n");
        let t = self.settings.timeouts.clone();
        let mut rcpt_replies = Vec::with_capacity(env.to.len());
        let reset = std::mem::take(&mut self.reset_pending);
        if reset && !self.pipelining() {
            self.reset().await?;
        }
        if self.pipelining() {
            // RFC 2920: [RSET,] MAIL, every RCPT and DATA in one write, replies in order.
            let mut batch = Vec::with_capacity(256);
            if reset {
                batch.extend_from_slice(b"RSET\r\n");
            }
            batch.extend_from_slice(mail.as_bytes());
            for to in &env.to {
                batch.extend_from_slice(format!("RCPT TO:<{to}>\r\n").as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.command(&batch, if reset { Phase::Rset } else { Phase::Mail })
                .await?;
            if reset {
                let r = self.read_reply(Phase::Rset, t.command).await?;
                if !r.is_positive() {
                    return Err(SmtpError::Rejected {
                        phase: Phase::Rset,
                        reply: r,
                    });
                }
            }
            // A 421 ends the session (RFC 5321 §3.8): the server sends nothing after it,
            // and its words (often "rate limited") are the transaction's result.
            let closing = |phase, reply: Reply| {
                if reply.code == 421 {
                    Err(SmtpError::Rejected { phase, reply })
                } else {
                    Ok(reply)
                }
            };
            let mail_reply = closing(Phase::Mail, self.read_reply(Phase::Mail, t.command).await?)?;
            for _ in &env.to {
                let r = closing(Phase::Rcpt, self.read_reply(Phase::Rcpt, t.command).await?)?;
                rcpt_replies.push(r);
            }
            let data_reply = closing(
                Phase::Data,
                self.read_reply(Phase::Data, t.data_init).await?,
            )?;
            if !mail_reply.is_positive() {
                return Err(SmtpError::Rejected {
                    phase: Phase::Mail,
                    reply: mail_reply,
                });
            }
            let accepted = rcpt_replies.iter().any(Reply::is_positive);
            if data_reply.code != 354 {
                if !accepted {
                    return Ok(TxOutcome {
                        rcpt: rcpt_replies,
                        data: None,
                    });
                }
                return Err(SmtpError::Rejected {
                    phase: Phase::Data,
                    reply: data_reply,
                });
            }
            if !accepted {
                // The server said 354 with no recipient: send an empty message it
                // cannot deliver to anyone, then reset.
                self.command(b".\r\n", Phase::Body).await?;
                let _ = self.read_reply(Phase::DataEnd, t.data_end).await?;
                return Ok(TxOutcome {
                    rcpt: rcpt_replies,
                    data: None,
                });
            }
        } else {
            self.command(mail.as_bytes(), Phase::Mail).await?;
            let mail_reply = self.read_reply(Phase::Mail, t.command).await?;
            if !mail_reply.is_positive() {
                return Err(SmtpError::Rejected {
                    phase: Phase::Mail,
                    reply: mail_reply,
                });
            }
            for to in &env.to {
                self.command(format!("RCPT TO:<{to}>\r\n").as_bytes(), Phase::Rcpt)
                    .await?;
                rcpt_replies.push(self.read_reply(Phase::Rcpt, t.command).await?);
            }
            if !rcpt_replies.iter().any(Reply::is_positive) {
                return Ok(TxOutcome {
                    rcpt: rcpt_replies,
                    data: None,
                });
            }
            self.command(b"DATA\r\n", Phase::Data).await?;
            let data_reply = self.read_reply(Phase::Data, t.data_init).await?;
            if data_reply.code != 354 {
                return Err(SmtpError::Rejected {
                    phase: Phase::Data,
                    reply: data_reply,
                });
            }
        }
        match body {
            Data::Stored(r) => self.send_body(r).await?,
            Data::Encoded(d) => {
                self.write(d, Phase::Body, self.settings.timeouts.data_block)
                    .await?
            }
        }
        let end = self.read_reply(Phase::DataEnd, t.data_end).await?;
        self.transactions += 1;
        Ok(TxOutcome {
            rcpt: rcpt_replies,
            data: Some(end),
        })
    }

    async fn send_body<R: AsyncRead + Unpin>(&mut self, body: &mut R) -> Result<(), SmtpError> {
        let mut enc = DataEncoder::default();
        let mut input = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(72 * 1024);
        loop {
            let n = body.read(&mut input).await.map_err(SmtpError::Source)?;
            if n == 0 {
                break;
            }
            enc.feed(&input[..n], &mut out);
            self.write(&out, Phase::Body, self.settings.timeouts.data_block)
                .await?;
            out.clear();
        }
        enc.finish(&mut out);
        self.write(&out, Phase::Body, self.settings.timeouts.data_block)
            .await
    }

    /// Reuse the session: RSET goes out with the next transaction's commands (one round
    /// trip saved with PIPELINING). If the server has closed the connection meanwhile,
    /// the next [`Session::send`] fails in [`Phase::Rset`], before any MAIL was sent.
    pub fn reset_before_next(&mut self) {
        self.reset_pending = true;
    }

    /// RSET, to reuse the session for another transaction.
    pub async fn reset(&mut self) -> Result<(), SmtpError> {
        self.command(b"RSET\r\n", Phase::Rset).await?;
        let r = self
            .read_reply(Phase::Rset, self.settings.timeouts.command)
            .await?;
        if r.is_positive() {
            Ok(())
        } else {
            Err(SmtpError::Rejected {
                phase: Phase::Rset,
                reply: r,
            })
        }
    }

    /// QUIT and close; errors are ignored (the work is done).
    pub async fn quit(mut self) {
        let t = Duration::from_secs(5).min(self.settings.timeouts.command);
        if self.command(b"QUIT\r\n", Phase::Rset).await.is_ok() {
            let _ = self.read_reply(Phase::Rset, t).await;
        }
        let _ = tokio::time::timeout(t, self.stream.shutdown()).await;
    }

    async fn timed<F: std::future::Future>(
        &self,
        phase: Phase,
        limit: Duration,
        f: F,
    ) -> Result<F::Output, SmtpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(limit.min(left), f)
            .await
            .map_err(|_| SmtpError::Timeout(phase))
    }

    async fn command(&mut self, bytes: &[u8], phase: Phase) -> Result<(), SmtpError> {
        self.write(bytes, phase, self.settings.timeouts.command)
            .await
    }

    async fn write(
        &mut self,
        bytes: &[u8],
        phase: Phase,
        limit: Duration,
    ) -> Result<(), SmtpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let stream = &mut self.stream;
        let result = tokio::time::timeout(limit.min(left), async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await;
        match result {
            Err(_) => Err(SmtpError::Timeout(phase)),
            Ok(Err(source)) => Err(SmtpError::Io { phase, source }),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn read_reply(&mut self, phase: Phase, limit: Duration) -> Result<Reply, SmtpError> {
        let raw = self.read_raw(phase, limit).await?;
        parse(&raw, phase)
    }

    /// Read one whole reply (all its lines), bounded in size and time.
    async fn read_raw(&mut self, phase: Phase, limit: Duration) -> Result<Vec<u8>, SmtpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let stream = &mut self.stream;
        let rbuf = &mut self.rbuf;
        let work = async {
            let mut lines = ReplyLines::default();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(pos) = rbuf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = rbuf.drain(..=pos).collect();
                    match lines.push(&line) {
                        Ok(LineResult::More) => {}
                        Ok(LineResult::Done(raw)) => return Ok(raw),
                        Err(what) => {
                            return Err(SmtpError::Protocol {
                                phase,
                                what: what.into(),
                            });
                        }
                    }
                }
                if rbuf.len() > crate::reply::MAX_LINE {
                    return Err(SmtpError::Protocol {
                        phase,
                        what: "reply line too long".into(),
                    });
                }
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|source| SmtpError::Io { phase, source })?;
                if n == 0 {
                    return Err(SmtpError::Closed(phase));
                }
                rbuf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(limit.min(left), work)
            .await
            .map_err(|_| SmtpError::Timeout(phase))?
    }
}

fn parse(raw: &[u8], phase: Phase) -> Result<Reply, SmtpError> {
    Reply::parse(raw).ok_or_else(|| SmtpError::Protocol {
        phase,
        what: format!("unparsable reply {:?}", String::from_utf8_lossy(raw)),
    })
}
