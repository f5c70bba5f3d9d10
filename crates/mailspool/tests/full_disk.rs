//! A full disk: the spool on a 4 MiB tmpfs. `send` exits 75, `serve` answers 452, nothing
//! partial is left anywhere, and once space is freed everything queued is delivered. A
//! dropped message whose pickup hits ENOSPC waits in maildrop/ and is queued later.
//! Needs root for `mount`; skipped with a visible message otherwise.

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{Script, Sink};

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_small_tmpfs(dir: &Path, size: &str) -> Option<Tmpfs> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: the full-disk test needs root to mount a tmpfs");
        return None;
    }
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: mount -t tmpfs is not allowed here");
        return None;
    }
    Some(Tmpfs(mnt))
}

fn nodes(spool: &Path) -> Vec<(PathBuf, u64)> {
    (0..7)
        .filter_map(|t| std::fs::read_dir(spool.join(t.to_string())).ok())
        .flatten()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_cleanly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = mount_small_tmpfs(dir.path(), "4m") else {
        return;
    };
    let spool = mnt.0.join("spool");
    let sink = Sink::start(Script::default()).await;
    let config = dir.path().join("mailspool.toml");
    std::fs::write(
        &config,
        // No free-space reserve: this test is about the disk itself running out.
        format!("dequeue_dir = \"{}\"\ntls = \"none\"\nusage_log = false\nmin_free_space = 0\n[routes]\n\"full.test\" = \"{}\"\n", spool.display(), sink.addr),
    )
    .unwrap();
    let body = format!("Subject: filler\n\n{}\n", "x".repeat(400 * 1024));
    let send = || {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
            .env("MAILSPOOL_CONFIG", &config)
            .env_remove("MAILSPOOL_SPOOL")
            .args(["send", "-i", "r@full.test"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = c.stdin.take().unwrap().write_all(body.as_bytes());
        c.wait_with_output().unwrap()
    };
    // Fill the disk through `send` until it says 75.
    let mut accepted = 0;
    let last = loop {
        let out = tokio::task::block_in_place(send);
        if !out.status.success() {
            break out;
        }
        accepted += 1;
        assert!(
            accepted < 20,
            "a 4 MiB disk took {accepted} messages of 400 KiB"
        );
    };
    assert_eq!(
        last.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    assert!(accepted >= 5, "only {accepted} fitted");
    let whole = nodes(&spool);
    assert_eq!(
        whole.len(),
        accepted,
        "a node for every acknowledged message, no more"
    );
    let size = whole[0].1;
    assert!(
        whole.iter().all(|(_, s)| *s == size),
        "a partial node: {whole:?}"
    );
    assert_eq!(
        std::fs::read_dir(spool.join("tmp")).unwrap().count(),
        0,
        "stray stage"
    );

    // The listener answers 452 and keeps nothing either.
    let spool_handle = Arc::new(
        mailspool_spool::Spool::open(&spool, mailspool_spool::SpoolConfig::default()).unwrap(),
    );
    let cfg = mailspool_serve::ServeConfig {
        listen: vec![mailspool_serve::Listen {
            address: "127.0.0.1:0".parse().unwrap(),
            mode: mailspool_serve::Mode::Relay,
            tls_cert: None,
            tls_key: None,
        }],
        min_free_space: 0,
        ..Default::default()
    };
    let bound = mailspool_serve::bind(cfg, spool_handle, mailspool_serve::Users::default())
        .await
        .unwrap();
    let addr = bound.local_addrs()[0];
    tokio::spawn(bound.run(std::future::pending()));
    let connector = mailspool_smtp::TlsConnectors::new(None).unwrap();
    let settings = mailspool_smtp::ClientSettings {
        helo_name: "c.test".into(),
        timeouts: common::quick_timeouts(),
        tls: mailspool_smtp::TlsPolicy::None,
        auth: None,
        bind: Vec::new(),
        verifier: None,
    };
    let mut s = mailspool_smtp::Session::connect(addr, "127.0.0.1", &settings, &connector)
        .await
        .unwrap();
    let lines = format!(
        "Subject: over smtp\n\n{}",
        format!("{}\n", "y".repeat(99)).repeat(4000)
    );
    let env = mailspool_smtp::Envelope {
        from: "a@c.test".into(),
        to: vec!["r@full.test".into()],
        size: lines.len() as u64,
        eight_bit: false,
        utf8_headers: false,
    };
    let reply = match s.send(&env, &mut lines.as_bytes()).await {
        Ok(out) => out.data.expect("a reply to the data").to_string(),
        Err(e) => e.reply().expect("an SMTP refusal").to_string(),
    };
    assert!(
        reply.starts_with("452 4.3.1") || reply.starts_with("451 4.3.0"),
        "{reply}"
    );
    assert_eq!(nodes(&spool).len(), accepted);
    assert_eq!(std::fs::read_dir(spool.join("tmp")).unwrap().count(), 0);

    // Free space by delivering: everything queued reaches the sink.
    let out = tokio::task::block_in_place(|| {
        Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
            .env("MAILSPOOL_CONFIG", &config)
            .env_remove("MAILSPOOL_SPOOL")
            .args(["queue", "run"])
            .output()
            .unwrap()
    });
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("delivered {accepted}, deferred 0")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(sink.received().len(), accepted);
    assert!(nodes(&spool).is_empty());
    // And intake works again.
    assert!(tokio::task::block_in_place(send).status.success());
}

/// The drop program, beside `mailspool` (the workspace's tests build both).
fn drop_bin() -> PathBuf {
    let p =
        PathBuf::from(assert_cmd::cargo::cargo_bin!("mailspool")).with_file_name("mailspool-drop");
    assert!(p.exists(), "{} missing: build the workspace", p.display());
    p
}

#[test]
fn a_dropped_message_the_pickup_cannot_copy_waits_and_is_queued_later() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = mount_small_tmpfs(dir.path(), "6m") else {
        return;
    };
    let spool = mnt.0.join("spool");
    let config = dir.path().join("mailspool.toml");
    std::fs::write(
        &config,
        format!(
            "dequeue_dir = \"{}\"\nusage_log = false\nmin_free_space = 0\n",
            spool.display()
        ),
    )
    .unwrap();
    let ms =
        mailspool::Mailspool::open(mailspool::Config::load(Some(&config), None).unwrap()).unwrap();
    std::fs::create_dir_all(ms.maildrop()).unwrap();
    let drop_cmd = || {
        let mut c = Command::new(drop_bin());
        c.env("MAILSPOOL_CONFIG", &config)
            .env_remove("MAILSPOOL_SPOOL")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    // alice: 1.5 MB, accepted (exit 0).
    let mut alice = drop_cmd().arg("alice@full.test").spawn().unwrap();
    let mut input = alice.stdin.take().unwrap();
    input
        .write_all(format!("Subject: alice\n\n{}\n", "a".repeat(1_500_000)).as_bytes())
        .unwrap();
    drop(input);
    let out = alice.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another user holds 3.4 MB on a drop's stdin, unfinished.
    let mut hog = drop_cmd().arg("hog@full.test").spawn().unwrap();
    let mut hog_in = hog.stdin.take().unwrap();
    hog_in
        .write_all(format!("Subject: hog\n\n{}", "h".repeat(3_400_000)).as_bytes())
        .unwrap();
    hog_in.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(ms.maildrop())
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum::<u64>()
        < 4_800_000
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the hog did not write"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The pickup's copy of alice's message does not fit: it waits, nothing is lost.
    let report = ms.pickup().unwrap();
    assert_eq!((report.picked, report.corrupt), (0, 0), "{report:?}");
    assert!(report.left >= 1, "{report:?}");
    assert!(!spool.join("corrupt").exists(), "nothing quarantined");
    assert!(nodes(&spool).is_empty());
    assert_eq!(
        std::fs::read_dir(spool.join("tmp")).map_or(0, |d| d.count()),
        0
    );
    // The hog gives up (SIGTERM): its file goes, and alice's message is queued.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(hog.id() as i32, libc::SIGTERM) };
    let _ = hog.wait();
    drop(hog_in);
    let report = ms.pickup().unwrap();
    assert_eq!(
        (report.picked, report.corrupt, report.left),
        (1, 0, 0),
        "{report:?}"
    );
    let queued = nodes(&spool);
    assert_eq!(queued.len(), 1);
    assert!(queued[0].0.to_string_lossy().contains("alice@full.test"));
    assert_eq!(std::fs::read_dir(ms.maildrop()).unwrap().count(), 0);
}
