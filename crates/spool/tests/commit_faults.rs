//! A failure or a crash at every step of the commit (injected through the storage
//! layer) leaves either no node or whole nodes only; never a partial one, never a
//! replaced one, and nothing in tmp/ once the spool is reopened.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailspool_spool::durability::Setting;
use mailspool_spool::{FaultMode, FaultyStorage, NodeName, Parsed, Spool, SpoolConfig};

const ENOSPC: i32 = 28;

/// Directory fsyncs whatever the file system under the test is, so that the steps are
/// the same everywhere; the journaled sequence is run by the `_journaled` tests.
fn config() -> SpoolConfig {
    config_with(Setting::Always)
}

fn config_with(fsync_directories: Setting) -> SpoolConfig {
    SpoolConfig {
        tmp_max_age: Duration::ZERO,
        fsync_directories,
        ..SpoolConfig::default()
    }
}

fn message() -> Vec<u8> {
    // Over the 64 KiB stage buffer, so the body takes several writes.
    let mut m = b"From: a@x.org\nTo: b@y.org\n\n".to_vec();
    for i in 0..3000 {
        writeln!(m, "line {i:05} of a long enough body").unwrap();
    }
    m
}

fn rcpts() -> Vec<String> {
    vec![
        "b@y.org".into(),
        "c@y.org".into(),
        "first-last/x%@z.org".into(),
    ]
}

fn nodes(dir: &Path) -> Vec<(String, Vec<u8>, u64)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir.join("0")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let meta = e.metadata().unwrap();
        out.push((name, fs::read(e.path()).unwrap(), meta.nlink()));
    }
    out
}

fn tmp_entries(dir: &Path) -> usize {
    fs::read_dir(dir.join("tmp")).unwrap().count()
}

fn commit_with(spool: &Spool) -> mailspool_spool::Result<mailspool_spool::Committed> {
    let mut stage = spool.stage("0123456789ABCDEFGHJKMNPQRS")?;
    stage
        .write_all(&message())
        .map_err(|e| mailspool_spool::SpoolError::Io {
            op: "write",
            path: "stage".into(),
            source: e,
        })?;
    stage.commit("a@x.org", &rcpts())
}

/// Number of storage operations of a successful commit.
fn steps(setting: Setting) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(FaultyStorage::new(usize::MAX, FaultMode::FailOnce, ENOSPC));
    let spool = Spool::create(dir.path(), config_with(setting))
        .unwrap()
        .with_storage(probe.clone());
    commit_with(&spool).unwrap();
    let ops = probe.ops();
    let flushes = match setting {
        // Data written out before the links, one fsync of the inode after them.
        Setting::Never => ["write_out", "sync_inode"],
        _ => ["sync_file", "sync_dir"],
    };
    assert!(flushes.iter().all(|f| ops.contains(f)), "{ops:?}");
    let first_link = ops.iter().position(|o| *o == "link").unwrap();
    let last_link = ops.iter().rposition(|o| *o == "link").unwrap();
    let at = |op| ops.iter().position(|o| *o == op).unwrap();
    assert!(
        at(flushes[0]) < first_link && at(flushes[1]) > last_link,
        "data before the names, names synced after: {ops:?}"
    );
    assert_eq!(ops.iter().filter(|o| **o == "link").count(), 3, "{ops:?}");
    ops.len()
}

#[test]
fn success_makes_one_inode_with_a_name_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), config()).unwrap();
    let c = commit_with(&spool).unwrap();
    assert_eq!(c.nodes.len(), 3);
    assert_eq!(c.size, message().len() as u64);
    let found = nodes(dir.path());
    assert_eq!(found.len(), 3);
    let mut tos = HashSet::new();
    for (name, data, nlink) in &found {
        assert!(*data == message(), "{name}: content differs");
        assert_eq!(*nlink, 3, "one inode, three names");
        let Parsed::Node(n) = NodeName::parse(name) else {
            panic!("{name}")
        };
        tos.insert(n.to);
    }
    assert_eq!(tos, rcpts().into_iter().collect());
    assert_eq!(tmp_entries(dir.path()), 0);
    let mode = fs::metadata(&c.nodes[0]).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        fs::metadata(dir.path().join("0")).unwrap().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_failure_at_any_step_leaves_nothing() {
    failure_at_any_step_leaves_nothing(Setting::Always);
}

