//! Moving a stored message into this file spool from another spool (a migration),
//! keeping each node's tier, time and hold.

use std::fs::File;
use std::io;

use crate::name::NodeName;
use crate::storage::os;
use crate::store::Placement;
use crate::{Result, Spool, SpoolError};

impl Spool {
    /// Copy `file` into a stage, make it durable, then link one node per placement that
    /// is not here yet (a resumed migration finds the names it made last time and skips
    /// them: the node name is its own origin key), sync the directories, drop the stage.
    pub fn import(
        &self,
        id: &str,
        from: &str,
        file: &File,
        placements: &[(Placement, String)],
    ) -> Result<usize> {
        let mut stage = self.stage(id)?;
        let mut source = file;
        use std::io::Seek;
        source
            .seek(io::SeekFrom::Start(0))
            .map_err(|e| SpoolError::io("read", "the message", e))?;
        io::copy(&mut source, &mut stage).map_err(|e| SpoolError::io("write", "a stage", e))?;
        let (path, staged) = stage.into_synced()?;
        let mut made = Vec::new();
        let mut dirs = Vec::new();
        let result = (|| {
            for (place, _origin) in placements {
                let name = NodeName::new(place.time, id, &place.to, from).file_name();
                let tier_dir = self.tier_dir(place.tier);
                let hold_dir = self.dir().join("hold").join(place.tier.to_string());
                if tier_dir.join(&name).exists() || hold_dir.join(&name).exists() {
                    continue;
                }
                let dir = if place.held {
                    os::ensure_dir(&self.dir().join("hold"))
                        .map_err(|e| SpoolError::io("create", self.dir().join("hold"), e))?;
                    hold_dir
                } else {
                    tier_dir
                };
                os::ensure_dir(&dir).map_err(|e| SpoolError::io("create", &dir, e))?;
                let node = dir.join(&name);
                std::fs::hard_link(&path, &node).map_err(|e| SpoolError::io("link", &node, e))?;
                made.push(node);
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            for dir in &dirs {
                os::sync_dir(dir).map_err(|e| SpoolError::io("fsync", dir, e))?;
            }
            Ok(made.len())
        })();
        if result.is_err() {
            for node in &made {
                let _ = std::fs::remove_file(node);
            }
        }
        drop(staged);
        let _ = std::fs::remove_file(&path);
        result
    }
}
