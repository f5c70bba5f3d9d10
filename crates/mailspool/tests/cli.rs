//! The command line end to end, as a user (or cron, or PHP) runs it: `mailspool send`,
//! the `sendmail` and `mailq` names, `queue` and `usage`; each bad input with its
//! sysexits code and an empty spool after it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::Env;

mod support;

const MSG: &str = "From: Alice <alice@example.com>\nTo: Bob <bob@example.org>, \"odd name\"@x.com\nCc: carol@example.net\nBcc: secret@example.net\nSubject: hi\n\nhello\n";

#[test]
fn sendmail_t_takes_to_cc_bcc_and_strips_bcc() {
    let env = Env::new();
    env.sendmail()
        .args(["-t", "-oi"])
        .write_stdin(MSG)
        .assert()
        .success()
        .stdout("");
    let nodes = env.nodes(0);
    let tos: Vec<&str> = nodes.iter().map(|(n, _)| n.to.as_str()).collect();
    assert_eq!(
        tos,
        [
            "\"odd name\"@x.com",
            "bob@example.org",
            "carol@example.net",
            "secret@example.net"
        ]
    );
    for (n, body) in &nodes {
        assert_eq!(n.from, "alice@example.com");
        assert!(!body.contains("Bcc"), "Bcc stored");
        assert!(!body.contains("secret@"), "Bcc address stored");
        assert!(
            body.contains("Message-ID: <") && body.contains("\nDate: "),
            "headers added"
        );
        assert!(body.ends_with("\n\nhello\n"));
        assert_eq!(n.id, nodes[0].0.id);
    }
    let meta = fs::metadata(env.spool().join("0").join(nodes[0].0.file_name())).unwrap();
    assert_eq!(meta.nlink(), 4, "one inode for all four recipients");
    assert_eq!(meta.mode() & 0o777, 0o600);
}

#[test]
fn f_overrides_the_sender_and_empty_f_is_the_null_sender() {
    let env = Env::new();
    env.sendmail()
        .args(["-f", "bounces@example.com", "-i", "rcpt@example.org"])
        .write_stdin(MSG)
        .assert()
        .success();
    let nodes = env.nodes(0);
    assert_eq!(nodes.len(), 1, "explicit recipients only, without -t");
    assert_eq!(nodes[0].0.from, "bounces@example.com");
    assert!(
        nodes[0].1.contains("From: Alice <alice@example.com>"),
        "header From kept"
    );

    for null in ["", "<>"] {
        let env = Env::new();
        env.sendmail()
            .args(["-f", null, "r@example.org"])
            .write_stdin("Subject: x\n\nbody\n")
            .assert()
            .success();
        let nodes = env.nodes(0);
        assert_eq!(nodes[0].0.from, "", "-f {null:?}");
        assert!(nodes[0].0.file_name().ends_with("-r@example.org-"));
        assert!(nodes[0].1.contains("From: MAILER-DAEMON@"));
    }
}

#[test]
fn mailspool_send_prints_the_id_and_adds_from() {
    let env = Env::new();
    let out = env
        .mailspool()
        .args(["send", "-F", "Cron Daemon", "ops@example.org"])
        .write_stdin("Subject: report\n\nline 1\r\n.\r\nnot part of it\n")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let id = String::from_utf8(out).unwrap().trim().to_owned();
    let nodes = env.nodes(0);
    assert_eq!(nodes[0].0.id, id);
    assert_eq!(nodes[0].0.from.split('@').next(), Some("tester"));
    let body = &nodes[0].1;
    assert!(body.contains("\nFrom: Cron Daemon <tester@"), "{body}");
    assert!(
        body.ends_with("\n\nline 1\n.\nnot part of it\n"),
        "mailspool send reads its whole input (only sendmail stops at a dot), CRLF made LF: {body:?}"
    );
    // A trace field names the local submitter, and the spool id as `id <ID>`.
    let uid = rustix::process::getuid().as_raw();
    assert!(
        body.starts_with("Received: by ")
            && body.contains(&format!("(mailspool, from userid {uid}) id {id}; ")),
        "{body}"
    );
}

