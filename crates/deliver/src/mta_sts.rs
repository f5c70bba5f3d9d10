//! MTA-STS (RFC 8461): a domain publishes, over HTTPS, which MX hosts may receive its
//! mail and whether TLS with a valid certificate is required to reach them.
//!
//! The policy is found through `_mta-sts.<domain>` TXT (`v=STSv1; id=...`) and fetched
//! from `https://mta-sts.<domain>/.well-known/mta-sts.txt` (certificate checked, no
//! redirects, 64 KiB and 10 s at most). It is cached for its `max_age`, in memory and
//! in the spool (`mta-sts/<domain>`, so a restart does not forget it and an attacker
//! who blocks the fetch later cannot downgrade us), and refreshed in the background
//! when its TXT id changes.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;

use mailspool_spool::shared::SharedRecords;

use crate::dns::{LookupError, Resolve};

/// What a policy asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only listed MX hosts, only over TLS with a valid certificate; else defer.
    Enforce,
    /// Deliver as usual; report (log) what enforce would have refused.
    Testing,
    /// The domain withdrew its policy.
    None,
}

/// A fetched policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The TXT record's id it was fetched for.
    pub id: String,
    /// Its mode.
    pub mode: Mode,
    /// MX host patterns (`mx.example.com`, `*.example.com`).
    pub mx: Vec<String>,
    /// Seconds it may be cached.
    pub max_age: u64,
    /// Unix time it was fetched.
    pub fetched: u64,
}

/// Longest max_age honoured (RFC 8461 §3.2: up to 31557600).
const MAX_AGE_CAP: u64 = 31_557_600;
/// Largest policy body read.
const MAX_POLICY: usize = 64 * 1024;
/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Parse a policy file (RFC 8461 §3.2): `version: STSv1`, `mode`, `mx` (repeated),
/// `max_age`; CRLF or LF line ends.
pub fn parse_policy(text: &str, id: &str, now: u64) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut mx = Vec::new();
    let mut max_age = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_owned()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                })
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            "max_age" => {
                max_age = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("bad max_age {value:?}"))?
                        .min(MAX_AGE_CAP),
                )
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("not an STSv1 policy".into());
    }
    let mode = mode.ok_or("the policy has no mode")?;
    let max_age = max_age.ok_or("the policy has no max_age")?;
    if mode != Mode::None && mx.is_empty() {
        return Err("the policy lists no mx".into());
    }
    Ok(Policy {
        id: id.to_owned(),
        mode,
        mx,
        max_age,
        fetched: now,
    })
}

/// RFC 8461 §4.1: `*.example.com` matches one label in its place; names are compared
/// without case or the final dot.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => host == pattern,
    }
}

impl Policy {
    /// Whether `host` is one of the policy's MX hosts.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }

    /// Whether it may still be used at `now`.
    pub fn valid(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.max_age)
    }
}

/// The `id` of an `_mta-sts` TXT record set: exactly one `v=STSv1` record (RFC 8461
/// §3.1); anything else is no policy.
fn txt_id(records: &[String]) -> Option<String> {
    use mail_auth::common::parse::TxtRecordParser;
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    match sts.as_slice() {
        [one] => mail_auth::mta_sts::MtaSts::parse(one.as_bytes())
            .ok()
            .map(|r| r.id),
        _ => None,
    }
}

/// Policies, cached; one fetch per domain at a time.
pub struct MtaSts {
    cache: Mutex<HashMap<String, Policy>>,
    refreshing: Mutex<HashSet<String>>,
    dir: Option<PathBuf>,
    /// Where every host of a database spool keeps them (instead of `dir`): one fetch
    /// serves the cluster, and every host applies the same policy.
    records: Option<Arc<dyn SharedRecords>>,
    port: u16,
    tls: TlsConnector,
}

/// The kind of the shared records that hold policies.
const RECORD_KIND: &str = "mta-sts";

impl std::fmt::Debug for MtaSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MtaSts")
    }
}

/// Domains whose policy is kept in memory at most (the spool keeps the rest).
const MAX_CACHED: usize = 10_000;

