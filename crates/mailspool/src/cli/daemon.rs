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
    mailspool_spool::limit_malloc_arenas();
    let ms = std::sync::Arc::new(Mailspool::open_waiting(config.clone())?);
    if let Some(files) = ms.spool().as_files() {
        // A spool shared over a file system that loses hard links' identity (sshfs)
        // would split and repeat messages: refuse before delivering anything.
        mailspool_spool::durability::check_hard_links(files.dir())
            .map_err(|e| Failure::new(sysexits::CONFIG, e))?;
    }
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
        let http = std::sync::Arc::new(tokio::sync::Mutex::new(HttpApi::default()));
        if let Some(h) = config.http.clone() {
            // At start a port that cannot be bound is an error (71); after a reload it
            // is logged and the daemon goes on delivering.
            let running = HttpApi::start(ms.clone(), h)
                .await
                .map_err(|e| Failure::new(sysexits::OSERR, e))?;
            *http.lock().await = running;
        }
        let opts = DaemonOptions {
            tick: config.dequeue_timeout,
            grace: config.shutdown_grace,
        };
        let reload = move || match Config::load(file.as_deref(), spool.as_deref())
            .and_then(|mut c| c.load_secrets().map(|()| c))
        {
            Ok(c) => {
                // `[http]` added, removed or changed: the API follows, on its own task.
                let (http, ms) = (http.clone(), ms.clone());
                tokio::spawn(async move { http.lock().await.follow(ms, c.http).await });
                Some(c.deliver)
            }
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

/// The daemon's HTTP API as configured now: off, or serving with these settings.
#[derive(Default)]
struct HttpApi {
    running: Option<(
        mailspool::HttpConfig,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl HttpApi {
    /// Bind and serve.
    async fn start(
        ms: std::sync::Arc<Mailspool>,
        http: mailspool::HttpConfig,
    ) -> Result<HttpApi, String> {
        let bound = mailspool::http::bind(ms, http.clone(), http.listen).await?;
        tracing::info!(address = %bound.local_addr(), "HTTP API listening");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async {
            let _ = stopped.await;
        }));
        Ok(HttpApi {
            running: Some((http, stop, task)),
        })
    }

    /// After a reload: start, stop or restart the API to match `wanted`.
    async fn follow(
        &mut self,
        ms: std::sync::Arc<Mailspool>,
        wanted: Option<mailspool::HttpConfig>,
    ) {
        if self.running.as_ref().map(|r| &r.0) == wanted.as_ref() {
            return;
        }
        if let Some((old, stop, task)) = self.running.take() {
            let _ = stop.send(());
            // Requests under way finish; the port is free once it returns.
            let _ = task.await;
            tracing::info!(address = %old.listen, "HTTP API stopped");
        }
        if let Some(http) = wanted {
            match HttpApi::start(ms, http).await {
                Ok(running) => *self = running,
                Err(e) => tracing::error!(error = %e, "HTTP API not started"),
            }
        }
    }
}