#[test]
fn bad_input_gets_its_exit_code_and_leaves_nothing() {
    let env = Env::new();
    let long = format!("{}@example.org", "a".repeat(60));
    let long_domain = format!("x@{}.org", vec!["l".repeat(60); 4].join("."));
    let cases: Vec<(Vec<&str>, String, i32, &str)> = vec![
        (
            vec!["send"],
            "Subject: none\n\nx\n".into(),
            64,
            "no recipients",
        ),
        (
            vec!["send", "not an address"],
            MSG.into(),
            65,
            "not an address",
        ),
        (
            vec!["send", "--", "-oQ/tmp/x@example.org"],
            MSG.into(),
            65,
            "-oQ/tmp/x@example.org",
        ),
        (
            vec!["send", "-f", "-bs", "a@example.org"],
            MSG.into(),
            64,
            "",
        ),
        (vec!["send", "a@example.org", "-x"], MSG.into(), 64, ""),
        (
            vec!["send", "--", long.as_str(), long_domain.as_str()],
            MSG.into(),
            65,
            "",
        ),
        (
            vec!["send", "a@example.org"],
            "Subject: a\0b\n\nx\n".into(),
            65,
            "NUL",
        ),
        (
            vec!["send", "--id", "bad-id", "a@example.org"],
            MSG.into(),
            65,
            "bad-id",
        ),
        (vec!["send", "-t"], "To: bob@\n\nx\n".into(), 65, "bob@"),
    ];
    for (args, input, code, names) in cases {
        let out = env
            .mailspool()
            .args(&args)
            .write_stdin(input)
            .assert()
            .code(code);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            err.contains(names),
            "{args:?}: stderr does not name {names:?}: {err}"
        );
        env.assert_empty();
    }
    // A name past NAME_MAX is refused with a clear message.
    let huge = format!(
        "{}@{}.example.org",
        "a".repeat(64),
        vec!["d".repeat(60); 2].join(".")
    );
    let out = env
        .mailspool()
        .args(["send", "-f", &huge, &huge])
        .write_stdin(MSG)
        .assert()
        .code(65);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("too long"));
    env.assert_empty();

    // Over the size limit.
    fs::write(env.config_path(), "max_message_size = 1000\n").unwrap();
    let big = format!("{MSG}{}\n", "x".repeat(2000));
    let out = env
        .mailspool()
        .args(["send", "a@example.org"])
        .write_stdin(big)
        .assert()
        .code(65);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("size limit"));
    env.assert_empty();
}

#[test]
fn an_unwritable_spool_fails_cleanly() {
    let env = Env::new();
    let root = rustix::process::geteuid().is_root();
    // Root ignores permission bits; /sys refuses new directories to everyone.
    let spool = if root {
        PathBuf::from("/sys/fs/mailspool-test-spool")
    } else {
        let d = env.dir.path().join("ro");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o500)).unwrap();
        d.join("spool")
    };
    let out = env
        .mailspool()
        .arg("--spool")
        .arg(&spool)
        .args(["send", "a@example.org"])
        .write_stdin(MSG)
        .assert()
        .code(73);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("cannot create"));
    assert!(!spool.exists());
}

#[test]
fn sendmail_options_documented_as_ignored_are_accepted_unknown_refused() {
    let env = Env::new();
    env.sendmail()
        .args([
            "-oem",
            "-odb",
            "-B8BITMIME",
            "-Lcron",
            "-N",
            "never",
            "-U",
            "-v",
            "-i",
            "a@example.org",
        ])
        .write_stdin(MSG)
        .assert()
        .success()
        .stderr(predicates::str::contains("queued"));
    assert_eq!(env.nodes(0).len(), 1);
    env.sendmail()
        .args(["-k", "a@example.org"])
        .write_stdin(MSG)
        .assert()
        .code(64);
    env.sendmail()
        .args(["-bs"])
        .write_stdin("QUIT\r\n")
        .assert()
        .success()
        .stdout(predicates::str::contains("221 2.0.0 Bye"));
    // -q runs the queue; the route points at a closed port, so the node is deferred.
    fs::write(
        env.config_path(),
        "[routes]\n\"example.org\" = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    env.sendmail()
        .args(["-q"])
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "delivered 0, deferred 1, failed 0",
        ));
    env.sendmail()
        .args(["-bp"])
        .assert()
        .success()
        .stdout(predicates::str::contains("a@example.org"));
    env.mailq()
        .assert()
        .success()
        .stdout(predicates::str::contains("-- 1 node of 1 message"));
}

