//! The drop and the pickup, as one user can test them (the package test in .ci/run
//! does it with two users and the setgid bit): `mailspool-drop` writes a checked file
//! into `maildrop/` and exits with sendmail's codes; the pickup queues it with the
//! submitter's uid in a Received line, and refuses every planted file.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use mailspool::{Config, Mailspool};
use support::Env;

/// The drop program, built next to `mailspool` by `cargo nextest run --workspace` (its
/// own crate's tests make cargo build it); built here when only this package's tests are.
fn drop_bin() -> PathBuf {
    let p =
        PathBuf::from(assert_cmd::cargo::cargo_bin!("mailspool")).with_file_name("mailspool-drop");
    if !p.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args([
            "build",
            "-q",
            "-p",
            "mailspool-drop",
            "--bin",
            "mailspool-drop",
        ]);
        if p.parent().and_then(|d| d.file_name()) == Some("release".as_ref()) {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo to build mailspool-drop");
        assert!(status.success(), "cargo build -p mailspool-drop failed");
    }
    assert!(p.exists(), "{} missing: build the workspace", p.display());
    p
}

fn open(env: &Env) -> Mailspool {
    let config = Config {
        spool_dir: env.spool(),
        hostname: "host.test".into(),
        ..Config::default()
    };
    let ms = Mailspool::open(config).unwrap();
    fs::create_dir_all(ms.maildrop()).unwrap();
    ms
}

fn drop_cmd(env: &Env) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(drop_bin());
    c.env("MAILSPOOL_SPOOL", env.spool())
        .env("MAILSPOOL_CONFIG", env.config_path());
    c
}

#[test]
fn a_dropped_message_is_queued_with_its_submitter_and_the_drop_is_gone() {
    let env = Env::new();
    let ms = open(&env);
    drop_cmd(&env)
        .args(["-t", "-i"])
        .write_stdin(
            "To: Bob <bob@example.org>\nBcc: carol@example.org\nSubject: cron\n\n.\nreport\n",
        )
        .assert()
        .success()
        .stdout("");
    let dropped: Vec<_> = fs::read_dir(ms.maildrop()).unwrap().collect();
    assert_eq!(dropped.len(), 1, "one file, fsynced, before exit 0");
    let report = ms.pickup().unwrap();
    assert_eq!((report.picked, report.corrupt, report.left), (1, 0, 0));
    assert_eq!(fs::read_dir(ms.maildrop()).unwrap().count(), 0);
    let nodes = env.nodes(0);
    let to: Vec<&str> = nodes.iter().map(|(n, _)| n.to.as_str()).collect();
    assert_eq!(to, ["bob@example.org", "carol@example.org"]);
    let uid = rustix::process::getuid().as_raw();
    let login = mailspool_drop::login_of(uid).unwrap_or_else(|| format!("uid{uid}"));
    let (node, body) = &nodes[0];
    assert_eq!(
        node.from,
        format!("{login}@host.test"),
        "0.50's default sender"
    );
    assert!(
        body.starts_with(&format!(
            "Received: by host.test (mailspool, from userid {uid}) id {}",
            node.id
        )),
        "{body}"
    );
    assert!(
        !body.contains("Bcc:") && body.ends_with("\n\n.\nreport\n"),
        "{body}"
    );
}

#[test]
fn the_drop_refuses_what_sendmail_refuses_and_leaves_nothing() {
    let env = Env::new();
    let ms = open(&env);
    for (args, input, code) in [
        (&[][..], "Subject: nobody\n\nx\n", 64),
        (&["a b@example.org"][..], "Subject: x\n\nx\n", 65),
        (&["-k"][..], "", 64),
        (
            &["-f", "-oQ/tmp@x.org", "a@example.org"][..],
            "Subject: x\n\nx\n",
            65,
        ),
    ] {
        drop_cmd(&env)
            .args(args)
            .write_stdin(input)
            .assert()
            .code(code);
    }
    // Addresses the spool cannot name a node after: refused now (65), never accepted
    // and then lost with the other recipients' copies.
    // (Each part within RFC 5321's limits; together over a node name's 255 bytes.)
    let long = format!(
        "{}@{}.{}.{}.org",
        "l".repeat(60),
        "a".repeat(55),
        "b".repeat(55),
        "c".repeat(55)
    );
    drop_cmd(&env)
        .args(["-f", &long, &long, "ok@example.org"])
        .write_stdin("Subject: x\n\nx\n")
        .assert()
        .code(65)
        .stderr(predicates::str::contains("too long"));
    assert_eq!(fs::read_dir(ms.maildrop()).unwrap().count(), 0);
    // No maildrop/: a clear 73 that says what to check.
    fs::remove_dir(ms.maildrop()).unwrap();
    drop_cmd(&env)
        .arg("a@example.org")
        .write_stdin("Subject: x\n\nx\n")
        .assert()
        .code(73)
        .stderr(predicates::str::contains("mailspool doctor"));
}

