//! The `mailspool` command line (clap).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str =
    "A mail spooler and sender: durable intake in the Mail::Spool 0.50 spool layout.";

const AFTER_HELP: &str = "\
The spool directory is --spool, else $MAILSPOOL_SPOOL, else dequeue_dir from the
configuration, else /var/spool/mailspool (root) or $XDG_STATE_HOME/mailspool.
The configuration is --config, else $MAILSPOOL_CONFIG, else
~/.config/mailspool/mailspool.toml (not root), else /etc/mailspool/mailspool.toml.

Invoked as `sendmail` (e.g. through a symlink) mailspool speaks the sendmail command
line; invoked as `mailq` it lists the queue.

Exit codes follow sysexits.h: 64 usage (also: a queue ID several messages share),
65 bad data, 66 no input (also: the spool does not exist), 69 unavailable (send --now:
a recipient refused for good), 70 internal error, 71 system error (cannot listen), 73 cannot create,
74 I/O error, 75 temporary failure (retry later), 77 permission, 78 configuration.
fsck: 0 clean, 1 every problem repaired, 4 problems found, or mail set aside in corrupt/
(neither delivered nor bounced until a person requeues it).";

#[derive(Debug, Parser)]
#[command(name = "mailspool", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Spool directory (overrides $MAILSPOOL_SPOOL and the configuration).
    #[arg(long, global = true, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Configuration file (TOML, Mail::Spool 0.50 property names).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Say more (-v: what happened to each message; -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Queue a message read from stdin (or --file); prints its id.
    #[command(
        after_help = "Recipients come from the arguments; with none (or with -t) from the \
To, Cc and Bcc headers. Bcc is removed from the stored message. The sender is -f, else the \
From address, else you at this host. Exit 0 means the message is on disk."
    )]
    Send(SendArgs),
    /// List, inspect and change queued mail.
    Queue {
        #[command(subcommand)]
        command: Option<QueueCommand>,
    },
    /// Deliver continuously in the foreground (for systemd); logs to stderr.
    #[command(
        after_help = "New mail queued on this host is attempted at once (inotify on tier 0); \
every dequeue_timeout seconds the tiers are scanned for mail other hosts queued and for retries. \
SIGTERM stops taking new work and waits shutdown_grace seconds for deliveries under way; SIGHUP \
reloads the configuration."
    )]
    Daemon,
    /// Check the spool after a crash or a migration from Mail::Spool 0.50.
    #[command(
        after_help = "Finds crash leftovers in tmp/, names that do not parse (and 0.50 \
names with a raw '-' that can be recovered), stale locks, empty or unreadable nodes, and side \
data without a node. Changes nothing unless --repair; even then it never deletes a message it \
cannot account for: such files move to corrupt/. Exit 0: clean; 1: problems repaired; \
4: problems found and left."
    )]
    Fsck {
        /// Repair what was found.
        #[arg(long)]
        repair: bool,
    },
    /// Accept mail over SMTP and spool it (ports from [[listen]] in the configuration).
    #[command(
        after_help = "Default: 127.0.0.1:25 (root) or 127.0.0.1:2525, relay mode. 250 after \
DATA means the message is on disk. Relaying is allowed for relay_networks (default 127.0.0.0/8 \
and ::1) and authenticated users only. SIGTERM stops accepting and lets sessions finish."
    )]
    Serve,
    /// Check an installation (owners, modes, the setgid drop, the relay secret, DKIM keys, DNS)
    /// and say what to fix. Exit 0: nothing to fix; 1: something.
    Doctor,
    /// Manage SMTP AUTH users (argon2 hashes in users_file).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage HTTP API tokens (SHA-256 hashes in [http] tokens_file).
    #[command(
        after_help = "A token is shown once, when it is made, as the last line of `token add`; \
only its hash is stored. Scopes: inject (POST /v1/messages), read (the queue, summary, usage, \
the dashboard), admin (all of it, and hold/release/retry/delete). The daemon re-reads the file \
when it changes."
    )]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// DKIM keys: make one and print the DNS record to publish, or check a published one.
    #[command(
        after_help = "Outgoing mail is signed when [[dkim]] entries in the configuration name \
a domain, a selector and a key file; keygen prints the entry to add. Mail is signed with the \
key of its From domain (or of a parent domain, else the fallback key), once per message."
    )]
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// The PostgreSQL spool's schema.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Move queued mail from one spool to another (a directory or postgresql://...),
    /// keeping each node's tier, time and hold. Resumable.
    #[command(
        after_help = "Each node is locked in the source, added to the destination, then removed from the source; run it again after an interruption and each node is moved exactly once (the destination recognises what it already has). Stop the daemons on the source first, or let them be: a node they hold is left for the next run (exit 75). Mail::Spool 0.50 spools are read as they are. Run as root, it works as the owner of the directory it names (the source's, else the destination's)."
    )]
    Migrate {
        /// The spool to empty: a directory or a database URL.
        #[arg(long, value_name = "SPOOL")]
        from: String,
        /// The spool to fill: a directory (created if needed) or a database URL (its
        /// tables created or upgraded first, as `mailspool db migrate` does).
        #[arg(long, value_name = "SPOOL")]
        to: String,
    },
    /// What happened to a message or a recipient: every event (accepted, delivered,
    /// deferred, bounced, ...), also after delivery.
    #[command(
        after_help = "KEY is a message id (as `queue list` and the logs show it), a Message-ID (<...@...>) or a recipient address. Events are kept for [events] retention_days (30). Exit 0: events found; 1: none."
    )]
    Log {
        /// A message id, a Message-ID or a recipient address.
        key: String,
        /// One JSON object per event, as the API and webhooks carry them.
        #[arg(long)]
        json: bool,
        /// Only events this recent: seconds, or with a unit (30m, 4h, 2d).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        since: Option<u64>,
        /// Only these kinds (accepted, delivered, deferred, bounced, expired, delayed,
        /// suppressed, complained, held, released, deleted); repeat or separate with commas.
        #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
        kinds: Vec<String>,
    },
    /// The suppression list: recipients mail is no longer sent to (hard bounces,
    /// complaints, or by hand).
    Suppress {
        #[command(subcommand)]
        command: SuppressCommand,
    },
    /// Messages and bytes spooled and sent per day, from usage/raw.
    Usage {
        /// Days to show, ending today.
        #[arg(long, default_value_t = 7)]
        days: u64,
        /// One JSON object per day.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SuppressCommand {
    /// Every entry: address, scope, reason, when, expiry.
    List {
        /// One JSON object per entry.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending to ADDRESS.
    Add {
        /// The recipient.
        address: String,
        /// Only for mail from this sending domain (default: every sender).
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// Why (kept with the entry).
        #[arg(long, default_value = "manual")]
        reason: String,
        /// The entry lapses after this long: seconds, or with a unit (30m, 4h, 2d).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        expires: Option<u64>,
    },
    /// Send to ADDRESS again.
    Remove {
        /// The recipient.
        address: String,
        /// The entry's sending domain, if it has one.
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
    },
    /// Add addresses from a file (one per line, `#` comments; `address,domain,reason`
    /// also read, as exports from other senders give them); `-` for stdin.
    Import {
        /// The file.
        file: std::path::PathBuf,
        /// Reason for entries that give none.
        #[arg(long, default_value = "import")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the spool database's tables (versioned; safe to run again).
    Migrate {
        /// The database (default: the configured spool, when it is one).
        #[arg(long, value_name = "postgresql://...")]
        url: Option<String>,
    },
}

/// `mailq`: the queue, as `mailspool queue list` shows it.
#[derive(Debug, Parser)]
#[command(
    name = "mailq",
    version,
    about = "List the mail queue (mailspool queue list): one line per recipient, oldest first in each tier."
)]
pub struct Mailq {
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Also take recipients from the To, Cc and Bcc headers.
    #[arg(short = 't')]
    pub extract: bool,
    /// Accepted for sendmail habits; `mailspool send` never ends the message at a line
    /// holding only "." (the sendmail interface does, without -i/-oi).
    #[arg(short = 'i')]
    pub ignore_dots: bool,
    /// Envelope sender; '' or '<>' is the null sender (no bounces).
    #[arg(short = 'f', value_name = "FROM")]
    pub from: Option<String>,
    /// Full name of the sender, for a From header we add.
    #[arg(short = 'F', value_name = "NAME")]
    pub full_name: Option<String>,
    /// Use this message id (1-64 of A-Z a-z 0-9 . _ + =).
    #[arg(long)]
    pub id: Option<String>,
    /// Read the message from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Deliver before returning, each recipient's result on stderr. Exit 0: accepted
    /// (each recipient delivered, or queued for retry when its server could not take it
    /// now: the id is printed then); 69: a recipient was refused for good, with the
    /// server's reply (it is not kept and not bounced; the others are as listed).
    #[arg(long, conflicts_with = "background")]
    pub now: bool,
    /// Try to deliver now; on a temporary failure leave it queued for the daemon.
    #[arg(long)]
    pub background: bool,
    /// Recipients, one address per argument (user@domain, <user@domain> or
    /// "Name <user@domain>").
    #[arg(value_name = "RCPT")]
    pub recipients: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// One line per queued node (default).
    List(ListArgs),
    /// Everything about the nodes of a message: envelope, times, lock, attempts, headers.
    Show(ShowArgs),
    /// Delete the nodes of messages.
    Delete(SelectArgs),
    /// Hold messages: they stay queued but are never delivered until released.
    Hold(SelectArgs),
    /// Release held messages back into their tiers.
    Release(SelectArgs),
    /// Make messages due now.
    Retry(SelectArgs),
    /// One delivery pass, then exit (sendmail -q).
    Run {
        /// Ignore tier waits: attempt everything queued.
        #[arg(long)]
        all: bool,
    },
    /// Counts by tier and by recipient domain.
    Summary {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Which nodes a queue change applies to.
#[derive(Debug, Args)]
#[command(
    after_help = "An ID names every node of one message. Mail::Spool 0.50 gave \
several messages the same id; when an ID is shared, nothing is changed and the messages \
are listed: name one with --to ADDR, or give a node's file name."
)]
pub struct SelectArgs {
    /// Message ids, or node file names (exactly one node each).
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Only the node of this recipient.
    #[arg(long, value_name = "ADDR")]
    pub to: Option<String>,
}

