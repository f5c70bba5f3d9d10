//! `mailspool dkim keygen` and `dkim check` as an operator runs them, and `[[dkim]]`
//! signing what `send --now` delivers; DNS answered by the in-process server.

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use common::{Answer, Script, Sink, dns_server};

fn mailspool(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
        .env("MAILSPOOL_SPOOL", dir.join("spool"))
        .env("MAILSPOOL_CONFIG", dir.join("mailspool.toml"))
        .env_remove("MAILSPOOL_LOG")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The strings of the zone line keygen prints: `name. IN TXT "a" "b"`.
fn zone_strings(line: &str) -> (String, Vec<String>) {
    let (name, rest) = line.split_once(". IN TXT ").expect(line);
    let strings = rest
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect();
    (name.to_owned(), strings)
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_writes_a_private_key_and_check_compares_it_with_dns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("mailspool.toml"), "").unwrap();
    let out = mailspool(
        d,
        &[
            "dkim",
            "keygen",
            "--domain",
            "Example.ORG",
            "--selector",
            "s1",
            "--algorithm",
            "ed25519",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        line.starts_with("s1._domainkey.example.org. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{line}"
    );
    assert!(text(&out).contains("[[dkim]]"), "says what to configure");
    let key = d.join("dkim/s1._domainkey.example.org.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(d.join("dkim"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    // Never over an existing key.
    let before = std::fs::read(&key).unwrap();
    let again = mailspool(
        d,
        &[
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            "s1",
        ],
    );
    assert_eq!(again.status.code(), Some(73), "{}", text(&again));
    assert!(text(&again).contains("never replaces"), "{}", text(&again));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // An RSA key's record is longer than one TXT string may be: split at 255.
    let rsa_path = d.join("rsa.pem");
    let out = mailspool(
        d,
        &[
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            "r1",
            "--key-file",
            rsa_path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let rsa_line = String::from_utf8(out.stdout.clone()).unwrap();
    let (rsa_name, rsa_strings) = zone_strings(rsa_line.trim());
    assert!(
        rsa_strings.len() >= 2 && rsa_strings.iter().all(|s| s.len() <= 255),
        "{rsa_line}"
    );
    assert!(
        rsa_strings[0].starts_with("v=DKIM1; k=rsa; p=MIIB"),
        "{rsa_line}"
    );

    let (name, strings) = zone_strings(line.trim());
    let (_, other) = zone_strings(rsa_line.trim());
    let table = HashMap::from([
        (
            (name.clone(), "TXT".into()),
            Answer::Txt(vec![strings.clone()]),
        ),
        (
            (rsa_name.clone(), "TXT".into()),
            Answer::Txt(vec![rsa_strings.clone()]),
        ),
        // The Ed25519 selector "wrong" publishes the RSA key.
        (
            ("wrong._domainkey.example.org".into(), "TXT".into()),
            Answer::Txt(vec![other]),
        ),
        (("example.org".into(), "MX".into()), Answer::Mx(vec![])),
    ]);
    let dns = dns_server(table).await;
    std::fs::write(d.join("mailspool.toml"), format!("resolver = \"{dns}\"\n")).unwrap();
    let check = |sel: &str, extra: &[&str]| {
        let mut args = vec![
            "dkim",
            "check",
            "--domain",
            "example.org",
            "--selector",
            sel,
        ];
        args.extend_from_slice(extra);
        mailspool(d, &args)
    };
    let ok = tokio::task::block_in_place(|| check("s1", &[]));
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("OK"), "{}", text(&ok));
    let rsa_path_s = rsa_path.to_str().unwrap().to_owned();
    let ok = tokio::task::block_in_place(|| check("r1", &["--key-file", &rsa_path_s]));
    assert!(
        ok.status.success(),
        "RSA joined from its strings: {}",
        text(&ok)
    );
    let key_s = key.to_str().unwrap().to_owned();
    let wrong = tokio::task::block_in_place(|| check("wrong", &["--key-file", &key_s]));
    assert_eq!(wrong.status.code(), Some(65), "{}", text(&wrong));
    assert!(text(&wrong).contains("k=rsa"), "{}", text(&wrong));
    let missing = tokio::task::block_in_place(|| check("none", &["--key-file", &key_s]));
    assert_eq!(missing.status.code(), Some(69), "{}", text(&missing));
    assert!(
        text(&missing).contains("IN TXT"),
        "says what to publish: {}",
        text(&missing)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_keys_sign_what_send_now_delivers() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("mailspool.toml"), "").unwrap();
    let out = mailspool(
        d,
        &[
            "dkim",
            "keygen",
            "--domain",
            "sender.test",
            "--selector",
            "k1",
            "--algorithm",
            "ed25519",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The key file as keygen suggests it, relative to the configuration's directory.
    std::fs::write(
        d.join("mailspool.toml"),
        format!(
            "tls = \"none\"\n[routes]\n\"one.test\" = \"{}\"\n\n[[dkim]]\ndomain = \"sender.test\"\nselector = \"k1\"\nkey_file = \"dkim/k1._domainkey.sender.test.pem\"\nalgorithm = \"ed25519\"\n",
            sink.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
        .env("MAILSPOOL_SPOOL", d.join("spool"))
        .env("MAILSPOOL_CONFIG", d.join("mailspool.toml"))
        .args(["send", "--now", "-t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"From: app@sender.test\nTo: x@one.test\nSubject: signed\n\nhello\n")
        .unwrap();
    let out = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    assert!(out.status.success(), "{}", text(&out));
    let got = sink.received();
    assert_eq!(got.len(), 1);
    let data = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        data.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=k1; d=sender.test;"),
        "{data}"
    );

    // A key file that is not there stops delivery with a configuration error.
    let cfg = std::fs::read_to_string(d.join("mailspool.toml")).unwrap();
    std::fs::write(
        d.join("mailspool.toml"),
        cfg.replace("k1._domainkey", "gone"),
    )
    .unwrap();
    let run = mailspool(d, &["queue", "run"]);
    assert_eq!(run.status.code(), Some(78), "{}", text(&run));
    assert!(text(&run).contains("gone"), "{}", text(&run));
}

#[test]
fn doctor_checks_the_dkim_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("mailspool.toml"), "").unwrap();
    // A spool to look at.
    let mut child = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
        .env("MAILSPOOL_SPOOL", d.join("spool"))
        .env("MAILSPOOL_CONFIG", d.join("mailspool.toml"))
        .args(["send", "a@example.org"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: x\n\nhi\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let doctor = || String::from_utf8(mailspool(d, &["doctor"]).stdout).unwrap();
    assert!(doctor().contains("no [[dkim]] keys"), "{}", doctor());
    let out = mailspool(
        d,
        &[
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            "doc",
            "--algorithm",
            "ed25519",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(
        d.join("mailspool.toml"),
        "[[dkim]]\ndomain = \"example.org\"\nselector = \"doc\"\nkey_file = \"dkim/doc._domainkey.example.org.pem\"\n",
    )
    .unwrap();
    let report = doctor();
    assert!(
        report.contains("ok    DKIM key of example.org (selector doc): ed25519 key"),
        "{report}"
    );
    let key = d.join("dkim/doc._domainkey.example.org.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let report = doctor();
    assert!(
        report.contains("is world-readable") && report.contains("chmod 0600"),
        "{report}"
    );
    std::fs::write(&key, "not a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(doctor().contains("mailspool dkim keygen"), "{}", doctor());
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_prints_a_key_file_the_configuration_finds_and_check_tells_a_timeout_from_no_record()
{
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("mailspool.toml"), "").unwrap();
    // A relative --key-file, from another directory than the configuration's.
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
        .current_dir(&elsewhere)
        .env("MAILSPOOL_SPOOL", d.join("spool"))
        .env("MAILSPOOL_CONFIG", d.join("mailspool.toml"))
        .args([
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            "rel",
            "--algorithm",
            "ed25519",
            "--key-file",
            "rel.pem",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stderr);
    let line = printed
        .lines()
        .find(|l| l.starts_with("key_file = "))
        .unwrap_or_else(|| panic!("{printed}"));
    let want = format!("key_file = \"{}\"", elsewhere.join("rel.pem").display());
    assert_eq!(
        line, want,
        "an absolute path, valid wherever the configuration is"
    );
    // Pasted into the configuration as printed, the key loads.
    std::fs::write(
        d.join("mailspool.toml"),
        format!("[[dkim]]\ndomain = \"example.org\"\nselector = \"rel\"\n{line}\n"),
    )
    .unwrap();
    let q = mailspool(d, &["send", "--file", "/dev/null", "x@example.org"]);
    assert_ne!(
        q.status.code(),
        Some(78),
        "the configuration loads: {}",
        text(&q)
    );
    // A resolver that fails (SERVFAIL) is not "no record": 75, try again.
    let table = HashMap::from([(
        ("rel._domainkey.example.org".to_owned(), "TXT".to_owned()),
        Answer::ServFail,
    )]);
    let dns = dns_server(table).await;
    std::fs::write(
        d.join("mailspool.toml"),
        format!(
            "resolver = \"{dns}\"\n[[dkim]]\ndomain = \"example.org\"\nselector = \"rel\"\n{line}\n"
        ),
    )
    .unwrap();
    let failed = tokio::task::block_in_place(|| {
        mailspool(
            d,
            &[
                "dkim",
                "check",
                "--domain",
                "example.org",
                "--selector",
                "rel",
            ],
        )
    });
    assert_eq!(failed.status.code(), Some(75), "{}", text(&failed));
    assert!(
        text(&failed).contains("did not answer"),
        "{}",
        text(&failed)
    );
}
