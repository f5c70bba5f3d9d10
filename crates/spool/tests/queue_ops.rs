//! Queue operations keep a node whole and findable: side data survives a retry or a
//! fallback, hold moves a node out of every tier, a fallback writes the name encoded.

use std::io::Write;

use mailspool_spool::side::Attempt;
use mailspool_spool::{Spool, SpoolConfig};

fn queue_one(spool: &Spool, to: &str) -> String {
    let id = spool.new_id();
    let mut s = spool.stage(&id).unwrap();
    s.write_all(b"Subject: x\n\nbody\n").unwrap();
    s.commit("me@x.org", &[to.to_owned()]).unwrap();
    id
}

#[test]
fn side_data_follows_the_node_and_hold_hides_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    let id = queue_one(&spool, "first-last@y.org");
    let node = spool.find(&id).unwrap().remove(0);
    assert!(!spool.has_side_data());
    spool
        .record_attempt(
            &node.name,
            &Attempt {
                time: 1,
                host: "mx.y.org".into(),
                reply: "451 4.3.0 try later".into(),
                delivered: false,
                node: None,
            },
        )
        .unwrap();
    assert_eq!(
        spool.last_error(&node.name).as_deref(),
        Some("451 4.3.0 try later")
    );

    // A fallback to tier 1: new time, same side data, name encoded.
    let lock = spool.lock_node(&node).unwrap();
    let moved = spool.move_to_tier_locked(&node, 1).unwrap();
    drop(lock);
    assert_eq!(moved.tier, 1);
    assert!(moved.file_name.contains("-first%2Dlast@y.org-me@x.org"));
    assert!(moved.path.starts_with(dir.path().join("1")));
    assert_eq!(
        spool.last_error(&moved.name).as_deref(),
        Some("451 4.3.0 try later")
    );
    assert_eq!(spool.due_at(&moved), moved.name.time + 1800);

    let retried = spool.retry_now(&moved).unwrap();
    assert!(spool.due_at(&retried) <= mailspool_spool::now());
    assert_eq!(spool.attempts(&retried.name).len(), 1);

    let held = spool.hold(&retried).unwrap();
    assert!(held.held && held.path.starts_with(dir.path().join("hold/1")));
    assert!(
        spool.scan_tier(1).unwrap().nodes.is_empty(),
        "held node left in tier"
    );
    let released = spool.release(&held).unwrap();
    assert_eq!(spool.scan_tier(1).unwrap().nodes, vec![released.clone()]);

    spool.delete(&released).unwrap();
    assert!(spool.find(&id).is_err());
    assert!(
        spool.attempts(&released.name).is_empty(),
        "side data removed with the node"
    );
}

#[test]
fn a_locked_node_is_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    let id = queue_one(&spool, "a@y.org");
    let node = spool.find(&id).unwrap().remove(0);
    let _held_by_a_dequeuer = spool.lock_node(&node).unwrap();
    let err = spool.delete(&node).unwrap_err();
    assert!(err.to_string().contains("locked by"), "{err}");
    assert!(node.path.exists());
}

