//! Opening a session: connect (to one address, the first of several that answers, or
//! over a socket made elsewhere), the greeting, EHLO with its HELO fallback, STARTTLS or
//! implicit TLS, AUTH.

use super::*;

impl Session {
    /// Connect to `peer` (named `host`), read the greeting, say EHLO, do TLS and AUTH as
    /// the settings say.
    pub async fn connect(
        peer: SocketAddr,
        host: &str,
        settings: &ClientSettings,
        tls: &TlsConnectors,
    ) -> Result<Session, SmtpError> {
        let tcp = connect_tcp(peer, settings).await?;
        Session::start(tcp, peer, host, settings, tls).await
    }

    /// Connect to the first of `peers` that answers, RFC 8305 style (happy eyeballs):
    /// each attempt starts when the one before failed or after `stagger`, and the
    /// first connection made wins; then as [`Session::connect`].
    pub async fn connect_any(
        peers: &[SocketAddr],
        host: &str,
        settings: &ClientSettings,
        tls: &TlsConnectors,
        stagger: Duration,
    ) -> Result<Session, SmtpError> {
        let (tcp, peer) = connect_first(peers, settings, stagger).await?;
        Session::start(tcp, peer, host, settings, tls).await
    }

    /// [`Session::connect`] on a TCP connection made elsewhere (from another network
    /// namespace, say).
    pub async fn connect_on(
        tcp: TcpStream,
        host: &str,
        settings: &ClientSettings,
        tls: &TlsConnectors,
    ) -> Result<Session, SmtpError> {
        let peer = tcp.peer_addr().map_err(|source| SmtpError::Io {
            phase: Phase::Connect,
            source,
        })?;
        Session::start(tcp, peer, host, settings, tls).await
    }

    async fn start(
        tcp: TcpStream,
        peer: SocketAddr,
        host: &str,
        settings: &ClientSettings,
        tls: &TlsConnectors,
    ) -> Result<Session, SmtpError> {
        let t = &settings.timeouts;
        let _ = tcp.set_nodelay(true);
        let mut s = Session {
            stream: Stream::Plain(tcp),
            rbuf: Vec::with_capacity(4096),
            caps: EhloResponse::default(),
            esmtp: false,
            settings: settings.clone(),
            deadline: Instant::now() + t.max_session,
            host: host.to_owned(),
            peer,
            tls: false,
            transactions: 0,
            reset_pending: false,
        };
        if matches!(
            settings.tls,
            TlsPolicy::Implicit | TlsPolicy::ImplicitUnverified
        ) {
            let verify = settings.tls == TlsPolicy::Implicit;
            s.handshake(tls, verify).await?;
        }
        let greeting = s.read_reply(Phase::Greeting, t.greeting).await?;
        if greeting.code != 220 {
            return Err(SmtpError::Rejected {
                phase: Phase::Greeting,
                reply: greeting,
            });
        }
        s.hello().await?;
        let offers_tls = s.esmtp && s.caps.capabilities & EXT_START_TLS != 0;
        match settings.tls {
            TlsPolicy::Required | TlsPolicy::Opportunistic if offers_tls && !s.tls => {
                s.command(b"STARTTLS\r\n", Phase::StartTls).await?;
                let r = s
                    .read_reply(Phase::StartTls, s.settings.timeouts.command)
                    .await?;
                if r.code != 220 {
                    if settings.tls == TlsPolicy::Required {
                        return Err(SmtpError::Rejected {
                            phase: Phase::StartTls,
                            reply: r,
                        });
                    }
                } else {
                    // Anything the server pipelined before the handshake is discarded.
                    s.rbuf.clear();
                    s.handshake(tls, settings.tls == TlsPolicy::Required)
                        .await?;
                    s.hello().await?;
                }
            }
            TlsPolicy::Required if !s.tls => return Err(SmtpError::TlsUnavailable),
            _ => {}
        }
        if let Some(creds) = settings.auth.clone() {
            s.authenticate(&creds).await?;
        }
        Ok(s)
    }