#[test]
fn a_failure_at_any_step_leaves_nothing_journaled() {
    failure_at_any_step_leaves_nothing(Setting::Never);
}

fn failure_at_any_step_leaves_nothing(setting: Setting) {
    for at in 0..steps(setting) {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStorage::new(at, FaultMode::FailOnce, ENOSPC));
        let spool = Spool::create(dir.path(), config_with(setting))
            .unwrap()
            .with_storage(faulty.clone());
        let err = commit_with(&spool).expect_err("the fault must surface");
        assert!(
            err.is_full() || err.to_string().contains("fsync"),
            "step {at} ({:?}): {err}",
            faulty.ops().get(at)
        );
        assert!(nodes(dir.path()).is_empty(), "step {at}: nodes left");
        assert_eq!(tmp_entries(dir.path()), 0, "step {at}: stage left");
    }
}

#[test]
fn a_crash_at_any_step_leaves_only_whole_nodes() {
    crash_at_any_step_leaves_only_whole_nodes(Setting::Always);
}

#[test]
fn a_crash_at_any_step_leaves_only_whole_nodes_journaled() {
    crash_at_any_step_leaves_only_whole_nodes(Setting::Never);
}

fn crash_at_any_step_leaves_only_whole_nodes(setting: Setting) {
    let total = steps(setting);
    for at in 0..=total {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStorage::new(at, FaultMode::Crash, ENOSPC));
        let spool = Spool::create(dir.path(), config_with(setting))
            .unwrap()
            .with_storage(faulty.clone());
        let result = commit_with(&spool);
        drop(spool);
        let found = nodes(dir.path());
        if result.is_ok() {
            assert_eq!(at, total);
            assert_eq!(found.len(), 3);
        }
        for (name, data, _) in &found {
            assert!(*data == message(), "step {at}: partial node {name}");
        }
        // The next open for writing clears the crashed stage; nodes stay whole.
        Spool::create(dir.path(), config()).unwrap();
        assert_eq!(
            tmp_entries(dir.path()),
            0,
            "step {at}: stage survives reopen"
        );
        let names = |v: &[(String, Vec<u8>, u64)]| -> Vec<(String, bool)> {
            v.iter()
                .map(|(n, d, _)| (n.clone(), *d == message()))
                .collect()
        };
        assert_eq!(
            names(&nodes(dir.path())),
            names(&found),
            "step {at}: reopen changed nodes"
        );
    }
}

#[test]
fn a_commit_never_replaces_an_existing_node() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), config()).unwrap();
    let id = "SAMEID";
    let first = {
        let mut s = spool.stage(id).unwrap();
        s.write_all(b"first\n").unwrap();
        s.commit("a@x.org", &["b@y.org".to_owned()]).unwrap()
    };
    // Same id, same second, same addresses: the name is taken.
    let second = {
        let mut s = spool.stage(id).unwrap();
        s.write_all(b"second\n").unwrap();
        s.commit("a@x.org", &["b@y.org".to_owned()]).unwrap()
    };
    assert_eq!(first.id, id);
    assert_ne!(first.nodes[0], second.nodes[0]);
    // Unless the clock passed a second between the two (a name of its own anyway).
    let second_of = |p: &Path| {
        p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_owned()
    };
    if second_of(&first.nodes[0]) == second_of(&second.nodes[0]) {
        assert_ne!(second.id, id, "the second message got its own id");
    }
    assert_eq!(fs::read(&first.nodes[0]).unwrap(), b"first\n");
    assert_eq!(fs::read(&second.nodes[0]).unwrap(), b"second\n");
}

