//! One spool directory shared by hosts over a network file system, as Mail::Spool 0.50
//! allowed: a mailspool daemon on each host (each in a UTS namespace of its own, so
//! every lock names its own host), mail handed in through both, daemons SIGKILLed, and
//! a 0.50-style dequeue loop (Perl, File::NFSLock and Net::SMTP) taking nodes from the
//! same tier beside them. Checked at the sink: every acknowledged message exactly once
//! (a SIGKILL between the sink's 250 and the node's removal may send one twice), a
//! lock held by a live 0.50 process on another host respected, and the stale locks of
//! a dead host (one of mailspool's, one of 0.50's) broken.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A 0.50-style dequeuer: every 0.2 s, each node of the tier is locked the way 0.50
/// locks it (File::NFSLock, exclusive, non-blocking, 0.50's stale timeout), sent if it
/// still exists, unlinked, unlocked. Stops when the stop file appears; prints how many
/// it sent.
const PERL_DEQUEUE: &str = r#"
use strict; use File::NFSLock; use Fcntl qw(LOCK_EX LOCK_NB); use Net::SMTP;
my ($tier, $port, $stop) = @ARGV;
my $sent = 0;
until (-e $stop) {
    opendir(my $d, $tier) or die "$tier: $!";
    my @nodes = grep { /^\d+-/ && !/NFSLock/ } readdir $d;
    closedir $d;
    for my $n (@nodes) {
        my $path = "$tier/$n";
        my $lock = File::NFSLock->new($path, LOCK_EX | LOCK_NB, undef, 6 * 3600 + 2) or next;
        if (open(my $fh, '<', $path)) {
            local $/; my $data = <$fh>; close $fh;
            my $smtp = Net::SMTP->new('127.0.0.1', Port => $port) or die "smtp: $@";
            $smtp->mail('perl@shared.test'); $smtp->to('rcpt@shared.test');
            $smtp->data($data) or die "data refused";
            $smtp->quit;
            unlink $path or die "unlink $path: $!";
            $sent++;
        }
        $lock->unlock;
    }
    select(undef, undef, undef, 0.2);
}
print "$sent\n";
"#;

/// Hold `node`'s lock the way 0.50 does until the stop file appears.
const PERL_HOLD: &str = r#"
use strict; use File::NFSLock; use Fcntl qw(LOCK_EX LOCK_NB);
$| = 1;
my ($node, $stop) = @ARGV;
my $lock = File::NFSLock->new($node, LOCK_EX | LOCK_NB, undef, 6 * 3600 + 2) or die "busy";
print "locked\n";
select(undef, undef, undef, 0.1) until -e $stop;
$lock->unlock;
"#;

/// `program` run with the host name `host` (a UTS namespace of its own).
fn on_host(host: &str, program: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--uts",
        "sh",
        "-c",
        "echo \"$0\" > /proc/sys/kernel/hostname && exec \"$@\"",
        host,
    ])
    .arg(program);
    c
}

fn token_of(data: &[u8]) -> Option<String> {
    String::from_utf8_lossy(data)
        .lines()
        .find_map(|l| l.strip_prefix("token: ").map(str::to_owned))
}

fn set_mtime(path: &Path, ago: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - ago).unwrap();
}

