//! The file spool's event history: `events/YYYY-MM-DD.jsonl`, one JSON event per line,
//! appended by every process that works on the spool (one `write` per batch on an
//! `O_APPEND` descriptor, so lines never interleave on a local file system), kept for
//! `event_retention` days. Outside the tier directories, so 0.50 never sees it.
//!
//! Durable appends share their `fdatasync` (a group commit per day file): the engine
//! records a delivery's event, durably, before it removes the node, so a crash never
//! loses the event of a delivery that happened (it may repeat one: the delivery is then
//! repeated too). An `fdatasync` also carries every earlier append of any process.
//! Where the file system's journal orders metadata (journaled ext4, XFS: see
//! [`crate::durability`]) a durable append is written out instead, without a journal
//! commit of its own: the node's removal that follows cannot be recovered without it.
//!
//! A cursor is `DAY:OFFSET`, the start of the next line to read. A page reads at most
//! [`SCAN_BUDGET`] bytes, so one page costs bounded time however much is stored; a
//! `since` is found by bisecting the day's file on its (nearly ordered) times.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mailspool_events::{Event, Query};

use crate::commit::GroupSync;
use crate::storage::os;
use crate::time::day_string;
use crate::{Result, SpoolError};

/// Most bytes one page reads.
pub const SCAN_BUDGET: u64 = 64 << 20;

/// Longest line read back: longer ones are skipped (no event is this long).
const MAX_LINE: usize = 64 * 1024;

/// Events are about this far out of time order in a file at most (several processes
/// append; an event's time is taken a moment before its write).
const DISORDER: u64 = 120;

/// One page of history.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// Where the next page starts (at the end of the history: where events written
    /// later will be); none only when there is no history at all.
    pub next: Option<String>,
    /// Whether more events may follow at once (false: the history was read to its end).
    pub more: bool,
}

/// Today's file, kept open, with its own group commit.
#[derive(Debug)]
struct DayFile {
    day: u64,
    file: Arc<File>,
    sync: Arc<GroupSync>,
}

/// The event files of one spool.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    today: Mutex<Option<DayFile>>,
    /// `fsync_directories`, for the question below.
    setting: crate::durability::Setting,
    /// Whether this file system's journal orders an append before any later change
    /// (asked at the first durable append; see [`EventLog::append`]).
    journaled: std::sync::OnceLock<bool>,
}

fn day_of(unix: u64) -> u64 {
    unix / 86_400
}

fn file_name(day: u64) -> String {
    format!("{}.jsonl", day_string(day))
}

/// The day of an event file's name (`2026-12-04.jsonl`), if it is one.
fn parse_day(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".jsonl")?;
    let mut parts = stem.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    // Days from civil (Howard Hinnant), the inverse of `civil_from_days`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days >= 0 && day_string(days as u64) == stem).then_some(days as u64)
}

impl EventLog {
    /// The history kept in `dir` (created when the first event is written).
    pub fn new(dir: PathBuf) -> EventLog {
        EventLog::with_setting(dir, Default::default())
    }

    /// [`EventLog::new`] with the spool's `fsync_directories`.
    pub fn with_setting(dir: PathBuf, setting: crate::durability::Setting) -> EventLog {
        EventLog {
            dir,
            today: Mutex::new(None),
            setting,
            journaled: Default::default(),
        }
    }

    fn journaled(&self, file: &File) -> bool {
        *self.journaled.get_or_init(|| {
            crate::durability::detect(file, self.setting).links
                == crate::durability::NameSync::FileFsync
        })
    }

