//! The listener's test harness: start it on 127.0.0.1:0 over a temporary spool, and a
//! line-level SMTP client.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use mailspool_serve::{Listen, Mode, ServeConfig, Users};
use mailspool_spool::{NodeName, Parsed, Spool, SpoolConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Server {
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
}

pub fn listen(mode: Mode) -> Listen {
    Listen {
        address: "127.0.0.1:0".parse().unwrap(),
        mode,
        tls_cert: None,
        tls_key: None,
    }
}

pub async fn start_with(
    mut cfg: ServeConfig,
    spool: Option<Spool>,
    users: Users,
    dir: tempfile::TempDir,
) -> Server {
    if cfg.listen.is_empty() {
        cfg.listen.push(listen(Mode::Relay));
    }
    cfg.hostname = "mx.test".into();
    let spool = Arc::new(spool.unwrap_or_else(|| {
        Spool::create(dir.path().join("spool"), SpoolConfig::default()).unwrap()
    }));
    let bound = mailspool_serve::bind(cfg, spool, users).await.unwrap();
    let addr = bound.local_addrs()[0];
    tokio::spawn(bound.run(std::future::pending()));
    Server { addr, dir }
}

pub async fn start(cfg: ServeConfig) -> Server {
    start_with(cfg, None, Users::default(), tempfile::tempdir().unwrap()).await
}

impl Server {
    pub fn nodes(&self) -> Vec<(NodeName, String)> {
        let Ok(rd) = std::fs::read_dir(self.dir.path().join("spool/0")) else {
            return Vec::new();
        };
        let mut v: Vec<_> = rd
            .map(|e| e.unwrap())
            .filter_map(|e| match NodeName::parse(e.file_name().to_str().unwrap()) {
                Parsed::Node(n) => Some((n, std::fs::read_to_string(e.path()).unwrap())),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.to.cmp(&b.0.to));
        v
    }
    pub fn tmp_empty(&self) -> bool {
        std::fs::read_dir(self.dir.path().join("spool/tmp"))
            .unwrap()
            .count()
            == 0
    }
}

pub struct Client {
    pub io: BufReader<TcpStream>,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> (Client, String) {
        let mut c = Client {
            io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        };
        let greeting = c.reply().await;
        (c, greeting)
    }
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            if n == 0 {
                return if all.is_empty() { "EOF".into() } else { all };
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }
    pub async fn raw(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }
    pub async fn cmd(&mut self, line: &str) -> String {
        self.raw(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }
    /// EHLO, MAIL, RCPT for each, DATA; returns the reply to DATA.
    pub async fn start_data(&mut self, from: &str, to: &[&str]) -> String {
        assert!(self.cmd("EHLO client.test").await.starts_with("250"));
        assert!(
            self.cmd(&format!("MAIL FROM:<{from}>"))
                .await
                .starts_with("250")
        );
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await;
            assert!(r.starts_with("250"), "{t}: {r}");
        }
        self.cmd("DATA").await
    }
}

pub fn code(r: &str) -> &str {
    &r[..3.min(r.len())]
}
