//! One SMTP server session: commands parsed by smtp-proto, policy, data, and the commit.
//!
//! Promises: 250 after DATA (or BDAT LAST) means the message is committed to the spool
//! (fsynced, one node per recipient); anything else leaves nothing behind. Never an open
//! relay: recipients are accepted only from `relay_networks`, authenticated users, or
//! the local `sendmail -bs` user. Every read has a deadline; command lines are limited
//! to 512 bytes and must end in CRLF; commands pipelined after STARTTLS are discarded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailspool_spool::{Intake, Staged};
use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{Mode, ServeConfig};
use crate::data::DataReader;
use crate::users::Users;

mod auth;
mod policy;
mod report;
mod transfer;

/// Longest command line with its CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

/// A byte stream a session runs on (TCP, TLS, or stdin/stdout).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Who is on the other end.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address; `None` for `sendmail -bs` on stdin.
    pub ip: Option<IpAddr>,
    /// In `relay_networks`.
    pub trusted: bool,
}

impl Peer {
    /// The local user of `sendmail -bs`: trusted.
    pub fn local() -> Peer {
        Peer {
            ip: None,
            trusted: true,
        }
    }
    fn loopback(&self) -> bool {
        self.ip.is_none_or(|ip| ip.is_loopback())
    }
    fn literal(&self) -> String {
        match self.ip {
            Some(IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
            Some(ip) => format!("[{ip}]"),
            None => "local".into(),
        }
    }
}

/// What a session works with.
pub struct Context {
    /// Settings.
    pub cfg: Arc<ServeConfig>,
    /// Where messages are committed: the spool, or the drop (`sendmail -bs` run by a
    /// user who does not own the spool).
    pub spool: Arc<dyn Intake>,
    /// AUTH users.
    pub users: Arc<Users>,
    /// STARTTLS (or smtps) certificate, if configured for this port.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// What the port is for.
    pub mode: Mode,
}

/// How a command line read ended.
enum Line {
    Command(Vec<u8>),
    TooLong,
    BareLf,
    Eof,
}

struct Tx {
    from: String,
    rcpts: Vec<String>,
    id: String,
    smtputf8: bool,
    /// BDAT in progress: the stage and the reader.
    bdat: Option<(Box<dyn Staged>, DataReader)>,
    /// BDAT that already failed: the reply to give at LAST.
    bdat_failed: Option<&'static str>,
    /// A report (a bounce or a complaint) coming back to the return path, about this
    /// message id of ours: read, recorded as events, never queued.
    report_for: Option<String>,
}

struct Session {
    io: Box<dyn Io>,
    rbuf: Vec<u8>,
    ctx: Arc<Context>,
    peer: Peer,
    tls: bool,
    helo: Option<String>,
    esmtp: bool,
    auth: Option<String>,
    auth_failures: u32,
    tx: Option<Tx>,
    deadline: Instant,
    accepted: u32,
}

/// Run a session to its end. `tls`: the stream is already encrypted (smtps).
pub async fn run(io: Box<dyn Io>, peer: Peer, ctx: Arc<Context>, tls: bool) {
    let deadline = Instant::now() + ctx.cfg.session_timeout;
    let mut s = Session {
        io,
        rbuf: Vec::with_capacity(1024),
        ctx,
        peer,
        tls,
        helo: None,
        esmtp: false,
        auth: None,
        auth_failures: 0,
        tx: None,
        deadline,
        accepted: 0,
    };
    let started = Instant::now();
    let result = s.serve().await;
    tracing::info!(
        client = %s.peer.literal(),
        helo = s.helo.as_deref().unwrap_or("-"),
        tls = s.tls,
        user = s.auth.as_deref().unwrap_or("-"),
        messages = s.accepted,
        ms = started.elapsed().as_millis() as u64,
        end = %result.err().unwrap_or("quit"),
        "session"
    );
}

type Ended = Result<(), &'static str>;

impl Session {
    async fn serve(&mut self) -> Ended {
        let cfg = self.ctx.cfg.clone();
        let pause = if cfg.greet_pause_all || !self.peer.trusted {
            cfg.greet_pause
        } else {
            Duration::ZERO
        };
        if !pause.is_zero() {
            let mut probe = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(pause, self.io.read(&mut probe)).await
                && n > 0
            {
                self.refuse("554 5.5.1 Protocol error: talking before the greeting")
                    .await?;
                return Err("talked before the greeting");
            }
        }
        self.reply(&format!("220 {} ESMTP mailspool", cfg.hostname))
            .await?;
        loop {
            let line = match self.read_line().await? {
                Line::Command(l) => l,
                Line::Eof => return Err("client closed"),
                Line::TooLong => {
                    self.refuse("500 5.5.2 Line too long (512 bytes at most)")
                        .await?;
                    continue;
                }
                Line::BareLf => {
                    self.refuse("500 5.5.2 Command line must end with CRLF")
                        .await?;
                    continue;
                }
            };
            let (request, path) = policy::parse_command(&line);
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    self.refuse(syntax_reply(&e)).await?;
                    continue;
                }
            };
            if self.command(request, path).await? {
                return Ok(());
            }
        }
    }

    /// Handle one command; `true` ends the session.
    async fn command(
        &mut self,
        req: Request<String>,
        path: Option<String>,
    ) -> Result<bool, &'static str> {
        match req {
            Request::Ehlo { host } => self.ehlo(host).await?,
            Request::Helo { host } => {
                self.helo = Some(sanitize(&host));
                self.esmtp = false;
                self.tx = None;
                let r = format!("250 {}", self.ctx.cfg.hostname);
                self.reply(&r).await?;
            }
            Request::StartTls => self.starttls().await?,
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.authenticate(mechanism, initial_response).await,
            Request::Mail { from } => self.mail(from, path).await?,
            Request::Rcpt { to } => self.rcpt(to, path).await?,
            Request::Data => self.data().await?,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await?,
            Request::Rset => {
                self.tx = None;
                self.reply("250 2.0.0 Ok").await?;
            }
            Request::Noop { .. } => self.reply("250 2.0.0 Ok").await?,
            Request::Vrfy { .. } => {
                self.reply("252 2.5.0 Cannot VRFY user, but will accept the message")
                    .await?
            }
            Request::Help { .. } => {
                self.reply("214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY QUIT STARTTLS AUTH")
                    .await?
            }
            Request::Quit => {
                self.reply("221 2.0.0 Bye").await?;
                return Ok(true);
            }
            _ => self.refuse("502 5.5.1 Command not implemented").await?,
        }
        Ok(false)
    }

    fn auth_offered(&self) -> bool {
        !self.ctx.users.is_empty() && (self.tls || (self.peer.loopback() && self.peer.ip.is_some()))
    }

    async fn ehlo(&mut self, host: String) -> Ended {
        self.helo = Some(sanitize(&host));
        self.esmtp = true;
        self.tx = None;
        let cfg = &self.ctx.cfg;
        let mut lines = vec![
            format!(
                "{} Hello {} {}",
                cfg.hostname,
                sanitize(&host),
                self.peer.literal()
            ),
            "PIPELINING".into(),
            format!("SIZE {}", cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.ctx.tls.is_some() && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        let last = lines.len() - 1;
        let text: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
            .collect();
        self.reply(&text.join("\r\n")).await
    }

    async fn starttls(&mut self) -> Ended {
        let Some(acceptor) = self.ctx.tls.clone() else {
            return self.refuse("502 5.5.1 STARTTLS not available").await;
        };
        if self.tls {
            return self.refuse("503 5.5.1 Already under TLS").await;
        }
        self.reply("220 2.0.0 Ready to start TLS").await?;
        // Anything the client pipelined after STARTTLS was sent in plain text: it must
        // not run under TLS (CVE-2011-0411 and its kin).
        self.rbuf.clear();
        let io = std::mem::replace(
            &mut self.io,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let left = self.deadline.saturating_duration_since(Instant::now());
        let stream =
            tokio::time::timeout(self.ctx.cfg.command_timeout.min(left), acceptor.accept(io))
                .await
                .map_err(|_| "TLS handshake timed out")?
                .map_err(|_| "TLS handshake failed")?;
        self.io = Box::new(stream);
        self.tls = true;
        mailspool_metrics::global().smtp_tls_sessions.inc();
        self.helo = None;
        self.esmtp = false;
        self.auth = None;
        self.tx = None;
        Ok(())
    }

    /// Send a reply (lines joined with CRLF), within the timeouts.
    pub(crate) async fn reply(&mut self, text: &str) -> Ended {
        let mut bytes = Vec::with_capacity(text.len() + 2);
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        let left = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(self.ctx.cfg.command_timeout.min(left), async {
            self.io.write_all(&bytes).await?;
            self.io.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("write failed"),
            Err(_) => Err("write timed out"),
        }
    }

    /// A negative reply, logged.
    pub(crate) async fn refuse(&mut self, text: &str) -> Ended {
        tracing::info!(client = %self.peer.literal(), user = self.auth.as_deref().unwrap_or("-"), reply = text, "refused");
        self.reply(text).await
    }

    /// Read more bytes into the buffer, within the command timeout and the session cap.
    pub(crate) async fn fill(&mut self) -> Result<usize, &'static str> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = self.reply("421 4.4.2 Session time limit reached").await;
            return Err("session time limit");
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(
            self.ctx.cfg.command_timeout.min(left),
            self.io.read(&mut chunk),
        )
        .await
        {
            Ok(Ok(n)) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Ok(Err(_)) => Err("read failed"),
            Err(_) => {
                let _ = self
                    .reply("421 4.4.2 Timeout, closing the connection")
                    .await;
                Err("timed out")
            }
        }
    }

    async fn read_line(&mut self) -> Result<Line, &'static str> {
        let mut discarding = false;
        loop {
            if let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                if discarding || line.len() > MAX_COMMAND_LINE {
                    return Ok(Line::TooLong);
                }
                if !line.ends_with(b"\r\n") {
                    return Ok(Line::BareLf);
                }
                return Ok(Line::Command(line));
            }
            if self.rbuf.len() > MAX_COMMAND_LINE {
                discarding = true;
                self.rbuf.clear();
            }
            if self.fill().await? == 0 {
                return Ok(Line::Eof);
            }
        }
    }

    /// The `Received:` header for this transaction, naming the spool id (`id <ID>`, RFC
    /// 5321 4.4; in parentheses it would be a comment).
    pub(crate) fn received(&self, tx_id: &str, rcpts: &[String]) -> String {
        let protocol = match (self.esmtp, self.tls, self.auth.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let for_part = match rcpts {
            [one] => format!("\n\tfor <{one}>"),
            _ => String::new(),
        };
        // A local submission (`sendmail -bs`) names the submitting user.
        let client = match self.peer.ip {
            Some(_) => self.peer.literal(),
            None => format!("local, from userid {}", submitter_uid()),
        };
        format!(
            "Received: from {} ({client})\n\tby {} (mailspool) with {protocol} id {tx_id}{for_part};\n\t{}\n",
            self.helo.as_deref().unwrap_or("unknown"),
            self.ctx.cfg.hostname,
            mailspool_spool::time::rfc5322_date(mailspool_spool::now())
        )
    }
}

/// The real uid of this process: the local submitter of a `sendmail -bs` session.
fn submitter_uid() -> u32 {
    // SAFETY: getuid cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

/// Keep a client-supplied name printable and short (it goes into headers and logs).
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect()
}

fn syntax_reply(e: &smtp_proto::Error) -> &'static str {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => "500 5.5.1 Command unrecognized",
        Error::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax",
        Error::InvalidRecipientAddress => "501 5.1.3 Bad recipient address syntax",
        Error::UnsupportedParameter { .. } => "555 5.5.4 Unsupported parameter",
        Error::InvalidParameter { .. } => "501 5.5.4 Invalid parameter",
        Error::ResponseTooLong => "500 5.5.2 Line too long",
        _ => "501 5.5.2 Syntax error",
    }
}
