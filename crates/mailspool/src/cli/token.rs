//! `mailspool token add|del|list`: the HTTP API's bearer tokens.

use mailspool::http::tokens::{Scope, Tokens};
use mailspool::{Config, sysexits};

use super::args::TokenCommand;
use super::queue::fmt_time;
use super::{CliResult, Failure};

/// `90d`, `12h`, `30m`, `45s` or plain seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&s| s > 0)
}

pub fn run(config: &Config, command: TokenCommand) -> CliResult {
    let path = config
        .http
        .as_ref()
        .map(|h| h.tokens_file.clone())
        .unwrap_or_else(mailspool::config::default_tokens_file);
    let fail =
        |e: mailspool::http::tokens::TokenError| Failure::new(sysexits::CANTCREAT, e.to_string());
    let mut tokens =
        Tokens::load(&path).map_err(|e| Failure::new(sysexits::CONFIG, e.to_string()))?;
    // Root makes it for the daemon's user: the spool's owner.
    let owner = super::privilege::daemon_owner(config);
    match command {
        TokenCommand::Add {
            name,
            scope,
            expires,
        } => {
            let scope = Scope::parse(&scope)
                .ok_or_else(|| Failure::new(sysexits::USAGE, "scope: inject, read or admin"))?;
            let expires = match expires {
                Some(e) => Some(
                    mailspool_spool::now()
                        + parse_duration(&e).ok_or_else(|| {
                            Failure::new(
                                sysexits::USAGE,
                                format!(
                                    "--expires {e:?}: seconds, or a number with s, m, h, d or w"
                                ),
                            )
                        })?,
                ),
                None => None,
            };
            let secret = tokens
                .add(&name, scope, expires)
                .map_err(|e| Failure::new(sysexits::DATAERR, e.to_string()))?;
            tokens.save(owner).map_err(fail)?;
            eprintln!(
                "token {name} ({}) saved in {}{}; it is shown once, below:",
                scope.as_str(),
                path.display(),
                expires.map_or(String::new(), |e| format!(", expires {} UTC", fmt_time(e)))
            );
            if config.http.is_none() {
                eprintln!(
                    "note: [http] is not configured, so nothing serves the API yet \
                     (add [http] to the configuration and restart the daemon)"
                );
            }
            println!("{secret}");
        }
        TokenCommand::Del { name } => {
            if !tokens.remove(&name) {
                return Err(Failure::new(sysexits::NOINPUT, format!("no token {name}")));
            }
            tokens.save(owner).map_err(fail)?;
            println!("token {name} removed");
        }
        TokenCommand::List => {
            let now = mailspool_spool::now();
            for t in tokens.list() {
                let expires = match t.expires {
                    None => "never".to_owned(),
                    Some(e) if e <= now => format!("{} UTC (expired)", fmt_time(e)),
                    Some(e) => format!("{} UTC", fmt_time(e)),
                };
                println!(
                    "{:<24} {:<7} created {} UTC, expires {expires}",
                    t.name,
                    t.scope.as_str(),
                    fmt_time(t.created)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        use super::parse_duration as p;
        assert_eq!(p("90d"), Some(90 * 86_400));
        assert_eq!(p("12h"), Some(43_200));
        assert_eq!(p("30"), Some(30));
        assert_eq!(p("0"), None);
        assert_eq!(p("5y"), None);
        assert_eq!(p("x"), None);
    }
}
