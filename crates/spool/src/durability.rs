//! When a new name is durable: what the file system under the spool guarantees, found
//! once at open.
//!
//! A commit must make two things survive a crash: the message's bytes and its names in
//! tier 0. How many flushes that takes depends on the file system, and the kernel's
//! sources say which (docs/design.md, "Durability per file system"):
//!
//! - **ext4 with a journal**, `data=ordered` (Debian's default) or `data=journal`:
//!   `fsync` of a file commits the journal transaction that last changed its inode
//!   (`ext4_sync_file` waits for `i_sync_tid`, fs/ext4/fsync.c). `link` changes the
//!   inode (its link count) and the directory in one transaction, so the file's `fsync`
//!   after the links makes the names durable too: no directory fsync. (`fdatasync`
//!   waits for `i_datasync_tid` only, which a link does not move: it must be `fsync`.)
//! - **XFS**: every metadata change is logged; `xfs_file_fsync` forces the log up to
//!   the last change of the inode (fs/xfs/xfs_file.c), and a link logs the directory
//!   with the inode. Same rule.
//! - **ext4 without a journal**, ext2, and anything else: the file's fsync writes its
//!   own inode and data, and `ext4_sync_parent` follows only a newly *created* file
//!   (EXT4_STATE_NEWENTRY), never a link. The directory is fsynced.
//! - `data=writeback` ext4 journals names but not the order of data: kept on the
//!   directory fsync, like anything this module does not know.

use std::fs::File;
use std::os::fd::AsFd;

/// How a commit makes the names it links durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSync {
    /// The file's own `fsync` after the links (a journal commits them with the inode).
    FileFsync,
    /// An `fsync` of the directory after the links.
    DirectoryFsync,
}

/// The `fsync_directories` setting: `auto` decides by file system, `always` and
/// `never` override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Setting {
    #[default]
    Auto,
    Always,
    Never,
}

impl Setting {
    pub fn parse(s: &str) -> Option<Setting> {
        match s {
            "auto" => Some(Setting::Auto),
            "always" => Some(Setting::Always),
            "never" => Some(Setting::Never),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Setting::Auto => "auto",
            Setting::Always => "always",
            Setting::Never => "never",
        }
    }
}

/// What was found about a file system and what it means for commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// The file system type as the kernel names it (`ext4`, `xfs`, ...), or `unknown`.
    pub fs: String,
    /// The block device (`vda1`, `loop0`), when there is one.
    pub device: Option<String>,
    /// Whether it has a journal (`None`: not a journaling question this module asks).
    pub journal: Option<bool>,
    /// ext4's data mode (`ordered`, `journal`, `writeback`).
    pub data_mode: Option<String>,
    /// How linked names are made durable.
    pub links: NameSync,
    /// Whether a newly *created* file's fsync makes its name durable (the drop writes
    /// files in place): true wherever `links` is `FileFsync`, and on btrfs, whose fsync
    /// logs a new inode's name.
    pub created_names_with_file: bool,
    /// The setting that decided it.
    pub setting: Setting,
    /// Why, in a sentence (logged at start, shown by `doctor`).
    pub reason: String,
}

const EXT4_MAGIC: i64 = 0xEF53;
const XFS_MAGIC: i64 = 0x5846_5342;
const BTRFS_MAGIC: i64 = 0x9123_683E;

