//! The filesystem calls a commit makes, behind a trait so that tests (and the fault
//! injection of the reliability suite) can fail or "crash" at any one of them.
//!
//! [`OsStorage`] is the real thing. Every file it creates is opened with
//! `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC` and mode 0600, so a commit never follows a
//! planted symlink and never reuses an existing file.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

/// The filesystem operations of a commit. Defaults are the real system calls.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Create a new file exclusively (0600, never through a symlink).
    fn create_new(&self, path: &Path) -> io::Result<File> {
        os::create_new(path)
    }
    /// Write all of `buf`.
    fn write(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        file.write_all(buf)
    }
    /// Make the file's data durable.
    fn sync_file(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
    /// Write the file's data out and wait for it, without a journal commit: its blocks
    /// are allocated (and its size recorded) before any name is linked to it, so no
    /// journal commit can carry a name to data that is not on disk yet.
    fn write_out(&self, file: &File) -> io::Result<()> {
        os::write_out(file)
    }
    /// `fsync` (not `fdatasync`): on a journaling file system it commits the
    /// transaction that last changed the inode, links included.
    fn sync_inode(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }
    /// Make everything written to the file system holding `dir` durable (a batch
    /// commit: one flush for many messages instead of one each).
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        os::sync_fs(dir)
    }
    /// Add a hard link; fails if `to` exists (never replaces).
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
    /// Make a directory's entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        os::sync_dir(dir)
    }
    /// Remove a name.
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    /// Rename without ever replacing an existing name.
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        os::rename_noreplace(from, to)
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;

impl Storage for OsStorage {}

/// Plain system calls shared by [`OsStorage`] and the rest of the crate.
pub mod os {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether this process works on a spool declared shared (`shared_spool = true`):
    /// its group may then read what is made and write where it is made (files 0640,
    /// side data 0660, directories 2770 so files take the spool's group), whatever the
    /// umask. Otherwise everything is the owner's alone (0600, 0700).
    static SHARED: AtomicBool = AtomicBool::new(false);

    /// Declare the spool this process works on shared (or not).
    pub fn set_shared(shared: bool) {
        SHARED.store(shared, Ordering::Relaxed);
    }

    fn shared() -> bool {
        SHARED.load(Ordering::Relaxed)
    }

    /// The mode of a new file others must be able to read when sharing (a lock: another
    /// user's dequeuer reads who holds it), else 0600.
    pub fn readable_mode() -> u32 {
        if shared() { 0o640 } else { 0o600 }
    }

    /// Give a new file or directory exactly `mode` (the umask does not apply), when
    /// sharing: the group's bits are the point.
    fn exact_mode(f: &File, mode: u32) -> io::Result<()> {
        if shared() {
            rustix::fs::fchmod(f, rustix::fs::Mode::from_raw_mode(mode))?;
        }
        Ok(())
    }

