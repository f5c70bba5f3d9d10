//! A message is a message: the unit of delivery is the stored message, never the id in
//! its node names. Ids repeat (Mail::Spool 0.50 gives one id to every message a process
//! spools within a second; anyone could once pick an id through a `Received:` header),
//! so nodes that share an id must never share a transaction, a sender, a body or a DSN
//! unless they are the same message. Also: what the engine refuses to read (symlinks,
//! FIFOs), 0.50's lock artefacts, and what MAIL FROM declares.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use mailspool_deliver::{Outcome, PassOptions, Selection};
use mailspool_spool::Spool;

fn all() -> PassOptions {
    PassOptions {
        selection: Selection::All,
        ..Default::default()
    }
}

/// Where a commit links recipient `to` of message `id` from a@corp.test into tier 0.
fn tier0_node(spool_dir: &std::path::Path, id: &str, to: &str) -> std::path::PathBuf {
    spool_dir
        .join("0")
        .join(mailspool_spool::NodeName::new(1_700_000_000, id, to, "a@corp.test").file_name())
}

/// Commit `message` under a chosen id, as a 0.50-era `Received: id (...)` once allowed.
fn queue_with_id(spool: &Spool, id: &str, from: &str, to: &[&str], message: &str) {
    let mut s = spool.stage(id).unwrap();
    s.write_all(message.as_bytes()).unwrap();
    let to: Vec<String> = to.iter().map(|t| t.to_string()).collect();
    s.commit(from, &to).unwrap();
}

#[tokio::test]
async fn a_message_that_shares_another_ones_id_is_never_sent_with_it() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let ceo = "From: ceo@corp.test\nTo: cfo@one.test\nSubject: numbers\n\nConfidential.\n";
    let id = queue(&spool, "ceo@corp.test", &["cfo@one.test"], ceo);
    let attacker = "From: attacker@evil.test\nTo: attacker@one.test\nSubject: hi\n\nGotcha.\n";
    queue_with_id(
        &spool,
        &id,
        "attacker@evil.test",
        &["attacker@one.test"],
        attacker,
    );

    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 2);
    let mut got: Vec<(String, Vec<String>, String)> = sink
        .received()
        .into_iter()
        .map(|r| (r.from, r.to, String::from_utf8(r.data).unwrap()))
        .collect();
    got.sort();
    assert_eq!(got.len(), 2, "two messages, two transactions: {got:?}");
    assert_eq!(got[0].0, "attacker@evil.test");
    assert_eq!(got[0].1, ["attacker@one.test"]);
    assert_eq!(got[0].2, attacker);
    assert_eq!(got[1].0, "ceo@corp.test");
    assert_eq!(got[1].1, ["cfo@one.test"]);
    assert_eq!(got[1].2, ceo);
}

/// Write a node file as Mail::Spool 0.50 did: one file per recipient, name encoded.
fn node_050(dir: &Path, tier: usize, time: u64, id: &str, to: &str, from: &str, body: &str) {
    let enc = |a: &str| mailspool_spool::name::encode(a.as_bytes());
    let path = dir
        .join(tier.to_string())
        .join(format!("{time}-{id}-{}-{}", enc(to), enc(from)));
    fs::write(path, body).unwrap();
}

/// The lock file of a node written by [`node_050`].
fn lock_050(dir: &Path, time: u64, id: &str, to: &str, from: &str) -> std::path::PathBuf {
    let enc = |a: &str| mailspool_spool::name::encode(a.as_bytes());
    dir.join("0")
        .join(format!("{time}-{id}-{}-{}.NFSLock", enc(to), enc(from)))
}

fn set_age(p: &Path, secs: u64) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

/// A body that says who it was written for, so a delivery to anyone else shows.
fn letter(from: &str, to: &str, n: usize) -> String {
    format!(
        "From: {from}\nTo: {to}\nSubject: letter {n}\n\nDear {to}, this is letter {n} from {from}.\n"
    )
}

