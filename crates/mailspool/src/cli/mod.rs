//! Command-line front end: `mailspool <command>`, or the sendmail interface when
//! invoked as `sendmail`, `mailq` or `newaliases`.

mod aliases;
mod args;
mod daemon;
mod db;
mod dkim;
mod doctor;
mod drop_intake;
mod history;
mod list;
mod privilege;
mod queue;
mod send;
mod sendmail;
mod serve;
mod token;
mod usage;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use mailspool::{Config, sysexits};

/// An error on its way to the user: a message and a sysexits code.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<mailspool::ConfigError> for Failure {
    fn from(e: mailspool::ConfigError) -> Self {
        Failure::new(sysexits::CONFIG, e.to_string())
    }
}

impl From<mailspool::SpoolError> for Failure {
    fn from(e: mailspool::SpoolError) -> Self {
        Failure::new(mailspool::send::spool_exit_code(&e), e.to_string())
    }
}

impl From<mailspool::SendError> for Failure {
    fn from(e: mailspool::SendError) -> Self {
        Failure::new(e.exit_code(), e.to_string())
    }
}

pub type CliResult = Result<(), Failure>;

/// Run the program and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    privilege::remember_caller();
    // A daemon locks thousands of nodes a second: reuse lock temps (removed below).
    mailspool_spool::lock::keep_temps_until_exit();
    let args: Vec<OsString> = std::env::args_os().collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("mailspool")
        .to_owned();
    let result = match prog.as_str() {
        "sendmail" => sendmail::run(&prog, &args[1..]),
        "mailq" => {
            // `mailq --help` and mistakes are clap's (exit 0 / 64); the listing's
            // filters work here too.
            let list_args = match <args::Mailq as clap::Parser>::try_parse_from(&args) {
                Ok(m) => m.list,
                Err(e) => {
                    let code = if e.use_stderr() { sysexits::USAGE } else { 0 };
                    let _ = e.print();
                    return ExitCode::from(code);
                }
            };
            quiet_on_closed_pipe();
            init_logging(0, false);
            config(None, None).and_then(|c| {
                privilege::access(&c)?;
                list::list(&c, &list_args)
            })
        }
        "newaliases" => {
            init_logging(0, false);
            config(None, None).and_then(|c| aliases::newaliases(&prog, &c))
        }
        _ => run_mailspool(args),
    };
    // Lock temps are pooled for reuse while the process lives; leave none behind.
    mailspool_spool::lock::remove_pooled_temps();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("{prog}: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn run_mailspool(args: Vec<OsString>) -> CliResult {
    let cli = match args::Cli::try_parse_from(args::normalise_sendmail_flags(args)) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { sysexits::USAGE } else { 0 };
            let _ = e.print();
            return if code == 0 {
                Ok(())
            } else {
                Err(Failure::new(code, ""))
            };
        }
    };
    // Logging starts once the configuration is read (it says the format); what fails
    // before is reported on stderr by main.
    let config = config(cli.config.as_deref(), cli.spool.as_deref())?;
    // The daemon reports what happens to each message by default.
    let daemon = matches!(cli.command, args::Command::Daemon | args::Command::Serve);
    init_logging(
        if daemon {
            cli.verbose.max(1)
        } else {
            cli.verbose
        },
        config.log_json,
    );
    let listing = match &cli.command {
        args::Command::Queue { command } => {
            !matches!(command, Some(args::QueueCommand::Run { .. }))
        }
        args::Command::Usage { .. }
        | args::Command::Fsck { .. }
        | args::Command::Log { .. }
        | args::Command::Suppress { .. } => true,
        _ => false,
    };
    if listing {
        quiet_on_closed_pipe();
    }
    // Root works on a spool as its owner (the listener only once it has bound its
    // ports; `send` decides for itself: it may hand the message to the drop; `migrate`
    // by the directories it names).
    let serve = matches!(
        cli.command,
        args::Command::Serve
            | args::Command::Migrate { .. }
            | args::Command::Doctor
            | args::Command::Token { .. }
            | args::Command::User { .. }
            | args::Command::Dkim { .. }
    );
    if rustix::process::geteuid().is_root() && !serve {
        privilege::access(&config)?;
    }
    match cli.command {
        args::Command::Send(a) => send::run(&config, a),
        args::Command::Queue { command } => queue::run(&config, command),
        args::Command::Usage { days, json } => usage::run(&config, days, json),
        args::Command::Log {
            key,
            json,
            since,
            kinds,
        } => history::log(&config, &key, json, since, &kinds),
        args::Command::Suppress { command } => history::suppress(&config, command),
        args::Command::Daemon => {
            daemon::run(config, cli.config.clone(), cli.spool.clone(), cli.verbose)
        }
        args::Command::Serve => serve::run(&config),
        args::Command::Fsck { repair } => fsck(&config, repair),
        args::Command::Doctor => doctor::run(&config),
        args::Command::User { command } => serve::user(&config, command),
        args::Command::Token { command } => token::run(&config, command),
        args::Command::Dkim { command } => dkim::run(&config, command),
        args::Command::Db {
            command: args::DbCommand::Migrate { url },
        } => db::migrate_schema(&config, url.as_deref()),
        args::Command::Migrate { from, to } => db::migrate(&config, &from, &to),
    }
}

