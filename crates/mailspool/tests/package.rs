//! The Debian package on a real multi-user server: contrib/debian/test-package.sh
//! builds and installs it, two unprivileged users send 100 messages (half of them with
//! the daemon stopped), every attack on the spool fails, and the package is purged.
//! Here: the SMTP sink it delivers to, and what the sink must have received.
//!
//! It installs a package, creates users and starts a daemon, so it runs only as root
//! under CI (`CI=true`, as .ci/run); elsewhere it says so and passes.

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{Script, Sink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_serves_many_users_and_leaves_nothing_behind() {
    let root = rustix::process::geteuid().is_root();
    if std::env::var("CI").as_deref() != Ok("true")
        || !root
        || !std::path::Path::new("/usr/bin/dpkg").exists()
    {
        eprintln!(
            "skipped: installs a Debian package and creates users; runs as root under CI=true"
        );
        return;
    }
    let sink = Sink::start(Script::default()).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/debian/test-package.sh"
    );
    // A free port for the daemon's HTTP API (bound, released, then bound by it).
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = tokio::task::block_in_place(|| {
        Command::new("bash")
            .arg(script)
            .env("SINK_PORT", sink.addr.port().to_string())
            .env("HTTP_PORT", http_port.to_string())
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if stdout.starts_with("SKIP") && out.status.success() {
        eprintln!("{stdout}");
        return;
    }
    assert!(
        out.status.success() && stdout.ends_with("PASS\n"),
        "{stdout}\n{stderr}"
    );
    let uids: HashMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("uid "))
        .filter_map(|l| l.split_once(' '))
        .map(|(u, n)| (u.to_owned(), n.to_owned()))
        .collect();
    assert_eq!(uids.len(), 2);
    let mut per_user: HashMap<String, usize> = HashMap::new();
    let mut http_delivered = 0;
    for m in sink.received() {
        let body = String::from_utf8_lossy(&m.data);
        if m.to.iter().any(|t| t.starts_with("redirect@")) {
            continue;
        }
        // Signed by the key root made with `dkim keygen` (read by the daemon's user).
        assert!(
            body.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=pkg; d=server.test;"),
            "{body}"
        );
        // The message posted to the HTTP API by root's token.
        if m.to == ["http@example.test"] {
            assert_eq!(m.from, "app@server.test");
            http_delivered += 1;
            continue;
        }
        let user = m.from.split('@').next().unwrap().to_owned();
        assert_eq!(
            m.from,
            format!("{user}@server.test"),
            "0.50's default sender"
        );
        let uid = &uids[&user];
        assert!(
            body.contains(&format!("(mailspool, from userid {uid})")),
            "the Received line names the submitter: {body}"
        );
        assert!(body.contains(&format!("hello from {user}")));
        assert!(
            m.to.iter().all(|t| t.starts_with(&format!("{user}-"))),
            "{:?}",
            m.to
        );
        *per_user.entry(user).or_default() += m.to.len();
    }
    assert_eq!(per_user.get("ms-alice"), Some(&50));
    assert_eq!(per_user.get("ms-bob"), Some(&50));
    assert_eq!(http_delivered, 1, "the message posted over HTTP");
}
