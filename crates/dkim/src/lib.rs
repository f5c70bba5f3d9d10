//! DKIM signing of outgoing mail (RFC 6376, relaxed/relaxed; RSA-SHA256, and
//! Ed25519-SHA256 per RFC 8463), with mail-auth doing the canonicalization and the
//! cryptography.
//!
//! A message is signed once, before its first delivery attempt, over what the receiver
//! reads (CRLF line ends, no dot stuffing); the signature is kept in the spool
//! (`dkim/<inode>-<id>`) so every recipient, retry and host sharing the spool sends the
//! same one. The key is chosen by the From domain (its own key, else a parent
//! domain's, else the fallback key); mail that already carries a signature for that
//! domain is sent as it is.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mail_auth::common::crypto::{Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The headers signed when `headers` is not configured. `From` is listed twice so a
/// second From added in transit breaks the signature (RFC 6376 §8.15); the others
/// are signed when present and, when absent, cannot be added without breaking it.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// A signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ed25519-SHA256 (RFC 8463): small keys, fast, not yet checked by every receiver.
    Ed25519,
    /// RSA-SHA256 (RFC 6376), 2048 bits or more: checked everywhere.
    Rsa,
}

impl Algorithm {
    /// Parse `ed25519`, `rsa`, `rsa2048`, `rsa-sha256`, `ed25519-sha256`.
    pub fn parse(text: &str) -> Result<Algorithm, String> {
        match text.to_ascii_lowercase().as_str() {
            "ed25519" | "ed25519-sha256" => Ok(Algorithm::Ed25519),
            "rsa" | "rsa2048" | "rsa-sha256" => Ok(Algorithm::Rsa),
            other => Err(format!(
                "algorithm {other:?}: use \"ed25519\" or \"rsa2048\""
            )),
        }
    }

    /// The `k=` tag of the key record.
    pub fn record_tag(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.record_tag())
    }
}

enum Secret {
    Ed25519(DkimSigner<RingEd25519, Done>),
    Rsa(DkimSigner<RingRsa, Done>),
}

/// Ed25519-SHA256 signing by ring (RFC 8463: the signature is over the SHA-256 hash of
/// the signed data); faster than ed25519-dalek's portable code.
struct RingEd25519(ring::signature::Ed25519KeyPair);

impl SigningKey for RingEd25519 {
    type Hasher = Sha256;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(1024);
        input.write(&mut data);
        let hash = ring::digest::digest(&ring::digest::SHA256, &data);
        Ok(self.0.sign(hash.as_ref()).as_ref().to_vec())
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        mail_auth::common::crypto::Algorithm::Ed25519Sha256
    }
}

/// RSA-SHA256 signing by ring: several times faster than the pure-Rust `rsa` crate
/// mail-auth's rust-crypto keys use (a 2048-bit signature is most of the cost of a
/// signed delivery).
struct RingRsa(ring::signature::RsaKeyPair);

impl SigningKey for RingRsa {
    type Hasher = Sha256;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(1024);
        input.write(&mut data);
        let mut sig = vec![0u8; self.0.public().modulus_len()];
        self.0
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                &data,
                &mut sig,
            )
            .map_err(|_| mail_auth::Error::Io("RSA signing failed".into()))?;
        Ok(sig)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        mail_auth::common::crypto::Algorithm::RsaSha256
    }
}

/// One `[[dkim]]` key, loaded.
pub struct DkimKey {
    /// Signing domain (`d=`), lower case.
    pub domain: String,
    /// Selector (`s=`).
    pub selector: String,
    /// Header names to sign, in order (a name twice oversigns it).
    pub headers: Vec<String>,
    /// Used for mail whose From domain has no key of its own.
    pub fallback: bool,
    /// Where the key was read from (for messages).
    pub key_file: PathBuf,
    public_key: Vec<u8>,
    secret: Secret,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm())
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// Longest key file read: an RSA-8192 key in PEM is under 7 KiB.
const MAX_KEY_FILE: u64 = 64 * 1024;

