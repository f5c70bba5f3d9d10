//! `mailspool daemon`.

use std::path::PathBuf;

use mailspool::{Config, Mailspool, sysexits};
use mailspool_deliver::daemon::{DaemonOptions, run as run_daemon};

use super::{CliResult, Failure};

pub fn run(
    config: Config,
    file: Option<PathBuf>,
    spool: Option<PathBuf>,
    _verbose: u8,
) -> CliResult {
    let ms = std::sync::Arc::new(Mailspool::open_waiting(config.clone())?);
    // Users' dropped messages (mailspool-drop) become queued mail: new nodes in tier 0,
    // which wake the delivery loop below.
    mailspool::pickup::spawn(ms.clone(), config.dequeue_timeout)
        .map_err(|e| Failure::new(sysexits::OSERR, format!("cannot start the pickup: {e}")))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(sysexits::SOFTWARE, e.to_string()))?;
    rt.block_on(async {
        let engine = ms.engine().map_err(|e| Failure::new(sysexits::CONFIG, e))?;
        if let Some(http) = config.http.clone() {
            let bound = mailspool::http::bind(ms.clone(), http.clone(), http.listen)
                .await
                .map_err(|e| Failure::new(sysexits::OSERR, e))?;
            tracing::info!(address = %bound.local_addr(), "HTTP API listening");
            // Ends with the runtime, after the delivery loop has stopped.
            tokio::spawn(bound.run(std::future::pending()));
        }
        let opts = DaemonOptions {
            tick: config.dequeue_timeout,
            grace: config.shutdown_grace,
        };
        let reload = move || match Config::load(file.as_deref(), spool.as_deref())
            .and_then(|mut c| c.load_secrets().map(|()| c))
        {
            Ok(c) => Some(c.deliver),
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded");
                None
            }
        };
        run_daemon(engine, opts, reload)
            .await
            .map_err(|e| Failure::new(sysexits::OSERR, e.to_string()))
    })
}
