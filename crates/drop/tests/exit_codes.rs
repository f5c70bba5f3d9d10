//! The drop binary as sendmail's callers see it: exit codes from sysexits.h, and a
//! message left in `maildrop/` only when every check passed. (Also makes
//! `cargo nextest run --workspace` build the binary the `mailspool` tests run.)

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

fn drop_cmd(spool: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mailspool-drop"));
    c.env("MAILSPOOL_SPOOL", spool)
        .env_remove("MAILSPOOL_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(spool: &std::path::Path, args: &[&str], input: &[u8]) -> (i32, String) {
    let mut child = drop_cmd(spool).args(args).spawn().unwrap();
    // The drop may exit before reading (a usage error): a closed pipe is fine here.
    let _ = child.stdin.take().unwrap().write_all(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn drops(spool: &std::path::Path) -> usize {
    fs::read_dir(spool.join("maildrop"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn exit_codes_follow_sysexits_and_only_a_good_message_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    fs::create_dir_all(spool.join("maildrop")).unwrap();

    // An unknown option: EX_USAGE, nothing written.
    let (code, err) = run(&spool, &["--no-such-option", "a@example.test"], b"");
    assert_eq!(code, 64, "{err}");
    // No recipient and nothing to extract them from: EX_USAGE.
    let (code, err) = run(&spool, &[], b"Subject: nobody\n\nbody\n");
    assert_eq!(code, 64, "{err}");
    // A recipient that is not an address: EX_DATAERR or EX_USAGE, never success.
    let (code, err) = run(&spool, &["not an address@@"], b"Subject: x\n\nbody\n");
    assert!(code == 65 || code == 64, "{code}: {err}");
    assert_eq!(drops(&spool), 0, "a refused message left a file");

    // A good one: success and exactly one drop file, not readable by others.
    let (code, err) = run(
        &spool,
        &["-f", "me@example.test", "you@example.test"],
        b"Subject: hi\n\nbody\n",
    );
    assert_eq!(code, 0, "{err}");
    let files: Vec<_> = fs::read_dir(spool.join("maildrop"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let text = fs::read_to_string(&files[0]).unwrap();
    assert!(text.starts_with("mailspool-drop 1"), "{text}");
    assert!(text.contains("you@example.test"));
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o007,
        0,
        "drop file mode {mode:o} lets others read it"
    );
}

#[test]
fn a_missing_maildrop_is_a_temporary_failure_not_a_lost_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("nowhere");
    let (code, err) = run(&spool, &["you@example.test"], b"Subject: hi\n\nbody\n");
    assert!(
        code == 75 || code == 73,
        "a drop into a missing directory must fail (75/73), got {code}: {err}"
    );
}
