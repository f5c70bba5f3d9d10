//! The C ABI from C: tests/c/send.c compiled against include/mailspool.h, linked both
//! with libmailspool.so and with libmailspool.a, run against a temporary spool; the
//! nodes it queued are read back through the Rust library.

mod support;

use std::path::Path;
use std::process::Command;

use support::{header_block, lib_dir, node_text, queue, quiet_config};

fn compile(out: &Path, static_link: bool) {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/send.c");
    let lib = lib_dir();
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(&src)
        .arg("-I")
        .arg(&include);
    if static_link {
        cc.arg(lib.join("libmailspool.a"))
            .args(["-lpthread", "-ldl", "-lm"]);
    } else {
        cc.arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-lmailspool", "-lpthread"]);
    }
    let status = cc.status().expect("a C compiler (cc) is needed");
    assert!(status.success(), "cc failed for {}", src.display());
}

fn run(static_link: bool) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("send");
    compile(&exe, static_link);
    let spool = dir.path().join("spool");
    let file = dir.path().join("message.eml");
    std::fs::write(
        &file,
        "From: file@sender.test\nTo: fromfile@rcpt.test\nSubject: file\n\nbody\n",
    )
    .unwrap();
    let out = Command::new(&exe)
        .arg(&spool)
        .arg(&file)
        .env("MAILSPOOL_CONFIG", quiet_config(dir.path()))
        .env_remove("MAILSPOOL_SPOOL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |prefix: &str| -> String {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in\n{stdout}"))
            .to_owned()
    };
    assert_eq!(
        line("version "),
        format!("version {}", env!("CARGO_PKG_VERSION"))
    );
    let headers_id = line("headers Ok ")
        .trim_start_matches("headers Ok ")
        .to_owned();
    // Checked by the C program itself: one node per recipient (To x2, Cc, Bcc), mode
    // 0600, no Bcc header, nothing in tmp/.
    assert_eq!(line("headers nodes "), "headers nodes 4");
    assert_eq!(line("explicit Ok"), "explicit Ok Cid.1");
    assert_eq!(line("explicit nodes "), "explicit nodes 2");
    assert_eq!(line("again "), "again IdInUse exit=65");
    assert!(
        line("bad ").starts_with("bad BadAddress exit=65 error="),
        "{stdout}"
    );
    assert_eq!(line("norcpt "), "norcpt NoRecipients");
    assert_eq!(line("mode "), "mode InvalidArgument");
    assert_eq!(line("nullhandle "), "nullhandle InvalidArgument");
    let file_id = line("file Ok ").trim_start_matches("file Ok ").to_owned();
    assert_eq!(line("nofile "), "nofile NoInput exit=66");
    assert_eq!(line("threads "), "threads failures=0");
    // A batch: each message whole or not at all, the failure named by its index.
    assert_eq!(
        line("many "),
        "many NoRecipients Ok NoRecipients Ok error=message 1: no recipients: give \
         addresses as arguments or in To/Cc/Bcc headers"
    );
    assert_eq!(line("many nodes "), "many nodes 4 null 1");

    let q = queue(&spool);
    // Headers: To + Cc + Bcc, one node each, the Bcc header not stored.
    let of = |id: &str| -> Vec<&str> {
        q.iter()
            .filter(|e| e.id == id)
            .map(|e| e.to.as_str())
            .collect()
    };
    assert_eq!(
        of(&headers_id),
        [
            "one@rcpt.test",
            "secret@rcpt.test",
            "three@rcpt.test",
            "two@rcpt.test"
        ]
    );
    for e in q.iter().filter(|e| e.id == headers_id) {
        assert_eq!(e.from, "app@sender.test");
        assert_eq!(e.tier, 0);
        let text = node_text(&spool, e);
        assert!(
            !header_block(&text).contains("secret@"),
            "Bcc stored:\n{text}"
        );
        assert!(text.ends_with("\n\nhello from C\n"), "{text}");
    }
    // Explicit envelope: only the given recipients, the null sender, the chosen id.
    assert_eq!(of("Cid.1"), ["explicit@rcpt.test", "other@rcpt.test"]);
    assert!(
        q.iter()
            .filter(|e| e.id == "Cid.1")
            .all(|e| e.from.is_empty())
    );
    assert_eq!(of(&file_id), ["fromfile@rcpt.test"]);
    // 4 threads x 25 messages, each its own id.
    let threaded: std::collections::HashSet<_> = q
        .iter()
        .filter(|e| e.to == "thread@rcpt.test")
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(threaded.len(), 100);
    // Nothing half-written is left behind by the refused sends.
    let tmp: Vec<_> = std::fs::read_dir(spool.join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "stages left: {tmp:?}");
    // The JSON listing names every node.
    let json: serde_json::Value =
        serde_json::from_str(line("json ").trim_start_matches("json ")).unwrap();
    assert_eq!(json.as_array().unwrap().len(), q.len());
    assert!(json.as_array().unwrap().iter().any(|n| n["id"] == "Cid.1"
        && n["to"] == "other@rcpt.test"
        && n["from"] == ""
        && n["tier"] == 0
        && n["held"] == false));
}

#[test]
fn c_program_linked_with_the_shared_library() {
    run(false);
}

#[test]
fn c_program_linked_with_the_static_library() {
    run(true);
}
