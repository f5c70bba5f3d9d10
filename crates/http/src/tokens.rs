//! API tokens: random 256-bit bearer secrets, stored only as SHA-256 hashes.
//!
//! A slow password hash (argon2, as for SMTP AUTH) buys nothing for a secret with 256
//! bits of entropy and would let an unauthenticated client burn CPU per request; a
//! SHA-256 of at most [`MAX_TOKEN_LEN`] bytes is constant, tiny work.
//!
//! `tokens_file`, one token per line, mode 0600:
//! `<name> <scope> <sha256 hex> <created unix> <expires unix, 0 = never>`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;

/// Longest `Authorization` token hashed; anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 128;
/// Prefix of every token (lets secret scanners recognise a leaked one).
pub const TOKEN_PREFIX: &str = "mst_";

/// What a token may do. `admin` may do everything; `read` only reads; `inject` only
/// queues mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `POST /v1/messages` and `/v1/messages/batch`.
    Inject,
    /// `GET` of the queue, summary and usage, and the dashboard's views.
    Read,
    /// Everything, including hold, release, retry and delete.
    Admin,
}

impl Scope {
    /// Parse `inject`, `read` or `admin`.
    pub fn parse(word: &str) -> Option<Scope> {
        Some(match word {
            "inject" => Scope::Inject,
            "read" => Scope::Read,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }

    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inject => "inject",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what needs `need`.
    pub fn allows(self, need: Scope) -> bool {
        self == Scope::Admin || self == need
    }
}

/// One stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its name (who it was made for).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// Unix time made.
    pub created: u64,
    /// Unix time it stops working, if ever.
    pub expires: Option<u64>,
}

/// What a presented token is.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Known and in force.
    Valid(&'a Token),
    /// Known, past its expiry.
    Expired(&'a Token),
    /// Not a token we issued (or too long to be one).
    Unknown,
}

/// Why the tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line does not parse.
    #[error("{}:{line}: not `name scope sha256 created expires`", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A bad name or scope was given.
    #[error("{0}")]
    Invalid(String),
}

/// The set of tokens of one file.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    path: PathBuf,
    tokens: Vec<Token>,
    by_hash: HashMap<[u8; 32], usize>,
}

pub(crate) fn sha256(text: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, text);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Token names: what a user would call a client, nothing that breaks the file.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