impl DkimKey {
    /// Read a PEM private key (PKCS#8, or PKCS#1 for RSA). The algorithm is the key's
    /// own; `expected`, when given, must agree. `headers`: the names to sign (default
    /// [`DEFAULT_HEADERS`]).
    pub fn load(
        domain: &str,
        selector: &str,
        key_file: &Path,
        expected: Option<Algorithm>,
        headers: Option<Vec<String>>,
    ) -> Result<DkimKey, String> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(format!("dkim domain {domain:?}: expected a domain name"));
        }
        if selector.is_empty()
            || !selector
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(format!(
                "dkim selector {selector:?}: letters, digits, '-', '.' and '_' only"
            ));
        }
        let pem = read_bounded(key_file)?;
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{}: not a PEM private key ({e})", key_file.display()))?;
        let headers =
            headers.unwrap_or_else(|| DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect());
        if headers.is_empty() || !headers.iter().any(|h| h.eq_ignore_ascii_case("From")) {
            return Err("dkim headers must include From (RFC 6376 §5.4)".into());
        }
        let bad_key = |e: String| format!("{}: {e}", key_file.display());
        let (secret, public_key) = match &der {
            PrivateKeyDer::Pkcs8(p)
                if ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(
                    p.secret_pkcs8_der(),
                )
                .is_ok() =>
            {
                let k = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(
                    p.secret_pkcs8_der(),
                )
                .map_err(|e| bad_key(e.to_string()))?;
                use ring::signature::KeyPair;
                let public = k.public_key().as_ref().to_vec();
                (
                    Secret::Ed25519(signer(RingEd25519(k), &domain, selector, &headers)),
                    public,
                )
            }
            PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Pkcs1(_) => {
                let ring_key = match &der {
                    PrivateKeyDer::Pkcs1(p) => {
                        ring::signature::RsaKeyPair::from_der(p.secret_pkcs1_der())
                    }
                    PrivateKeyDer::Pkcs8(p) => {
                        ring::signature::RsaKeyPair::from_pkcs8(p.secret_pkcs8_der())
                    }
                    _ => unreachable!("matched above"),
                }
                .map_err(|e| bad_key(format!("neither an Ed25519 nor an RSA key ({e})")))?;
                let public = rsa_spki(ring_key.public().as_ref()).unwrap_or_default();
                if public.len() < 256 {
                    return Err(bad_key(
                        "RSA keys shorter than 2048 bits are refused by receivers (RFC 8301)"
                            .into(),
                    ));
                }
                (
                    Secret::Rsa(signer(RingRsa(ring_key), &domain, selector, &headers)),
                    public,
                )
            }
            _ => return Err(bad_key("expected a PKCS#8 or RSA private key".into())),
        };
        let key = DkimKey {
            domain,
            selector: selector.to_owned(),
            headers,
            fallback: false,
            key_file: key_file.to_owned(),
            public_key,
            secret,
        };
        if let Some(want) = expected
            && want != key.algorithm()
        {
            return Err(format!(
                "{}: an {} key, but algorithm = \"{want}\"",
                key_file.display(),
                key.algorithm()
            ));
        }
        Ok(key)
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.secret {
            Secret::Ed25519(_) => Algorithm::Ed25519,
            Secret::Rsa(_) => Algorithm::Rsa,
        }
    }

    /// The public key as published in `p=`: the raw 32 bytes for Ed25519 (RFC 8463),
    /// SubjectPublicKeyInfo DER for RSA (what `openssl rsa -pubout` and OpenDKIM give).
    pub fn public_key(&self) -> Vec<u8> {
        self.public_key.clone()
    }

    /// The TXT record's text: `v=DKIM1; k=...; p=...`.
    pub fn record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().record_tag(),
            base64::engine::general_purpose::STANDARD.encode(self.public_key())
        )
    }

    /// The record's owner name: `selector._domainkey.domain`.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// Sign a message given in its wire form (CRLF line ends, unstuffed), fed in
    /// chunks by `feed`. Returns the `DKIM-Signature` field with its CRLF.
    pub fn sign(&self, feed: impl FnOnce(&mut dyn FnMut(&[u8]))) -> Result<Vec<u8>, String> {
        match &self.secret {
            Secret::Ed25519(s) => sign_with(s, feed),
            Secret::Rsa(s) => sign_with(s, feed),
        }
    }
}

fn signer<T: SigningKey>(
    key: T,
    domain: &str,
    selector: &str,
    headers: &[String],
) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(headers.iter().map(String::as_str))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

fn sign_with<T: SigningKey>(
    signer: &DkimSigner<T, Done>,
    feed: impl FnOnce(&mut dyn FnMut(&[u8])),
) -> Result<Vec<u8>, String>
where
    <<T as SigningKey>::Hasher as mail_auth::common::crypto::HashImpl>::Context:
        mail_auth::common::crypto::HashContext,
{
    let mut stream = signer.sign_streaming();
    feed(&mut |chunk| stream.write(chunk));
    let signature = stream
        .finish()
        .map_err(|e| format!("DKIM signing failed: {e}"))?;
    let mut field = Vec::with_capacity(800);
    signature.write_header(&mut field);
    if !field.ends_with(b"\r\n") {
        field.extend_from_slice(b"\r\n");
    }
    Ok(field)
}

/// An RSA public key (PKCS#1 DER, as mail-auth gives it) as SubjectPublicKeyInfo DER.
fn rsa_spki(pkcs1: &[u8]) -> Option<Vec<u8>> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    let key = rsa::RsaPublicKey::from_pkcs1_der(pkcs1).ok()?;
    Some(key.to_public_key_der().ok()?.as_bytes().to_vec())
}