#[test]
fn stale_stages_are_removed_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    fs::write(dir.path().join("tmp/old"), b"x").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    fs::File::options()
        .write(true)
        .open(dir.path().join("tmp/old"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::write(dir.path().join("tmp/fresh"), b"x").unwrap();
    Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    assert!(!dir.path().join("tmp/old").exists());
    assert!(
        dir.path().join("tmp/fresh").exists(),
        "a live commit's stage"
    );
}

#[test]
fn a_crashed_writers_young_stage_goes_a_live_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    // A live commit: its stage is held.
    let mut live = spool.stage("LIVE").unwrap();
    live.write_all(b"in progress").unwrap();
    // A crashed writer's stage: nobody holds it. Three seconds old, well under an hour.
    let crashed = dir.path().join("tmp/crashed");
    fs::write(&crashed, b"half").unwrap();
    let t = std::time::SystemTime::now() - Duration::from_secs(3);
    fs::File::options()
        .write(true)
        .open(&crashed)
        .unwrap()
        .set_modified(t)
        .unwrap();
    for e in fs::read_dir(dir.path().join("tmp")).unwrap() {
        let p = e.unwrap().path();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    assert!(
        !crashed.exists(),
        "abandoned stage removed at the next start"
    );
    assert_eq!(tmp_entries(dir.path()), 1, "the live stage stays");
    live.commit("a@x.org", &["b@y.org".to_owned()]).unwrap();
    assert_eq!(tmp_entries(dir.path()), 0);
}

/// A batch of three messages through `commit_batch`.
fn batch_with(spool: &Spool) -> Vec<mailspool_spool::Result<mailspool_spool::Committed>> {
    let mut batch = Vec::new();
    for i in 0..3 {
        let mut stage = spool.stage(&format!("BATCH{i}")).unwrap();
        stage.write_all(&message()).unwrap();
        batch.push((stage, "a@x.org".to_owned(), rcpts()));
    }
    mailspool_spool::commit_batch(batch)
}

#[test]
fn a_batch_shares_one_flush_and_one_directory_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(FaultyStorage::new(usize::MAX, FaultMode::FailOnce, ENOSPC));
    let spool = Spool::create(dir.path(), config())
        .unwrap()
        .with_storage(probe.clone());
    let results = batch_with(&spool);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let ops = probe.ops();
    let count = |op: &str| ops.iter().filter(|o| **o == op).count();
    assert_eq!(
        (
            count("sync_fs"),
            count("sync_dir"),
            count("sync_file"),
            count("link")
        ),
        (1, 1, 0, 9),
        "{ops:?}"
    );
    let found = nodes(dir.path());
    assert_eq!(found.len(), 9);
    assert!(
        found
            .iter()
            .all(|(_, data, nlink)| *data == message() && *nlink == 3)
    );
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[test]
fn a_failure_at_any_step_of_a_batch_leaves_whole_messages_or_nothing() {
    let total = {
        let dir = tempfile::tempdir().unwrap();
        let probe = Arc::new(FaultyStorage::new(usize::MAX, FaultMode::FailOnce, ENOSPC));
        let spool = Spool::create(dir.path(), config())
            .unwrap()
            .with_storage(probe.clone());
        batch_with(&spool);
        probe.ops().len()
    };
    for at in 0..total {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStorage::new(at, FaultMode::FailOnce, ENOSPC));
        let spool = Spool::create(dir.path(), config())
            .unwrap()
            .with_storage(faulty.clone());
        // Stages are made before the fault can hit a commit step; a failed stage write
        // (the first ops) is the caller's, as for a single commit.
        let mut batch = Vec::new();
        let mut staged_ok = true;
        for i in 0..3 {
            let Ok(mut stage) = spool.stage(&format!("BATCH{i}")) else {
                staged_ok = false;
                break;
            };
            if stage.write_all(&message()).is_err() {
                staged_ok = false;
                break;
            }
            batch.push((stage, "a@x.org".to_owned(), rcpts()));
        }
        if !staged_ok {
            drop(batch);
            assert!(nodes(dir.path()).is_empty());
            assert_eq!(tmp_entries(dir.path()), 0, "step {at}");
            continue;
        }
        let results = mailspool_spool::commit_batch(batch);
        let ok: HashSet<String> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|c| c.id.clone()))
            .collect();
        assert!(
            ok.len() < 3,
            "step {at} ({:?}): the fault must surface",
            faulty.ops().get(at)
        );
        // Exactly the messages reported committed are there, each whole with all its
        // recipients; the others left nothing.
        let found = nodes(dir.path());
        for (name, data, _) in &found {
            let Parsed::Node(n) = NodeName::parse(name) else {
                panic!("{name}")
            };
            assert!(
                ok.contains(&n.id),
                "step {at}: {name} not reported committed"
            );
            assert_eq!(*data, message());
        }
        assert_eq!(found.len(), ok.len() * 3, "step {at}");
        assert_eq!(tmp_entries(dir.path()), 0, "step {at}: stage left");
    }
}