fn json_nodes(env: &Env, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = env
        .mailspool()
        .args(["queue", "list", "--json"])
        .args(extra)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn queue_list_show_hold_release_retry_delete() {
    let env = Env::new();
    env.sendmail()
        .args(["-t"])
        .write_stdin(MSG)
        .assert()
        .success();
    let nodes = json_nodes(&env, &[]);
    assert_eq!(nodes.len(), 4);
    let keys: Vec<&str> = nodes[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 9);
    for k in [
        "id",
        "to",
        "from",
        "tier",
        "queued_at",
        "due_at",
        "size",
        "held",
        "last_error",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    assert_eq!(nodes[0]["tier"], 0);
    assert_eq!(nodes[0]["held"], false);
    assert_eq!(nodes[0]["due_at"], nodes[0]["queued_at"]);
    let id = nodes[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(json_nodes(&env, &["--domain", "EXAMPLE.org"]).len(), 1);
    assert_eq!(json_nodes(&env, &["--tier", "1"]).len(), 0);

    env.mailspool()
        .args(["queue", "show", &id])
        .assert()
        .success()
        .stdout(predicates::str::contains("lock:      none"))
        .stdout(predicates::str::contains("Subject: hi"));
    env.mailspool()
        .args(["queue", "hold", &id])
        .assert()
        .success();
    assert!(env.nodes(0).is_empty(), "held nodes leave the tier");
    assert!(json_nodes(&env, &[]).iter().all(|n| n["held"] == true));
    // Retry does not release: it says so, changes nothing and leaves the queue time.
    let before = json_nodes(&env, &[]);
    env.mailspool()
        .args(["queue", "retry", &id])
        .assert()
        .code(65)
        .stderr(predicates::str::contains("held: release it"));
    assert_eq!(
        json_nodes(&env, &[]),
        before,
        "a held node is left as it was"
    );
    env.mailspool()
        .args(["queue", "release", &id])
        .assert()
        .success();
    assert_eq!(env.nodes(0).len(), 4);
    env.mailspool()
        .args(["queue", "retry", &id])
        .assert()
        .success();
    let now = json_nodes(&env, &[]);
    assert!(
        now.iter()
            .all(|n| n["due_at"].as_u64() <= n["queued_at"].as_u64().map(|q| q + 1))
    );
    env.mailspool()
        .args(["queue", "summary"])
        .assert()
        .success()
        .stdout(predicates::str::contains("4 nodes of 1 message"));
    env.mailspool()
        .args(["queue", "delete", &id])
        .assert()
        .success()
        .stdout(predicates::str::contains("deleted 4 of 4 nodes"));
    env.assert_empty();
    env.mailspool()
        .args(["queue", "delete", &id])
        .assert()
        .code(66);
    env.mailspool()
        .args(["usage"])
        .assert()
        .success()
        .stdout(predicates::str::contains("SPOOLED"));
}

/// Write a spool the way Mail::Spool 0.50 left it.
fn write_050_spool(dir: &Path) {
    for t in ["0", "3"] {
        fs::create_dir_all(dir.join(t)).unwrap();
    }
    let msg = "From: x@old.example\nTo: y@example.org\n\nold mail\n";
    fs::write(
        dir.join("0/1054328821-a1b2c3d4e5-first%2dlast@example.org-me@old.example"),
        msg,
    )
    .unwrap();
    fs::write(dir.join("0/1054328822-a1b2c3d4e6-bob@example.com-"), msg).unwrap();
    fs::write(
        dir.join("3/1054328000-deadbeef-caf%25C3%25A9@example.fr-a@b.example"),
        msg,
    )
    .unwrap();
    fs::write(
        dir.join("3/1054329000-cafe01-first-last@example.org-me@my-host.example"),
        msg,
    )
    .unwrap();
    fs::write(dir.join("3/garbage-name"), msg).unwrap();
    let lock = dir.join("0/1054328821-a1b2c3d4e5-first%2dlast@example.org-me@old.example.NFSLock");
    fs::write(&lock, "oldhost 123 1054328821 42\n").unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
}

#[test]
fn reads_a_050_spool_without_changing_it() {
    let env = Env::new();
    write_050_spool(&env.spool());
    let out = env
        .mailspool()
        .args(["queue", "list", "--json"])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        stderr.contains("garbage-name"),
        "unparsable name reported: {stderr}"
    );
    assert!(
        stderr.contains("raw '-'"),
        "rescued name reported: {stderr}"
    );
    let nodes: Vec<serde_json::Value> = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let to: Vec<&str> = nodes.iter().map(|n| n["to"].as_str().unwrap()).collect();
    assert_eq!(
        to,
        [
            "first-last@example.org",
            "bob@example.com",
            "caf%C3%A9@example.fr",
            "first-last@example.org"
        ]
    );
    assert_eq!(nodes[1]["from"], "");
    assert_eq!(nodes[2]["tier"], 3);
    assert_eq!(nodes[2]["due_at"], 1054328000 + 28_800);
    assert_eq!(nodes[3]["from"], "me@my-host.example");
    assert!(!env.spool().join("tmp").exists(), "reading created tmp/");
    assert!(!env.spool().join("1").exists(), "reading created tiers");

    env.mailspool()
        .args(["queue", "show", "a1b2c3d4e5"])
        .assert()
        .success()
        .stdout(predicates::str::contains("held by oldhost pid 123"));
    // Its lock is an hour old, but a 0.50 dequeuer on another host may hold it for its
    // max_connection_time (6 h) + 2 s: it stands.
    env.mailspool()
        .args(["queue", "delete", "a1b2c3d4e5"])
        .assert()
        .code(75)
        .stderr(predicates::str::contains("locked by oldhost"));
    // Past legacy_lock_timeout the lock is stale, broken and the node deleted.
    fs::write(env.config_path(), "legacy_lock_timeout = 1800\n").unwrap();
    env.mailspool()
        .args(["queue", "delete", "a1b2c3d4e5", "a1b2c3d4e6"])
        .assert()
        .success();
    assert!(
        !env.spool()
            .join("0")
            .join("1054328821-a1b2c3d4e5-first%2dlast@example.org-me@old.example.NFSLock")
            .exists()
    );
    assert!(env.nodes(0).is_empty());
    // Retrying the rescued node writes its name encoded, as 0.50 should have.
    env.mailspool()
        .args(["queue", "retry", "cafe01"])
        .assert()
        .success();
    let names: Vec<String> = fs::read_dir(env.spool().join("3"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.contains("-cafe01-first%2Dlast@example.org-me@my%2Dhost.example")),
        "{names:?}"
    );
}

#[test]
fn help_and_usage_log() {
    let env = Env::new();
    env.mailspool()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicates::str::contains("sysexits"));
    env.mailspool()
        .args(["send", "--help"])
        .assert()
        .success()
        .stdout(predicates::str::contains("-f <FROM>"));
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin(MSG)
        .assert()
        .success();
    env.mailspool()
        .args(["send", "b@example.org"])
        .write_stdin(MSG)
        .assert()
        .success();
    let out = env
        .mailspool()
        .args(["usage", "--days", "1", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let day: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(day["spooled"], 2);
    assert_eq!(day["sent"], 0);
    assert!(day["spooled_bytes"].as_u64().unwrap() > 2 * MSG.len() as u64 - 20);
    // Per node, as 0.50 counts: one message to three recipients is three lines.
    env.mailspool()
        .args(["send", "c@example.org", "d@example.org", "e@example.org"])
        .write_stdin(MSG)
        .assert()
        .success();
    let raw = fs::read_to_string(env.spool().join("usage/raw")).unwrap();
    assert_eq!(raw.lines().filter(|l| l.ends_with(" Spool")).count(), 5);

    // usage_log off: no usage/ is created, nothing is written.
    let off = Env::new();
    fs::write(off.config_path(), "usage_log = false\n").unwrap();
    off.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin(MSG)
        .assert()
        .success();
    assert!(!off.spool().join("usage").exists());
}

#[test]
fn fsck_reports_then_repairs_a_050_spool() {
    let env = Env::new();
    write_050_spool(&env.spool());
    let out = env.mailspool().args(["fsck"]).assert().code(4);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains("garbage-name") && text.contains("raw '-'"),
        "{text}"
    );
    assert!(
        env.spool().join("3/garbage-name").exists(),
        "fsck without --repair changes nothing"
    );
    // What cannot be repaired is set aside, not repaired: 4, and what to do is said.
    let out = env.mailspool().args(["fsck", "--repair"]).assert().code(4);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains("1 file in") && text.contains("NOT delivered and NOT bounced"),
        "{text}"
    );
    assert!(text.contains("requeue it"), "{text}");
    assert!(!env.spool().join("3/garbage-name").exists());
    assert_eq!(
        fs::read_dir(env.spool().join("corrupt")).unwrap().count(),
        1,
        "kept in corrupt/"
    );
    // Repaired, but what went to corrupt/ waits for a person: said, and not 0.
    let out = env.mailspool().args(["fsck"]).assert().code(4);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("in corrupt/, never delivered"), "{text}");
    assert!(text.contains("1 problem found"), "{text}");
    fs::remove_dir_all(env.spool().join("corrupt")).unwrap();
    env.mailspool().args(["fsck"]).assert().success();
}

