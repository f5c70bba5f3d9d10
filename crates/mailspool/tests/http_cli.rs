//! The HTTP API from the command line: `mailspool token`, `[http]` in the
//! configuration, and the daemon serving it.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::Env;

fn http_config(env: &Env, port_line: &str) {
    std::fs::write(
        env.config_path(),
        format!(
            "relayhost = \"127.0.0.1:1\"\n[http]\n{port_line}\ntokens_file = \"{}\"\n",
            env.dir.path().join("tokens").display()
        ),
    )
    .unwrap();
}

#[test]
fn token_add_prints_the_secret_once_as_the_last_line_and_stores_only_its_hash() {
    let env = Env::new();
    http_config(&env, "listen = \"127.0.0.1:0\"");
    let out = env
        .mailspool()
        .args([
            "token",
            "add",
            "ci-app",
            "--scope",
            "inject",
            "--expires",
            "30d",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout.lines().last().unwrap().to_owned();
    assert!(secret.starts_with("mst_") && secret.len() == 47, "{stdout}");
    let file = env.dir.path().join("tokens");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.contains("ci-app inject "), "{stored}");
    assert!(!stored.contains(&secret[4..]));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let list = env.mailspool().args(["token", "list"]).output().unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.contains("ci-app") && list.contains("inject") && !list.contains(&secret[4..]),
        "{list}"
    );
    // Bad scope, bad duration, bad name: usage errors, nothing written.
    env.mailspool()
        .args(["token", "add", "x", "--scope", "root"])
        .assert()
        .code(64);
    env.mailspool()
        .args(["token", "add", "x", "--scope", "read", "--expires", "soon"])
        .assert()
        .code(64);
    env.mailspool()
        .args(["token", "add", "a b", "--scope", "read"])
        .assert()
        .code(65);
    env.mailspool()
        .args(["token", "del", "ci-app"])
        .assert()
        .success();
    env.mailspool()
        .args(["token", "del", "ci-app"])
        .assert()
        .code(66);
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains("ci-app"));
}

#[test]
fn an_http_listener_off_loopback_without_tls_is_a_configuration_error() {
    let env = Env::new();
    http_config(&env, "listen = \"0.0.0.0:8025\"");
    let out = env.mailspool().args(["queue", "summary"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

fn http_get(port: u16, path: &str, token: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_daemon_serves_the_api_and_logs_json_lines() {
    let env = Env::new();
    let port = support::free_port();
    http_config(&env, &format!("listen = \"127.0.0.1:{port}\""));
    let mut cfg = std::fs::read_to_string(env.config_path()).unwrap();
    cfg.insert_str(0, "log_format = \"json\"\n");
    std::fs::write(env.config_path(), cfg).unwrap();
    let out = env
        .mailspool()
        .args(["token", "add", "ops", "--scope", "admin"])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
    cmd.arg("daemon")
        .env("MAILSPOOL_SPOOL", env.spool())
        .env("MAILSPOOL_CONFIG", env.config_path())
        .env_remove("MAILSPOOL_LOG")
        .stderr(std::process::Stdio::piped());
    let mut daemon = cmd.spawn().unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["message"], "HTTP API listening", "{first}");
    env.mailspool()
        .args(["send", "bob@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    // The daemon tries it (the relay refuses: port 1) and says so, as JSON.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let deferred = loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["event"] == "deferred" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline);
    };
    assert_eq!(deferred["to"], "bob@example.org");
    assert_eq!(deferred["tier"], 1);
    assert!(deferred["reply"].as_str().unwrap().contains("refused"));
    assert!(deferred["id"].as_str().unwrap().len() == 26);
    let summary = http_get(port, "/v1/summary", &token);
    assert!(summary.starts_with("HTTP/1.1 200"), "{summary}");
    assert!(summary.contains("\"nodes\":1"), "{summary}");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_alone_serves_the_api_on_serve_listen_with_its_smtp_metrics() {
    let env = Env::new();
    std::fs::write(
        env.config_path(),
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[http]\nserve_listen = \"127.0.0.1:0\"\ntokens_file = \"{}\"\n",
            env.dir.path().join("tokens").display()
        ),
    )
    .unwrap();
    let out = env
        .mailspool()
        .args(["token", "add", "ops", "--scope", "read"])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
        .arg("serve")
        .env("MAILSPOOL_SPOOL", env.spool())
        .env("MAILSPOOL_CONFIG", env.config_path())
        .env_remove("MAILSPOOL_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut smtp, mut http) = (0u16, 0u16);
    while smtp == 0 || http == 0 {
        let line = lines.next().expect("serve says where it listens").unwrap();
        let port = || line.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        if line.starts_with("mailspool: listening on ") {
            smtp = port();
        } else if line.starts_with("mailspool: HTTP API on ") {
            http = port();
        }
    }
    std::thread::spawn(move || for _ in lines {});
    // One SMTP session that queues one message.
    let s = std::net::TcpStream::connect(("127.0.0.1", smtp)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut expect = |code: &str| loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        assert!(l.starts_with(code), "{l}");
        if l.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect("220");
    for (cmd, code) in [
        ("EHLO client.example\r\n", "250"),
        ("MAIL FROM:<a@example.com>\r\n", "250"),
        ("RCPT TO:<b@example.org>\r\n", "250"),
        ("DATA\r\n", "354"),
        ("Subject: x\r\n\r\nhi\r\n.\r\n", "250"),
        ("QUIT\r\n", "221"),
    ] {
        w.write_all(cmd.as_bytes()).unwrap();
        expect(code);
    }
    drop(w);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = http_get(http, "/metrics", "");
        if m.contains("mailspool_smtp_sessions_open 0")
            && m.contains("mailspool_smtp_sessions_total 1")
        {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("mailspool_messages_accepted_total{source=\"smtp\"} 1"),
        "{metrics}"
    );
    let summary = http_get(http, "/v1/summary", &token);
    assert!(summary.contains("\"nodes\":1"), "{summary}");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    assert!(child.wait().unwrap().success());
}