#[test]
fn planted_files_in_the_drop_never_become_mail() {
    let env = Env::new();
    let ms = open(&env);
    let dir = ms.maildrop();
    let secret = env.dir.path().join("shadow");
    fs::write(
        &secret,
        "mailspool-drop 1\nuid 0\nlogin root\nrcpt evil@example.net\n\nroot:secret\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("1.link")).unwrap();
    fs::hard_link(&secret, dir.join("2.hardlink")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("3.fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    fs::write(dir.join("4.garbage"), "Subject: no envelope\n\nhi\n").unwrap();
    let other_uid = rustix::process::getuid().as_raw() + 4242;
    fs::write(
        dir.join("5.forged-uid"),
        format!("mailspool-drop 1\nuid {other_uid}\nlogin victim\nrcpt x@example.org\n\nSubject: x\n\nhi\n"),
    )
    .unwrap();
    fs::write(dir.join(".young-hidden"), "being written").unwrap();
    // Planted with the mode of a finished drop, so that only the checks stop them.
    for n in ["2.hardlink", "4.garbage", "5.forged-uid"] {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join(n), fs::Permissions::from_mode(0o640)).unwrap();
    }
    // A drop still being written (mode 0000) is left for its writer.
    let writing = dir.join("6.being-written");
    fs::write(&writing, "mailspool-drop 1\nuid 0\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&writing, fs::Permissions::from_mode(0o000)).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let ms = std::sync::Arc::new(ms);
    let m = ms.clone();
    std::thread::spawn(move || tx.send(m.pickup()).unwrap());
    let report = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a FIFO in the drop must not hang the pickup")
        .unwrap();
    assert_eq!(
        (report.picked, report.corrupt, report.left),
        (0, 5, 1),
        "{report:?}"
    );
    assert!(env.nodes(0).is_empty(), "nothing queued");
    let corrupt: Vec<String> = fs::read_dir(env.spool().join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(corrupt.len(), 5, "{corrupt:?}");
    assert!(secret.exists() && fs::metadata(&secret).unwrap().nlink() >= 1);
    assert!(
        dir.join(".young-hidden").exists(),
        "a drop being written is left alone"
    );
    // What was set aside is reported everywhere a person looks.
    let fsck = env.mailspool().arg("fsck").output().unwrap();
    let text = String::from_utf8_lossy(&fsck.stdout);
    assert_eq!(fsck.status.code(), Some(4), "{text}");
    assert_eq!(
        text.matches("in corrupt/, never delivered").count(),
        5,
        "{text}"
    );
    let queue = env.mailspool().arg("queue").output().unwrap();
    let text = String::from_utf8_lossy(&queue.stdout);
    assert!(text.contains("Mail queue is empty"), "{text}");
    assert!(
        text.contains("5 files in corrupt/, never delivered"),
        "{text}"
    );
    let doctor = env.mailspool().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("5 files in") && text.contains("corrupt, never delivered"),
        "{text}"
    );
}

/// An unfinished drop file (mode 0040) as a writer leaves it: locked while it lives.
fn unfinished(dir: &std::path::Path, name: &str, age: Duration) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    let f = fs::File::create(&p).unwrap();
    std::io::Write::write_all(&mut &f, b"mailspool-drop 1\nuid 0\n").unwrap();
    f.set_modified(std::time::SystemTime::now() - age).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o040)).unwrap();
    p
}