#[test]
fn side_data_of_a_node_another_dequeuer_delivered_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    let attempt = Attempt {
        time: 1,
        host: "mx".into(),
        reply: "451 later".into(),
        delivered: false,
        node: None,
    };
    let kept = spool
        .find(&queue_one(&spool, "kept@y.org"))
        .unwrap()
        .remove(0);
    let gone = spool
        .find(&queue_one(&spool, "gone@y.org"))
        .unwrap()
        .remove(0);
    let young = spool
        .find(&queue_one(&spool, "young@y.org"))
        .unwrap()
        .remove(0);
    for n in [&kept, &gone, &young] {
        spool.record_attempt(&n.name, &attempt).unwrap();
    }
    // 0.50 delivered two of them: it unlinks the node and knows nothing of meta/.
    std::fs::remove_file(&gone.path).unwrap();
    std::fs::remove_file(&young.path).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in std::fs::read_dir(dir.path().join("meta")).unwrap() {
        let p = e.unwrap().path();
        if !p.to_str().unwrap().contains("young") {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
    assert_eq!(spool.prune_side_data().unwrap(), 1);
    assert!(
        spool.last_error(&kept.name).is_some(),
        "a live node keeps its history"
    );
    assert!(spool.attempts(&gone.name).is_empty(), "pruned");
    assert!(
        !spool.attempts(&young.name).is_empty(),
        "recent history is left for a scan that may have missed a moving node"
    );
    // fsck sees the rest but does not count it as a problem.
    let report = spool.fsck(false).unwrap();
    assert!(
        report.findings.iter().all(|f| !f.is_problem()),
        "{:?}",
        report.findings
    );
}

#[test]
fn another_users_node_is_read_only_where_nobody_else_can_write() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to give a file to another user (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    let id = queue_one(&spool, "a@y.org");
    let node = spool.find(&id).unwrap().remove(0);
    // Written by a 0.50 dequeuer running as another user: fine in a tier only its
    // owner can write to.
    std::os::unix::fs::chown(&node.path, Some(54321), Some(54321)).unwrap();
    assert!(spool.open_node(&node).is_ok());
    // The same file in a tier others can write to may have been planted: refused.
    std::fs::set_permissions(
        dir.path().join("0"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    let e = spool.open_node(&node).unwrap_err();
    assert!(e.to_string().contains("owned by uid 54321"), "{e}");
}

#[test]
fn a_delay_warning_is_claimed_once_and_can_be_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    let name = mailspool_spool::NodeName::new(1, "ID1", "b@y.test", "a@x.test");
    let other = mailspool_spool::NodeName::new(1, "ID1", "c@y.test", "z@x.test");
    assert!(spool.claim_delay_warning(&name).unwrap());
    // Once per message (id and sender), whichever recipient asks.
    let same_message = mailspool_spool::NodeName::new(9, "ID1", "c@y.test", "a@x.test");
    assert!(!spool.claim_delay_warning(&same_message).unwrap());
    assert!(
        spool.claim_delay_warning(&other).unwrap(),
        "another sender's message"
    );
    // A report that could not be queued gives the claim back.
    spool.release_delay_warning(&name);
    assert!(spool.claim_delay_warning(&name).unwrap());
    assert_eq!(
        spool.prune_delay_warnings(std::time::Duration::from_secs(3600)),
        0
    );
    assert_eq!(spool.prune_delay_warnings(std::time::Duration::ZERO), 2);
    assert!(spool.claim_delay_warning(&name).unwrap());
}

/// Side data another dequeuer left behind (0.50 delivered its node; 0.50 reuses ids, so
/// a new node can carry the same name) is not shown as the new node's last error: each
/// attempt names the stored message it was made for.
#[test]
fn an_orphaned_attempt_of_another_message_is_not_this_nodes_last_error() {
    use mailspool_spool::{Listed, Store};
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path(), SpoolConfig::default()).unwrap();
    let id = queue_one(&spool, "r@y.org");
    let node = spool.find(&id).unwrap().remove(0);
    let listed = |spool: &Spool| -> Option<String> {
        let mut out = None;
        Store::visit_listing(spool, &mut |l: Listed| {
            out = l.last_error;
            std::ops::ControlFlow::Break(())
        })
        .unwrap();
        out
    };
    let attempt = |ino: u64, reply: &str| Attempt {
        time: 1,
        host: "mx".into(),
        reply: reply.into(),
        delivered: false,
        node: Some(ino),
    };
    spool
        .record_attempt(&node.name, &attempt(node.ino + 1, "451 an older message's"))
        .unwrap();
    assert_eq!(
        listed(&spool),
        None,
        "another message's attempt is not shown"
    );
    spool
        .record_attempt(&node.name, &attempt(node.ino, "451 this one's"))
        .unwrap();
    assert_eq!(listed(&spool).as_deref(), Some("451 this one's"));
}