    /// Where it is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn day_file(&self, day: u64) -> std::io::Result<(Arc<File>, Arc<GroupSync>)> {
        let mut today = self.today.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = today.as_ref().filter(|t| t.day == day) {
            return Ok((t.file.clone(), t.sync.clone()));
        }
        os::ensure_dir(&self.dir)?;
        let path = self.dir.join(file_name(day));
        let (file, created) = os::open_append(&path)?;
        if created {
            // The new name must survive a crash with the lines in it.
            os::sync_dir(&self.dir)?;
        }
        let t = DayFile {
            day,
            file: Arc::new(file),
            sync: Arc::new(GroupSync::new(path)),
        };
        let out = (t.file.clone(), t.sync.clone());
        *today = Some(t);
        Ok(out)
    }

    /// Append `events` (one write); with `durable`, return only once they are on disk.
    pub fn append(&self, events: &[Event], durable: bool) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let buf: String = events.iter().map(Event::to_line).collect();
        let now = crate::now();
        let (file, sync) = self
            .day_file(day_of(now))
            .map_err(|e| SpoolError::io("open", &self.dir, e))?;
        if let Err(e) = (&*file).write_all(buf.as_bytes()) {
            // A full disk may have taken part of the batch: end the torn line, so the
            // next append starts a line of its own instead of spoiling it too.
            let _ = (&*file).write_all(b"\n");
            return Err(SpoolError::io("append to", &self.dir, e));
        }
        if durable {
            // "Durable" means: on disk before anything the caller does next (the engine
            // removes the delivered node). Where a journal orders metadata (the file
            // systems whose fsync carries a link, crate::durability), writing the
            // append out is enough: its blocks and the file's new size go into a
            // journal transaction now, and the node's unlink into the same or a later
            // one, which cannot be recovered without them. Elsewhere, fdatasync, shared.
            // Either is shared by the appends made while one runs (a group commit).
            if self.journaled(&file) {
                sync.sync(|_| os::write_out(&file))
                    .map_err(|e| SpoolError::io("sync", &self.dir, e))?;
            } else {
                sync.sync(|_| file.sync_data())
                    .map_err(|e| SpoolError::io("sync", &self.dir, e))?;
            }
        }
        Ok(())
    }

    /// The days that have a file, oldest first.
    fn days(&self) -> Vec<u64> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut days: Vec<u64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_day(e.file_name().to_str()?))
            .collect();
        days.sort_unstable();
        days
    }

    /// Remove the files of days more than `keep_days` old; says how many.
    pub fn prune(&self, keep_days: u64) -> usize {
        let oldest = day_of(crate::now()).saturating_sub(keep_days);
        self.days()
            .into_iter()
            .filter(|&d| d < oldest)
            .filter(|&d| std::fs::remove_file(self.dir.join(file_name(d))).is_ok())
            .count()
    }

    /// One page of the events `q` wants, oldest first.
    pub fn read(&self, q: &Query) -> Result<EventPage> {
        let limit = q.page_size();
        let (mut day, mut offset) = match q.cursor.as_deref() {
            // The beginning (a reader placed when there was no history yet).
            Some("") => (0, u64::MAX),
            Some(c) => parse_cursor(c)
                .ok_or_else(|| SpoolError::Config(format!("not a history cursor: {c:?}")))?,
            None => (q.since.map_or(0, day_of), u64::MAX),
        };
        let mut page = EventPage::default();
        let mut budget = SCAN_BUDGET;
        // Lines that cannot match are skipped unparsed: a search in the lower-cased
        // line for the key's text (memchr's SIMD substring search).
        let needle = q.needle();
        let finder = needle
            .as_deref()
            .map(|n| memchr::memmem::Finder::new(n.as_bytes()));
        let mut lower = Vec::new();
        let start = day;
        for d in self.days().into_iter().filter(|&d| d >= start) {
            if d > day {
                (day, offset) = (d, u64::MAX);
            }
            let Ok(mut file) = os::open_read(&self.dir.join(file_name(d))) else {
                continue;
            };
            if offset == u64::MAX {
                // A fresh day: start at `since`, found by bisection, or at the top.
                offset = match q.since {
                    Some(t) if day_of(t) == d => {
                        seek_time(&mut file, t.saturating_sub(DISORDER))
                            .map_err(|e| SpoolError::io("read", &self.dir, e))?
                    }
                    _ => 0,
                };
            }
            let mut reader = BufReader::new(&file);
            reader
                .seek(SeekFrom::Start(offset))
                .map_err(|e| SpoolError::io("read", &self.dir, e))?;
            let mut line = Vec::new();
            loop {
                if page.events.len() >= limit || budget == 0 {
                    page.next = Some(format!("{}:{offset}", day_string(d)));
                    page.more = true;
                    return Ok(page);
                }
                line.clear();
                let n = (&mut reader)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .map_err(|e| SpoolError::io("read", &self.dir, e))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    // The end, or a line being written now: read it next time.
                    page.next = Some(format!("{}:{offset}", day_string(d)));
                    break;
                }
                offset += n as u64;
                budget = budget.saturating_sub(n as u64);
                if let Some(f) = &finder {
                    lower.clear();
                    lower.extend(line.iter().map(u8::to_ascii_lowercase));
                    if f.find(&lower).is_none() {
                        continue;
                    }
                }
                if let Ok(e) = serde_json::from_slice::<Event>(&line)
                    && q.matches(&e)
                {
                    page.events.push(e);
                }
            }
        }
        Ok(page)
    }
}

