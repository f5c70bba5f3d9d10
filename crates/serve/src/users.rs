//! SMTP AUTH users: a file of `name:argon2-hash` lines (`mailspool user add|del|list`).
//!
//! Passwords are stored only as argon2id hashes (PHC strings). The file is written
//! whole to a temporary name and renamed, mode 0600.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::OsRng;

/// The users file, loaded.
#[derive(Debug, Clone, Default)]
pub struct Users {
    path: Option<PathBuf>,
    users: BTreeMap<String, String>,
}

/// Why the users file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A bad line or name.
    #[error("{0}")]
    Invalid(String),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.contains([':', '\n', '\r', '\0'])
        && !name.starts_with(['-', '#'])
}

impl Users {
    /// Load `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(UsersError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line.split_once(':').ok_or_else(|| {
                UsersError::Invalid(format!("{}:{}: expected name:hash", path.display(), i + 1))
            })?;
            PasswordHash::new(hash)
                .map_err(|e| UsersError::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))?;
            users.insert(name.to_owned(), hash.to_owned());
        }
        Ok(Users {
            path: Some(path.to_owned()),
            users,
        })
    }

    /// Names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Whether there is no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Check a password (constant work whether or not the user exists).
    pub fn verify(&self, name: &str, password: &str) -> bool {
        // A fixed dummy hash keeps the time the same for unknown users.
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$7MbxnOB4HQ3ZtN2CeZr3vWJbKHHdmUCJt2zT8yVcgiM";
        let hash = self.users.get(name).map_or(DUMMY, String::as_str);
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && self.users.contains_key(name)
    }

    /// Add or replace a user.
    pub fn set(&mut self, name: &str, password: &str) -> Result<(), UsersError> {
        if !valid_name(name) {
            return Err(UsersError::Invalid(format!("invalid user name {name:?}")));
        }
        if password.is_empty() {
            return Err(UsersError::Invalid("empty password".into()));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| UsersError::Invalid(e.to_string()))?
            .to_string();
        self.users.insert(name.to_owned(), hash);
        Ok(())
    }

    /// Remove a user; false if there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        self.users.remove(name).is_some()
    }

    /// Write the file back (atomically, 0600).
    pub fn save(&self) -> Result<(), UsersError> {
        self.save_for(None)
    }

    /// [`Users::save`], the file given to `owner` (uid, gid): root saves it for the
    /// listener's user, which must read it and nobody else may.
    pub fn save_for(&self, owner: Option<(u32, u32)>) -> Result<(), UsersError> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| UsersError::Invalid("no users file".into()))?;
        let io = |source| UsersError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        for (name, hash) in &self.users {
            writeln!(f, "{name}:{hash}").map_err(io)?;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let mut u = Users::load(&path).unwrap();
        u.set("app", "s3cret").unwrap();
        u.save().unwrap();
        let u = Users::load(&path).unwrap();
        assert!(u.verify("app", "s3cret"));
        assert!(!u.verify("app", "wrong"));
        assert!(!u.verify("nobody", "s3cret"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("app:$argon2id$") && !text.contains("s3cret"));
        let mut u = u;
        assert!(u.remove("app"));
        assert!(u.set("bad:name", "x").is_err());
    }
}
