//! DANE for SMTP (RFC 7672): when an MX host's TLSA records (`_25._tcp.<host>`)
//! validate under DNSSEC, TLS is required and the certificate must match them:
//! DANE-EE (usage 3) matches the server's own certificate or key, with no name or
//! expiry checks; DANE-TA (usage 2) names a trust anchor in the server's chain, from
//! which the chain and the MX host name are verified (RFC 7672 §3.1). PKIX usages
//! (0, 1) are not used for SMTP (§3.1.3): with only those, TLS is required but not
//! authenticated.

use std::sync::Arc;

use mailspool_smtp::tls::HandshakeSignatures;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring as ring_provider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// One TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// 0 the whole certificate, 1 its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// What to compare with.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether `cert` (DER) matches this record.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            0 => cert.to_vec(),
            1 => match spki(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        let digest = match self.matching {
            0 => selected,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected)
                .as_ref()
                .to_vec(),
            2 => ring::digest::digest(&ring::digest::SHA512, &selected)
                .as_ref()
                .to_vec(),
            _ => return false,
        };
        digest == self.data
    }

    /// The TLSA records among `records` (a TLSA lookup's answer).
    pub fn from_rdata(records: &[hickory_resolver::proto::rr::RData]) -> Vec<Tlsa> {
        records
            .iter()
            .filter_map(|r| match r {
                hickory_resolver::proto::rr::RData::TLSA(t) => Some(Tlsa {
                    usage: u8::from(t.cert_usage),
                    selector: u8::from(t.selector),
                    matching: u8::from(t.matching),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Usable for SMTP (RFC 7672 §3.1.3): DANE-TA and DANE-EE.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }
}

/// A certificate's SubjectPublicKeyInfo, DER with its SEQUENCE header (what
/// selector 1 hashes).
pub fn spki(cert: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(ee.subject_public_key_info().as_ref().to_vec())
}

/// A TLS configuration that checks the server against `records` (usable ones only).
pub fn verifier(records: Vec<Tlsa>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(ring_provider::default_provider());
    let records: Vec<Tlsa> = records.into_iter().filter(Tlsa::usable).collect();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DaneVerifier { records, provider }))
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
}

fn refused(why: &str) -> rustls::Error {
    rustls::Error::General(format!("DANE: {why}"))
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.records.is_empty() {
            // Only PKIX usages published: encrypted, not authenticated (§3.1.3).
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-EE: the server's own certificate or key; names and dates do not matter.
        if self
            .records
            .iter()
            .any(|r| r.usage == 3 && r.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-TA: a certificate of the chain is the trust anchor; the chain up to it
        // and the host name are checked as the web PKI would.
        for ta in intermediates {
            if !self.records.iter().any(|r| r.usage == 2 && r.matches(ta)) {
                continue;
            }
            let mut roots = RootCertStore::empty();
            if roots.add(ta.clone()).is_err() {
                continue;
            }
            let pkix =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| refused(&e.to_string()))?;
            return pkix.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        }
        Err(refused(
            "the certificate matches none of the host's TLSA records",
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        HandshakeSignatures(&self.provider).tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        HandshakeSignatures(&self.provider).tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        HandshakeSignatures(&self.provider).schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_the_certificate_or_its_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        let spki_der = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(spki(&der).unwrap(), spki_der, "the key as published");
        let sha256 = |d: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, d)
                .as_ref()
                .to_vec()
        };
        let rec = |selector, matching, data| Tlsa {
            usage: 3,
            selector,
            matching,
            data,
        };
        assert!(rec(1, 1, sha256(&spki_der)).matches(&der));
        assert!(rec(0, 1, sha256(&der)).matches(&der));
        assert!(rec(0, 0, der.clone()).matches(&der));
        assert!(!rec(1, 1, sha256(&der)).matches(&der), "selector matters");
        assert!(!rec(1, 1, vec![0; 32]).matches(&der));
        assert!(!rec(1, 9, sha256(&spki_der)).matches(&der));
        assert!(rec(1, 1, vec![]).usable());
        assert!(
            !Tlsa {
                usage: 1,
                ..rec(1, 1, vec![])
            }
            .usable()
        );
    }
}
