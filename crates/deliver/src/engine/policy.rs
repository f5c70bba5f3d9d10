//! TLS policies of the recipient domain for MX delivery: DANE (RFC 7672), else
//! MTA-STS (RFC 8461), else the configured `tls`. DANE fails closed: an answer
//! DNSSEC cannot vouch for (bogus, indeterminate, no answer) holds the mail; only a
//! proven-insecure (unsigned) domain or host falls back to the other policies.

use hickory_resolver::proto::rr::{RData, RecordType};
use mailspool_smtp::{CustomTls, TlsPolicy};
use mailspool_spool::escape;

use super::Engine;
use crate::config::DeliverConfig;
use crate::dane::Tlsa;
use crate::dnssec::Dnssec;
use crate::mta_sts::Mode;
use crate::route::{RouteError, Target};

impl Engine {
    /// Narrow and harden MX targets by the domain's published policy: DANE where its
    /// MX records are signed; else, under an `enforce` MTA-STS policy, only listed MX
    /// hosts, over TLS with a valid certificate (none listed: defer); under
    /// `testing`, log what enforce would refuse and deliver as usual.
    pub(super) async fn apply_tls_policies(
        &self,
        cfg: &DeliverConfig,
        domain: &str,
        targets: &mut Vec<Target>,
    ) -> Result<(), RouteError> {
        if !targets.first().is_some_and(|t| t.mx) {
            return Ok(());
        }
        // DANE first: where it applies, MTA-STS does not (RFC 8461 §2).
        if cfg.dane && self.apply_dane(domain, targets).await? {
            return Ok(());
        }
        if !cfg.mta_sts {
            return Ok(());
        }
        let Some(policy) = self.mta_sts.policy(domain, &self.dns).await else {
            return Ok(());
        };
        match policy.mode {
            Mode::Enforce => {
                let all: Vec<String> = targets.iter().map(|t| t.host.clone()).collect();
                targets.retain(|t| policy.allows(&t.host));
                if targets.is_empty() {
                    tracing::warn!(domain = %escape(domain), mx = %escape(&all.join(",")), policy = %escape(&policy.mx.join(",")), "MTA-STS: no MX host is in the domain's policy; mail waits");
                    return Err(RouteError::temporary(
                        "4.7.5",
                        format!(
                            "MTA-STS policy of {domain} (enforce) lists none of its MX hosts ({})",
                            all.join(", ")
                        ),
                    ));
                }
                for t in targets.iter_mut() {
                    t.tls = TlsPolicy::Required;
                    t.policy = "mta-sts";
                    t.why = format!("{domain}'s MTA-STS policy (enforce, id {})", policy.id);
                }
            }
            Mode::Testing => {
                for t in targets.iter().filter(|t| !policy.allows(&t.host)) {
                    tracing::warn!(domain = %escape(domain), host = %escape(&t.host), policy = %escape(&policy.mx.join(",")), "MTA-STS (testing): this MX host is not in the policy; enforce would refuse it");
                }
                // The certificate too: checked, a failure logged, the delivery as usual.
                match crate::mta_sts::reporting_verifier(domain, self.tls.roots.clone()) {
                    Ok(config) => {
                        for t in targets.iter_mut() {
                            t.verifier =
                                Some(CustomTls(tokio_rustls::TlsConnector::from(config.clone())));
                            t.why = format!(
                                "{domain}'s MTA-STS policy is in testing mode (id {}): checked and logged, not enforced",
                                policy.id
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(domain = %escape(domain), error = %escape(&e), "MTA-STS (testing): cannot check certificates")
                    }
                }
            }
            Mode::None => {}
        }
        Ok(())
    }

    /// DANE (RFC 7672 §2.2): with a signed MX RRset, each MX host with signed address
    /// records has its TLSA records looked up; hosts with usable ones get TLS checked
    /// against them, hosts whose answers DNSSEC cannot vouch for are not used (none
    /// left: defer). Returns whether DANE applies to any host.
    async fn apply_dane(
        &self,
        domain: &str,
        targets: &mut Vec<Target>,
    ) -> Result<bool, RouteError> {
        let mx = self.dns.dnssec(domain, RecordType::MX).await;
        match &mx.status {
            // An insecure MX host name could be anyone's (§2.2.1): MTA-STS or the
            // configured tls, and the attempt's log line says why.
            Dnssec::Insecure => {
                for t in targets.iter_mut() {
                    t.why = format!(
                        "{domain}'s MX records are not DNSSEC-signed, so DANE does not apply; {}",
                        t.why
                    );
                }
                return Ok(false);
            }
            Dnssec::Bogus(why) => {
                tracing::warn!(domain = %escape(domain), error = %escape(why), "DANE: the domain's MX records cannot be validated; mail waits");
                return Err(RouteError::temporary(
                    "4.4.3",
                    format!(
                        "DANE: the MX records of {domain} cannot be validated under DNSSEC: {why}"
                    ),
                ));
            }
            Dnssec::Secure => {}
        }
        // Only the hosts the validated answer names (an implicit MX: the domain itself,
        // when its lack of MX records is validated).
        let mut signed: Vec<String> = mx
            .records
            .iter()
            .filter_map(|r| match r {
                RData::MX(m) => Some(
                    m.exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                ),
                _ => None,
            })
            .collect();
        if signed.is_empty() {
            signed.push(domain.trim_end_matches('.').to_ascii_lowercase());
        }
        let unsigned: Vec<String> = targets
            .iter()
            .filter(|t| !signed.contains(&t.host.trim_end_matches('.').to_ascii_lowercase()))
            .map(|t| t.host.clone())
            .collect();
        if !unsigned.is_empty() {
            tracing::warn!(domain = %escape(domain), hosts = %escape(&unsigned.join(",")), "DANE: MX hosts not in the validated MX records; not using them");
            targets.retain(|t| !unsigned.contains(&t.host));
        }
        let mut applies = false;
        let mut failed = Vec::new();
        for t in targets.iter_mut() {
            match self.dane_for_host(domain, t).await {
                Ok(dane) => applies |= dane,
                Err(why) => {
                    tracing::warn!(domain = %escape(domain), host = %escape(&t.host), error = %escape(&why), "DANE: cannot tell whether this MX host must be authenticated; not using it");
                    failed.push((t.host.clone(), why));
                }
            }
        }
        targets.retain(|t| !failed.iter().any(|(h, _)| *h == t.host));
        if targets.is_empty() {
            let why: Vec<String> = failed.iter().map(|(h, w)| format!("{h}: {w}")).collect();
            return Err(RouteError::temporary(
                "4.4.3",
                format!(
                    "DANE: no MX host of {domain} can be used: {}",
                    if why.is_empty() {
                        "none is in the validated MX records".to_owned()
                    } else {
                        why.join("; ")
                    }
                ),
            ));
        }
        Ok(applies)
    }

    /// One MX host of a signed MX RRset: `Ok(true)` when its TLSA records are secure
    /// (TLS required and checked against them), `Ok(false)` when DANE does not apply
    /// to it (its addresses or its TLSA records are provably unsigned or absent), and
    /// `Err` when DNSSEC cannot say (the host must not be used).
    async fn dane_for_host(&self, domain: &str, t: &mut Target) -> Result<bool, String> {
        // §2.2.2: TLSA records count only for a host whose address records are signed.
        let mut addr = self.dns.dnssec(&t.host, RecordType::A).await;
        if addr.status == Dnssec::Secure && addr.records.is_empty() {
            addr = self.dns.dnssec(&t.host, RecordType::AAAA).await;
        }
        match addr.status {
            Dnssec::Bogus(why) => return Err(why),
            Dnssec::Insecure => {
                t.why = format!(
                    "{domain}'s MX records are signed but {}'s address records are not, so DANE does not apply; {}",
                    t.host, t.why
                );
                return Ok(false);
            }
            Dnssec::Secure => {}
        }
        let port = t.addrs.first().map_or(25, |a| a.port());
        let name = format!("_{port}._tcp.{}", t.host.trim_end_matches('.'));
        let tlsa = self.dns.dnssec(&name, RecordType::TLSA).await;
        let records = Tlsa::from_rdata(&tlsa.records);
        match tlsa.status {
            Dnssec::Bogus(why) => Err(why),
            Dnssec::Secure if !records.is_empty() => {
                let usable = records.iter().filter(|r| r.usable()).count();
                t.tls = TlsPolicy::Required;
                t.policy = "dane";
                t.why = if usable == 0 {
                    format!(
                        "{name} has signed TLSA records but none usable for SMTP: TLS required, not authenticated (RFC 7672 §3.1.3)"
                    )
                } else {
                    format!("{name} has {usable} signed TLSA record(s) the certificate must match")
                };
                t.verifier = Some(CustomTls(tokio_rustls::TlsConnector::from(
                    crate::dane::verifier(records),
                )));
                Ok(true)
            }
            status => {
                let what = if status == Dnssec::Secure {
                    "has no TLSA records"
                } else {
                    "has no signed TLSA records"
                };
                t.why = format!("{name} {what}, so DANE does not apply; {}", t.why);
                Ok(false)
            }
        }
    }
}
