//! An HTTP API server on 127.0.0.1:0 over a temporary spool, with a token of each
//! scope and an expired one, and a real HTTP client (ureq) to drive it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailspool::http::tokens::{Scope, Tokens};
use mailspool::{Config, Mailspool};
use serde_json::{Value, json};

pub struct Api {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub admin: String,
    pub read: String,
    pub inject: String,
    pub expired: String,
    pub dir: tempfile::TempDir,
    pub agent: ureq::Agent,
    pub _rt: tokio::runtime::Runtime,
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn start_with(tune: impl FnOnce(&mut mailspool::HttpConfig)) -> Api {
    start_on(None, None, tune)
}

/// An API server on `spool` (a database URL; else a spool directory of its own), with
/// the tokens of `twin` when given (another host of one cluster).
pub fn start_on(
    spool: Option<&str>,
    twin: Option<&Api>,
    tune: impl FnOnce(&mut mailspool::HttpConfig),
) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let tokens_file = dir.path().join("tokens");
    let (admin, read, inject, expired) = match twin {
        Some(t) => {
            std::fs::copy(t.dir.path().join("tokens"), &tokens_file).unwrap();
            (
                t.admin.clone(),
                t.read.clone(),
                t.inject.clone(),
                t.expired.clone(),
            )
        }
        None => {
            let mut tokens = Tokens::load(&tokens_file).unwrap();
            let admin = tokens.add("ops", Scope::Admin, None).unwrap();
            let read = tokens.add("grafana", Scope::Read, None).unwrap();
            let inject = tokens.add("app", Scope::Inject, None).unwrap();
            let expired = tokens.add("old", Scope::Admin, Some(1)).unwrap();
            tokens.save(None).unwrap();
            (admin, read, inject, expired)
        }
    };
    let mut http = mailspool::HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        serve_listen: None,
        tokens_file,
        tls: None,
        max_body_size: 256 * 1024,
        request_timeout: Duration::from_secs(5),
        max_connections: 64,
        max_connections_per_ip: 64,
        metrics_interval: Duration::from_secs(1),
    };
    tune(&mut http);
    let config = Config {
        spool_dir: spool.map_or_else(|| dir.path().join("spool"), PathBuf::from),
        max_message_size: 128 * 1024,
        hostname: "mx.example.test".into(),
        http: Some(http.clone()),
        ..Config::default()
    };
    let ms = Arc::new(Mailspool::open(config).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bound = rt
        .block_on(mailspool::http::bind(ms, http.clone(), http.listen))
        .unwrap();
    let addr = bound.local_addr();
    rt.spawn(bound.run(std::future::pending()));
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    );
    Api {
        base: format!("http://{addr}"),
        addr,
        admin,
        read,
        inject,
        expired,
        dir,
        agent,
        _rt: rt,
    }
}

pub fn start() -> Api {
    start_with(|_| {})
}

pub fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.expect("request");
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

impl Api {
    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        reply(req.call())
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Reply {
        let uri = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" => self.agent.post(uri),
            "PUT" => self.agent.put(uri),
            _ => panic!("{method}"),
        }
        .header("Content-Type", content_type);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        reply(req.send(body))
    }

    pub fn post_json(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(
            "POST",
            path,
            Some(token),
            "application/json",
            body.to_string().as_bytes(),
            &[],
        )
    }

    pub fn delete(&self, path: &str, token: &str) -> Reply {
        reply(
            self.agent
                .delete(format!("{}{path}", self.base))
                .header("Authorization", format!("Bearer {token}"))
                .call(),
        )
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Every node file in the tiers and hold/.
    pub fn nodes(&self) -> Vec<PathBuf> {
        super::node_files(&self.spool())
    }
}

pub fn message(to: &str) -> Value {
    json!({"from": "App <app@example.com>", "to": [to], "subject": "hello", "text": "hi"})
}