#[tokio::test]
async fn a_050_spool_with_shared_ids_gets_everyone_their_own_message() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    for t in 0..7 {
        fs::create_dir_all(dir.path().join(t.to_string())).unwrap();
    }
    let t0 = dir.path().join("0");
    // One 0.50 process, one second: twenty messages, one id. Each message goes to two
    // recipients at one.test (two identical files: one transaction) and one elsewhere.
    let id = "3F9A0C12AB34CD56";
    let mut expected: BTreeMap<String, (String, String)> = BTreeMap::new();
    for n in 0..20 {
        let from = format!("sender{}@corp.test", n % 3);
        let body = format!("From: {from}\nSubject: letter {n}\n\nLetter {n} from {from}.\n");
        for to in [
            format!("a{n}@one.test"),
            format!("b{n}@one.test"),
            format!("c{n}@two.test"),
        ] {
            node_050(dir.path(), 0, 1_700_000_000, id, &to, &from, &body);
            expected.insert(to, (from.clone(), body.clone()));
        }
    }
    // Same id, same sender, same recipient domain, different bodies: personal letters.
    for n in 0..5 {
        let to = format!("p{n}@one.test");
        let body = letter("boss@corp.test", &to, n);
        node_050(
            dir.path(),
            0,
            1_700_000_000,
            id,
            &to,
            "boss@corp.test",
            &body,
        );
        expected.insert(to, ("boss@corp.test".into(), body));
    }
    // File::NFSLock artefacts: a temp file mid-lock, and its uncache link to a node.
    let some_node = fs::read_dir(&t0).unwrap().next().unwrap().unwrap().path();
    let name = some_node.file_name().unwrap().to_str().unwrap().to_owned();
    fs::write(
        t0.join(format!("{name}.tmp.4821.31337.977")),
        "0.50host 31337 1 977\n",
    )
    .unwrap();
    fs::hard_link(&some_node, t0.join(format!("{name}.tmp.4822.31337.12"))).unwrap();
    // Locks: a live 0.50 holder on another host (an hour old: 0.50 may take six), a
    // stale one (seven hours), and one held here by a running process.
    let locked_live = "locked-live@one.test";
    node_050(
        dir.path(),
        0,
        1_700_000_000,
        id,
        locked_live,
        "x@corp.test",
        "From: x@corp.test\n\nlive\n",
    );
    let lock = lock_050(dir.path(), 1_700_000_000, id, locked_live, "x@corp.test");
    fs::write(&lock, "0.50host 4242 1700000000 77\n").unwrap();
    set_age(&lock, 3600);
    let locked_stale = "locked-stale@one.test";
    let stale_body = "From: y@corp.test\n\nstale\n";
    node_050(
        dir.path(),
        0,
        1_700_000_000,
        id,
        locked_stale,
        "y@corp.test",
        stale_body,
    );
    let lock = lock_050(dir.path(), 1_700_000_000, id, locked_stale, "y@corp.test");
    fs::write(&lock, "0.50host 4243 1700000000 78\n").unwrap();
    set_age(&lock, 7 * 3600);
    expected.insert(
        locked_stale.into(),
        ("y@corp.test".into(), stale_body.into()),
    );
    let mut runner = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let locked_here = "locked-here@one.test";
    node_050(
        dir.path(),
        0,
        1_700_000_000,
        id,
        locked_here,
        "z@corp.test",
        "From: z@corp.test\n\nhere\n",
    );
    let lock = lock_050(dir.path(), 1_700_000_000, id, locked_here, "z@corp.test");
    fs::write(
        &lock,
        format!(
            "{} {} 1700000000 79\n",
            mailspool_spool::lock::hostname(),
            runner.id()
        ),
    )
    .unwrap();
    set_age(&lock, 86_400);

    let spool = std::sync::Arc::new(
        Spool::open(dir.path(), mailspool_spool::SpoolConfig::default()).unwrap(),
    );
    let engine = engine(
        spool.clone(),
        config(&[("one.test", sink.addr), ("two.test", sink.addr)]),
    );
    let r = engine.run_pass(&all()).await.unwrap();
    // The node File::NFSLock is linking to (its uncache link) has a name more than the
    // scan saw, just now: it waits until the lock attempt is over, then goes once.
    let uncached_to = match mailspool_spool::NodeName::parse(&name) {
        mailspool_spool::Parsed::Node(n) => n.to,
        other => panic!("{other:?}"),
    };
    assert!(
        sink.received().iter().all(|m| !m.to.contains(&uncached_to)),
        "a node mid-lock by File::NFSLock was sent at once"
    );
    fs::remove_file(t0.join(format!("{name}.tmp.4822.31337.12"))).unwrap();
    let r2 = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r2.count(Outcome::Delivered), 1);
    runner.kill().unwrap();
    runner.wait().unwrap();

    // Every recipient got exactly its own message, from its own sender.
    let mut got: BTreeMap<String, (String, String)> = BTreeMap::new();
    for m in sink.received() {
        for to in &m.to {
            let before = got.insert(
                to.clone(),
                (m.from.clone(), String::from_utf8(m.data.clone()).unwrap()),
            );
            assert!(before.is_none(), "{to} got two messages");
        }
    }
    assert_eq!(got, expected);
    // Identical files of one message at one domain went in one transaction; different
    // bodies never did: 20 (one.test) + 20 (two.test) + 5 letters + the stale-locked one.
    // (One more when the uncached node had an identical twin at one.test: it went later.)
    let twin = uncached_to.ends_with("@one.test") && !uncached_to.starts_with(['p', 'l']);
    assert_eq!(sink.received().len(), if twin { 47 } else { 46 });
    assert_eq!(r.count(Outcome::Delivered) + 1, expected.len());
    // The live locks stand, their nodes wait; lock artefacts were never nodes.
    let left: Vec<String> = spool
        .scan()
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.name.to)
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, [locked_here, locked_live]);
    assert!(
        r.results.iter().all(|x| !x.to.contains(".tmp.")),
        "a File::NFSLock temp file was taken for a node"
    );
}

