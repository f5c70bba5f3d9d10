//! Lock tests: live, dead, forked and refreshed holders; 0.50's locks; planted files.

use super::*;

fn policy() -> LockPolicy {
    // As the daemon does: temps pooled for reuse, removed by remove_pooled_temps.
    super::keep_temps_until_exit();
    LockPolicy {
        own_stale: Duration::from_secs(60),
        legacy_stale: Duration::from_secs(600),
    }
}

fn age(p: &Path, secs: u64) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap()
}

/// A node file in a fresh directory (keep the directory alive).
fn a_node() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("1-id-a@b-c@d");
    fs::write(&node, "x").unwrap();
    (dir, node)
}

/// A live process on this host, to hold locks in its name.
fn sleeper() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap()
}

/// A pid that is not running on this host: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn one_holder_at_a_time_and_file_format() {
    let (dir, node) = a_node();
    let a = NodeLock::try_lock(&node, &policy())
        .unwrap()
        .expect("first lock");
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_none());
    let text = fs::read_to_string(lock_path(&node)).unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.len(), 5, "host pid time rand mark: {text:?}");
    assert_eq!(words[0], hostname());
    assert_eq!(words[1], std::process::id().to_string());
    assert_eq!(words[4], OWN_MARK);
    let h = holder(&node, &policy()).unwrap();
    assert_eq!(h.pid, std::process::id());
    assert!(h.ours && !h.stale);
    drop(a);
    assert!(!lock_path(&node).exists());
    // One temp is kept for the next lock (no inode per lock), and goes at exit.
    let names = || -> Vec<String> {
        fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(names().len(), 2, "{:?}", names());
    assert!(names().iter().any(|n| n.starts_with(".lk.")));
    let b = NodeLock::try_lock(&node, &policy())
        .unwrap()
        .expect("free again");
    assert_eq!(names().len(), 3, "the same temp again: {:?}", names());
    drop(b);
    remove_pooled_temps();
    assert_eq!(names(), vec!["1-id-a@b-c@d".to_owned()]);
}

#[test]
fn locks_sharing_a_temp_are_each_their_own() {
    // Two nodes locked from the one pooled temp: releasing one leaves the other held.
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (
        dir.path().join("1-id-a@b-c@d"),
        dir.path().join("1-id-e@f-c@d"),
    );
    fs::write(&x, "x").unwrap();
    fs::write(&y, "y").unwrap();
    let lx = NodeLock::try_lock(&x, &policy()).unwrap().unwrap();
    let ly = NodeLock::try_lock(&y, &policy()).unwrap().unwrap();
    assert_eq!(
        fs::metadata(lock_path(&x)).unwrap().ino(),
        fs::metadata(lock_path(&y)).unwrap().ino(),
        "one inode for both locks"
    );
    drop(lx);
    assert!(!lock_path(&x).exists() && lock_path(&y).exists());
    assert!(
        NodeLock::try_lock(&y, &policy()).unwrap().is_none(),
        "y still held"
    );
    let lx2 = NodeLock::try_lock(&x, &policy()).unwrap();
    assert!(lx2.is_some(), "x free again");
    drop(ly);
    assert!(NodeLock::try_lock(&y, &policy()).unwrap().is_some());
}

/// Our lock temp files in `dir`.
fn lock_temps(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".lk."))
        .collect()
}

#[test]
fn a_pooled_temp_that_was_swept_is_replaced() {
    let (dir, node) = a_node();
    drop(NodeLock::try_lock(&node, &policy()).unwrap().unwrap());
    // Another host's sweep removed our idle temp.
    for temp in lock_temps(dir.path()) {
        fs::remove_file(temp).unwrap();
    }
    let l = NodeLock::try_lock(&node, &policy()).unwrap();
    assert!(l.is_some(), "a new temp is made");
}

#[test]
fn a_new_lock_from_an_old_temp_looks_fresh() {
    let (dir, node) = a_node();
    drop(NodeLock::try_lock(&node, &policy()).unwrap().unwrap());
    for temp in lock_temps(dir.path()) {
        age(&temp, 3600);
    }
    let _l = NodeLock::try_lock(&node, &policy()).unwrap().unwrap();
    let h = holder(&node, &policy()).unwrap();
    assert!(!h.stale, "{h}");
    let age = SystemTime::now()
        .duration_since(fs::metadata(lock_path(&node)).unwrap().modified().unwrap())
        .unwrap();
    assert!(age < Duration::from_secs(60), "mtime renewed: {age:?}");
}

#[test]
fn a_live_holder_on_this_host_is_never_broken_however_old() {
    let (_dir, node) = a_node();
    let mut child = sleeper();
    // A 0.50 holder (no mark), a day old, but its process runs on this host.
    fs::write(
        lock_path(&node),
        format!("{} {} 1 77\n", hostname(), child.id()),
    )
    .unwrap();
    age(&lock_path(&node), 86_400);
    let h = holder(&node, &policy()).unwrap();
    assert!(!h.stale, "{h}");
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
    // Its process is gone: stale at once, whatever its age.
    age(&lock_path(&node), 0);
    assert!(holder(&node, &policy()).unwrap().stale);
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_some());
}