/// A listing piped into `head` ends quietly when the reader goes, as `ls` does: the
/// default action of SIGPIPE (Rust ignores it, and `println!` would then panic). Only
/// for commands that write listings: a daemon or an SMTP session must see EPIPE instead.
fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Load the configuration (see `mailspool::config`).
pub fn config(file: Option<&Path>, spool: Option<&Path>) -> Result<Config, Failure> {
    Ok(Config::load(file, spool)?)
}

/// Logs go to stderr: warnings by default, `-v` for info, `-vv` for debug;
/// `MAILSPOOL_LOG` (a tracing filter such as `debug`) overrides. `json`: one JSON object
/// per event (`log_format = "json"`). Under systemd (`JOURNAL_STREAM` set) text lines
/// carry no time stamp and no colour: the journal adds its own.
pub fn init_logging(verbose: u8, json: bool) {
    use tracing_subscriber::EnvFilter;
    // Warnings are rare; skip the subscriber's set-up cost on the hot `send` path when
    // nothing asked for more. Errors reach the user through the exit path anyway.
    if verbose == 0 && !json && std::env::var_os("MAILSPOOL_LOG").is_none() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .try_init();
        return;
    }
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("MAILSPOOL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        let _ = fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        let _ = fmt.with_ansi(false).without_time().try_init();
    } else {
        let _ = fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
}

/// `mailspool fsck [--repair]`.
fn fsck(config: &Config, repair: bool) -> CliResult {
    if config.spool_url().is_some() {
        return Err(Failure::new(
            sysexits::USAGE,
            "fsck checks a spool directory; a database spool is kept consistent by its \
             transactions (check it with PostgreSQL's own tools)",
        ));
    }
    let spool = mailspool::Spool::open(&config.spool_dir, config.spool.clone())?;
    let report = spool
        .fsck(repair)
        .map_err(|e| Failure::new(sysexits::IOERR, e.to_string()))?;
    for f in &report.findings {
        println!("{}", f.describe());
    }
    for a in &report.actions {
        println!("repair: {a}");
    }
    let problems = report.findings.iter().filter(|f| f.is_problem()).count();
    // Quarantined files are not repaired by anyone but a person: never "repaired".
    let quarantined = report
        .findings
        .iter()
        .filter(|f| matches!(f, mailspool_spool::fsck::Finding::Quarantined(_)))
        .count();
    let unsettled = report.set_aside + quarantined;
    println!(
        "{} nodes checked, {problems} problem{} found{}",
        report.nodes,
        if problems == 1 { "" } else { "s" },
        match (repair, problems - unsettled.min(problems)) {
            (true, n) if n > 0 && unsettled > 0 => format!(", {n} repaired"),
            (true, n) if n > 0 => ", repaired".to_owned(),
            _ => String::new(),
        }
    );
    if unsettled > 0 {
        println!(
            "{unsettled} file{s} in {}/corrupt {are} NOT delivered and NOT bounced: look at each; \
             if it is mail, requeue it (`mailspool send --file FILE ADDRESS...`, or \
             `sendmail -t -oi < FILE`), then remove it",
            config.spool_dir.display(),
            s = if unsettled == 1 { "" } else { "s" },
            are = if unsettled == 1 { "is" } else { "are" },
        );
    }
    match (problems, repair) {
        (0, _) => Ok(()),
        (_, true) if unsettled == 0 => Err(Failure::new(1, "")),
        _ => Err(Failure::new(4, "")),
    }
}