#[tokio::test]
async fn each_dsn_goes_to_its_own_sender_about_its_own_message() {
    let sink = Sink::start(Script::default()).await;
    for n in 0..3 {
        sink.script()
            .rcpt
            .insert(format!("gone{n}@one.test"), "550 5.1.1 no such user".into());
    }
    let dir = tempfile::tempdir().unwrap();
    for t in 0..7 {
        fs::create_dir_all(dir.path().join(t.to_string())).unwrap();
    }
    fs::create_dir_all(dir.path().join("tmp")).unwrap();
    let id = "ABCDEF0123456789";
    for n in 0..3 {
        let from = format!("sender{n}@corp.test");
        let body = format!("From: {from}\nSubject: secret {n}\n\nbody {n}\n");
        node_050(
            dir.path(),
            0,
            1_700_000_000,
            id,
            &format!("gone{n}@one.test"),
            &from,
            &body,
        );
    }
    let spool = std::sync::Arc::new(
        Spool::open(dir.path(), mailspool_spool::SpoolConfig::default()).unwrap(),
    );
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Failed), 3);
    let mut dsns: Vec<(String, String)> = spool
        .scan()
        .unwrap()
        .nodes
        .into_iter()
        .filter(|n| n.name.from.is_empty())
        .map(|n| (n.name.to.clone(), fs::read_to_string(&n.path).unwrap()))
        .collect();
    dsns.sort();
    assert_eq!(dsns.len(), 3, "one DSN per message");
    for (n, (to, dsn)) in dsns.iter().enumerate() {
        assert_eq!(to, &format!("sender{n}@corp.test"));
        assert!(dsn.contains(&format!("Final-Recipient: rfc822; gone{n}@one.test")));
        assert!(
            dsn.contains(&format!("Subject: secret {n}")),
            "its own headers:\n{dsn}"
        );
        for other in (0..3).filter(|&o| o != n) {
            assert!(
                !dsn.contains(&format!("gone{other}@")),
                "another message's recipient:\n{dsn}"
            );
            assert!(
                !dsn.contains(&format!("secret {other}")),
                "another message's headers:\n{dsn}"
            );
        }
    }
}

#[tokio::test]
async fn a_symlink_or_fifo_in_a_tier_is_quarantined_not_delivered() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let secret = dir.path().join("secret");
    fs::write(&secret, "root:$6$hash:19000:0:99999:7:::\n").unwrap();
    let t0 = dir.path().join("0");
    std::os::unix::fs::symlink(&secret, t0.join("1700000000-AAA-x@one.test-me@corp.test")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        t0.join("1700000000-BBB-y@one.test-me@corp.test"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    queue(
        &spool,
        "me@corp.test",
        &["z@one.test"],
        "Subject: real\n\nreal\n",
    );
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = tokio::time::timeout(Duration::from_secs(10), engine.run_pass(&all()))
        .await
        .expect("a FIFO must not hang the engine")
        .unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1);
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].to, ["z@one.test"]);
    assert!(!String::from_utf8_lossy(&got[0].data).contains("root:"));
    let corrupt: Vec<_> = fs::read_dir(dir.path().join("corrupt")).unwrap().collect();
    assert_eq!(corrupt.len(), 2, "both moved aside, nothing deleted");
    assert!(secret.exists(), "the link's target is untouched");
    assert!(queued(&spool).is_empty());
}