#[test]
fn doctor_never_prints_a_database_password_and_names_an_unqualified_hostname() {
    let env = Env::new();
    fs::write(
        env.config_path(),
        "spool = \"postgresql://mailspool:s3cret-pw@127.0.0.1:1/mail\"\nhostname = \"vm\"\n",
    )
    .unwrap();
    let out = env
        .mailspool()
        .env_remove("MAILSPOOL_SPOOL")
        .arg("doctor")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(
        text.contains("spool: database postgresql://mailspool:***@127.0.0.1:1/mail"),
        "{text}"
    );
    assert!(text.contains("move it to spool_password_file"), "{text}");
    assert!(
        !text.contains("does not exist"),
        "a URL is no directory: {text}"
    );
    assert!(
        text.contains("hostname \"vm\" is not fully qualified"),
        "{text}"
    );
    // The password in its own file: read only by what opens the database.
    let pw = env.dir.path().join("db-password");
    fs::write(&pw, "s3cret-pw\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(
        env.config_path(),
        "spool = \"postgresql://mailspool@127.0.0.1:1/mail\"\nhostname = \"mx.example.test\"\nspool_password_file = \"db-password\"\n",
    )
    .unwrap();
    let out = env
        .mailspool()
        .env_remove("MAILSPOOL_SPOOL")
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("spool_password_file") && text.contains("world-readable"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret-pw") && !text.contains("not fully qualified"),
        "{text}"
    );
}

