//! Root committing into a spool that is another user's (a root program using the C or
//! Perl binding on the package's spool): the message belongs to the spool's owner, so
//! that owner's daemon can open it. Needs root (CI runs as root); skipped otherwise.

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use mailspool_spool::{Spool, SpoolConfig};

#[test]
fn roots_messages_belong_to_the_spools_owner() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to give a spool to another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let spool = Spool::create(&spool_dir, SpoolConfig::default()).unwrap();
    // The spool and everything in it is the daemon's (uid/gid 4242 here).
    let (uid, gid) = (4242, 4242);
    for entry in walk(&spool_dir) {
        std::os::unix::fs::lchown(&entry, Some(uid), Some(gid)).unwrap();
    }
    let id = spool.new_id();
    let mut stage = spool.stage(&id).unwrap();
    stage.write_all(b"Subject: from root\n\nhi\n").unwrap();
    stage
        .commit("root@host.test", &["a@example.org".to_owned()])
        .unwrap();
    let nodes: Vec<_> = std::fs::read_dir(spool_dir.join("0"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(nodes.len(), 1);
    let meta = nodes[0].metadata().unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid, gid),
        "the node is the daemon's"
    );
    assert_eq!(meta.mode() & 0o777, 0o600);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
