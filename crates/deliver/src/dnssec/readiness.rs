//! What `doctor` says of DNS and DANE: the configured resolver answers, and DNSSEC
//! works the way the configuration asks.

use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};

use super::{AnchorFile, Dnssec, LocalValidator, StubResolver};

/// One finding of [`readiness`]: fine, or a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Works as it should.
    Ok(String),
    /// Worth knowing; nothing to fix.
    Warn(String),
    /// The configuration asks for something that cannot work: what, and how to fix it.
    Fix(String, String),
}

/// Whether DNS answers through the configured resolver, and whether DANE can work:
/// the resolver sets AD on a signed name (the root, or the first trust anchor's
/// zone), or the anchors validate it here.
pub async fn readiness(cfg: &crate::DeliverConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let stub = match StubResolver::new(cfg.resolver) {
        Ok(s) => s,
        Err(e) => {
            return vec![Finding::Warn(format!(
                "DNS: {e}: MX delivery will wait and retry"
            ))];
        }
    };
    let servers = stub
        .servers()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let anchors = match &cfg.dnssec_trust_anchors {
        Some(path) => match AnchorFile::load(path) {
            Ok(a) => Some(a),
            Err(e) => {
                out.push(Finding::Fix(
                    format!("dnssec_trust_anchors: {e}"),
                    "give a file of DNSKEY or DS lines (zone-file syntax)".into(),
                ));
                return out;
            }
        },
        None => None,
    };
    // A name that must be signed: the root, or the zone the first anchor is for.
    let probe = anchors
        .as_ref()
        .and_then(AnchorFile::first_owner)
        .map_or_else(|| ".".to_owned(), Name::to_ascii);
    let answer = match stub.query(&probe, RecordType::SOA).await {
        Ok(a) if matches!(a.rcode, ResponseCode::NoError) => a,
        Ok(a) => {
            out.push(Finding::Warn(format!(
                "DNS: {servers} answered {} for {probe} SOA: MX delivery will wait and retry",
                a.rcode
            )));
            return out;
        }
        Err(e) => {
            out.push(Finding::Warn(format!(
                "DNS does not answer ({e}): MX delivery will wait and retry"
            )));
            return out;
        }
    };
    out.push(Finding::Ok(format!("DNS answers ({servers})")));
    if !cfg.dane {
        out.push(Finding::Ok(
            "DANE is off (dane = false): MX hosts get MTA-STS or the configured tls".into(),
        ));
        return out;
    }
    if let Some(anchors) = anchors {
        let here = match LocalValidator::new(anchors, cfg.resolver) {
            Ok(v) => v.proven(&probe, RecordType::SOA).await.status,
            Err(e) => Dnssec::Bogus(e),
        };
        out.push(match here {
            Dnssec::Secure => Finding::Ok(format!(
                "DANE ready: {probe} validates here from dnssec_trust_anchors"
            )),
            other => Finding::Fix(
                format!(
                    "DANE: {probe} does not validate from dnssec_trust_anchors ({other:?}): mail to DNSSEC-signed domains will wait"
                ),
                "check the anchors against the zone's current keys (dig DNSKEY) and that the resolver passes DNSSEC records".into(),
            ),
        });
        return out;
    }
    out.push(if answer.ad {
        Finding::Ok(format!(
            "DANE ready: the resolver {servers} validates DNSSEC (AD on {probe})"
        ))
    } else {
        let what = if answer.signed {
            "passes DNSSEC records but does not validate them"
        } else {
            "does not validate DNSSEC (and strips its records)"
        };
        Finding::Fix(
            format!("DANE: the resolver {servers} {what}: no AD on {probe}, so DANE never applies"),
            "run a validating resolver on this host (apt install unbound) and set resolver = \"127.0.0.1:53\", or set dnssec_trust_anchors".into(),
        )
    });
    if stub.servers().iter().any(|s| !s.ip().is_loopback()) {
        out.push(Finding::Warn(format!(
            "DANE trusts the AD bit of {servers}, which is not on loopback: anyone on the path could set it; run the validating resolver on this host"
        )));
    }
    out
}
