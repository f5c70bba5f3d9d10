//! A spool the daemon can trust: one others could write to is refused unless it is
//! shared on purpose, and nothing planted in it (a FIFO in tmp/, a FIFO or a symlink as
//! side data) can hang a command or be followed.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::Env;

/// Run `prog` as nobody (uid and gid 65534) on the test's spool and configuration,
/// `stdin` on its standard input.
fn as_nobody(
    env: &Env,
    prog: &std::path::Path,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(prog);
    c.args(args)
        .uid(65534)
        .gid(65534)
        .env("MAILSPOOL_SPOOL", env.spool())
        .env("MAILSPOOL_CONFIG", env.config_path())
        .env("HOME", "/nonexistent")
        .env("LOGNAME", "nobody")
        .env_remove("MAILSPOOL_LOG");
    assert_cmd::Command::from_std(c)
        .write_stdin(stdin)
        .timeout(Duration::from_secs(20))
        .output()
        .unwrap()
}

fn fifo(path: &std::path::Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

#[test]
fn a_spool_others_can_write_is_refused_unless_shared_on_purpose() {
    let env = Env::new();
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    fs::set_permissions(env.spool(), fs::Permissions::from_mode(0o770)).unwrap();
    for args in [&["send", "a@example.org"][..], &["queue"], &["daemon"]] {
        env.mailspool()
            .args(args)
            .write_stdin("Subject: x\n\nhi\n")
            .timeout(Duration::from_secs(20))
            .assert()
            .code(78)
            .stderr(predicates::str::contains("its group can write it"));
    }
    // A refused spool is refused before anything is made in it.
    fs::remove_dir(env.spool().join("tmp")).unwrap();
    let _ = fs::remove_dir_all(env.spool().join("usage"));
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .code(78);
    assert!(
        !env.spool().join("tmp").exists(),
        "tmp/ made in a refused spool"
    );
    assert!(
        !env.spool().join("usage").exists(),
        "usage/ made in a refused spool"
    );
    fs::set_permissions(env.spool(), fs::Permissions::from_mode(0o702)).unwrap();
    env.mailspool()
        .arg("queue")
        .assert()
        .code(78)
        .stderr(predicates::str::contains("everyone can write it"));
    fs::set_permissions(env.spool(), fs::Permissions::from_mode(0o770)).unwrap();
    fs::write(env.config_path(), "shared_spool = true\n").unwrap();
    env.mailspool().arg("queue").assert().success();
}

#[test]
fn planted_fifos_and_links_hang_nothing() {
    let env = Env::new();
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    let id = env.nodes(0)[0].0.id.clone();
    // A FIFO in tmp/ (old enough to look abandoned), a FIFO as the usage log, and
    // side data that is a FIFO or a symlink to a secret.
    let stage_fifo = env.spool().join("tmp/planted");
    fifo(&stage_fifo);
    let old = std::time::SystemTime::now() - Duration::from_secs(3600 * 2);
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &stage_fifo,
        &rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: old.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: old.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64,
                tv_nsec: 0,
            },
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    fs::remove_file(env.spool().join("usage/raw")).unwrap();
    fifo(&env.spool().join("usage/raw"));
    fs::create_dir_all(env.spool().join("meta")).unwrap();
    fifo(
        &env.spool()
            .join(format!("meta/{id}-a@example.org-tester@{}", hostname())),
    );
    let secret = env.dir.path().join("secret");
    fs::write(
        &secret,
        "{\"time\":1,\"host\":\"h\",\"reply\":\"SECRET\"}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        &secret,
        env.spool().join("meta/other-b@example.org-x@y.org"),
    )
    .unwrap();
    for args in [
        &["send", "b@example.org"][..],
        &["queue", "show", &id],
        &["queue", "list", "--json"],
        &["usage"],
        &["fsck"],
    ] {
        let out = env
            .mailspool()
            .args(args)
            .write_stdin("Subject: x\n\nhi\n")
            .timeout(Duration::from_secs(20))
            .output()
            .unwrap();
        assert!(
            out.status.code().is_some(),
            "{args:?} hung on a planted FIFO (killed by the timeout)"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("SECRET"),
            "{args:?}"
        );
    }
    assert!(
        !stage_fifo.exists(),
        "an abandoned non-file in tmp/ is cleared"
    );
    assert_eq!(
        env.nodes(0).len(),
        2,
        "the second message was queued all the same"
    );
}

/// The default sender's host, as `send` uses it (no configured hostname).
fn hostname() -> String {
    mailspool::config::default_hostname()
}

#[test]
fn doctor_says_what_to_fix() {
    let env = Env::new();
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    env.mailspool()
        .arg("doctor")
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stdout(predicates::str::contains("maildrop does not exist"))
        .stdout(predicates::str::contains(
            "install -d -o mailspool -g mailspool-drop -m 1730",
        ));
    fs::set_permissions(env.spool(), fs::Permissions::from_mode(0o777)).unwrap();
    env.mailspool()
        .arg("doctor")
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stdout(predicates::str::contains(
            "other than its owner can write it",
        ));
}