fn parse_cursor(c: &str) -> Option<(u64, u64)> {
    let (day, offset) = c.split_once(':')?;
    Some((parse_day(&format!("{day}.jsonl"))?, offset.parse().ok()?))
}

/// The offset of a line start at or before the first event at `time` or later.
fn seek_time(file: &mut File, time: u64) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let (mut lo, mut hi) = (0u64, len);
    // Lines start after a newline; bisect on the time of the first whole line after a
    // point until the span is small, then read from its start.
    while hi - lo > 64 * 1024 {
        let mid = lo + (hi - lo) / 2;
        match time_after(file, mid)? {
            Some((start, t)) if t < time => lo = start,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The start and time of the first whole line after `at`.
fn time_after(file: &mut File, at: u64) -> std::io::Result<Option<(u64, u64)>> {
    file.seek(SeekFrom::Start(at))?;
    let mut r = BufReader::new(&*file);
    let mut skip = Vec::new();
    let skipped = (&mut r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut skip)?;
    let mut line = Vec::new();
    (&mut r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)?;
    #[derive(serde::Deserialize)]
    struct Time {
        time: u64,
    }
    Ok(serde_json::from_slice::<Time>(&line)
        .ok()
        .map(|t| (at + skipped as u64, t.time)))
}

/// Write a small file of `dir` whole and durably: a temporary name, fsync, rename.
pub(crate) fn write_small(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    os::ensure_dir(dir).map_err(|e| SpoolError::io("create", dir, e))?;
    let tmp = dir.join(format!(".{name}.{}", crate::unique_token()));
    let path = dir.join(name);
    let done = os::create_new(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_data()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| os::sync_dir(dir));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.map_err(|e| SpoolError::io("write", &path, e))
}

/// Jobs this process holds (a file lock each, refreshed while held).
#[derive(Debug, Default)]
pub struct Jobs {
    held: Mutex<HashMap<String, crate::NodeLock>>,
}

impl Jobs {
    /// Take job `name` (a lock on `dir/name`), or say whether we still hold it.
    pub fn take(&self, dir: &Path, name: &str, policy: &crate::LockPolicy) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains_key(name) {
            return true;
        }
        if os::ensure_dir(dir).is_err() {
            return false;
        }
        match crate::NodeLock::try_lock(&dir.join(name), policy) {
            Ok(Some(lock)) => {
                held.insert(name.to_owned(), lock);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailspool_events::Kind;

    #[test]
    fn day_names_round_trip_and_others_are_not_days() {
        for day in [0u64, 59, 60, 20_426, 100_000] {
            assert_eq!(parse_day(&file_name(day)), Some(day));
        }
        for bad in [
            "2026-13-01.jsonl",
            "2026-02-30.jsonl",
            "x.jsonl",
            "2026-12-04.json",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn pages_follow_cursors_and_since_skips_what_is_older() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::new(dir.path().join("events"));
        let now = crate::now();
        // 3000 events, the first half an hour ago, in order of time.
        let events: Vec<Event> = (0..3000u64)
            .map(|i| {
                let mut e = Event::new(Kind::Delivered, &format!("M{i}"), "a@x", "b@y");
                e.time = now - 3000 + i;
                e
            })
            .collect();
        for chunk in events.chunks(100) {
            log.append(chunk, true).unwrap();
        }
        let mut q = Query {
            limit: 1000,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = log.read(&q).unwrap();
            seen.extend(page.events.iter().map(|e| e.message.clone()));
            q.cursor = page.next;
            if !page.more {
                break;
            }
        }
        let want: Vec<String> = events.iter().map(|e| e.message.clone()).collect();
        // Days may roll over mid-test only at midnight; the order is kept either way.
        assert_eq!(seen, want);

        let since = now - 1000;
        let page = log
            .read(&Query {
                since: Some(since),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.events[0].time, since);
        let page = log
            .read(&Query {
                key: Some("M42".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.events.len(), 1);
        assert!(
            log.read(&Query {
                cursor: Some("nope".into()),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        std::fs::create_dir(&events).unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, events.join(file_name(day_of(crate::now())))).unwrap();
        let log = EventLog::new(events);
        assert!(
            log.append(&[Event::new(Kind::Held, "M", "a@x", "b@y")], true)
                .is_err()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }
}
