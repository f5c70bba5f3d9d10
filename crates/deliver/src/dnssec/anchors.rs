//! Validation here: the anchors of `dnssec_trust_anchors` and a hickory resolver that
//! validates from them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS};
use hickory_resolver::proto::dnssec::{Algorithm, DigestType, Proof, TrustAnchors};
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::{Dnssec, Proven, StubResolver};

/// The trust anchors of `dnssec_trust_anchors`: DNSKEY lines are anchors as they
/// stand; DS lines name the key of their zone, fetched when first needed.
#[derive(Debug, Clone, Default)]
pub struct AnchorFile {
    /// DNSKEY lines, for hickory's parser.
    dnskeys: String,
    /// DS records by owner.
    ds: Vec<(Name, DS)>,
    /// Every owner: names under none of them are insecure.
    owners: Vec<Name>,
}

impl AnchorFile {
    /// Read `path`: zone-file lines `owner [ttl] [IN] DNSKEY|DS ...`; `;` comments.
    pub fn load(path: &Path) -> Result<AnchorFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        AnchorFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse the file's text.
    pub fn parse(text: &str) -> Result<AnchorFile, String> {
        let mut out = AnchorFile::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split(';').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = |t: &str| words.iter().position(|w| w.eq_ignore_ascii_case(t));
            let owner = Name::from_ascii(words[0])
                .map_err(|e| format!("line {}: owner {:?}: {e}", n + 1, words[0]))?;
            let mut owner = owner;
            owner.set_fqdn(true);
            if let Some(i) = at("DNSKEY") {
                // dnssec-keygen splits the key's base64 into words: one word here.
                let f = &words[i + 1..];
                if f.len() < 4 {
                    return Err(format!(
                        "line {}: DNSKEY needs flags, protocol, algorithm, key",
                        n + 1
                    ));
                }
                out.dnskeys.push_str(&format!(
                    "{} DNSKEY {} {} {} {}\n",
                    words[..i].join(" "),
                    f[0],
                    f[1],
                    f[2],
                    f[3..].concat()
                ));
            } else if let Some(i) = at("DS") {
                let f = &words[i + 1..];
                if f.len() < 4 {
                    return Err(format!(
                        "line {}: DS needs tag, algorithm, digest type, digest",
                        n + 1
                    ));
                }
                let bad = |what: &str| format!("line {}: bad DS {what}", n + 1);
                let tag: u16 = f[0].parse().map_err(|_| bad("key tag"))?;
                let alg: u8 = f[1].parse().map_err(|_| bad("algorithm"))?;
                let kind: u8 = f[2].parse().map_err(|_| bad("digest type"))?;
                let digest = hex(&f[3..].concat()).ok_or_else(|| bad("digest"))?;
                let kind = DigestType::from(kind);
                if !kind.is_supported() {
                    return Err(bad("digest type"));
                }
                out.ds.push((
                    owner.clone(),
                    DS::new(tag, Algorithm::from_u8(alg), kind, digest),
                ));
            } else {
                return Err(format!("line {}: expected a DNSKEY or DS record", n + 1));
            }
            if !out.owners.contains(&owner) {
                out.owners.push(owner);
            }
        }
        if out.owners.is_empty() {
            return Err("no trust anchor in the file".into());
        }
        // Fail now, not at the first delivery, on a key hickory cannot read.
        if !out.dnskeys.is_empty() {
            out.dnskeys
                .parse::<TrustAnchors>()
                .map_err(|e| format!("DNSKEY: {e}"))?;
        }
        Ok(out)
    }

    /// The zone the first anchor is for (a name that must validate).
    pub fn first_owner(&self) -> Option<&Name> {
        self.owners.first()
    }

    /// Whether an anchor covers `name`.
    pub fn covers(&self, name: &Name) -> bool {
        self.owners.iter().any(|o| o.zone_of(name))
    }

    /// The anchors as hickory takes them: the DNSKEY lines, and each DS line's key
    /// (asked of `stub`, kept only if it matches the DS).
    async fn resolve(&self, stub: &StubResolver) -> Result<TrustAnchors, String> {
        let mut anchors = if self.dnskeys.is_empty() {
            TrustAnchors::empty()
        } else {
            self.dnskeys
                .parse::<TrustAnchors>()
                .map_err(|e| e.to_string())?
        };
        for (owner, ds) in &self.ds {
            let answer = stub
                .query(&owner.to_ascii(), RecordType::DNSKEY)
                .await
                .map_err(|e| format!("the DNSKEY of trust anchor {owner}: {e}"))?;
            let mut found = false;
            for r in &answer.records {
                if let RData::DNSSEC(DNSSECRData::DNSKEY(key)) = r
                    && ds.covers(owner, key).unwrap_or(false)
                {
                    let key: &DNSKEY = key;
                    anchors.insert_with_name(key.public_key(), owner.clone().into());
                    found = true;
                }
            }
            if !found {
                return Err(format!(
                    "no DNSKEY of {owner} matches its DS (key tag {}) in the trust anchor file",
                    ds.key_tag()
                ));
            }
        }
        Ok(anchors)
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Validation here, from an anchor file; the validating resolver is made at first use
/// (a DS anchor's key is fetched then) and made again after a failure.
pub struct LocalValidator {
    anchors: AnchorFile,
    stub: StubResolver,
    server: Option<SocketAddr>,
    resolver: tokio::sync::Mutex<Option<Arc<TokioResolver>>>,
}

impl LocalValidator {
    /// Validate from `anchors`, asking `server` (else the system's name servers).
    pub fn new(anchors: AnchorFile, server: Option<SocketAddr>) -> Result<LocalValidator, String> {
        Ok(LocalValidator {
            stub: StubResolver::new(server)?,
            anchors,
            server,
            resolver: tokio::sync::Mutex::new(None),
        })
    }

    async fn resolver(&self) -> Result<Arc<TokioResolver>, String> {
        let mut slot = self.resolver.lock().await;
        if let Some(r) = &*slot {
            return Ok(r.clone());
        }
        let anchors = Arc::new(self.anchors.resolve(&self.stub).await?);
        let r = Arc::new(crate::dns::build_resolver(self.server, Some(anchors))?);
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Validate `name`'s `rtype` records.
    pub async fn proven(&self, name: &str, rtype: RecordType) -> Proven {
        let Ok(mut fq) = Name::from_ascii(name) else {
            return Proven::bogus(format!("{name:?} is not a domain name"));
        };
        fq.set_fqdn(true);
        if !self.anchors.covers(&fq) {
            return Proven::insecure();
        }
        let resolver = match self.resolver().await {
            Ok(r) => r,
            Err(e) => return Proven::bogus(format!("trust anchors: {e}")),
        };
        match resolver.lookup(fq, rtype).await {
            Ok(lookup) => {
                let mut proofs = Vec::new();
                let mut records = Vec::new();
                for r in lookup.answers() {
                    if r.record_type() == rtype {
                        proofs.push(r.proof);
                        records.push(r.data.clone());
                    }
                }
                let status = if proofs.is_empty() || proofs.iter().all(|p| *p == Proof::Secure) {
                    Dnssec::Secure
                } else if proofs.iter().all(|p| *p == Proof::Insecure) {
                    Dnssec::Insecure
                } else if proofs.contains(&Proof::Bogus) {
                    Dnssec::Bogus(format!(
                        "the {rtype} records of {name} do not validate (bogus)"
                    ))
                } else {
                    Dnssec::Bogus(format!(
                        "the {rtype} records of {name} cannot be validated (indeterminate)"
                    ))
                };
                Proven { status, records }
            }
            // No such records (a denial hickory checked): nothing for DANE to use.
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Proven::insecure(),
            Err(e) => Proven::bogus(format!("{name} {rtype}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_files_take_dnskey_and_ds_lines() {
        let f = AnchorFile::parse(
            "; a private root\n\
             .\t3600 IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n\
             example. IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n",
        )
        .unwrap();
        assert_eq!(f.ds.len(), 1);
        assert_eq!(f.ds[0].1.key_tag(), 20326);
        assert!(
            f.covers(&Name::from_ascii("mx.example.org.").unwrap()),
            "the root covers all"
        );
        let only = AnchorFile::parse("example. IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n").unwrap();
        assert!(only.covers(&Name::from_ascii("mx.example.").unwrap()));
        assert!(!only.covers(&Name::from_ascii("mx.example.org.").unwrap()));
        assert!(AnchorFile::parse("; nothing\n").is_err());
        assert!(AnchorFile::parse("example. IN A 127.0.0.1\n").is_err());
        assert!(AnchorFile::parse(". IN DS 1 8 2 XYZ\n").is_err());
    }
}
