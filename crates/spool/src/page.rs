//! Paging through the queue without listing it: a page resumes where the last one ended
//! by the directory's own position cookie (`telldir`), so page 5,000 of a million-node
//! spool costs what page 1 does. Order is directory order, not time order: sorting
//! would need the whole directory, and a page must not.
//!
//! A cursor is `<directory>.<cookie>`: the directory is an index into the walk order
//! of [`Spool::visit_all`] (every tier, then the held ones), the cookie the position
//! after the last entry returned. A cursor a client made up is harmless: an unknown
//! directory ends the walk, an unknown cookie seeks wherever the file system puts it.

use std::ops::ControlFlow;

use crate::name::{NodeName, Parsed};
use crate::queue::NodeEntry;
use crate::{Result, Spool, SpoolError};

/// Where a page starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Index into the walk order (tiers, then held tiers).
    pub dir: usize,
    /// Directory position cookie; 0 is the start.
    pub offset: i64,
}

impl Cursor {
    /// Parse `<dir>.<offset>`.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (dir, offset) = text.split_once('.')?;
        Some(Cursor {
            dir: dir.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.dir, self.offset)
    }
}

/// One page of nodes.
#[derive(Debug, Default)]
pub struct Page {
    /// Matching nodes, in directory order.
    pub nodes: Vec<NodeEntry>,
    /// Where the next page starts; `None` at the end of the queue.
    pub next: Option<Cursor>,
    /// Directory entries looked at (a selective filter reads many for a few matches).
    pub scanned: usize,
}

impl Spool {
    /// Up to `limit` nodes that `keep` accepts, from `start`, reading at most
    /// `max_scan` directory entries (a page that hits it is short but has a cursor:
    /// a filter that matches nothing never makes one request read a million names).
    pub fn page(
        &self,
        start: Cursor,
        limit: usize,
        max_scan: usize,
        keep: &mut dyn FnMut(&NodeEntry) -> bool,
    ) -> Result<Page> {
        let tiers = self.config.tiers();
        let mut page = Page::default();
        let mut cursor = start;
        while cursor.dir < 2 * tiers {
            let (tier, held) = (cursor.dir % tiers, cursor.dir >= tiers);
            let path = if held {
                self.dir.join("hold").join(tier.to_string())
            } else {
                self.tier_dir(tier)
            };
            let flow = self.page_dir(
                &path,
                tier,
                held,
                &mut cursor,
                &mut page,
                |p| {
                    if p.nodes.len() >= limit || p.scanned >= max_scan {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
                keep,
            )?;
            if flow.is_break() {
                page.next = Some(cursor);
                return Ok(page);
            }
            cursor = Cursor {
                dir: cursor.dir + 1,
                offset: 0,
            };
        }
        Ok(page)
    }

    /// Read one directory from `cursor.offset`, advancing the cursor past each entry;
    /// `Break` when `full` says the page is done (the cursor then points after the
    /// last entry read).
    #[allow(clippy::too_many_arguments)]
    fn page_dir(
        &self,
        path: &std::path::Path,
        tier: usize,
        held: bool,
        cursor: &mut Cursor,
        page: &mut Page,
        full: impl Fn(&Page) -> ControlFlow<()>,
        keep: &mut dyn FnMut(&NodeEntry) -> bool,
    ) -> Result<ControlFlow<()>> {
        use rustix::fs::{Mode, OFlags};
        let fd = match rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(ControlFlow::Continue(())),
            Err(e) => return Err(SpoolError::io("read", path, e.into())),
        };
        let mut dir =
            rustix::fs::Dir::new(fd).map_err(|e| SpoolError::io("read", path, e.into()))?;
        if cursor.offset != 0 {
            dir.seek(cursor.offset)
                .map_err(|e| SpoolError::io("seek in", path, e.into()))?;
        }
        if full(page).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| SpoolError::io("read", path, e.into()))?;
            cursor.offset = entry.offset();
            page.scanned += 1;
            let Ok(file_name) = entry.file_name().to_str() else {
                continue;
            };
            let (name, rescued): (NodeName, bool) = match NodeName::parse(file_name) {
                Parsed::Node(n) => (n, false),
                Parsed::Rescued(n) => (n, true),
                Parsed::NotANode | Parsed::Unparsable => {
                    if full(page).is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                    continue;
                }
            };
            let node = NodeEntry {
                tier,
                name,
                path: path.join(file_name),
                file_name: file_name.to_owned(),
                rescued,
                held,
                ino: entry.ino(),
            };
            if keep(&node) {
                page.nodes.push(node);
            }
            if full(page).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}
