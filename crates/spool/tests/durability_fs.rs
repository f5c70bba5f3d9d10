//! Durability detection on the file systems servers run, made as loop images: journaled
//! ext4 (Debian's mkfs defaults, then `data=journal` and `data=writeback`), XFS, and
//! ext4 without a journal. Each is asked what it guarantees, and a commit on it must
//! take the matching flushes. Needs root, losetup and mkfs.xfs (.ci/run installs
//! xfsprogs); elsewhere it says why it did not run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mailspool_events::{Event, Kind, Query};
use mailspool_spool::durability::{NameSync, Setting, detect_path};
use mailspool_spool::events::EventLog;
use mailspool_spool::{FaultMode, FaultyStorage, Spool, SpoolConfig};

/// A mounted loop image, unmounted and removed when dropped.
struct Mounted {
    dir: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Mounted {
    fn new(mkfs: &[&str], options: &str) -> Mounted {
        let scratch = tempfile::Builder::new()
            .prefix("mailspool-fs")
            .tempdir_in("/var/tmp")
            .unwrap();
        let image = scratch.path().join("fs.img");
        // XFS's smallest file system is 300 MB; the image is sparse.
        std::fs::File::create(&image)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let mut cmd = Command::new(mkfs[0]);
        cmd.args(&mkfs[1..]).arg(&image);
        run(&mut cmd);
        let dir = scratch.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let opts = if options.is_empty() {
            "loop".to_owned()
        } else {
            format!("loop,{options}")
        };
        run(Command::new("mount")
            .args(["-o", &opts])
            .arg(&image)
            .arg(&dir));
        Mounted {
            dir,
            _scratch: scratch,
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn missing() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root to mount loop images".into());
    }
    for tool in ["mkfs.ext4", "mkfs.xfs", "mount", "losetup"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// One file system: what it is, how to make and mount it, what must be found.
type Case = (
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
    Option<bool>,
    NameSync,
);

/// The flush steps a commit on `dir` takes.
fn commit_flushes(dir: &Path) -> Vec<&'static str> {
    let probe = Arc::new(FaultyStorage::new(usize::MAX, FaultMode::FailOnce, 28));
    let spool = Spool::create(dir.join("spool"), SpoolConfig::default())
        .unwrap()
        .with_storage(probe.clone());
    let mut stage = spool.stage("FSTEST").unwrap();
    std::io::Write::write_all(&mut stage, b"From: a@x.org\n\nhello\n").unwrap();
    let c = stage
        .commit("a@x.org", &["b@y.org".into(), "c@y.org".into()])
        .unwrap();
    assert_eq!(
        std::fs::read(&c.nodes[1]).unwrap(),
        b"From: a@x.org\n\nhello\n"
    );
    probe
        .ops()
        .into_iter()
        .filter(|o| o.starts_with("sync") || *o == "write_out")
        .collect()
}

#[test]
fn each_file_system_says_what_makes_a_name_durable_and_commits_accordingly() {
    if let Some(why) = missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let cases: [Case; 5] = [
        (
            "journaled ext4",
            &["mkfs.ext4", "-q", "-F"],
            "",
            "ext4",
            Some(true),
            NameSync::FileFsync,
        ),
        (
            "ext4 data=journal",
            &["mkfs.ext4", "-q", "-F"],
            "data=journal",
            "ext4",
            Some(true),
            NameSync::FileFsync,
        ),
        (
            "ext4 data=writeback",
            &["mkfs.ext4", "-q", "-F"],
            "data=writeback",
            "ext4",
            Some(true),
            NameSync::DirectoryFsync,
        ),
        (
            "ext4 without a journal",
            &["mkfs.ext4", "-q", "-F", "-O", "^has_journal"],
            "",
            "ext4",
            Some(false),
            NameSync::DirectoryFsync,
        ),
        (
            "XFS",
            &["mkfs.xfs", "-q", "-f"],
            "",
            "xfs",
            Some(true),
            NameSync::FileFsync,
        ),
    ];
    for (what, mkfs, options, fs, journal, links) in cases {
        let m = Mounted::new(mkfs, options);
        let d = detect_path(&m.dir, Setting::Auto).unwrap();
        assert_eq!(d.fs, fs, "{what}: {d}");
        assert_eq!(d.journal, journal, "{what}: {d}");
        assert_eq!(d.links, links, "{what}: {d}");
        assert!(
            d.device.as_deref().is_some_and(|n| n.starts_with("loop")),
            "{what}: {d}"
        );
        let flushes = commit_flushes(&m.dir);
        let expected: &[&str] = match links {
            NameSync::FileFsync => &["write_out", "sync_inode"],
            NameSync::DirectoryFsync => &["sync_file", "sync_dir"],
        };
        assert_eq!(flushes, expected, "{what}: {d}");
        // The history's durable appends take the same road (written out where the
        // journal orders them, fdatasync'd elsewhere), and read back.
        let log = EventLog::with_setting(m.dir.join("events"), Setting::Auto);
        let event = Event::new(Kind::Delivered, "FSTEST", "a@x.org", "b@y.org");
        log.append(std::slice::from_ref(&event), true).unwrap();
        let page = log
            .read(&Query {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.events.len(), 1, "{what}");
        // The override wins either way, and says what auto would have done.
        let always = detect_path(&m.dir, Setting::Always).unwrap();
        assert_eq!(always.links, NameSync::DirectoryFsync, "{what}");
        assert!(always.reason.contains(&d.reason), "{what}: {always}");
        eprintln!("{what}: {d}");
    }
}