    /// `open(O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600)` for writing (0640 in a shared
    /// spool).
    pub fn create_new(path: &Path) -> io::Result<File> {
        let mode = if shared() { 0o640 } else { 0o600 };
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)?;
        exact_mode(&f, mode)?;
        Ok(f)
    }

    /// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` over the whole file.
    pub fn write_out(file: &File) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a plain system call on an open descriptor.
        if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// fsync a directory.
    pub fn sync_dir(dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// `syncfs` on the file system holding `dir`.
    pub fn sync_fs(dir: &Path) -> io::Result<()> {
        rustix::fs::syncfs(File::open(dir)?).map_err(Into::into)
    }

    /// `renameat2(RENAME_NOREPLACE)`, falling back to `link` + `unlink` where the
    /// filesystem does not support the flag (NFS): both never replace an existing name.
    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                std::fs::hard_link(from, to)?;
                std::fs::remove_file(from)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Append `line` with one `write` on an `O_APPEND|O_NOFOLLOW` descriptor (created
    /// 0600): concurrent appenders never interleave inside a line on a local filesystem.
    pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(if shared() { 0o660 } else { 0o600 })
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(path)?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        f.write_all(line.as_bytes())
    }

    /// Open `path` for appending, creating it (0600; 0660 shared) if it is missing:
    /// never through a symlink, never a FIFO or another user's planted file kept open.
    /// Says whether this call created it (its name then still needs a directory fsync).
    pub fn open_append(path: &Path) -> io::Result<(File, bool)> {
        let mode = if shared() { 0o660 } else { 0o600 };
        let flags = (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32;
        let (f, created) = match OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(flags)
            .open(path)
        {
            Ok(f) => {
                exact_mode(&f, mode)?;
                (f, true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
                OpenOptions::new()
                    .append(true)
                    .custom_flags(flags)
                    .open(path)?,
                false,
            ),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        use std::os::unix::fs::MetadataExt;
        if !meta.is_file() || (!shared() && meta.uid() != rustix::process::geteuid().as_raw()) {
            return Err(io::Error::other("not a regular file of ours"));
        }
        Ok((f, created))
    }

    /// Open a file of the spool for reading: never through a symlink, never blocking on
    /// a FIFO, and only a regular file.
    pub fn open_read(path: &Path) -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(path)?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(f)
    }

    /// Create a directory with mode 0700 if it is missing (2770 in a shared spool).
    pub fn ensure_dir(path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            Err(e) => Err(e),
            Ok(()) if shared() => {
                let dir = OpenOptions::new()
                    .read(true)
                    .custom_flags(
                        (rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW).bits()
                            as i32,
                    )
                    .open(path)?;
                rustix::fs::fchmod(&dir, rustix::fs::Mode::from_raw_mode(0o2770))?;
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }
}

/// How an injected fault behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Operation number `n` fails once; later ones work (an I/O error the code must
    /// clean up after).
    FailOnce,
    /// Operation `n` and every one after it fail, as if the process died there: no
    /// cleanup reaches the disk.
    Crash,
}

/// A [`Storage`] that counts operations and fails at a chosen one, with a given error.
#[derive(Debug)]
pub struct FaultyStorage {
    at: usize,
    mode: FaultMode,
    errno: i32,
    state: Mutex<Vec<&'static str>>,
}

impl FaultyStorage {
    /// Fail operation number `at` (0-based) in `mode` with `errno` (e.g. `ENOSPC`).
    pub fn new(at: usize, mode: FaultMode, errno: i32) -> Self {
        FaultyStorage {
            at,
            mode,
            errno,
            state: Mutex::new(Vec::new()),
        }
    }

    /// The operations attempted so far, in order.
    pub fn ops(&self) -> Vec<&'static str> {
        self.state.lock().unwrap().clone()
    }

    fn step(&self, op: &'static str) -> io::Result<()> {
        let mut ops = self.state.lock().unwrap();
        let n = ops.len();
        ops.push(op);
        let fail = match self.mode {
            FaultMode::FailOnce => n == self.at,
            FaultMode::Crash => n >= self.at,
        };
        if fail {
            Err(io::Error::from_raw_os_error(self.errno))
        } else {
            Ok(())
        }
    }
}

impl Storage for FaultyStorage {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.step("create")?;
        os::create_new(path)
    }
    fn write(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        self.step("write")?;
        file.write_all(buf)
    }
    fn sync_file(&self, file: &File) -> io::Result<()> {
        self.step("sync_file")?;
        file.sync_data()
    }
    fn write_out(&self, file: &File) -> io::Result<()> {
        self.step("write_out")?;
        os::write_out(file)
    }
    fn sync_inode(&self, file: &File) -> io::Result<()> {
        self.step("sync_inode")?;
        file.sync_all()
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.step("sync_fs")?;
        os::sync_fs(dir)
    }
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step("link")?;
        std::fs::hard_link(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step("sync_dir")?;
        os::sync_dir(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step("remove")?;
        std::fs::remove_file(path)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step("rename")?;
        os::rename_noreplace(from, to)
    }
}