impl MtaSts {
    /// Policies fetched with `tls` (verifying) on `port` (443), kept under `dir`, or
    /// in the store's shared `records` when it has them.
    pub fn new(
        dir: Option<PathBuf>,
        records: Option<Arc<dyn SharedRecords>>,
        port: u16,
        tls: TlsConnector,
    ) -> MtaSts {
        MtaSts {
            cache: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashSet::new()),
            dir: if records.is_some() { None } else { dir },
            records,
            port,
            tls,
        }
    }

    fn file(&self, domain: &str) -> Option<PathBuf> {
        // Domain names from DNS: letters, digits, '-', '.'; anything else is not kept.
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            || domain.starts_with('.')
        {
            return None;
        }
        self.dir.as_ref().map(|d| d.join(domain))
    }

    fn cached(&self, domain: &str) -> Option<Policy> {
        if let Some(p) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
        {
            return Some(p.clone());
        }
        let p: Policy = if let Some(records) = &self.records {
            let bytes = records.get(RECORD_KIND, domain).ok()??;
            if bytes.len() > MAX_POLICY {
                return None;
            }
            serde_json::from_slice(&bytes).ok()?
        } else {
            let path = self.file(domain)?;
            let file = mailspool_spool::storage::os::open_read(&path).ok()?;
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(file, MAX_POLICY as u64),
                &mut text,
            )
            .ok()?;
            serde_json::from_str(&text).ok()?
        };
        self.remember(domain, &p, false);
        Some(p)
    }

    fn remember(&self, domain: &str, p: &Policy, persist: bool) {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(domain.to_owned(), p.clone());
        }
        if !persist {
            return;
        }
        let json = serde_json::to_vec(p).expect("policy serializes");
        if let Some(records) = &self.records {
            // Kept as long as the policy may be cached, counted from its fetch.
            let keep = p
                .fetched
                .saturating_add(p.max_age)
                .saturating_sub(mailspool_spool::now());
            if let Err(e) = records.put(RECORD_KIND, domain, &json, Duration::from_secs(keep)) {
                tracing::warn!(domain = %mailspool_spool::escape(domain), error = %e, "cannot share an MTA-STS policy with the other hosts");
            }
        } else if let Some(path) = self.file(domain) {
            let _ = write_file(&path, &json);
        }
    }

    fn forget(&self, domain: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(domain);
        if let Some(records) = &self.records {
            let _ = records.remove(RECORD_KIND, domain);
        }
        if let Some(path) = self.file(domain) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The policy that applies to mail for `domain` now, if any. A valid cached one is
    /// used at once (and refreshed in the background); otherwise it is looked up and
    /// fetched before the delivery.
    pub async fn policy(self: &Arc<Self>, domain: &str, dns: &Arc<dyn Resolve>) -> Option<Policy> {
        let now = mailspool_spool::now();
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(p) = self.cached(&domain).filter(|p| p.valid(now)) {
            let first = self
                .refreshing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(domain.clone());
            // Checked again at most every few minutes: the TXT lookup is cached by the
            // resolver, and a changed id means a new policy.
            if first {
                let (me, dns, d) = (self.clone(), dns.clone(), domain.clone());
                tokio::spawn(async move {
                    me.refresh(&d, &dns).await;
                    tokio::time::sleep(Duration::from_secs(300)).await;
                    me.refreshing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&d);
                });
            }
            return Some(p).filter(|p| p.mode != Mode::None);
        }
        self.refresh(&domain, dns).await;
        self.cached(&domain)
            .filter(|p| p.valid(now) && p.mode != Mode::None)
    }

    /// Look the TXT record up and fetch the policy when its id is new.
    async fn refresh(&self, domain: &str, dns: &Arc<dyn Resolve>) {
        let now = mailspool_spool::now();
        let cached = self.cached(domain);
        let id = match dns.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => txt_id(&records),
            Err(LookupError::Temporary(_)) => return,
            Err(_) => None,
        };
        let Some(id) = id else {
            // No record: a cached policy still holds until it expires (§5.1).
            if cached.is_some_and(|p| !p.valid(now)) {
                self.forget(domain);
            }
            return;
        };
        // The same id is the same policy: fetched again only once half its max_age
        // has passed, to keep it from expiring while the domain still publishes it.
        if cached
            .as_ref()
            .is_some_and(|p| p.id == id && now < p.fetched.saturating_add(p.max_age / 2))
        {
            return;
        }
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch(domain, dns)).await {
            Ok(Ok(text)) => match parse_policy(&text, &id, now) {
                Ok(p) => {
                    tracing::info!(domain = %mailspool_spool::escape(domain), id = %mailspool_spool::escape(&id), mode = ?p.mode, mx = %mailspool_spool::escape(&p.mx.join(",")), max_age = p.max_age, "MTA-STS policy fetched");
                    self.remember(domain, &p, true);
                }
                Err(e) => {
                    tracing::warn!(domain = %mailspool_spool::escape(domain), error = %mailspool_spool::escape(&e), "MTA-STS policy unusable")
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(domain = %mailspool_spool::escape(domain), error = %mailspool_spool::escape(&e), "MTA-STS policy fetch failed")
            }
            Err(_) => {
                tracing::warn!(domain = %mailspool_spool::escape(domain), "MTA-STS policy fetch timed out")
            }
        }
    }

    /// GET the policy file over HTTPS (certificate checked against mta-sts.<domain>).
    async fn fetch(&self, domain: &str, dns: &Arc<dyn Resolve>) -> Result<String, String> {
        let host = format!("mta-sts.{domain}");
        let ips = dns.ips(&host).await.map_err(|e| format!("{host}: {e:?}"))?;
        let name = mailspool_smtp::TlsConnectors::server_name(&host)
            .ok_or_else(|| format!("{host}: not a host name"))?;
        let mut last = String::from("no address");
        for ip in ips {
            let tcp = match tokio::net::TcpStream::connect((ip, self.port)).await {
                Ok(t) => t,
                Err(e) => {
                    last = format!("{host} [{ip}]: {e}");
                    continue;
                }
            };
            let tls = self
                .tls
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("{host}: TLS: {e}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("{host}: {e}"))?;
            tokio::spawn(conn);
            let req = hyper::Request::get("/.well-known/mta-sts.txt")
                .header(hyper::header::HOST, &host)
                .header(hyper::header::USER_AGENT, "mailspool")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("{host}: {e}"))?;
            // No redirects (RFC 8461 §3.3): anything but 200 is no policy.
            if resp.status() != hyper::StatusCode::OK {
                return Err(format!("{host}: HTTP {}", resp.status()));
            }
            let text_plain = resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/plain"));
            if !text_plain {
                return Err(format!("{host}: the policy is not text/plain"));
            }
            let body = Limited::new(resp.into_body(), MAX_POLICY)
                .collect()
                .await
                .map_err(|e| format!("{host}: {e}"))?
                .to_bytes();
            return String::from_utf8(body.to_vec()).map_err(|_| format!("{host}: not UTF-8"));
        }
        Err(last)
    }
}

