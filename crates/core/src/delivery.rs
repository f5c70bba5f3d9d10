//! Delivery from the library: the engine for this configuration, a delivery pass, and
//! `send_mail`'s Interactive and Background modes.

use std::collections::HashSet;
use std::sync::Arc;

use mailspool_deliver::{Engine, HickoryDns, NodeResult, PassOptions, Report, Resolve, Selection};

use crate::Mailspool;

impl Mailspool {
    /// A delivery engine for this spool and configuration (call inside a tokio runtime).
    pub fn engine(&self) -> Result<Arc<Engine>, String> {
        let dns = HickoryDns::for_config(&self.config.deliver)?;
        if self.config.deliver.dane {
            tracing::info!(source = %dns.dnssec_source(), "DANE on: DNSSEC status comes from");
        }
        let dns: Arc<dyn Resolve> = Arc::new(dns);
        // The spool this Mailspool has open: one back end (and one set of database
        // connections and claims) for intake and delivery.
        let spool = self.store().clone();
        let mut config = self.config.clone();
        config.load_secrets().map_err(|e| e.to_string())?;
        Engine::new(spool, config.deliver, dns)
    }

    /// One delivery pass; `all` ignores tier waits (`queue run --all`, `sendmail -q`).
    pub async fn run_queue(&self, all: bool) -> Result<Report, String> {
        let engine = self.engine()?;
        let opts = PassOptions {
            selection: if all { Selection::All } else { Selection::Due },
            ..Default::default()
        };
        let report = engine.run_pass(&opts).await.map_err(|e| e.to_string());
        engine.close_idle().await;
        report
    }

    /// Deliver one message now: the nodes its commit made, nothing else (its id is
    /// not what identifies it). `interactive`: a permanent failure is removed without a
    /// bounce (the caller is told); otherwise failures are handled as the daemon does.
    pub(crate) fn deliver_now(
        &self,
        nodes: &[std::path::PathBuf],
        interactive: bool,
    ) -> Result<Vec<NodeResult>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let engine = self.engine()?;
            let opts = PassOptions {
                selection: Selection::Nodes(nodes.iter().cloned().collect::<HashSet<_>>()),
                interactive,
                ..Default::default()
            };
            let report = engine.run_pass(&opts).await.map_err(|e| e.to_string());
            engine.close_idle().await;
            Ok(report?.results)
        })
    }
}
