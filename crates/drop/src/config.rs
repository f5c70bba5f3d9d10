//! What the drop reads of the configuration: the spool directory (`dequeue_dir`), the
//! size limit (`max_message_size`) and the free-space reserve (`min_free_space`),
//! top-level keys of the TOML file.
//!
//! Running with its group (setgid), the drop reads only the system file
//! `/etc/mailspool/mailspool.toml` and ignores `-C`, `$MAILSPOOL_CONFIG` and
//! `$MAILSPOOL_SPOOL`: the caller chooses its arguments and environment, and must not
//! choose where the group's privilege writes. Run by the spool's owner, without the
//! group, it honours them like the full program does.

use std::path::{Path, PathBuf};

/// The system configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/mailspool/mailspool.toml";
/// The system spool when the configuration names none.
pub const SYSTEM_SPOOL: &str = "/var/spool/mailspool";
/// Default size limit: 50 MiB, as the full program's.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

/// The drop's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropConfig {
    /// The spool directory (the drop writes into its `maildrop/`).
    pub spool: PathBuf,
    /// Largest message accepted.
    pub max_message_size: u64,
    /// Bytes kept free on the spool's file system (`None`: 4 × max_message_size, as the
    /// full program's default).
    pub min_free_space: Option<u64>,
    /// `qualify_domain`, else `hostname` (for checking bare names' lengths; the pickup
    /// completes them itself).
    pub qualify_domain: Option<String>,
    /// `fsync_directories`: whether the file's own fsync makes its name durable is
    /// asked of the file system (`auto`) or overridden.
    pub fsync_directories: mailspool_spool::durability::Setting,
}

impl DropConfig {
    /// Load, as a privileged (setgid) run or not.
    pub fn load(privileged: bool, named: Option<&Path>) -> Result<DropConfig, String> {
        let file = if privileged {
            Some(PathBuf::from(SYSTEM_CONFIG))
        } else {
            named
                .map(Path::to_path_buf)
                .or_else(|| std::env::var_os("MAILSPOOL_CONFIG").map(PathBuf::from))
                .or_else(|| Some(PathBuf::from(SYSTEM_CONFIG)))
        };
        let mut c = DropConfig {
            spool: PathBuf::from(SYSTEM_SPOOL),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            min_free_space: None,
            qualify_domain: None,
            fsync_directories: Default::default(),
        };
        if let Some(path) = file {
            match std::fs::read_to_string(&path) {
                Ok(text) => c
                    .apply(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        if !privileged
            && let Some(dir) = std::env::var_os("MAILSPOOL_SPOOL").filter(|d| !d.is_empty())
        {
            c.spool = PathBuf::from(dir);
        }
        Ok(c)
    }

    /// The reserve in force.
    pub fn reserve(&self) -> u64 {
        self.min_free_space
            .unwrap_or(self.max_message_size.saturating_mul(4))
    }

    /// Take the drop's keys from a TOML text (top-level only; everything else is the
    /// full program's business and is skipped).
    pub fn apply(&mut self, text: &str) -> Result<(), String> {
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                break;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.split(" #").next().unwrap_or("").trim();
            match key.trim() {
                "dequeue_dir" | "spool" => self.spool = PathBuf::from(toml_string(value)?),
                "max_message_size" => {
                    self.max_message_size = value
                        .replace('_', "")
                        .parse()
                        .map_err(|_| format!("max_message_size = {value}: not a number"))?;
                    if self.max_message_size == 0 {
                        return Err("max_message_size = 0 cannot work".into());
                    }
                }
                "qualify_domain" => self.qualify_domain = Some(toml_string(value)?),
                "hostname" if self.qualify_domain.is_none() => {
                    self.qualify_domain = Some(toml_string(value)?)
                }
                "min_free_space" => {
                    self.min_free_space = Some(
                        value
                            .replace('_', "")
                            .parse()
                            .map_err(|_| format!("min_free_space = {value}: not a number"))?,
                    );
                }
                "fsync_directories" => {
                    let v = toml_string(value)?;
                    self.fsync_directories = mailspool_spool::durability::Setting::parse(&v)
                        .ok_or_else(|| {
                            format!("fsync_directories = {value}: expected \"auto\", \"always\" or \"never\"")
                        })?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A TOML basic or literal string on one line.
fn toml_string(value: &str) -> Result<String, String> {
    if let Some(lit) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return Ok(lit.to_owned());
    }
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(|| format!("expected a string, found {value}"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('t') => out.push('\t'),
            other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_keys_and_nothing_else() {
        let mut c = DropConfig {
            spool: PathBuf::from(SYSTEM_SPOOL),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            min_free_space: None,
            qualify_domain: None,
            fsync_directories: Default::default(),
        };
        c.apply(
            "# comment\ndequeue_dir = \"/srv/mail spool\"   # here\nmax_message_size = 1_000\nhostname = \"x\"\n[relay]\ndequeue_dir = \"/not/this\"\n",
        )
        .unwrap();
        assert_eq!(c.spool, PathBuf::from("/srv/mail spool"));
        assert_eq!(c.max_message_size, 1000);
        assert_eq!(c.reserve(), 4000, "4 x max_message_size unless set");
        c.clone().apply("min_free_space = 0").unwrap();
        let mut r = c.clone();
        r.apply("min_free_space = 1_048_576").unwrap();
        assert_eq!(r.reserve(), 1_048_576);
        assert!(c.clone().apply("min_free_space = lots").is_err());
        assert!(c.clone().apply("max_message_size = 0").is_err());
        assert!(c.clone().apply("dequeue_dir = /bare").is_err());
        c.apply("dequeue_dir = '/lit\\eral'").unwrap();
        assert_eq!(c.spool, PathBuf::from("/lit\\eral"));
    }
}