#[tokio::test]
async fn mail_from_declares_the_wire_size_and_smtputf8_for_utf8_headers() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let msg = "From: Zoë <z@corp.test>\nSubject: café\n\n.dot\nline\n";
    queue(&spool, "z@corp.test", &["x@one.test"], msg);
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    engine.run_pass(&all()).await.unwrap();
    let got = sink.received();
    let params = &got[0].mail_params;
    // CRLF line ends count; the stuffed dot and the final dot do not (RFC 1870).
    let wire = msg.len() + msg.matches('\n').count();
    assert!(params.contains(&format!("SIZE={wire}")), "{params}");
    assert!(params.contains("SMTPUTF8"), "{params}");
    assert!(params.contains("BODY=8BITMIME"), "{params}");
    // A plain ASCII message asks for neither.
    queue(
        &spool,
        "z@corp.test",
        &["x@one.test"],
        "Subject: plain\n\nplain\n",
    );
    engine.run_pass(&all()).await.unwrap();
    let params = &sink.received()[1].mail_params;
    assert!(
        !params.contains("SMTPUTF8") && !params.contains("8BITMIME"),
        "{params}"
    );
}

#[tokio::test]
async fn a_message_still_being_committed_waits_for_all_its_recipients() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    // A commit half-way: its stage holds the flock, two of three names are linked.
    let stage = dir.path().join("tmp/stage-under-way");
    fs::write(&stage, "From: a@corp.test\nSubject: ten\n\nhi\n").unwrap();
    let held = fs::File::open(&stage).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let id = spool.new_id();
    let node = |to: &str| tier0_node(dir.path(), &id, to);
    fs::hard_link(&stage, node("x@one.test")).unwrap();
    fs::hard_link(&stage, node("y@one.test")).unwrap();
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(
        r.count(Outcome::Delivered),
        0,
        "nothing sent while the commit runs"
    );
    assert!(node("x@one.test").exists() && node("y@one.test").exists());
    // The commit finishes: the last name, the stage gone, the lock released.
    fs::hard_link(&stage, node("z@one.test")).unwrap();
    fs::remove_file(&stage).unwrap();
    drop(held);
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 3);
    let got = sink.received();
    assert_eq!(got.len(), 1, "one message, one transaction");
    let mut to = got[0].to.clone();
    to.sort();
    assert_eq!(to, ["x@one.test", "y@one.test", "z@one.test"]);
}

/// The race the flock alone does not close: the daemon reads the directory while the
/// commit is linking (it sees two of three names), and the commit is over by the time
/// the nodes are opened. The plan sees the inode has more names than it found, and
/// changed just now: it leaves them for the next scan, which finds all three.
#[tokio::test]
async fn a_scan_that_saw_part_of_a_fresh_message_leaves_it_for_the_next() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    // Two names in tier 0, the third (here: the stage, no longer locked) elsewhere.
    let stage = dir.path().join("tmp/stage-just-done");
    fs::write(&stage, "From: a@corp.test\nSubject: three\n\nhi\n").unwrap();
    let id = spool.new_id();
    let node = |to: &str| tier0_node(dir.path(), &id, to);
    fs::hard_link(&stage, node("x@one.test")).unwrap();
    fs::hard_link(&stage, node("y@one.test")).unwrap();
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let plan = engine.plan(&all()).unwrap();
    assert!(
        plan.groups.is_empty(),
        "a message seen in part is not planned: {:?}",
        plan.groups
    );
    fs::hard_link(&stage, node("z@one.test")).unwrap();
    fs::remove_file(&stage).unwrap();
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 3);
    let got = sink.received();
    assert_eq!(got.len(), 1, "one message, one transaction: {got:?}");
}

/// A pass plans a big queue in chunks; a chunk that ends in the middle of a message's
/// names leaves that message for the next chunk instead of cutting it in two.
#[tokio::test]
async fn a_plan_chunk_never_cuts_a_message_in_two() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    for m in 0..5 {
        let to: Vec<String> = (0..4).map(|r| format!("r{r}.m{m}@one.test")).collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        let id = spool.new_id();
        queue_with_id(
            &spool,
            &id,
            "a@corp.test",
            &to,
            &format!("From: a@corp.test\nSubject: m{m}\n\nbody {m}\n"),
        );
    }
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    // Chunks of 6 nodes: no multiple of 4, so every chunk boundary falls inside a message.
    let opts = PassOptions {
        limit: Some(6),
        ..all()
    };
    let r = engine.run_pass(&opts).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 20);
    let got = sink.received();
    assert_eq!(
        got.iter().map(|m| m.to.len()).collect::<Vec<_>>(),
        [4, 4, 4, 4, 4],
        "one transaction of four recipients per message"
    );
}

