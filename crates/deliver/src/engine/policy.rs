//! TLS policies of the recipient domain for MX delivery: DANE (RFC 7672), else
//! MTA-STS (RFC 8461).

use mailspool_smtp::TlsPolicy;
use mailspool_spool::escape;

use super::Engine;
use crate::config::DeliverConfig;
use crate::dane::TlsaAnswer;
use crate::mta_sts::Mode;
use crate::route::{RouteError, Target};

impl Engine {
    /// Narrow and harden MX targets by the domain's published policy: under an
    /// `enforce` MTA-STS policy only listed MX hosts, over TLS with a valid
    /// certificate (none listed: defer); under `testing`, log what enforce would
    /// refuse and deliver as usual.
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
                }
            }
            Mode::Testing => {
                for t in targets.iter().filter(|t| !policy.allows(&t.host)) {
                    tracing::warn!(domain = %escape(domain), host = %escape(&t.host), policy = %escape(&policy.mx.join(",")), "MTA-STS (testing): this MX host is not in the policy; enforce would refuse it");
                }
            }
            Mode::None => {}
        }
        Ok(())
    }

    /// Look up each MX host's TLSA records: hosts with validated ones get TLS checked
    /// against them; hosts whose records do not validate are not used (none left:
    /// defer). Returns whether DANE applies to any host.
    async fn apply_dane(
        &self,
        domain: &str,
        targets: &mut Vec<Target>,
    ) -> Result<bool, RouteError> {
        // An insecure MX host name could be anyone's: DANE needs a signed MX RRset
        // (RFC 7672 §2.2.1); without one, MTA-STS or opportunistic TLS.
        if !self.dns.mx_secure(domain).await {
            return Ok(false);
        }
        let mut applies = false;
        let mut bogus = Vec::new();
        for t in targets.iter_mut() {
            let port = t.addrs.first().map_or(25, |a| a.port());
            match self.dns.tlsa(&format!("_{port}._tcp.{}", t.host)).await {
                TlsaAnswer::Secure(records) => {
                    applies = true;
                    t.tls = TlsPolicy::Required;
                    t.policy = "dane";
                    t.verifier = Some(mailspool_smtp::CustomTls(tokio_rustls::TlsConnector::from(
                        crate::dane::verifier(records),
                    )));
                }
                TlsaAnswer::Insecure => {}
                TlsaAnswer::Bogus(why) => {
                    tracing::warn!(domain = %escape(domain), host = %escape(&t.host), error = %escape(&why), "DANE: the host's TLSA records do not validate; not using it");
                    bogus.push(t.host.clone());
                }
            }
        }
        if !bogus.is_empty() {
            targets.retain(|t| !bogus.contains(&t.host));
            if targets.is_empty() {
                return Err(RouteError::temporary(
                    "4.7.5",
                    format!(
                        "DANE: the TLSA records of {} do not validate under DNSSEC",
                        bogus.join(", ")
                    ),
                ));
            }
        }
        Ok(applies)
    }
}
