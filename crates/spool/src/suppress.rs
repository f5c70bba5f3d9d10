//! The file spool's suppression list: `suppress/list.jsonl`, appended `add` and
//! `remove` records (so several processes and hosts can add at once), read into
//! memory and kept up to date by reading only what was appended since.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::storage::os;
use crate::{Result, SpoolError};

/// The file spool's suppression list: `suppress/list.jsonl`, appended `add` and
/// `remove` records (so several processes and hosts can add at once), read into
/// memory and kept up to date by reading only what was appended since.
#[derive(Debug)]
pub struct SuppressionFile {
    path: PathBuf,
    cache: Mutex<SuppressionCache>,
}

#[derive(Debug, Default)]
struct SuppressionCache {
    ino: u64,
    offset: u64,
    entries: HashMap<(String, String), mailspool_events::Suppression>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    op: String,
    #[serde(flatten)]
    entry: mailspool_events::Suppression,
}

/// Longest suppression list read (about a million entries).
const MAX_SUPPRESSION_BYTES: u64 = 512 << 20;

impl SuppressionFile {
    /// The list kept at `path`.
    pub fn new(path: PathBuf) -> SuppressionFile {
        SuppressionFile {
            path,
            cache: Mutex::new(SuppressionCache::default()),
        }
    }

    fn write(&self, op: &str, entry: &mailspool_events::Suppression) -> Result<()> {
        let dir = self.path.parent().expect("a file in a directory");
        os::ensure_dir(dir).map_err(|e| SpoolError::io("create", dir, e))?;
        let mut line = serde_json::to_string(&Record {
            op: op.into(),
            entry: entry.clone(),
        })
        .expect("a record serializes");
        line.push('\n');
        let (mut f, created) =
            os::open_append(&self.path).map_err(|e| SpoolError::io("open", &self.path, e))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .and_then(|()| if created { os::sync_dir(dir) } else { Ok(()) })
            .map_err(|e| SpoolError::io("append to", &self.path, e))
    }

    /// Add (or replace) an entry.
    pub fn add(&self, entry: &mailspool_events::Suppression) -> Result<()> {
        self.write("add", entry)
    }

    /// Remove the entry for `address` in scope `domain` ("" global); says whether
    /// there was one.
    pub fn remove(&self, address: &str, domain: &str) -> Result<bool> {
        let key = (domain.to_ascii_lowercase(), address.to_lowercase());
        let Some(entry) = self.with(|m| m.get(&key).cloned()) else {
            return Ok(false);
        };
        self.write("remove", &entry)?;
        Ok(true)
    }

    /// Run `f` on the entries as they are now on disk.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&HashMap<(String, String), mailspool_events::Suppression>) -> T,
    ) -> T {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = refresh(&self.path, &mut cache) {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot read the suppression list");
        }
        f(&cache.entries)
    }

    /// The entry that keeps mail from `from` to `to`, if one does.
    pub fn lookup(&self, from: &str, to: &str, now: u64) -> Option<mailspool_events::Suppression> {
        let to = to.to_lowercase();
        let domain = mailspool_events::domain_of(from).to_ascii_lowercase();
        self.with(|m| {
            [(String::new(), to.clone()), (domain, to.clone())]
                .iter()
                .filter_map(|k| m.get(k))
                .find(|s| s.applies(from, now))
                .cloned()
        })
    }
}

fn refresh(path: &Path, cache: &mut SuppressionCache) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut f = match os::open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            *cache = SuppressionCache::default();
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if meta.ino() != cache.ino || meta.len() < cache.offset {
        *cache = SuppressionCache {
            ino: meta.ino(),
            ..Default::default()
        };
    }
    if meta.len() == cache.offset {
        return Ok(());
    }
    f.seek(SeekFrom::Start(cache.offset))?;
    let mut r = BufReader::new(f).take(MAX_SUPPRESSION_BYTES.saturating_sub(cache.offset));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        cache.offset += n as u64;
        let Ok(rec) = serde_json::from_slice::<Record>(&line) else {
            continue;
        };
        match rec.op.as_str() {
            "add" => {
                cache.entries.insert(rec.entry.key(), rec.entry);
            }
            "remove" => {
                cache.entries.remove(&rec.entry.key());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailspool_events::{Scope, Suppression};

    #[test]
    fn the_suppression_list_sees_other_writers_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppress/list.jsonl");
        let (a, b) = (
            SuppressionFile::new(path.clone()),
            SuppressionFile::new(path),
        );
        let mut s = Suppression::new("Gone@Example.net", &Scope::Global, "invalid_recipient", 100);
        a.add(&s).unwrap();
        assert!(
            b.lookup("x@shop.example", "gone@EXAMPLE.net", 200)
                .is_some()
        );
        let d = Suppression::new(
            "c@example.net",
            &Scope::parse("shop.example"),
            "manual",
            100,
        );
        b.add(&d).unwrap();
        assert!(a.lookup("x@shop.example", "c@example.net", 200).is_some());
        assert!(a.lookup("x@other.example", "c@example.net", 200).is_none());
        s.expires = Some(150);
        a.add(&s).unwrap();
        assert!(
            b.lookup("x@shop.example", "gone@example.net", 200)
                .is_none()
        );
        assert!(b.remove("c@example.net", "shop.example").unwrap());
        assert!(!b.remove("c@example.net", "shop.example").unwrap());
        assert!(a.lookup("x@shop.example", "c@example.net", 200).is_none());
    }
}