/// Which message `queue show` shows.
#[derive(Debug, Args)]
#[command(
    after_help = "When several messages share the ID (Mail::Spool 0.50 reused ids), \
they are listed instead: name one with --to ADDR, or give a node's file name."
)]
pub struct ShowArgs {
    /// Message id, or one node's file name.
    pub id: String,
    /// Only the node of this recipient.
    #[arg(long, value_name = "ADDR")]
    pub to: Option<String>,
}

#[derive(Debug, Default, Args)]
pub struct ListArgs {
    /// One JSON object per node: id, to, from, tier, queued_at, due_at, size, held, last_error.
    #[arg(long)]
    pub json: bool,
    /// Only this tier.
    #[arg(long, value_name = "N")]
    pub tier: Option<usize>,
    /// Only recipients at this domain.
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// Only this envelope sender ("" or "<>" for the null sender: bounces).
    #[arg(long, value_name = "ADDRESS")]
    pub sender: Option<String>,
    /// Only this recipient.
    #[arg(long, value_name = "ADDRESS")]
    pub to: Option<String>,
    /// Only nodes waiting in their tier at least this long: seconds, or with a unit
    /// (30m, 4h, 2d).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<u64>,
    /// Only held messages.
    #[arg(long)]
    pub held: bool,
}

/// `90`, `90s`, `30m`, `4h`, `2d`: seconds.
fn parse_age(text: &str) -> Result<u64, String> {
    let (digits, unit) = text.trim().split_at(
        text.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.trim().len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: give seconds, or a number with s, m, h or d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    Ok(n.saturating_mul(scale))
}

/// sendmail habits that clap cannot spell: `-oi` means `-i`. Only before `--`.
pub fn normalise_sendmail_flags(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut options = true;
    for a in args {
        if a == "--" {
            options = false;
        }
        if options && a == "-oi" {
            out.push(OsString::from("-i"));
        } else {
            out.push(a);
        }
    }
    out
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add or change a user; the password is read without echo, or from stdin.
    Add {
        /// User name.
        name: String,
    },
    /// Remove a user.
    Del {
        /// User name.
        name: String,
    },
    /// List user names.
    List,
}

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Make a signing key (0600, for the daemon's user) and print its DNS TXT record.
    Keygen {
        /// Signing domain (the From domain, or a parent of it).
        #[arg(long)]
        domain: String,
        /// Selector: the record is published at <selector>._domainkey.<domain>.
        #[arg(long)]
        selector: String,
        /// rsa2048 (checked by every receiver) or ed25519 (RFC 8463; smaller, faster).
        #[arg(long, default_value = "rsa2048", value_parser = ["rsa2048", "ed25519"])]
        algorithm: String,
        /// Where to write the key (never over an existing file); default: dkim/ beside
        /// the configuration file.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
    /// Look up <selector>._domainkey.<domain> and say whether it holds the key.
    Check {
        /// Signing domain.
        #[arg(long)]
        domain: String,
        /// Selector.
        #[arg(long)]
        selector: String,
        /// The key to compare with; default: the [[dkim]] entry for this domain and
        /// selector, else where keygen writes it.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token (replacing one of the same name) and print it, once.
    Add {
        /// Token name: who or what it is for.
        name: String,
        /// What it may do: inject, read or admin.
        #[arg(long, value_parser = ["inject", "read", "admin"])]
        scope: String,
        /// Lifetime: seconds, or with a unit (90d, 12h, 30m); default: no expiry.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Remove a token: requests with it fail from the next second on.
    Del {
        /// Token name.
        name: String,
    },
    /// List tokens (names, scopes, dates; never the secrets).
    List,
}