/// Find out what the file system under `fd` (a directory or file) guarantees.
#[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
pub fn detect(fd: impl AsFd, setting: Setting) -> Durability {
    let fd = fd.as_fd();
    let magic = rustix::fs::fstatfs(fd).map(|s| s.f_type as i64).ok();
    let dev = rustix::fs::fstat(fd)
        .ok()
        .map(|st| (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev)));
    // Only ext4 has options that matter (`data=`), and a file system the magic does
    // not name needs its name (`nfs4`, `fuse.glusterfs`) for people; the drop asks once
    // per message, so the table is read only then, into a buffer sized for it (proc
    // files report no size, and growing from nothing takes a read per doubling).
    let named = matches!(magic, Some(XFS_MAGIC | BTRFS_MAGIC));
    let mount = dev.filter(|_| !named).and_then(|(major, minor)| {
        use std::io::Read;
        let mut info = String::with_capacity(16 * 1024);
        std::fs::File::open("/proc/self/mountinfo")
            .and_then(|mut f| f.read_to_string(&mut info))
            .ok()?;
        mount_of(&info, major, minor)
    });
    let device = dev.and_then(|(major, minor)| block_device_name(major, minor));
    // Escaped: a FUSE mount's subtype is whatever its mounter chose.
    let fs = mount
        .as_ref()
        .map(|m| crate::escape(&m.fs).into_owned())
        .unwrap_or_else(|| {
            match magic {
                Some(EXT4_MAGIC) => "ext4",
                Some(XFS_MAGIC) => "xfs",
                Some(BTRFS_MAGIC) => "btrfs",
                _ => "unknown",
            }
            .to_owned()
        });
    let (journal, data_mode) = if magic == Some(EXT4_MAGIC) {
        let journal = device.as_deref().map(has_jbd2_journal);
        let data = mount
            .as_ref()
            .and_then(|m| m.option("data"))
            .unwrap_or("ordered")
            .to_owned();
        (journal, Some(data))
    } else if magic == Some(XFS_MAGIC) {
        (Some(true), None)
    } else {
        (None, None)
    };
    let (auto, why) = match magic {
        Some(XFS_MAGIC) => (
            NameSync::FileFsync,
            "XFS logs a link with its inode and fsync forces the log up to the inode's last change (xfs_file_fsync)".to_owned(),
        ),
        Some(EXT4_MAGIC) => match (journal, data_mode.as_deref()) {
            (Some(true), Some("ordered" | "journal")) => (
                NameSync::FileFsync,
                format!(
                    "{fs} with a journal (data={}): fsync commits the transaction that linked the names (ext4_sync_file, i_sync_tid)",
                    data_mode.as_deref().unwrap_or("ordered")
                ),
            ),
            (Some(true), _) => (
                NameSync::DirectoryFsync,
                format!(
                    "{fs} in data={}: names are journaled but data is not ordered before them",
                    data_mode.as_deref().unwrap_or("?")
                ),
            ),
            (Some(false), _) => (
                NameSync::DirectoryFsync,
                format!("{fs} without a journal: a file's fsync does not carry a new link's name (ext4_sync_parent follows only new files)"),
            ),
            (None, _) => (
                NameSync::DirectoryFsync,
                format!("{fs}: cannot tell whether it has a journal"),
            ),
        },
        _ => (
            NameSync::DirectoryFsync,
            format!("{fs}: not a file system whose fsync is known to carry new names"),
        ),
    };
    let (links, reason) = match setting {
        Setting::Auto => (auto, why),
        Setting::Always => (
            NameSync::DirectoryFsync,
            format!("fsync_directories = \"always\" (auto would say: {why})"),
        ),
        Setting::Never => (
            NameSync::FileFsync,
            format!(
                "fsync_directories = \"never\": the administrator vouches for this file system (auto would say: {why})"
            ),
        ),
    };
    let created_names_with_file =
        links == NameSync::FileFsync || (setting == Setting::Auto && magic == Some(BTRFS_MAGIC));
    Durability {
        fs,
        device,
        journal,
        data_mode,
        links,
        created_names_with_file,
        setting,
        reason,
    }
}

/// What nothing could be found out about: directory fsyncs unless overridden.
pub fn unknown(setting: Setting) -> Durability {
    let links = match setting {
        Setting::Never => NameSync::FileFsync,
        _ => NameSync::DirectoryFsync,
    };
    Durability {
        fs: "unknown".into(),
        device: None,
        journal: None,
        data_mode: None,
        links,
        created_names_with_file: links == NameSync::FileFsync,
        setting,
        reason: "the file system could not be examined".into(),
    }
}

/// [`detect`] on a path (a directory is opened read-only, nothing is created).
pub fn detect_path(path: &std::path::Path, setting: Setting) -> std::io::Result<Durability> {
    Ok(detect(File::open(path)?, setting))
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.links {
            NameSync::FileFsync => "the file's fsync makes its new names durable",
            NameSync::DirectoryFsync => "new names are made durable by a directory fsync",
        };
        write!(f, "{}", self.fs)?;
        if let Some(d) = &self.device {
            write!(f, " on {d}")?;
        }
        write!(f, ": {how} ({})", self.reason)
    }
}

/// One mount's file system type and super options.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    fs: String,
    options: String,
}

impl Mount {
    fn option(&self, key: &str) -> Option<&str> {
        self.options
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The mount of device `major:minor` in /proc/self/mountinfo (proc(5): fields up to
/// " - ", then type, source and the super block's options, shared by every mount of it).
fn mount_of(info: &str, major: u32, minor: u32) -> Option<Mount> {
    let want = format!("{major}:{minor}");
    info.lines().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        if head.split(' ').nth(2)? != want {
            return None;
        }
        let mut tail = tail.split(' ');
        let fs = tail.next()?.to_owned();
        let _source = tail.next();
        let options = tail.next().unwrap_or("").to_owned();
        Some(Mount { fs, options })
    })
}

/// The kernel's name of block device `major:minor` (`vda1`), from /sys.
fn block_device_name(major: u32, minor: u32) -> Option<String> {
    let target = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

/// jbd2 lists every journal it runs as `/proc/fs/jbd2/<device>-<journal inode>`.
fn has_jbd2_journal(device: &str) -> bool {
    std::fs::read_dir("/proc/fs/jbd2").is_ok_and(|d| {
        d.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(device))
                .is_some_and(|rest| rest.starts_with('-'))
        })
    })
}

