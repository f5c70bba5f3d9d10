//! The aliases file in sendmail's and Postfix's syntax (`aliases(5)`): `name: target,
//! target`, `#` comments, continuation lines that start with white space, quoted
//! targets, `:include:/path` (a file of targets), and the targets mailspool refuses
//! (`|command`, `/file`: see [`Target`]). Names are matched without case.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest aliases or include file read.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// One target of an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address (`user@domain`) or a local name (`user`).
    Address(String),
    /// `|command`: not run (mailspool does not run commands for mail; see the docs).
    Pipe(String),
    /// `/path`: not written (mailspool does not append to arbitrary files).
    File(String),
    /// `:include:/path`: the targets listed in that file.
    Include(PathBuf),
}

/// A parse error, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.what)
    }
}

/// A parsed aliases file.
#[derive(Debug, Clone, Default)]
pub struct Aliases {
    map: HashMap<String, Vec<Target>>,
}

impl Aliases {
    /// Read and parse `path`; every error is reported, the good entries kept.
    pub fn load(path: &Path) -> std::io::Result<(Aliases, Vec<ParseError>)> {
        let text = read_limited(path)?;
        Ok(Aliases::parse(&text, path))
    }

    /// Parse the text of `file`.
    pub fn parse(text: &str, file: &Path) -> (Aliases, Vec<ParseError>) {
        let mut map: HashMap<String, Vec<Target>> = HashMap::new();
        let mut errors = Vec::new();
        for (line, entry) in logical_lines(text) {
            let err = |what: String| ParseError {
                file: file.to_owned(),
                line,
                what,
            };
            let Some((name, rest)) = split_name(&entry) else {
                errors.push(err(format!(
                    "expected \"name: target, ...\", found {entry:?}"
                )));
                continue;
            };
            let name = name.trim().trim_matches('"').to_ascii_lowercase();
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errors.push(err(format!("bad alias name {name:?}")));
                continue;
            }
            match parse_targets(rest) {
                Ok(t) if t.is_empty() => errors.push(err(format!("alias {name:?} has no target"))),
                Ok(t) => {
                    if map.insert(name.clone(), t).is_some() {
                        errors.push(err(format!(
                            "alias {name:?} defined again (this one is used)"
                        )));
                    }
                }
                Err(e) => errors.push(err(format!("alias {name:?}: {e}"))),
            }
        }
        (Aliases { map }, errors)
    }

    /// The targets of `name` (any case), if it is an alias.
    pub fn get(&self, name: &str) -> Option<&[Target]> {
        self.map.get(&name.to_ascii_lowercase()).map(Vec::as_slice)
    }

    /// How many aliases.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The targets of an `:include:` file: one or more per line, comments allowed.
pub fn load_include(path: &Path) -> Result<Vec<Target>, String> {
    let text = read_limited(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (line, entry) in logical_lines(&text) {
        out.extend(parse_targets(&entry).map_err(|e| format!("{}:{line}: {e}", path.display()))?);
    }
    Ok(out)
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut text = String::new();
    f.take(MAX_FILE).read_to_string(&mut text)?;
    Ok(text)
}

/// Entries with the line each starts on: comments dropped, continuation lines (white
/// space first) joined to the entry before them.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim_start().starts_with('#') {
            continue;
        }
        if raw.trim().is_empty() {
            continue;
        }
        if raw.starts_with([' ', '\t'])
            && let Some((_, last)) = out.last_mut()
        {
            last.push(' ');
            last.push_str(raw.trim());
            continue;
        }
        out.push((i + 1, raw.trim().to_owned()));
    }
    out
}

/// `name: rest`, the name possibly quoted.
fn split_name(entry: &str) -> Option<(&str, &str)> {
    if let Some(rest) = entry.strip_prefix('"') {
        let end = rest.find('"')?;
        let after = rest[end + 1..].trim_start().strip_prefix(':')?;
        return Some((&entry[..end + 2], after));
    }
    entry.split_once(':')
}

/// Comma-separated targets; quotes keep commas and spaces (`"|/usr/bin/x y"`).
fn parse_targets(text: &str) -> Result<Vec<Target>, String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unbalanced quote".into());
    }
    items.push(cur);
    let mut out = Vec::new();
    for item in items {
        let t = item.trim();
        if t.is_empty() {
            continue;
        }
        if t.chars().any(|c| c.is_control()) {
            return Err(format!("control character in {t:?}"));
        }
        out.push(if let Some(cmd) = t.strip_prefix('|') {
            Target::Pipe(cmd.trim().to_owned())
        } else if let Some(p) = t.strip_prefix(":include:") {
            let p = p.trim();
            if !p.starts_with('/') {
                return Err(format!(":include: needs an absolute path, not {p:?}"));
            }
            Target::Include(PathBuf::from(p))
        } else if t.starts_with('/') {
            Target::File(t.to_owned())
        } else {
            let addr = t.trim_start_matches('<').trim_end_matches('>').trim();
            if addr.starts_with('-') || addr.contains(char::is_whitespace) {
                return Err(format!("bad address {addr:?}"));
            }
            // A leading backslash (`\root`) means "this user's mailbox, no further
            // aliasing", as in sendmail.
            Target::Address(addr.to_owned())
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sendmail_syntax() {
        let text = "# Debian's default\n\
                    postmaster:    root\n\
                    Root: admin@example.org,\n\
                    \tops@example.org\n\
                    # comment\n\
                    team: alice, bob,\n  \"carol@example.org\"\n\
                    list: :include:/etc/mail/list\n\
                    prog: \"|/usr/bin/procmail -a x\"\n\
                    archive: /var/archive/mail\n\
                    broken line without colon\n\
                    empty:\n\
                    postmaster: dup\n";
        let (a, errors) = Aliases::parse(text, Path::new("/etc/aliases"));
        assert_eq!(
            a.get("ROOT").unwrap(),
            [
                Target::Address("admin@example.org".into()),
                Target::Address("ops@example.org".into())
            ]
        );
        assert_eq!(
            a.get("team").unwrap(),
            [
                Target::Address("alice".into()),
                Target::Address("bob".into()),
                Target::Address("carol@example.org".into())
            ]
        );
        assert_eq!(
            a.get("list").unwrap(),
            [Target::Include("/etc/mail/list".into())]
        );
        assert_eq!(
            a.get("prog").unwrap(),
            [Target::Pipe("/usr/bin/procmail -a x".into())]
        );
        assert_eq!(
            a.get("archive").unwrap(),
            [Target::File("/var/archive/mail".into())]
        );
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [11, 12, 13], "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with("/etc/aliases:11: expected")
        );
        assert_eq!(
            a.get("postmaster").unwrap(),
            [Target::Address("dup".into())]
        );
    }
}
