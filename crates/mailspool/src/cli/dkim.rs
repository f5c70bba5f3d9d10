//! `mailspool dkim keygen|check`: signing keys and their DNS records.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use mailspool::{Config, sysexits};
use mailspool_deliver::Resolve;
use mailspool_deliver::dkim::{Algorithm, DkimKey, generate, record_matches};

use super::args::DkimCommand;
use super::{CliResult, Failure};

pub fn run(config: &Config, command: DkimCommand) -> CliResult {
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            key_file,
        } => keygen(config, &domain, &selector, &algorithm, key_file),
        DkimCommand::Check {
            domain,
            selector,
            key_file,
        } => check(config, &domain, &selector, key_file),
    }
}

/// Where keygen puts a key by default: `dkim/` beside the configuration file.
fn default_key_file(config: &Config, domain: &str, selector: &str) -> PathBuf {
    let dir = config
        .config_dir
        .clone()
        .unwrap_or_else(|| {
            mailspool::config::default_users_file()
                .parent()
                .map(Path::to_owned)
                .unwrap_or_default()
        })
        .join("dkim");
    dir.join(format!("{selector}._domainkey.{domain}.pem"))
}

fn keygen(
    config: &Config,
    domain: &str,
    selector: &str,
    algorithm: &str,
    key_file: Option<PathBuf>,
) -> CliResult {
    let algorithm = Algorithm::parse(algorithm).map_err(|e| Failure::new(sysexits::USAGE, e))?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let path = key_file.unwrap_or_else(|| default_key_file(config, &domain, selector));
    let pem = generate(algorithm).map_err(|e| Failure::new(sysexits::SOFTWARE, e))?;
    // Root makes it for the daemon's user: the spool's owner.
    let owner = super::privilege::daemon_owner(config);
    let cant = |e: std::io::Error, what: &Path| {
        Failure::new(
            sysexits::CANTCREAT,
            format!("cannot write {}: {e}", what.display()),
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| cant(e, dir))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| cant(e, dir))?;
        }
    }
    let mut f = match mailspool_spool::storage::os::create_new(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Failure::new(
                sysexits::CANTCREAT,
                format!(
                    "{} exists; keygen never replaces a key (mail signed with it may still \
                     be checked). Choose a new --selector to rotate keys, or --key-file.",
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(cant(e, &path)),
    };
    let written = (|| {
        f.write_all(pem.as_bytes())?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(cant(e, &path));
    }
    let key = DkimKey::load(&domain, selector, &path, Some(algorithm), None)
        .map_err(|e| Failure::new(sysexits::SOFTWARE, e))?;
    // The configuration reads a relative key_file from its own directory, not from
    // wherever keygen ran: print the path as it is from anywhere.
    let path = std::path::absolute(&path).unwrap_or(path);
    eprintln!(
        "{} key written to {} (0600). Publish this TXT record, then add to the configuration:\n\n\
         [[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{}\"\n\n\
         and check it with: mailspool dkim check --domain {domain} --selector {selector}\n",
        key.algorithm(),
        path.display(),
        path.display(),
    );
    println!("{}", zone_line(&key));
    Ok(())
}

/// The record as a zone-file line; strings longer than 255 bytes split (RFC 1035), as
/// an RSA key's must be.
fn zone_line(key: &DkimKey) -> String {
    let record = key.record();
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{}. IN TXT {}", key.record_name(), strings.join(" "))
}

fn check(config: &Config, domain: &str, selector: &str, key_file: Option<PathBuf>) -> CliResult {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let path = key_file
        .or_else(|| {
            config
                .dkim
                .iter()
                .find(|d| d.domain.eq_ignore_ascii_case(&domain) && d.selector == selector)
                .map(|d| d.key_file.clone())
        })
        .unwrap_or_else(|| default_key_file(config, &domain, selector));
    let key = DkimKey::load(&domain, selector, &path, None, None)
        .map_err(|e| Failure::new(sysexits::CONFIG, e))?;
    let name = key.record_name();
    let dns = mailspool_deliver::HickoryDns::new(config.deliver.resolver)
        .map_err(|e| Failure::new(sysexits::UNAVAILABLE, format!("DNS: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(sysexits::OSERR, e.to_string()))?;
    let records = runtime.block_on(dns.txt(&name)).map_err(|e| match e {
        // A timeout or SERVFAIL says nothing about the record: try again later (75).
        mailspool_deliver::dns::LookupError::Temporary(why) => Failure::new(
            sysexits::TEMPFAIL,
            format!("{name}: DNS did not answer ({why}); try again"),
        ),
        e => Failure::new(
            sysexits::UNAVAILABLE,
            format!(
                "{name}: no TXT record ({e:?}); publish:\n{}",
                zone_line(&key)
            ),
        ),
    })?;
    let dkim: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=DKIM1") || r.contains("p="))
        .collect();
    match dkim.as_slice() {
        [] => Err(Failure::new(
            sysexits::UNAVAILABLE,
            format!("{name} has no DKIM record; publish:\n{}", zone_line(&key)),
        )),
        [one] => match record_matches(&key, one) {
            Ok(()) => {
                println!(
                    "{name}: OK, the published {} key is the key in {}",
                    key.algorithm(),
                    path.display()
                );
                Ok(())
            }
            Err(why) => Err(Failure::new(
                sysexits::DATAERR,
                format!("{name}: {why}; publish:\n{}", zone_line(&key)),
            )),
        },
        _ => Err(Failure::new(
            sysexits::DATAERR,
            format!(
                "{name} has {} DKIM records; receivers need exactly one",
                dkim.len()
            ),
        )),
    }
}