/// The race behind bench/load's extra transactions: while the daemon reads a big tier 0,
/// a message it has already seen a name of (W) is delivered and unlinked, and a new
/// commit (X) gets W's freed inode number. Counted by inode number, W's name and the two
/// of X's three names the scan found added up to X's link count, and X went out in two
/// transactions. Here W's stale name is modelled by a name of another id on X's inode.
#[tokio::test]
async fn a_reused_inode_number_does_not_make_part_of_a_message_look_whole() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let stage = dir.path().join("tmp/stage-reused-inode");
    fs::write(&stage, "From: a@corp.test\nSubject: three\n\nhi\n").unwrap();
    let (x, w) = (spool.new_id(), spool.new_id());
    let x_node = |to: &str| tier0_node(dir.path(), &x, to);
    let stale = tier0_node(dir.path(), &w, "w@one.test");
    fs::hard_link(&stage, x_node("x@one.test")).unwrap();
    fs::hard_link(&stage, x_node("y@one.test")).unwrap();
    fs::hard_link(&stage, &stale).unwrap();
    fs::remove_file(&stage).unwrap();
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let plan = engine.plan(&all()).unwrap();
    assert!(
        plan.groups
            .iter()
            .all(|g| g.nodes().iter().all(|n| n.name.id != x)),
        "two of X's three names are not X: {:?}",
        plan.groups
    );
    for g in plan.groups {
        engine.abandon(g);
    }
    // What the next scan finds: W gone, X's third name linked.
    fs::hard_link(x_node("x@one.test"), x_node("z@one.test")).unwrap();
    fs::remove_file(&stale).unwrap();
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 3);
    let got = sink.received();
    assert_eq!(got.len(), 1, "one message, one transaction: {got:?}");
    assert_eq!(got[0].to.len(), 3);
}

/// A daemon killed after the receiver's 250 and the `delivered` event, but before the
/// node's unlink: the next engine removes that node instead of sending it twice. The
/// match is by id, recipient and the stored message's inode, since ids repeat: a
/// delivery recorded for the same id and recipient of another message sends nothing
/// less.
#[tokio::test]
async fn a_delivery_a_killed_daemon_recorded_is_not_sent_again() {
    use mailspool_spool::Intake;
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let first = queue(
        &spool,
        "a@corp.test",
        &["x@one.test", "y@one.test"],
        "Subject: one\n\nhi\n",
    );
    let other = queue(
        &spool,
        "a@corp.test",
        &["z@one.test"],
        "Subject: two\n\nhi\n",
    );
    let nodes = spool.find(&first).unwrap();
    let x = nodes.iter().find(|n| n.name.to == "x@one.test").unwrap();
    let z = spool.find(&other).unwrap().remove(0);
    // What the killed daemon wrote: x of the first message delivered; and a delivery to
    // z under z's id of a message that is not z's (another inode).
    let mut not_z = delivered_event(&z);
    not_z.node = Some(z.ino + 1);
    spool
        .record_events(&[delivered_event(x), not_z], true)
        .unwrap();

    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let report = engine.run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 3, "{report:?}");
    let mut sent: Vec<String> = sink.received().into_iter().flat_map(|r| r.to).collect();
    sent.sort();
    assert_eq!(sent, ["y@one.test", "z@one.test"], "x was delivered before");
    assert!(queued(&spool).is_empty());
}

/// A daemon of another host sharing the spool died after delivering a node and before
/// removing it: this engine, long started, breaks the dead holder's stale lock, finds
/// the delivery in the history and removes the node instead of sending it. A node
/// whose stale lock hides no delivery is sent.
#[tokio::test]
async fn a_node_delivered_by_a_dead_hosts_daemon_is_not_sent_again() {
    use mailspool_spool::Intake;
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    // Started before anything was delivered: its first pass finds no history.
    engine.run_pass(&all()).await.unwrap();

    let id = queue(
        &spool,
        "a@corp.test",
        &["x@one.test", "y@one.test"],
        "Subject: one\n\nhi\n",
    );
    let nodes = spool.find(&id).unwrap();
    let x = nodes.iter().find(|n| n.name.to == "x@one.test").unwrap();
    spool.record_events(&[delivered_event(x)], true).unwrap();
    // Both nodes locked by a dead host's mailspool.
    for n in &nodes {
        plant_dead_hosts_lock(&n.path);
    }

    let report = engine.run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 2, "{report:?}");
    let sent: Vec<String> = sink.received().into_iter().flat_map(|r| r.to).collect();
    assert_eq!(sent, ["y@one.test"], "x was delivered by the dead host");
    assert!(queued(&spool).is_empty());
}