/// The keys for mail from `from_domain`: the domain's own, else the nearest parent
/// domain's (mail from `news.example.org` signed as `example.org` still aligns under
/// DMARC's relaxed mode), else the fallback keys. Every key configured for that domain
/// signs, in the configuration's order: an RSA and an Ed25519 key side by side is how
/// RFC 8463 §4 says to sign (a verifier that knows only RSA ignores the other).
pub fn choose_keys<'a>(keys: &'a [std::sync::Arc<DkimKey>], from_domain: &str) -> Vec<&'a DkimKey> {
    let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
    let covers = |k: &DkimKey| {
        from == k.domain
            || from
                .strip_suffix(&k.domain)
                .is_some_and(|rest| rest.ends_with('.'))
    };
    let best = keys
        .iter()
        .filter(|k| covers(k))
        .map(|k| k.domain.len())
        .max();
    match best {
        Some(len) => keys
            .iter()
            .filter(|k| covers(k) && k.domain.len() == len)
            .map(|k| &**k)
            .collect(),
        None => keys.iter().filter(|k| k.fallback).map(|k| &**k).collect(),
    }
}

/// What signing needs to know of a message's header block (wire form).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeadFacts {
    /// Domain of the (first) From address, lower case.
    pub from_domain: Option<String>,
    /// `d=` of every DKIM-Signature already present, lower case.
    pub signed_by: Vec<String>,
}

/// Read the From domain and existing signatures from the start of a message.
pub fn head_facts(message: &[u8]) -> HeadFacts {
    // The intake's own header reader: folding, line ends and bounds as at submission.
    let Ok(head) = mailspool_message::header::read_head(&mut &message[..], message.len(), false)
    else {
        return HeadFacts::default();
    };
    // RFC 5322 allows one From field; verifiers (OpenDKIM) reject a message with two as
    // malformed, so such a message is not signed rather than signed to fail.
    let from_fields = head.headers.values("From").count();
    HeadFacts {
        from_domain: head
            .headers
            .from_address()
            .ok()
            .flatten()
            .filter(|_| from_fields == 1)
            .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())),
        signed_by: head
            .headers
            .values("DKIM-Signature")
            .filter_map(|v| {
                tags(&v)
                    .find(|(name, _)| name == "d")
                    .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            })
            .collect(),
    }
}

/// The `name=value` tags of a DKIM signature or key record, whitespace removed.
fn tags(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.split(';').filter_map(|tag| {
        let tag: String = tag.chars().filter(|c| !c.is_whitespace()).collect();
        let (name, value) = tag.split_once('=')?;
        Some((name.to_owned(), value.to_owned()))
    })
}

/// Read a small file (a key) without following a symlink or blocking on a FIFO.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut data = Vec::new();
    f.take(MAX_KEY_FILE)
        .read_to_end(&mut data)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(data)
}

fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

/// A new key pair for `mailspool dkim keygen`: the private key as PEM (PKCS#8 for
/// Ed25519, PKCS#1 for RSA).
pub fn generate(algorithm: Algorithm) -> Result<String, String> {
    use mail_auth::dkim::generate::DkimKeyPair;
    let (pair, label) = match algorithm {
        Algorithm::Ed25519 => (DkimKeyPair::generate_ed25519(), "PRIVATE KEY"),
        Algorithm::Rsa => (DkimKeyPair::generate_rsa(2048), "RSA PRIVATE KEY"),
    };
    let pair = pair.map_err(|e| format!("key generation failed: {e}"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pair.private_key());
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    Ok(pem)
}

/// Whether a published record (`v=DKIM1; k=...; p=...`, TXT strings joined) holds
/// this key. RSA keys compare as keys, whether published as SPKI or bare PKCS#1.
pub fn record_matches(key: &DkimKey, record: &str) -> Result<(), String> {
    let mut p = None;
    let mut k = "rsa".to_owned();
    for (name, value) in tags(record) {
        match name.as_str() {
            "p" => p = Some(value),
            "k" => k = value.to_ascii_lowercase(),
            _ => {}
        }
    }
    let p = p.ok_or("the record has no p= tag")?;
    if p.is_empty() {
        return Err("the record's p= is empty: the key was revoked".into());
    }
    if k != key.algorithm().record_tag() {
        return Err(format!(
            "the record says k={k}, the key is {}",
            key.algorithm()
        ));
    }
    let published = base64::engine::general_purpose::STANDARD
        .decode(p.as_bytes())
        .map_err(|_| "the record's p= is not base64")?;
    let ours = key.public_key();
    let same = match key.algorithm() {
        Algorithm::Ed25519 => published == ours,
        Algorithm::Rsa => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::pkcs8::DecodePublicKey;
            let parse = |der: &[u8]| {
                rsa::RsaPublicKey::from_public_key_der(der)
                    .or_else(|_| rsa::RsaPublicKey::from_pkcs1_der(der))
                    .ok()
            };
            parse(&published).is_some() && parse(&published) == parse(&ours)
        }
    };
    if same {
        Ok(())
    } else {
        Err("the published key is another key than the key file's".into())
    }
}

#[cfg(test)]
mod head_tests {
    use super::head_facts;

    #[test]
    fn a_message_with_two_from_fields_names_no_signing_domain() {
        let one = head_facts(b"From: a@example.org\nSubject: x\n\nbody\n");
        assert_eq!(one.from_domain.as_deref(), Some("example.org"));
        let two = head_facts(b"From: a@example.org\nFrom: b@evil.test\nSubject: x\n\nbody\n");
        assert_eq!(two.from_domain, None, "not signed: verifiers reject it");
    }
}
