//! Locks shared with Mail::Spool 0.50, taken by the real thing: Perl's File::NFSLock
//! (Debian's libfile-nfslock-perl, what 0.50 locks its nodes with). A live 0.50 holder
//! is never broken however old its lock; a killed one's lock is broken at once; and
//! File::NFSLock sees mailspool's locks as held, and as its own host's.
//!
//! `.ci/run` installs the module. Without it these tests say so and pass, except under
//! CI (`CI=true`), where a missing module fails them.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::Env;

/// Lock `node` with File::NFSLock (exclusive, non-blocking, 0.50's stale timeout),
/// print "locked" or "busy", and hold it for `hold` seconds.
const PERL_LOCK: &str = r#"
use strict; use File::NFSLock; use Fcntl qw(LOCK_EX LOCK_NB);
$| = 1;
my ($node, $hold) = @ARGV;
my $lock = File::NFSLock->new($node, LOCK_EX | LOCK_NB, undef, 6 * 3600 + 2);
if (!$lock) { print "busy\n"; exit 1 }
print "locked\n";
sleep $hold;
$lock->unlock;
"#;

fn have_file_nfslock() -> bool {
    let ok = Command::new("perl")
        .args(["-MFile::NFSLock", "-e1"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "File::NFSLock is missing under CI: .ci/run installs libfile-nfslock-perl"
        );
        eprintln!(
            "skipped: Perl's File::NFSLock is not installed (apt install libfile-nfslock-perl)"
        );
    }
    ok
}

/// Start a Perl holder and wait until it says whether it got the lock.
fn perl_lock(node: &Path, hold: u64) -> (Child, String) {
    let mut child = Command::new("perl")
        .arg("-e")
        .arg(PERL_LOCK)
        .arg(node)
        .arg(hold.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

fn one_node(env: &Env) -> std::path::PathBuf {
    env.mailspool()
        .args(["send", "someone@example.org"])
        .write_stdin("Subject: shared\n\nhi\n")
        .assert()
        .success();
    fs::read_dir(env.spool().join("0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap()
}

#[test]
fn a_live_050_holder_stands_and_a_killed_ones_lock_is_broken_at_once() {
    if !have_file_nfslock() {
        return;
    }
    let env = Env::new();
    let node = one_node(&env);
    let (mut holder, said) = perl_lock(&node, 60);
    assert_eq!(said, "locked");
    // Make the lock look old: age does not matter while its holder lives.
    let lock = std::path::PathBuf::from(format!("{}.NFSLock", node.display()));
    fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(86_400))
        .unwrap();
    env.mailspool()
        .args(["queue", "list"])
        .assert()
        .success()
        .stdout(predicates::str::contains("1 node of 1 message"));
    let id = env.nodes(0)[0].0.id.clone();
    env.mailspool()
        .args(["queue", "delete", &id])
        .assert()
        .code(75)
        .stderr(predicates::str::contains("holder alive on this host"));
    assert!(node.exists());
    // SIGKILL: File::NFSLock never unlocks, the lock file stays behind.
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(lock.exists());
    env.mailspool()
        .args(["queue", "delete", &id])
        .assert()
        .success();
    assert!(!node.exists() && !lock.exists());
}

#[test]
fn file_nfslock_sees_mailspools_locks_as_held_and_as_this_hosts() {
    if !have_file_nfslock() {
        return;
    }
    let env = Env::new();
    let node = one_node(&env);
    let spool = mailspool_spool::Spool::open(env.spool(), Default::default()).unwrap();
    let entry = spool.scan().unwrap().nodes.remove(0);
    let held = spool.lock_node(&entry).unwrap();
    let (mut perl, said) = perl_lock(&node, 0);
    assert_eq!(said, "busy", "0.50 must not take a node mailspool holds");
    perl.wait().unwrap();
    drop(held);
    let (mut perl, said) = perl_lock(&node, 0);
    assert_eq!(said, "locked");
    assert!(perl.wait().unwrap().success());

    // A mailspool lock whose process died: File::NFSLock reads our line as its own
    // host's and breaks it by its own rule (the pid is gone).
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    fs::write(
        format!("{}.NFSLock", node.display()),
        format!(
            "{} {pid} 1 1 mailspool\n",
            mailspool_spool::lock::hostname()
        ),
    )
    .unwrap();
    // Non-blocking, File::NFSLock clears a dead holder's lock and still says "busy"
    // this once; that it cleared it shows it read our line as this host's.
    let (mut perl, said) = perl_lock(&node, 0);
    perl.wait().unwrap();
    if said == "busy" {
        assert!(
            !Path::new(&format!("{}.NFSLock", node.display())).exists(),
            "File::NFSLock did not see our line as this host's"
        );
        let (mut again, said) = perl_lock(&node, 0);
        again.wait().unwrap();
        assert_eq!(said, "locked");
    }
    // Its temp files (<node>.tmp.N.PID.R) came and went; none is ever taken for a node.
    env.mailspool()
        .args(["queue", "list"])
        .assert()
        .success()
        .stdout(predicates::str::contains("1 node of 1 message"))
        .stderr(predicates::str::contains(".tmp.").not());
}

use predicates::prelude::PredicateBooleanExt;
