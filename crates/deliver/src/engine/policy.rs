//! TLS policies of the recipient domain for MX delivery: MTA-STS (RFC 8461).

use mailspool_smtp::TlsPolicy;
use mailspool_spool::escape;

use super::Engine;
use crate::config::DeliverConfig;
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
        if !cfg.mta_sts || !targets.first().is_some_and(|t| t.mx) {
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
}