#[test]
fn a_forked_holder_that_lives_keeps_the_lock() {
    let (_dir, node) = a_node();
    let mut child = sleeper();
    // File::NFSLock's newpid(): the parent's line, then the child's.
    fs::write(
        lock_path(&node),
        format!(
            "{h} {} 1 1\n{h} {} 1 2\n",
            dead_pid(),
            child.id(),
            h = hostname()
        ),
    )
    .unwrap();
    assert!(!holder(&node, &policy()).unwrap().stale);
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_some());
}

#[test]
fn dead_pid_on_this_host_is_stale_at_once() {
    let (_dir, node) = a_node();
    fs::write(
        lock_path(&node),
        format!("{} {} 1 2 {OWN_MARK}\n", hostname(), dead_pid()),
    )
    .unwrap();
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_some());
}

#[test]
fn other_hosts_ours_by_refresh_age_050_by_its_own_rule() {
    let (_dir, node) = a_node();
    let lock = lock_path(&node);

    // A 0.50 lock from another host, 10 minutes old: 0.50 may still be sending
    // (its max_connection_time is hours), so it stands.
    fs::write(&lock, "otherhost 4242 1 77\n").unwrap();
    age(&lock, 599);
    let h = holder(&node, &policy()).unwrap();
    assert!(!h.ours && !h.stale, "{h}");
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_none());
    age(&lock, 601);
    assert!(holder(&node, &policy()).unwrap().stale);
    let taken = NodeLock::try_lock(&node, &policy())
        .unwrap()
        .expect("stale 0.50 lock broken");
    // Someone else overwrote our lock (a breaker): releasing must not remove theirs.
    fs::write(&lock, "thief 1 1 1\n").unwrap();
    taken.release();
    assert!(lock.exists());
    fs::remove_file(&lock).unwrap();

    // One of ours from another host: stale once nobody refreshed it for own_stale.
    fs::write(&lock, format!("otherhost 4242 1 77 {OWN_MARK}\n")).unwrap();
    age(&lock, 30);
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_none());
    age(&lock, 61);
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_some());
}

#[test]
fn held_locks_are_kept_fresh() {
    let (_dir, node) = a_node();
    let l = NodeLock::try_lock(&node, &policy()).unwrap().unwrap();
    age(&lock_path(&node), 3600);
    assert!(refresh_held_locks() >= 1);
    let mtime = fs::metadata(lock_path(&node)).unwrap().modified().unwrap();
    assert!(SystemTime::now().duration_since(mtime).unwrap() < Duration::from_secs(5));
    drop(l);
    assert!(!lock_path(&node).exists());
}

#[test]
fn a_planted_fifo_or_symlink_is_nobodys_lock() {
    let (_dir, node) = a_node();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        lock_path(&node),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Must not hang on the FIFO, and takes the lock.
    assert!(NodeLock::try_lock(&node, &policy()).unwrap().is_some());
}

#[test]
fn sweep_removes_only_orphans() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("1-a-b@c-"), "node").unwrap();
    let dead = dead_pid();
    let files = [
        (
            "1-a-b@c-.NFSLock",
            format!("otherhost 1 1 1 {OWN_MARK}\n"),
            120,
        ),
        (
            "2-gone-b@c-.NFSLock",
            format!("otherhost 1 1 1 {OWN_MARK}\n"),
            120,
        ),
        (
            "4-gone-b@c-.NFSLock",
            format!("{} {dead} 1 1\n", hostname()),
            0,
        ),
        ("5-gone-b@c-.NFSLock", "otherhost 1 1 1\n".to_owned(), 120),
        (".lk.1.2.3", "x".to_owned(), 120),
        ("1-a-b@c-.tmp.1234.999.42", "x".to_owned(), 120),
        ("1-a-b@c-.tmp.1234.999.43", "x".to_owned(), 0),
    ];
    for (n, text, secs) in &files {
        fs::write(dir.path().join(n), text).unwrap();
        age(&dir.path().join(n), *secs);
    }
    fs::write(
        dir.path().join("3-fresh-b@c-.NFSLock"),
        format!("otherhost 1 1 1 {OWN_MARK}\n"),
    )
    .unwrap();
    assert_eq!(sweep(dir.path(), &policy()), 4);
    for kept in [
        "1-a-b@c-.NFSLock",         // its node exists: left to the next locker
        "3-fresh-b@c-.NFSLock",     // refreshed recently
        "5-gone-b@c-.NFSLock",      // a 0.50 holder may still be at work
        "1-a-b@c-.tmp.1234.999.43", // a File::NFSLock temp file in use
    ] {
        assert!(dir.path().join(kept).exists(), "{kept}");
    }
}