/// Whether the file system under `dir` keeps hard links' identity: a second name of a
/// file shows the same inode number, and the file a link count of 2. The spool rests on
/// it (a message is one inode linked once per recipient; its nodes are counted by
/// their link count; File::NFSLock checks a lock by its link count). Local file
/// systems and NFS keep it; sshfs does not (SFTP carries neither inode numbers nor link
/// counts: every name is a file of its own with one link), and there a shared spool
/// could deliver a message twice or split it. Probed with two names in `dir`.
/// An error means the spool cannot work there; `Ok(false)`: the probe could not be
/// made (no write access to `dir`), nothing is known.
pub fn check_hard_links(dir: &std::path::Path) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let first = dir.join(format!(".mailspool-link-probe-{}", crate::unique_token()));
    let mut second = first.clone().into_os_string();
    second.push(".link");
    let second = std::path::PathBuf::from(second);
    if crate::storage::os::create_new(&first).is_err() {
        return Ok(false);
    }
    let shown = crate::escape(&dir.display().to_string()).into_owned();
    let result = (|| {
        std::fs::hard_link(&first, &second)
            .map_err(|e| format!("{shown}: hard links are not supported here: {e}"))?;
        let (a, b) = (
            std::fs::symlink_metadata(&first).map_err(|e| e.to_string())?,
            std::fs::symlink_metadata(&second).map_err(|e| e.to_string())?,
        );
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) || a.nlink() != 2 {
            return Err(format!(
                "{shown} is on a file system that does not keep hard links' identity (two \
                 names of one file show inodes {} and {} with {} and {} links; sshfs does \
                 this): the spool's messages, nodes and NFS locks depend on it. Put the \
                 spool on a local file system, NFS or GlusterFS, or use a PostgreSQL spool \
                 to share it between hosts",
                a.ino(),
                b.ino(),
                a.nlink(),
                b.nlink()
            ));
        }
        Ok(true)
    })();
    let _ = std::fs::remove_file(&second);
    let _ = std::fs::remove_file(&first);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
45 27 7:0 / /mnt/j rw,relatime - ext4 /dev/loop0 rw,data=journal
46 27 7:1 / /mnt/x rw,relatime shared:9 - xfs /dev/loop1 rw,inode64,logbufs=8,logbsize=32k,noquota
";

    #[test]
    fn a_file_system_the_magic_does_not_name_is_named_from_the_mount_table() {
        // /dev/shm is tmpfs on Linux machines that have it: not ext4, XFS or btrfs.
        let Ok(dir) = std::fs::File::open("/dev/shm") else {
            return;
        };
        let found = detect(&dir, Setting::Auto);
        assert_eq!(found.fs, "tmpfs");
        assert_eq!(found.links, NameSync::DirectoryFsync);
        assert!(found.reason.starts_with("tmpfs: "), "{}", found.reason);
    }

    #[test]
    fn mountinfo_gives_type_and_super_options_by_device() {
        let root = mount_of(INFO, 254, 1).unwrap();
        assert_eq!(root.fs, "ext4");
        assert_eq!(root.option("data"), None);
        assert_eq!(
            mount_of(INFO, 7, 0).unwrap().option("data"),
            Some("journal")
        );
        assert_eq!(mount_of(INFO, 7, 1).unwrap().fs, "xfs");
        assert_eq!(mount_of(INFO, 7, 9), None);
    }

    #[test]
    fn the_overrides_win_and_say_what_auto_would_do() {
        let dir = tempfile::tempdir().unwrap();
        let auto = detect_path(dir.path(), Setting::Auto).unwrap();
        let always = detect_path(dir.path(), Setting::Always).unwrap();
        assert_eq!(always.links, NameSync::DirectoryFsync);
        assert!(always.reason.contains(&auto.reason), "{}", always.reason);
        let never = detect_path(dir.path(), Setting::Never).unwrap();
        assert_eq!(never.links, NameSync::FileFsync);
        assert!(never.created_names_with_file);
    }

    #[test]
    fn a_local_file_system_keeps_hard_links_identity() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_hard_links(dir.path()), Ok(true));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left"
        );
        assert_eq!(check_hard_links(&dir.path().join("missing")), Ok(false));
    }
}
