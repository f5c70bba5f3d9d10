//! `mailspool serve`, `mailspool user` and `sendmail -bs` from the command line, with
//! Python's smtplib as an independent client.

use std::io::Write;

mod support;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(
            env.config(),
            format!(
                "dequeue_dir = \"{}\"\nusers_file = \"{}\"\nhostname = \"mx.test\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n",
                env.spool().display(),
                env.dir.path().join("users").display()
            ),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            assert_cmd::cargo::cargo_bin!("mailspool"),
            env.dir.path().join("sendmail"),
        )
        .unwrap();
        env
    }
    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("mailspool.toml")
    }
    fn cmd(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new(program);
        c.env("MAILSPOOL_CONFIG", self.config())
            .env_remove("MAILSPOOL_SPOOL")
            .env_remove("MAILSPOOL_LOG");
        c
    }
    fn mailspool(&self) -> Command {
        self.cmd(&PathBuf::from(assert_cmd::cargo::cargo_bin!("mailspool")))
    }
    fn nodes(&self) -> Vec<(String, String)> {
        let Ok(rd) = std::fs::read_dir(self.spool().join("0")) else {
            return Vec::new();
        };
        let mut v: Vec<_> = rd
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// Start `mailspool serve` and return it with its port.
fn serve(env: &Env) -> (Child, u16) {
    support::spawn_serve(env.mailspool())
}

fn stop(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status:?}");
}

#[test]
fn python_smtplib_sends_through_serve_with_and_without_auth() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed; the smtplib interop test did not run");
        return;
    }
    let env = Env::new();
    let mut add = env
        .mailspool()
        .args(["user", "add", "app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    add.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    assert!(add.wait().unwrap().success());
    let list = env.mailspool().args(["user", "list"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout), "app\n");
    let (child, port) = serve(&env);
    let script = format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "app@sender.test"
m["To"] = "ops@example.org"
m["Subject"] = "from python"
m.set_content("Hello from smtplib.\n.line starting with a dot\n")
with smtplib.SMTP("127.0.0.1", {port}, timeout=10) as s:
    s.ehlo("python.test")
    assert s.has_extn("pipelining") and s.has_extn("size") and s.has_extn("chunking")
    s.send_message(m)
    s.login("app", "s3cret")
    s.send_message(m, to_addrs=["second@example.org"])
    try:
        s.login("app", "wrong")
    except smtplib.SMTPException:
        pass
print("ok")
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(child);
    let nodes = env.nodes();
    assert_eq!(nodes.len(), 2);
    assert!(nodes[0].0.contains("-ops@example.org-app@sender.test"));
    assert!(nodes[0].1.contains("Subject: from python"));
    assert!(nodes[0].1.contains("\n.line starting with a dot\n"));
    assert!(nodes[1].1.contains("with ESMTPA id "), "{}", nodes[1].1);
    let del = env
        .mailspool()
        .args(["user", "del", "app"])
        .output()
        .unwrap();
    assert!(del.status.success());
}

#[test]
fn sendmail_bs_speaks_smtp_on_stdin() {
    let env = Env::new();
    let mut child = env
        .cmd(&env.dir.path().join("sendmail"))
        .arg("-bs")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"EHLO local\r\nMAIL FROM:<cron@host.test>\r\nRCPT TO:<root@example.org>\r\nDATA\r\nSubject: cron\r\n\r\ndone\r\n.\r\nQUIT\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("220 mx.test"), "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued as"), "{text}");
    assert!(text.trim_end().ends_with("221 2.0.0 Bye"), "{text}");
    let nodes = env.nodes();
    assert_eq!(nodes.len(), 1);
    let uid = rustix::process::getuid().as_raw();
    assert!(
        nodes[0]
            .1
            .starts_with(&format!("Received: from local (local, from userid {uid})")),
        "{}",
        nodes[0].1
    );
    std::thread::sleep(Duration::from_millis(10));
}