/// The whole run; `label` names it in what it prints.
pub async fn exactly_once_through_kills(label: &str, mounts: &[PathBuf], work: &Path) {
    assert!(mounts.len() >= 2);
    let perl = Path::new("/usr/bin/perl");
    let sink = crate::common::Sink::start(crate::common::Script::default()).await;
    let configs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let path = work.join(format!("h{i}.toml"));
            std::fs::write(
                &path,
                format!(
                    "spool = \"{}\"\nhostname = \"h{i}.{label}.test\"\ndequeue_timeout = 1\n\
                     tls = \"none\"\n[routes]\n\"shared.test\" = \"{}\"\n",
                    mounts[i].join("spool").display(),
                    sink.addr
                ),
            )
            .unwrap();
            path
        })
        .collect();
    let mailspool = assert_cmd::cargo::cargo_bin!("mailspool");
    let send = |i: usize, token: &str| {
        let mut child = Command::new(mailspool)
            .env("MAILSPOOL_CONFIG", &configs[i])
            .env_remove("MAILSPOOL_SPOOL")
            .args(["send", "-i", "rcpt@shared.test"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("Subject: {label}\n\ntoken: {token}\n").as_bytes())
            .unwrap();
        child.wait().unwrap().success()
    };

    // Three nodes queued before any daemon runs, found from the other host's mount.
    for t in ["stale-own", "stale-050", "held"] {
        assert!(send(0, t), "send {t}");
    }
    let tier0 = |i: usize| mounts[i].join("spool").join("0");
    let mut planted: HashMap<String, PathBuf> = HashMap::new();
    for entry in std::fs::read_dir(tier0(1)).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains(".NFSLock")
            && let Some(t) = token_of(&std::fs::read(entry.path()).unwrap_or_default())
        {
            planted.insert(t, entry.path());
        }
    }
    assert_eq!(planted.len(), 3, "{planted:?}");
    let lock_of = |node: &Path| PathBuf::from(format!("{}.NFSLock", node.display()));
    // A dead host's mailspool lock, unrefreshed for 10 minutes (stale after 5).
    let own = lock_of(&planted["stale-own"]);
    std::fs::write(&own, "gone.test 4242 1700000000 1 mailspool\n").unwrap();
    set_mtime(&own, Duration::from_secs(600));
    // A dead host's 0.50 lock, 7 hours old (0.50's own rule: stale after 6 h + 2 s).
    let legacy = lock_of(&planted["stale-050"]);
    std::fs::write(&legacy, "gone.test 4243 1700000000 5555\n").unwrap();
    set_mtime(&legacy, Duration::from_secs(7 * 3600));
    // A live 0.50 holder on a third host, through the first host's mount.
    let release = work.join("release");
    let mut holder = on_host("p1", perl)
        .args(["-e", PERL_HOLD])
        .arg(tier0(0).join(planted["held"].file_name().unwrap()))
        .arg(&release)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said.trim(), "locked");

    let daemon = |i: usize| -> Child {
        on_host(&format!("h{i}"), Path::new(mailspool))
            .arg("daemon")
            .env("MAILSPOOL_CONFIG", &configs[i])
            .env_remove("MAILSPOOL_SPOOL")
            .env("MAILSPOOL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut daemons: Vec<Option<Child>> = (0..2).map(|i| Some(daemon(i))).collect();
    let kill = |d: &mut Option<Child>| {
        if let Some(mut c) = d.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    };
    let stop = work.join("stop");
    let dequeuer = on_host("p0", perl)
        .args(["-e", PERL_DEQUEUE])
        .arg(tier0(0))
        .arg(sink.addr.port().to_string())
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let total = 2000;
    let mut acked = Vec::new();
    let mut kills = 0;
    for n in 0..total {
        let token = format!("{label}-{n}");
        if send(n % 2, &token) {
            acked.push(token);
        }
        match n {
            // Both daemon hosts down for 200 messages: the 0.50 loop carries the mail.
            799 => {
                daemons.iter_mut().for_each(kill);
                kills += 2;
            }
            999 => daemons = (0..2).map(|i| Some(daemon(i))).collect(),
            399 | 1399 | 1799 => {
                let victim = (n / 400) % 2;
                kill(&mut daemons[victim]);
                kills += 1;
                daemons[victim] = Some(daemon(victim));
            }
            _ => {}
        }
    }
    let received = |sink: &crate::common::Sink| -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for r in sink.received() {
            if let Some(t) = token_of(&r.data) {
                *seen.entry(t).or_default() += 1;
            }
        }
        seen
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let delivered = |seen: &HashMap<String, usize>| {
        acked.iter().all(|t| seen.contains_key(t))
            && seen.contains_key("stale-own")
            && seen.contains_key("stale-050")
    };
    while !delivered(&received(&sink)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything else went; the node a live 0.50 process holds did not.
    assert!(
        !received(&sink).contains_key("held"),
        "a node locked by a live 0.50 holder on another host was delivered"
    );
    std::fs::write(&release, "").unwrap();
    assert!(holder.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !received(&sink).contains_key("held") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(&stop, "").unwrap();
    let out = dequeuer.wait_with_output().unwrap();
    assert!(out.status.success(), "the 0.50-style dequeuer failed");
    let by_050: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // Stopped as a service manager stops them, so they remove their pooled lock temps.
    for mut d in daemons.into_iter().flatten() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        let _ = d.wait();
    }

    let seen = received(&sink);
    let lost: Vec<_> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{label}: {} acknowledged, {} lost, {duplicates} duplicates after {kills} SIGKILLs; \
         {by_050} sent by the 0.50-style dequeuer",
        acked.len(),
        lost.len()
    );
    assert_eq!(acked.len(), total);
    assert!(lost.is_empty(), "lost: {lost:?}");
    for t in ["stale-own", "stale-050", "held"] {
        assert_eq!(seen.get(t), Some(&1), "{t}");
    }
    assert!(
        duplicates <= kills,
        "{duplicates} duplicates for {kills} kills"
    );
    assert!(by_050 > 0, "the 0.50-style dequeuer never got a node");
    // No node is left, and no lock (the planted stale ones were broken and removed).
    let left: Vec<_> = std::fs::read_dir(tier0(1))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // (A SIGKILLed daemon's pooled lock temps, `.lk.*`, wait for the sweeper.)
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "tier 0 still holds {left:?}");
}