impl Tokens {
    /// Read `path`; a file that does not exist is an empty set.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let mut t = Tokens {
            path: path.to_owned(),
            ..Default::default()
        };
        let text = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(t),
            Err(e) => return Err(io(e)),
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || TokenError::Format {
                path: path.to_owned(),
                line: i + 1,
            };
            let w: Vec<&str> = line.split_whitespace().collect();
            let [name, scope, hash, created, expires] = w[..] else {
                return Err(bad());
            };
            // Names end up in logs and pages: the rules `token add` keeps, on load too.
            if !valid_name(name) {
                return Err(bad());
            }
            let token = Token {
                name: name.to_owned(),
                scope: Scope::parse(scope).ok_or_else(bad)?,
                hash: unhex(hash).ok_or_else(bad)?,
                created: created.parse().map_err(|_| bad())?,
                expires: match expires.parse::<u64>().map_err(|_| bad())? {
                    0 => None,
                    e => Some(e),
                },
            };
            t.insert(token);
        }
        Ok(t)
    }

    fn insert(&mut self, token: Token) {
        self.tokens.retain(|t| t.name != token.name);
        self.tokens.push(token);
        self.reindex();
    }

    fn reindex(&mut self) {
        self.by_hash = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.hash, i))
            .collect();
    }

    /// The tokens, in file order.
    pub fn list(&self) -> &[Token] {
        &self.tokens
    }

    /// Make a token (replacing one of the same name); returns the secret, which is
    /// stored nowhere.
    pub fn add(
        &mut self,
        name: &str,
        scope: Scope,
        expires: Option<u64>,
    ) -> Result<String, TokenError> {
        if !valid_name(name) {
            return Err(TokenError::Invalid(format!(
                "token name {:?}: 1-64 of A-Z a-z 0-9 - _ . @ +",
                mailspool_spool::escape(name)
            )));
        }
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        self.insert(Token {
            name: name.to_owned(),
            scope,
            hash: sha256(token.as_bytes()),
            created: mailspool_spool::now(),
            expires,
        });
        Ok(token)
    }

    /// Remove the token called `name`; false if there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.name != name);
        self.reindex();
        self.tokens.len() != before
    }

    /// What `presented` is, at unix time `now`.
    pub fn lookup(&self, presented: &str, now: u64) -> Lookup<'_> {
        if presented.len() > MAX_TOKEN_LEN {
            return Lookup::Unknown;
        }
        match self.by_hash.get(&sha256(presented.as_bytes())) {
            Some(&i) => {
                let t = &self.tokens[i];
                if t.expires.is_some_and(|e| e <= now) {
                    Lookup::Expired(t)
                } else {
                    Lookup::Valid(t)
                }
            }
            None => Lookup::Unknown,
        }
    }

    /// The token whose hash is `hash`, if it is still in force at `now` (a dashboard
    /// session keeps the hash, never the secret).
    pub fn by_hash(&self, hash: &[u8; 32], now: u64) -> Option<&Token> {
        let t = &self.tokens[*self.by_hash.get(hash)?];
        t.expires.is_none_or(|e| e > now).then_some(t)
    }

    /// Write the file whole: a new file (0600, `O_EXCL|O_NOFOLLOW`) renamed over the
    /// old; `owner` (uid, gid) is given to it when root writes for the daemon's user.
    pub fn save(&self, owner: Option<(u32, u32)>) -> Result<(), TokenError> {
        let io = |source| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let tmp = self
            .path
            .with_file_name(format!(".tokens.{}", mailspool_spool::unique_token()));
        let mut text = String::from("# mailspool API tokens: name scope sha256 created expires\n");
        for t in &self.tokens {
            text.push_str(&format!(
                "{} {} {} {} {}\n",
                t.name,
                t.scope.as_str(),
                hex(&t.hash),
                t.created,
                t.expires.unwrap_or(0)
            ));
        }
        let write = || -> std::io::Result<()> {
            let mut f = mailspool_spool::storage::os::create_new(&tmp)?;
            f.write_all(text.as_bytes())?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}

/// The tokens a server checks against, re-read when the file changes (so `token add`
/// and `token del` take effect without a restart), at most once a second.
#[derive(Debug)]
pub struct TokenCache {
    path: PathBuf,
    state: Mutex<CacheState>,
}

#[derive(Debug)]
struct CacheState {
    checked: std::time::Instant,
    stamp: Option<(u64, u64, i64, i64, u64)>,
    tokens: Arc<Tokens>,
}

fn stamp(path: &Path) -> Option<(u64, u64, i64, i64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

impl TokenCache {
    /// Load `path` now (an unreadable file is an error at start, not a silent lock-out).
    pub fn new(path: &Path) -> Result<TokenCache, TokenError> {
        let tokens = Tokens::load(path)?;
        Ok(TokenCache {
            path: path.to_owned(),
            state: Mutex::new(CacheState {
                checked: std::time::Instant::now(),
                stamp: stamp(path),
                tokens: Arc::new(tokens),
            }),
        })
    }

    /// The current tokens.
    pub fn current(&self) -> Arc<Tokens> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.checked.elapsed() >= std::time::Duration::from_secs(1) {
            s.checked = std::time::Instant::now();
            let now = stamp(&self.path);
            if now != s.stamp {
                match Tokens::load(&self.path) {
                    Ok(t) => {
                        s.tokens = Arc::new(t);
                        s.stamp = now;
                        tracing::info!(path = %self.path.display(), "API tokens reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "API tokens not reloaded"),
                }
            }
        }
        s.tokens.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_save_load_lookup_expire_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let mut t = Tokens::load(&path).unwrap();
        let a = t.add("ci", Scope::Inject, None).unwrap();
        let b = t.add("old", Scope::Admin, Some(100)).unwrap();
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 4 + 43);
        assert!(t.add("bad name", Scope::Read, None).is_err());
        t.save(None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&a[4..]), "the secret is never stored");
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let t = Tokens::load(&path).unwrap();
        assert!(
            matches!(t.lookup(&a, 1000), Lookup::Valid(x) if x.name == "ci" && x.scope == Scope::Inject)
        );
        assert!(matches!(t.lookup(&b, 99), Lookup::Valid(_)));
        assert!(matches!(t.lookup(&b, 100), Lookup::Expired(_)));
        assert_eq!(t.lookup("mst_nope", 0), Lookup::Unknown);
        assert_eq!(t.lookup(&"x".repeat(10_000), 0), Lookup::Unknown);
        let mut t = t;
        assert!(t.remove("ci") && !t.remove("ci"));
        assert_eq!(t.lookup(&a, 0), Lookup::Unknown);
    }

    #[test]
    fn scopes() {
        assert!(Scope::Admin.allows(Scope::Inject) && Scope::Admin.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Inject) && !Scope::Inject.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Admin));
    }
}