#[test]
fn a_nul_byte_in_the_body_is_refused_at_intake_as_serve_refuses_it() {
    let env = Env::new();
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin(&b"Subject: x\n\nbefore\0after\n"[..])
        .assert()
        .code(65)
        .stderr(predicates::str::contains("NUL byte in the message body"));
    assert!(env.nodes(0).is_empty(), "nothing queued");
}

#[test]
fn roots_send_names_root_not_the_spools_owner() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (root's commands run as the spool's owner)");
        return;
    }
    let env = Env::new();
    // A spool that is another user's (nobody's), as the package's is mailspool's.
    env.mailspool()
        .args(["send", "--file", "/dev/null", "first@example.org"])
        .assert()
        .success();
    for entry in walk(&env.spool()) {
        std::os::unix::fs::lchown(&entry, Some(65534), Some(65534)).unwrap();
    }
    env.mailspool()
        .env_remove("LOGNAME")
        .env_remove("USER")
        .args(["send", "a@example.org"])
        .write_stdin("Subject: from root\n\nhi\n")
        .assert()
        .success();
    let (node, body) = env
        .nodes(0)
        .into_iter()
        .find(|(n, _)| n.to == "a@example.org")
        .unwrap();
    assert!(node.from.starts_with("root@"), "{}", node.from);
    assert!(body.contains("(mailspool, from userid 0)"), "{body}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn doctor_flags_a_world_readable_tokens_file() {
    let env = Env::new();
    let tokens = env.dir.path().join("tokens");
    fs::write(&tokens, "ops admin - $argon2id$v=19$m=19456,t=2,p=1$x$y\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&tokens, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(
        env.config_path(),
        format!(
            "hostname = \"mx.example.test\"\n[http]\nlisten = \"127.0.0.1:0\"\ntokens_file = \"{}\"\n",
            tokens.display()
        ),
    )
    .unwrap();
    env.mailspool()
        .args(["send", "--file", "/dev/null", "a@example.org"])
        .assert()
        .success();
    let out = env.mailspool().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("HTTP tokens file") && text.contains("world-readable"),
        "{text}"
    );
}