    async fn handshake(&mut self, tls: &TlsConnectors, verify: bool) -> Result<(), SmtpError> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(SmtpError::Tls("already encrypted".into()));
        };
        let name = TlsConnectors::server_name(&self.host)
            .ok_or_else(|| SmtpError::Tls(format!("invalid server name {:?}", self.host)))?;
        // A custom verifier decides whenever there is one: DANE's (required TLS) or
        // MTA-STS testing's, which reports and accepts (opportunistic TLS).
        let connector = match (&self.settings.verifier, verify) {
            (Some(custom), _) => &custom.0,
            (None, true) => &tls.verified,
            (_, false) => &tls.unverified,
        };
        let stream = self
            .timed(
                Phase::StartTls,
                self.settings.timeouts.command,
                connector.connect(name, tcp),
            )
            .await?
            .map_err(|e| SmtpError::Tls(e.to_string()))?;
        self.stream = Stream::Tls(Box::new(stream));
        self.tls = true;
        Ok(())
    }

    async fn hello(&mut self) -> Result<(), SmtpError> {
        let cmd = format!("EHLO {}\r\n", self.settings.helo_name);
        self.command(cmd.as_bytes(), Phase::Ehlo).await?;
        let raw = self
            .read_raw(Phase::Ehlo, self.settings.timeouts.command)
            .await?;
        if raw.starts_with(b"250") {
            self.caps = EhloResponse::parse(&mut raw.iter()).unwrap_or_default();
            self.esmtp = true;
            return Ok(());
        }
        let reply = parse(&raw, Phase::Ehlo)?;
        if reply.code == 421 {
            return Err(SmtpError::Rejected {
                phase: Phase::Ehlo,
                reply,
            });
        }
        // RFC 5321 §3.2: fall back to HELO.
        let cmd = format!("HELO {}\r\n", self.settings.helo_name);
        self.command(cmd.as_bytes(), Phase::Ehlo).await?;
        let reply = self
            .read_reply(Phase::Ehlo, self.settings.timeouts.command)
            .await?;
        if !reply.is_positive() {
            return Err(SmtpError::Rejected {
                phase: Phase::Ehlo,
                reply,
            });
        }
        self.caps = EhloResponse::default();
        self.esmtp = false;
        Ok(())
    }

    async fn authenticate(&mut self, creds: &Credentials) -> Result<(), SmtpError> {
        if !self.tls && self.settings.tls != TlsPolicy::None {
            return Err(SmtpError::Tls(
                "refusing to send a password without TLS".into(),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mechs = self.caps.auth_mechanisms;
        if self.caps.capabilities & EXT_AUTH == 0 {
            return Err(SmtpError::Protocol {
                phase: Phase::Auth,
                what: "credentials are configured but the server does not offer AUTH".into(),
            });
        }
        let t = self.settings.timeouts.command;
        let reply = if mechs & AUTH_PLAIN != 0 {
            let token = b64.encode(format!("\0{}\0{}", creds.username, creds.password));
            self.command(format!("AUTH PLAIN {token}\r\n").as_bytes(), Phase::Auth)
                .await?;
            self.read_reply(Phase::Auth, t).await?
        } else if mechs & AUTH_LOGIN != 0 {
            self.command(b"AUTH LOGIN\r\n", Phase::Auth).await?;
            let mut r = self.read_reply(Phase::Auth, t).await?;
            for part in [&creds.username, &creds.password] {
                if r.code != 334 {
                    break;
                }
                self.command(format!("{}\r\n", b64.encode(part)).as_bytes(), Phase::Auth)
                    .await?;
                r = self.read_reply(Phase::Auth, t).await?;
            }
            r
        } else {
            return Err(SmtpError::Protocol {
                phase: Phase::Auth,
                what: "the server offers neither AUTH PLAIN nor AUTH LOGIN".into(),
            });
        };
        if reply.code != 235 {
            return Err(SmtpError::Rejected {
                phase: Phase::Auth,
                reply,
            });
        }
        Ok(())
    }
}