/// Write a small file whole: a temporary name, then a rename over the old one.
fn write_file(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        mailspool_spool::storage::os::ensure_dir(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", mailspool_spool::unique_token()));
    let mut f = mailspool_spool::storage::os::create_new(&tmp)?;
    // A failure at either step leaves nothing behind in the spool.
    f.write_all(data)
        .and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, path)
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// MTA-STS `testing` (RFC 8461 §5): the certificate is checked as `enforce` would
/// check it, and a failure is logged, not acted on: the delivery goes on as usual.
pub fn reporting_verifier(
    domain: &str,
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pkix = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Reporting {
                domain: domain.to_owned(),
                pkix,
                provider,
            }))
            .with_no_client_auth(),
    ))
}

#[derive(Debug)]
struct Reporting {
    domain: String,
    pkix: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Reporting {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Err(e) =
            self.pkix
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            let host = server_name.to_str();
            tracing::warn!(domain = %mailspool_spool::escape(&self.domain), host = %mailspool_spool::escape(&host), error = %mailspool_spool::escape(&e.to_string()), "MTA-STS (testing): the MX host's certificate does not verify; enforce would refuse it (4.7.5); delivering as usual");
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        mailspool_smtp::tls::HandshakeSignatures(&self.provider).tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        mailspool_smtp::tls::HandshakeSignatures(&self.provider).tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        mailspool_smtp::tls::HandshakeSignatures(&self.provider).schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
            "20260101",
            1000,
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert!(p.allows("MAIL.example.com."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("a.b.example.net"), "one label only");
        assert!(!p.allows("example.net"));
        assert!(!p.allows("evil-example.net"));
        assert!(p.valid(1000 + 604_799) && !p.valid(1000 + 604_800));
        for bad in [
            "mode: enforce\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a\n",
        ] {
            assert!(parse_policy(bad, "x", 0).is_err(), "{bad}");
        }
        let huge = parse_policy("version: STSv1\nmode: none\nmax_age: 99999999999\n", "x", 0);
        assert_eq!(huge.unwrap().max_age, MAX_AGE_CAP);
    }

    #[test]
    fn txt_records() {
        let one = |s: &str| vec![s.to_owned()];
        assert_eq!(
            txt_id(&one("v=STSv1; id=20260101T01")).as_deref(),
            Some("20260101T01")
        );
        assert_eq!(txt_id(&one("v=spf1 -all")), None);
        assert_eq!(
            txt_id(&["v=STSv1; id=a".into(), "v=STSv1; id=b".into()]),
            None,
            "two records: no policy"
        );
    }
}