/// `queue` lists messages only: a symlink or a FIFO planted under a node's name is left
/// out and said on stderr (the daemon never delivers it either), not shown as mail.
#[test]
fn the_listing_shows_no_planted_names_as_messages() {
    let env = Env::new();
    env.mailspool()
        .args(["send", "real@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    let t0 = env.spool().join("0");
    std::os::unix::fs::symlink(
        "/etc/passwd",
        t0.join("1700000001-planted1-a@example.org-b@example.org"),
    )
    .unwrap();
    fifo(&t0.join("1700000002-planted2-a@example.org-b@example.org"));
    let out = env
        .mailspool()
        .args(["queue"])
        .timeout(Duration::from_secs(20))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("real@example.org"), "{stdout}");
    assert!(!stdout.contains("planted"), "{stdout}");
    assert!(stdout.contains("-- 1 node of 1 message"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 names in the tiers are not a message"),
        "{stderr}"
    );
}

/// A user looking at another user's spool (the package's, as anyone but root) is told
/// plainly that only root and the owner may, with the same code whatever the command:
/// 77 (permission), not 78 with a hint meant for root.
#[test]
fn another_users_spool_is_refused_plainly_and_alike() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: runs a command as another user (needs root; CI runs as root)");
        return;
    }
    let env = Env::new();
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    // The spool is root's and 0700; the user may reach it, not enter it.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(env.config_path(), fs::Permissions::from_mode(0o644)).unwrap();
    let nobody = |prog: &std::path::Path, args: &[&str]| as_nobody(&env, prog, args, "");
    let bin = assert_cmd::cargo::cargo_bin!("mailspool");
    for (prog, args) in [
        (bin, &["queue"][..]),
        (bin, &["fsck"]),
        (bin, &["daemon"]),
        (bin, &["queue", "run"]),
        (&env.dir.path().join("mailq"), &[]),
    ] {
        let out = nobody(prog, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{prog:?} {args:?}: {stderr}");
        assert!(
            stderr.contains("only root and root may look at it"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("shared_spool"), "{args:?}: {stderr}");
    }
    // doctor as that user: no false FIX for what only root may see, and a plain word
    // on running it as root; a world-readable tokens file is still a FIX.
    let tokens = env.dir.path().join("tokens");
    fs::write(&tokens, "").unwrap();
    fs::set_permissions(&tokens, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(
        env.config_path(),
        format!(
            "hostname = \"mail.example.com\"\n[http]\ntokens_file = \"{}\"\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = nobody(bin, &["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("neither root nor the spool's owner"),
        "{stdout}"
    );
    assert!(stdout.contains("sudo mailspool doctor"), "{stdout}");
    assert!(!stdout.contains("maildrop"), "{stdout}");
    assert!(stdout.contains("is world-readable"), "{stdout}");
    assert!(stdout.contains("1 thing to fix"), "{stdout}");
}

/// `shared_spool = true` on a spool of a group (root:nogroup 2770 here, as 0.50 setups
/// share one between users): what is made in it is the group's to read and write
/// (directories 2770, nodes 0640, whatever the umask), so a second user of the group
/// queues directly, and the owner's commands read that user's nodes.
#[test]
fn a_shared_spool_is_the_groups() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: runs a command as another user (needs root; CI runs as root)");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(env.config_path(), "shared_spool = true\n").unwrap();
    fs::set_permissions(env.config_path(), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(env.spool()).unwrap();
    std::os::unix::fs::chown(env.spool(), Some(0), Some(65534)).unwrap();
    fs::set_permissions(env.spool(), fs::Permissions::from_mode(0o2770)).unwrap();
    env.mailspool()
        .args(["send", "root-sent@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    let t0 = fs::metadata(env.spool().join("0")).unwrap();
    assert_eq!(t0.mode() & 0o7777, 0o2770, "tier 0 is the group's");
    assert_eq!(t0.gid(), 65534);
    // The second user: in the group, not the owner.
    let out = as_nobody(
        &env,
        assert_cmd::cargo::cargo_bin!("mailspool"),
        &["send", "user-sent@example.org"],
        "Subject: y\n\nhi\n",
    );
    assert!(out.status.success(), "{out:?}");
    let nodes = env.nodes(0);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for (name, _) in &nodes {
        let m = fs::metadata(env.spool().join("0").join(name.file_name())).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640, "{}", name.to);
        assert_eq!(m.gid(), 65534, "{}", name.to);
    }
    // The owner reads the other user's node like its own.
    let out = env.mailspool().args(["queue"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("user-sent@example.org") && list.contains("root-sent@example.org"),
        "{list}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "{out:?}");
    let user_id = nodes
        .iter()
        .find(|(n, _)| n.to == "user-sent@example.org")
        .unwrap()
        .0
        .id
        .clone();
    env.mailspool()
        .args(["queue", "show", &user_id])
        .assert()
        .success()
        .stdout(predicates::str::contains("Subject: y"));
}
