//! `newaliases` (`sendmail -bi`, `-I`): mailspool reads the aliases file itself when
//! it changes, so there is no database to rebuild; this checks the file and says what
//! is wrong with it, line by line.

use super::{CliResult, Failure};
use mailspool::Config;
use mailspool::sysexits;

/// Check the configured aliases file: exit 0 when every entry parses, 65 otherwise.
pub fn newaliases(prog: &str, config: &Config) -> CliResult {
    let Some(path) = &config.deliver.local.aliases else {
        println!("{prog}: no aliases file is configured (aliases = \"\")");
        return Ok(());
    };
    let (aliases, errors) = match mailspool_deliver::local::aliases::Aliases::load(path) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{prog}: {} does not exist: no aliases", path.display());
            return Ok(());
        }
        Err(e) => {
            return Err(Failure::new(
                sysexits::NOINPUT,
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    for e in &errors {
        println!("{e}");
    }
    println!(
        "{prog}: {}: {} alias{}, {} error{} (read again by the daemon whenever it changes)",
        path.display(),
        aliases.len(),
        if aliases.len() == 1 { "" } else { "es" },
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(sysexits::DATAERR, ""))
    }
}