/// `mailq --help` is help, not the queue; the listing takes the API's filters: held,
/// sender, recipient, age (with units).
#[test]
fn mailq_help_and_the_listing_filters() {
    let env = Env::new();
    let out = env.mailq().arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("List the mail queue") && help.contains("--older-than"),
        "{help}"
    );
    assert!(!help.contains("Mail queue is empty"), "{help}");
    env.mailq().arg("--bogus").assert().code(64);

    for (to, from) in [("a@example.org", "app@example.com"), ("b@example.org", "")] {
        env.mailspool()
            .args(["send", "-f", from, to])
            .write_stdin("Subject: x\n\nhi\n")
            .assert()
            .success();
    }
    let listed = |args: &[&str]| -> Vec<String> {
        let out = env
            .mailspool()
            .args(["queue", "list", "--json"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["to"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(listed(&["--sender", "<>"]), ["b@example.org"]);
    assert_eq!(listed(&["--sender", "APP@example.com"]), ["a@example.org"]);
    assert_eq!(listed(&["--to", "b@example.org"]), ["b@example.org"]);
    assert!(listed(&["--older-than", "1h"]).is_empty());
    assert_eq!(listed(&["--older-than", "0"]).len(), 2);
    assert!(listed(&["--held"]).is_empty());
    let id = {
        let out = env
            .mailspool()
            .args(["queue", "list", "--json", "--to", "a@example.org"])
            .output()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(
            String::from_utf8_lossy(&out.stdout).lines().next().unwrap(),
        )
        .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    env.mailspool()
        .args(["queue", "hold", &id])
        .assert()
        .success();
    assert_eq!(listed(&["--held"]), ["a@example.org"]);
    env.mailspool()
        .args(["queue", "list", "--older-than", "3x"])
        .assert()
        .code(64);
}

/// `doctor` says what the spool's file system guarantees for new names, and a bad
/// `fsync_directories` is a configuration error naming the choices.
#[test]
fn doctor_shows_the_file_systems_durability_and_its_override() {
    let env = Env::new();
    env.mailspool()
        .args(["send", "--file", "/dev/null", "a@example.org"])
        .assert()
        .success();
    let out = env.mailspool().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("file system: "), "{text}");
    assert!(
        text.contains("makes its new names durable") || text.contains("directory fsync"),
        "{text}"
    );
    fs::write(env.config_path(), "fsync_directories = \"always\"\n").unwrap();
    let out = env.mailspool().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(
            "new names are made durable by a directory fsync (fsync_directories = \"always\""
        ),
        "{text}"
    );
    fs::write(env.config_path(), "fsync_directories = \"sometimes\"\n").unwrap();
    let out = env.mailspool().arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"auto\", \"always\" or \"never\""), "{err}");
}
