//! `mailspool serve`, `mailspool user`, and `sendmail -bs`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use mailspool::{Config, sysexits};
use mailspool_serve::session::{self, Context, Peer};
use mailspool_serve::{Mode, Users};

use super::args::UserCommand;
use super::{CliResult, Failure};

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(sysexits::OSERR, e.to_string()))
}

fn users(config: &Config) -> Result<Users, Failure> {
    match &config.serve.users_file {
        Some(p) => Users::load(p).map_err(|e| Failure::new(sysexits::CONFIG, e.to_string())),
        None => Ok(Users::default()),
    }
}

/// Run the listener until SIGTERM or SIGINT.
pub fn run(config: &Config) -> CliResult {
    mailspool_serve::tune_allocator();
    // Certificates and keys that cannot be read or used are configuration errors (78),
    // found before anything binds; what fails after this is the system's (71).
    for l in &config.serve.listen {
        if let (Some(cert), Some(key)) = (&l.tls_cert, &l.tls_key) {
            mailspool_serve::tls_acceptor(cert, key).map_err(|e| {
                Failure::new(sysexits::CONFIG, format!("[[listen]] {}: {e}", l.address))
            })?;
        }
    }
    // The return path's secret: the reports that come back are checked against it.
    let mut config = config.clone();
    config
        .load_return_path()
        .map_err(|e| Failure::new(sysexits::CONFIG, e.to_string()))?;
    let config = &config;
    mailspool_spool::limit_malloc_arenas();
    let spool = mailspool::open_store_waiting(config, true)?;
    let users = users(config)?;
    runtime()?.block_on(async {
        let bound = mailspool_serve::bind(config.serve.clone(), spool.clone(), users)
            .await
            .map_err(|e| Failure::new(sysexits::OSERR, e))?;
        for addr in bound.local_addrs() {
            eprintln!("mailspool: listening on {addr}");
        }
        if let Some(files) = spool.as_files() {
            // What a 250 rests on: how commits make their names durable here.
            tracing::info!(durability = %files.durability(), "spool file system");
            mailspool_spool::durability::check_hard_links(files.dir())
                .map_err(|e| Failure::new(sysexits::CONFIG, e))?;
        }
        let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut http_task = None;
        if let Some(http) = config.http.clone()
            && let Some(addr) = http.serve_listen
        {
            let ms = Arc::new(mailspool::Mailspool::with_store(
                config.clone(),
                spool.clone(),
            ));
            let http_bound = mailspool::http::bind(ms, http, addr)
                .await
                .map_err(|e| Failure::new(sysexits::OSERR, e))?;
            eprintln!("mailspool: HTTP API on {}", http_bound.local_addr());
            http_task = Some(tokio::spawn(http_bound.run(async {
                let _ = http_stopped.await;
            })));
        }
        // Bound (port 25 needs root or CAP_NET_BIND_SERVICE); root now becomes the
        // spool's owner, so every node it writes is the daemon's to read.
        if rustix::process::geteuid().is_root() {
            super::privilege::access(config)?;
        }
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        bound.run(stop).await;
        let _ = http_stop.send(());
        if let Some(t) = http_task {
            let _ = t.await;
        }
        Ok(())
    })
}

/// `sendmail -bs`: one SMTP session on stdin/stdout, as the local (trusted) user.
pub fn stdio(config: &Config) -> CliResult {
    let spool = mailspool::open_store(config, true)?;
    stdio_with(config, spool)
}

/// The SMTP dialogue on stdin/stdout, committing into `spool`.
pub fn stdio_with(config: &Config, spool: Arc<dyn mailspool_spool::Intake>) -> CliResult {
    let ctx = Arc::new(Context {
        cfg: Arc::new(config.serve.clone()),
        spool,
        users: Arc::new(Users::default()),
        tls: None,
        mode: Mode::Relay,
    });
    runtime()?.block_on(async {
        let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        session::run(Box::new(io), Peer::local(), ctx, false).await;
    });
    Ok(())
}

/// Read a password: from a terminal without echo, else the first line of stdin.
fn read_password(name: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let saved = if tty {
        eprint!("Password for {name}: ");
        let _ = std::io::stderr().flush();
        let t = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(t) = &t {
            let mut quiet = t.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ =
                rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
        }
        t
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t);
        eprintln!();
    }
    read.map_err(|e| Failure::new(sysexits::IOERR, e.to_string()))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        return Err(Failure::new(sysexits::DATAERR, "empty password"));
    }
    Ok(pw)
}

/// `mailspool user add|del|list`.
pub fn user(config: &Config, command: UserCommand) -> CliResult {
    let path = config
        .serve
        .users_file
        .clone()
        .ok_or_else(|| Failure::new(sysexits::CONFIG, "no users_file configured"))?;
    let mut users = users(config)?;
    let fail =
        |e: mailspool_serve::users::UsersError| Failure::new(sysexits::CANTCREAT, e.to_string());
    // Root writes it (in root's /etc/mailspool) for the listener's user: the spool's owner.
    let owner = super::privilege::daemon_owner(config);
    match command {
        UserCommand::Add { name } => {
            let pw = read_password(&name)?;
            users
                .set(&name, &pw)
                .map_err(|e| Failure::new(sysexits::DATAERR, e.to_string()))?;
            users.save_for(owner).map_err(fail)?;
            println!("user {name} saved in {}", path.display());
        }
        UserCommand::Del { name } => {
            if !users.remove(&name) {
                return Err(Failure::new(sysexits::NOINPUT, format!("no user {name}")));
            }
            users.save_for(owner).map_err(fail)?;
            println!("user {name} removed");
        }
        UserCommand::List => {
            for n in users.names() {
                println!("{n}");
            }
        }
    }
    Ok(())
}