#[test]
fn an_unfinished_drop_whose_writer_is_gone_is_removed_and_a_live_ones_stays() {
    let env = Env::new();
    let ms = open(&env);
    let dir = ms.maildrop();
    let two_minutes = Duration::from_secs(120);
    let dead = unfinished(&dir, "1.dead-writer", two_minutes);
    let live = unfinished(&dir, "2.live-writer", two_minutes);
    let young = unfinished(&dir, "3.just-made", Duration::ZERO);
    // The live writer's lock, on its own open file (another process's, as far as
    // flock is concerned).
    let held = fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let report = ms.pickup().unwrap();
    assert_eq!((report.picked, report.corrupt), (0, 0), "{report:?}");
    assert!(
        !dead.exists(),
        "a killed writer's file goes at once, not after an hour"
    );
    assert!(live.exists(), "a locked file has a writer: left alone");
    assert!(
        young.exists(),
        "a file too new to be locked yet is left alone"
    );
    assert!(!env.spool().join("corrupt").exists());
    drop(held);
    ms.pickup().unwrap();
    assert!(!live.exists(), "its writer gone, it goes too");
}

#[test]
fn a_drop_ended_by_a_signal_leaves_nothing() {
    use std::io::Write;
    let env = Env::new();
    let ms = open(&env);
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let mut child = std::process::Command::new(drop_bin())
            .env("MAILSPOOL_SPOOL", env.spool())
            .env("MAILSPOOL_CONFIG", env.config_path())
            .args(["-i", "a@example.org"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"Subject: half\n\nthe first half, then the writer dies\n")
            .unwrap();
        stdin.flush().unwrap();
        // Wait for the drop to make its file.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fs::read_dir(ms.maildrop()).unwrap().count() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the drop made no file"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert_eq!(
            fs::read_dir(ms.maildrop()).unwrap().count(),
            0,
            "signal {sig}: the unfinished file is removed"
        );
        drop(stdin);
    }
}

#[test]
fn below_the_reserve_new_mail_waits_and_dropped_mail_still_moves() {
    let env = Env::new();
    let ms = open(&env);
    // Dropped (and so acknowledged) before the disk got short.
    drop_cmd(&env)
        .arg("early@example.org")
        .write_stdin("Subject: early\n\nx\n")
        .assert()
        .success();
    // A reserve no file system has: everything is "below" it.
    fs::write(
        env.config_path(),
        "min_free_space = 1_000_000_000_000_000_000\n",
    )
    .unwrap();
    drop_cmd(&env)
        .arg("late@example.org")
        .write_stdin("Subject: late\n\nx\n")
        .assert()
        .code(75)
        .stderr(predicates::str::contains("min_free_space"));
    env.mailspool()
        .args(["send", "late@example.org"])
        .write_stdin("Subject: late\n\nx\n")
        .assert()
        .code(75)
        .stderr(predicates::str::contains("min_free_space"));
    // The pickup of accepted mail is not new mail.
    let config = Config::load(Some(&env.config_path()), Some(&env.spool())).unwrap();
    assert_eq!(config.min_free_space, 1_000_000_000_000_000_000);
    let ms2 = Mailspool::open(config).unwrap();
    let report = ms2.pickup().unwrap();
    assert_eq!((report.picked, report.corrupt, report.left), (1, 0, 0));
    let to: Vec<String> = env.nodes(0).into_iter().map(|(n, _)| n.to).collect();
    assert_eq!(to, ["early@example.org"]);
    drop(ms);

    // serve: MAIL gets 452 4.3.1 (a temporary refusal: the client retries later).
    fs::write(
        env.config_path(),
        "min_free_space = 1_000_000_000_000_000_000
[[listen]]
address = \"127.0.0.1:0\"
",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
    cmd.env("MAILSPOOL_SPOOL", env.spool())
        .env("MAILSPOOL_CONFIG", env.config_path())
        .env_remove("MAILSPOOL_LOG");
    let (mut child, port) = support::spawn_serve(cmd);
    let smtp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    smtp.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(smtp.try_clone().unwrap());
    let mut said = |line: &str| {
        use std::io::{BufRead, Write};
        if !line.is_empty() {
            (&smtp).write_all(line.as_bytes()).unwrap();
        }
        let mut reply = String::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            reply.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    };
    assert!(said("").starts_with("220"));
    assert!(said("EHLO client.test\r\n").starts_with("250"));
    let reply = said("MAIL FROM:<a@client.test>\r\n");
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    let _ = said("QUIT\r\n");
    let _ = child.kill();
    let _ = child.wait();
}
